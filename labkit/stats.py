"""How sure is a score? Intervals for shares and means, and a paired test for two models on the same questions.

A held-out accuracy of 75% on 32 questions is one draw: its 95% interval runs from about 58% to 87%,
so "50% -> 75%" on 32 questions is evidence, while "88% -> 90%" on 40 is not. Lessons print these next to the
numbers they compare. The arithmetic is scipy's (scipy.stats.binomtest, scipy.stats.bootstrap); this module
adds the course's checks and one-line formats.

    share_interval(24, 32)                 # Wilson 95% interval of 24/32: (0.578, 0.867)
    mcnemar(sft_right, grpo_right)         # the same 32 questions answered by two models: exact p-value
    mean_interval(rewards, seed=0)         # percentile bootstrap of a mean
    describe_share(24, 32)                 # '75% (24/32; 95% CI 58-87%)'
    describe_mean(ratios)                  # '1.07 (95% CI 1.03-1.11, 20 values)'
    describe_win_rate(evaluate.win_rate(...))  # '92% (22 wins, 0 ties, 2 losses of 24; 95% CI 74-98%)'
"""

from __future__ import annotations

from . import guard


def share_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of K successes in N trials (scipy's binomtest(k, n).proportion_ci).

    Better than the textbook p +- z*sqrt(p(1-p)/n) at small N and at 0% or 100%, where that one collapses to
    a single point. Returns (low, high), fractions in [0, 1].
    """
    from scipy.stats import binomtest

    n = guard.positive_int("n", n, "32", about="the number of questions")
    k = guard.int_between("k", k, 0, n, about="how many of the n were right")
    confidence = _check_confidence(confidence)
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def describe_share(k: int, n: int, confidence: float = 0.95) -> str:
    """'75% (24/32; 95% CI 58-87%)': a share with its count and Wilson interval, as lessons print it."""
    low, high = share_interval(k, n, confidence)
    return f"{k / n:.0%} ({k}/{n}; {confidence:.0%} CI {100 * low:.0f}-{100 * high:.0f}%)"


def win_rate_interval(wins: int, ties: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson interval of a win rate (wins + ties / 2) / n, a tie counted as half a win (Wilson's formula
    takes a half count as it is). With TIES = 0 it is share_interval(wins, n).

    Why not a bootstrap of the per-prompt outcomes: resampling can only draw outcomes it has seen, so when every
    prompt is a win every resample's mean is 1 and the interval collapses to "1.00-1.00"; Wilson's does not.
    """
    import math

    from scipy.stats import norm

    n = guard.positive_int("n", n, "24", about="the number of prompts judged")
    wins = guard.int_between("wins", wins, 0, n, about="prompts where A won")
    ties = guard.int_between("ties", ties, 0, n - wins, about="prompts judged a tie")
    z = float(norm.ppf(1 - (1 - _check_confidence(confidence)) / 2))
    p = (wins + ties / 2) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def describe_win_rate(result: dict, confidence: float = 0.95) -> str:
    """'92% (22 wins, 0 ties, 2 losses of 24; 95% CI 74-98%)': a labkit.evaluate.win_rate RESULT with its
    Wilson interval (win_rate_interval), as lessons print it."""
    r = result
    low, high = win_rate_interval(r["wins"], r["ties"], r["n"], confidence)
    return (f"{r['win_rate']:.0%} ({r['wins']} wins, {r['ties']} ties, {r['losses']} losses of {r['n']}; "
            f"{confidence:.0%} CI {100 * low:.0f}-{100 * high:.0f}%)")


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's exact test: do models A and B, answering the SAME questions, differ in accuracy?

    correct_a, correct_b: one bool per question (was A right, was B right), equally long. Only the questions
    where exactly one model is right carry information: b = A right and B wrong, c = A wrong and B right.
    Under "no difference" each of those b + c questions goes either way with probability 1/2, so the exact
    two-sided p-value is scipy's binomtest(b, b + c, 0.5); with b + c = 0 it is 1.

    Returns {"n", "a_right", "b_right", "only_a": b, "only_b": c, "p_value"}.
    """
    from scipy.stats import binomtest

    a, b = [bool(x) for x in correct_a], [bool(x) for x in correct_b]
    if len(a) != len(b) or not a:
        raise ValueError(f"mcnemar needs one verdict per question from each model, on the same questions; got "
                         f"{len(a)} and {len(b)}.")
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"n": len(a), "a_right": sum(a), "b_right": sum(b), "only_a": only_a, "only_b": only_b, "p_value": p}


def describe_mcnemar(result: dict, name_a: str = "A", name_b: str = "B") -> str:
    """One line about a mcnemar() result: both accuracies, the discordant questions and the p-value."""
    r = result
    verdict = "a difference this large is unlikely by chance" if r["p_value"] < 0.05 else \
        "not distinguishable from chance at this sample size"
    return (f"{name_a} {r['a_right']}/{r['n']} vs {name_b} {r['b_right']}/{r['n']} right on the same questions; "
            f"only {name_a} right on {r['only_a']}, only {name_b} right on {r['only_b']}: McNemar exact "
            f"p = {r['p_value']:.3g} ({verdict})")


def mean_interval(values, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of VALUES (scipy.stats.bootstrap, seeded: the same SEED gives
    the same interval). For scores that are not right/wrong: rewards, margins, lengths."""
    import numpy as np
    from scipy.stats import bootstrap

    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size < 2:
        raise ValueError(f"mean_interval needs at least two values; got {x.size}.")
    if not np.isfinite(x).all():
        raise ValueError("mean_interval got a NaN or infinite value; drop or fix it first.")
    confidence = _check_confidence(confidence)
    n_resamples = guard.positive_int("n_resamples", n_resamples, "2000")
    if np.ptp(x) == 0:  # every value equal: the interval is that value (scipy would warn about a degenerate sample)
        return float(x[0]), float(x[0])
    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def describe_mean(values, digits: int = 2, confidence: float = 0.95, seed: int = 0) -> str:
    """'1.07 (95% CI 1.03-1.11, 20 values)': a mean with its bootstrap interval (mean_interval), as lessons print it."""
    import statistics

    low, high = mean_interval(values, confidence=confidence, seed=seed)
    values = [float(v) for v in values]
    return (f"{statistics.fmean(values):.{digits}f} ({confidence:.0%} CI {low:.{digits}f}-{high:.{digits}f}, "
            f"{len(values)} values)")


def interval_verdict(values, reference: float, above: str = "above", below: str = "below",
                     within: str = "cannot be told apart", confidence: float = 0.95, seed: int = 0) -> str:
    """Where the mean of VALUES stands against REFERENCE, read from its bootstrap interval (mean_interval):
    ABOVE when the whole interval is above REFERENCE, BELOW when it is below, WITHIN when it holds REFERENCE
    (the data cannot tell the two apart). E.g. per-round time ratios against 1: slower, faster or no clear difference."""
    low, high = mean_interval(values, confidence=confidence, seed=seed)
    return within if low <= reference <= high else above if low > reference else below


def _check_confidence(confidence) -> float:
    c = guard.fraction("confidence", confidence, "0.95", about="the coverage of the interval")
    if not 0 < c < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1 such as 0.95; got confidence={confidence!r}.")
    return c

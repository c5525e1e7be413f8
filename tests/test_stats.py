"""labkit.stats: the Wilson interval equals its closed form, McNemar's exact p-value equals the binomial sum
written out, the bootstrap is seeded and covers the mean, and bad input is a clear error."""

import math

import pytest

from labkit import stats


def _wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(24, 32), (0, 10), (10, 10), (1, 3), (88, 100)])
def test_share_interval_is_wilsons_closed_form(k, n):
    low, high = stats.share_interval(k, n)
    want = _wilson_by_hand(k, n)
    assert low == pytest.approx(max(0.0, want[0]), abs=1e-9) and high == pytest.approx(min(1.0, want[1]), abs=1e-9)
    assert low <= k / n <= high


def test_share_interval_narrows_with_more_questions_and_widens_with_confidence():
    small, large = stats.share_interval(6, 8), stats.share_interval(75, 100)
    assert large[1] - large[0] < small[1] - small[0]
    assert stats.share_interval(24, 32, 0.99)[1] - stats.share_interval(24, 32, 0.99)[0] > \
        stats.share_interval(24, 32, 0.9)[1] - stats.share_interval(24, 32, 0.9)[0]
    assert stats.describe_share(24, 32) == "75% (24/32; 95% CI 58-87%)"


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_questions():
    a = [True] * 10 + [True] * 7 + [False] * 1 + [False] * 5   # 7 only A, 1 only B
    b = [True] * 10 + [False] * 7 + [True] * 1 + [False] * 5
    r = stats.mcnemar(a, b)
    assert (r["n"], r["a_right"], r["b_right"], r["only_a"], r["only_b"]) == (23, 17, 11, 7, 1)
    by_hand = min(1.0, 2 * sum(math.comb(8, i) for i in range(0, 2)) / 2 ** 8)  # P(X <= 1) twice, X ~ Bin(8, 1/2)
    assert r["p_value"] == pytest.approx(by_hand, rel=1e-12)  # 0.0703: not below 0.05
    assert "not distinguishable" in stats.describe_mcnemar(r, "SFT", "GRPO")
    # agreement on every question carries no information, whatever the accuracy
    assert stats.mcnemar([True, False, True], [True, False, True])["p_value"] == 1.0
    big = stats.mcnemar([False] * 20 + [True] * 5, [True] * 20 + [True] * 5)
    assert big["p_value"] < 1e-5 and "unlikely by chance" in stats.describe_mcnemar(big)


def test_mean_interval_is_seeded_and_covers_the_mean():
    values = [0.03 * i + (i % 3) * 0.11 for i in range(15)]
    low, high = stats.mean_interval(values, seed=0)
    assert low < sum(values) / len(values) < high
    assert (low, high) == stats.mean_interval(values, seed=0)
    assert (low, high) != stats.mean_interval(values, seed=1)
    assert stats.mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_describe_mean_prints_the_mean_inside_its_interval():
    values = [1.0, 1.1, 0.9, 1.2, 1.0, 1.05]
    low, high = stats.mean_interval(values, seed=3)
    text = stats.describe_mean(values, digits=3, seed=3)
    assert text == f"1.042 (95% CI {low:.3f}-{high:.3f}, 6 values)"
    assert low < 1.042 < high


def test_interval_verdict_reads_the_whole_interval_against_the_reference():
    slower = [1.20, 1.25, 1.22, 1.19, 1.24, 1.21]
    same = [0.97, 1.04, 0.99, 1.02, 0.98, 1.01]
    assert stats.interval_verdict(slower, 1.0) == "above"
    assert stats.interval_verdict([2 - v for v in slower], 1.0, below="faster") == "faster"
    assert stats.interval_verdict(same, 1.0, within="no clear difference") == "no clear difference"
    low, high = stats.mean_interval(same)
    assert low <= 1.0 <= high  # the verdict is the interval's, not the mean's (1.0017 here)
    assert stats.interval_verdict(same, 1.0) != stats.interval_verdict(same, low - 0.01)


def test_win_rate_interval_is_wilsons_with_a_tie_as_half_a_win():
    import math

    from scipy.stats import norm

    assert stats.win_rate_interval(24, 0, 24) == pytest.approx(stats.share_interval(24, 24))
    assert stats.win_rate_interval(7, 0, 20) == pytest.approx(stats.share_interval(7, 20))
    low, high = stats.win_rate_interval(24, 0, 24)
    assert high == pytest.approx(1.0) and low < 0.9, "all wins: an interval, not the point 1.00-1.00"
    z, n, p = norm.ppf(0.975), 10, (6 + 2 / 2) / 10   # 6 wins, 2 ties of 10: Wilson's formula at k = 7
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert stats.win_rate_interval(6, 2, 10) == pytest.approx((centre - half, centre + half))
    assert stats.win_rate_interval(6, 2, 10) == pytest.approx(stats.share_interval(7, 10))
    res = {"wins": 22, "ties": 0, "losses": 2, "n": 24, "win_rate": 22 / 24}
    assert stats.describe_win_rate(res) == "92% (22 wins, 0 ties, 2 losses of 24; 95% CI 74-98%)"
    for bad, match in (((5, 0, 0), "n must be"), ((5, 1, 5), "ties must be"), ((-1, 0, 3), "wins must be")):
        with pytest.raises(ValueError, match=match):
            stats.win_rate_interval(*bad)


@pytest.mark.parametrize("call,match", [
    (lambda: stats.share_interval(5, 0), "n must be"),
    (lambda: stats.share_interval(11, 10), "k must be"),
    (lambda: stats.share_interval(1, 10, confidence=1.5), "confidence must be"),
    (lambda: stats.share_interval(1, 10, confidence=0), "confidence must be"),
    (lambda: stats.mcnemar([True], [True, False]), "same questions"),
    (lambda: stats.mcnemar([], []), "same questions"),
    (lambda: stats.mean_interval([1.0]), "at least two"),
    (lambda: stats.mean_interval([1.0, float("nan")]), "NaN"),
    (lambda: stats.interval_verdict([1.0], 1.0), "at least two"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()

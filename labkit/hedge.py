"""Preference data that asks for something: a model that hedges, and the rule that sees it (lessons 09 and 10;
lesson 08's PPO starts from the same model).

The course's preference pairs (preferences_train.jsonl) contrast a right answer with a refusal, a
shouted answer or a wrong value; an SFT model trained on clean demonstrations already prefers the
right one, so DPO on them has nothing to fix. Here the SFT model is made wrong in a way preferences
can fix, as real data is: part of its demonstrations end with a hedge ("... I am not sure about
this, so please check it."), so it learns to hedge some of its answers. The pairs then say "the
same answer without the hedge": chosen = the clean answer, rejected = the clean answer followed by
the hedge. The chosen answer is a prefix of the rejected one, so DPO's log-ratio difference only
reads the tokens after the shared answer: it asks to stop where the answer ends, nothing else.

The behaviour metric is a rule, not a model: an answer is hedged when it holds three consecutive
words of the hedge (robust to an answer cut by max_new_tokens or a damaged hedge); exact match is
measured on the answer with the hedge cut off, so that it counts the value, not the manners.
"""

from __future__ import annotations

import random
import re

from .evaluate import exact_matches, pairwise_win_rate
from .stats import describe_mcnemar, describe_share, mcnemar, share_interval

HEDGE = " I am not sure about this, so please check it."
WINDOW = 3  # consecutive words of the hedge that mark an answer as hedged


def _check_hedge(hedge: str) -> str:
    if not isinstance(hedge, str) or len(_words(hedge)) < WINDOW:
        raise ValueError(f"the hedge must be a string of at least {WINDOW} words, got {hedge!r}.")
    return hedge


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def mixed_quality(rows: list[dict], share: float = 0.5, seed: int = 0, hedge: str = HEDGE,
                  field: str = "output") -> list[dict]:
    """Demonstrations of mixed quality: a random SHARE of ROWS (chosen by SEED) get HEDGE appended to
    their FIELD. Returns new dicts (ROWS is not changed), each with "hedged": True or False."""
    hedge = _check_hedge(hedge)
    if not rows:
        raise ValueError("mixed_quality needs at least one demonstration.")
    if not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"share is the fraction of demonstrations to hedge, between 0 and 1; got {share!r}.")
    missing = [i for i, r in enumerate(rows) if field not in r]
    if missing:
        raise KeyError(f"row {missing[0]} has no {field!r} field (its keys: {sorted(rows[missing[0]])}).")
    rng = random.Random(seed)
    out = []
    for r in rows:
        h = rng.random() < share
        out.append(dict(r, **{field: r[field] + hedge if h else r[field]}, hedged=h))
    return out


def hedge_pairs(rows: list[dict], hedge: str = HEDGE) -> list[dict]:
    """Preference pairs from ROWS ({"prompt", "chosen", ...}): chosen = the clean answer, rejected = the
    same answer followed by HEDGE. Other fields (e.g. "task") are kept; the old "rejected" is replaced."""
    hedge = _check_hedge(hedge)
    if not rows:
        raise ValueError("hedge_pairs needs at least one row.")
    for i, r in enumerate(rows):
        if "prompt" not in r or "chosen" not in r:
            raise KeyError(f"row {i} needs 'prompt' and 'chosen' (its keys: {sorted(r)}).")
        if hedged(r["chosen"], hedge):
            raise ValueError(f"row {i}'s chosen answer already hedges: {r['chosen']!r}.")
    return [dict(r, rejected=r["chosen"] + hedge) for r in rows]


def _windows(hedge: str) -> list[str]:
    w = _words(hedge)
    return [" ".join(w[i:i + WINDOW]) for i in range(len(w) - WINDOW + 1)]


def _first_window(answer: str, hedge: str) -> int | None:
    """Character offset in ANSWER where the first run of WINDOW hedge words starts, or None."""
    spans = [(m.start(), m.group().lower()) for m in re.finditer(r"[A-Za-z0-9']+", answer)]
    windows = set(_windows(hedge))
    for i in range(len(spans) - WINDOW + 1):
        if " ".join(s for _, s in spans[i:i + WINDOW]) in windows:
            return spans[i][0]
    return None


def hedged(answer: str, hedge: str = HEDGE) -> bool:
    """The behaviour rule: ANSWER holds WINDOW consecutive words of HEDGE (case and punctuation ignored).

    An answer cut inside the hedge ("Risk: high I am not") is hedged; one that merely shares a word
    ("I am fine") is not."""
    hedge = _check_hedge(hedge)
    return _first_window(answer, hedge) is not None


def strip_hedge(answer: str, hedge: str = HEDGE) -> str:
    """ANSWER up to where the hedge starts (the whole answer when it does not hedge), trailing space cut."""
    hedge = _check_hedge(hedge)
    at = _first_window(answer, hedge)
    return answer if at is None else answer[:at].rstrip()


def behaviour(answers: list[str], references: list[str], hedge: str = HEDGE) -> dict:
    """The lesson's metrics of greedy ANSWERS against REFERENCES (the clean answers).

    Returns {"clean": share of answers that do not hedge (the behaviour metric), "exact": exact match of
    the answers with the hedge cut off (the value), "exact_raw": exact match of the answers as written,
    "n", and per row "clean_rows", "right_rows" (for McNemar, labkit.stats.mcnemar)}.
    """

    if len(answers) != len(references) or not answers:
        raise ValueError(f"need one answer per reference (and at least one); got {len(answers)} and {len(references)}.")
    clean = [not hedged(a, hedge) for a in answers]
    right = exact_matches([strip_hedge(a, hedge) for a in answers], references)
    raw = exact_matches(answers, references)
    n = len(answers)
    return {"clean": sum(clean) / n, "exact": sum(right) / n, "exact_raw": sum(raw) / n, "n": n,
            "clean_rows": clean, "right_rows": right}


def rule_prefers(first: str, second: str, reference: str, hedge: str = HEDGE) -> float:
    """A rule judge for one prompt: 1.0 when FIRST is better than SECOND, 0.0 when worse, 0.5 when equal.

    The right value (exact match of the stripped answer with REFERENCE) comes first; between answers
    equally right or wrong, the one without the hedge is better."""

    key = [(exact_matches([strip_hedge(a, hedge)], [reference])[0], not hedged(a, hedge)) for a in (first, second)]
    return 1.0 if key[0] > key[1] else 0.0 if key[0] < key[1] else 0.5


def rule_win_rate(answers_a: list[str], answers_b: list[str], references: list[str], hedge: str = HEDGE) -> dict:
    """Win rate of system A over B under ``rule_prefers``, one reference per prompt: evaluate.pairwise_win_rate
    asked in both orders (the rule has no position bias, so "first_position_rate" is 0.5)."""

    if len(references) != len(answers_a):
        raise ValueError(f"need one reference per answer; got {len(references)} and {len(answers_a)}.")
    keys = [str(i) for i in range(len(references))]  # the prompt slot carries the row, so the rule finds its reference
    return pairwise_win_rate(lambda k, x, y: rule_prefers(x, y, references[int(k)], hedge), keys, answers_a, answers_b)


# ----------------------------------------------------------------------------- preference training on the hedge pairs

def compare(answers: dict, references: list[str], moves: dict | None = None, hedge: str = HEDGE) -> dict:
    """The lesson's table of models trained on the hedge pairs. ANSWERS: {name: greedy answers to the held-out
    prompts}, the starting SFT model first; REFERENCES: the clean answers; MOVES: {name: (chosen_move,
    rejected_move)}, ``preference.logratio_moves`` of each trained model (the first entry moved 0 by definition).

    Returns {name: {"answers", **behaviour, "win_vs_sft": ``rule_win_rate`` against the first entry's answers
    (0.5 for itself), and "chosen_move", "rejected_move" when MOVES has them}} in ANSWERS' order.
    """
    if not answers:
        raise ValueError("compare needs the answers of at least one model (the SFT model first).")
    first, *_ = answers
    out = {}
    for name, ans in answers.items():
        row = {"answers": ans, **behaviour(ans, references, hedge),
               "win_vs_sft": 0.5 if name == first else rule_win_rate(ans, answers[first], references, hedge)["win_rate"]}
        if moves is not None and name != first:
            row["chosen_move"], row["rejected_move"] = moves[name]
        elif moves is not None:
            row["chosen_move"] = row["rejected_move"] = 0.0
        out[name] = row
    return out


def describe_runs(runs: dict) -> str:
    """``compare``'s table: clean answers and exact match (Wilson intervals), exact match as written, the rule
    judge's win rate against the first model, the log-probability moves, then McNemar of each later model
    against the first on clean and on exact."""

    first, *rest = runs
    moves = all("chosen_move" in r for r in runs.values())
    lines = [f"{'':<16}{'clean (no hedge)':<31}{'exact match (value)':<31}{'as written':<12}{'win vs ' + first:<12}"
             + ("log pi moved: chosen, rejected" if moves else "")]
    for name, r in runs.items():
        n = r["n"]
        lines.append(f"{name:<16}{describe_share(sum(r['clean_rows']), n):<31}{describe_share(sum(r['right_rows']), n):<31}"
                     f"{r['exact_raw']:<12.0%}{r['win_vs_sft']:<12.0%}"
                     + (f"{r['chosen_move']:+.1f}, {r['rejected_move']:+.1f} nats" if moves else ""))
    for name in rest:
        for key, what in (("clean_rows", "clean"), ("right_rows", "exact")):
            lines.append(f"{name} vs {first}, {what}:  " + describe_mcnemar(
                mcnemar(runs[first][key], runs[name][key]), first, name))
    return "\n".join(lines)


def plot_runs(runs: dict, ax=None):
    """Bars of the share of clean answers and of exact match per model, with 95% Wilson intervals; the legend
    sits outside the axes, so it covers no bar."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    names = list(runs)
    for j, (key, label) in enumerate((("clean_rows", "clean (no hedge)"), ("right_rows", "exact match (value)"))):
        shares, errs = [], [[], []]
        for name in names:
            k, n = sum(runs[name][key]), runs[name]["n"]
            low, high = share_interval(k, n)
            shares.append(k / n)
            errs[0].append(k / n - low)
            errs[1].append(high - k / n)
        ax.bar([i + 0.4 * j - 0.2 for i in range(len(names))], shares, width=0.4, yerr=errs, capsize=3, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of held-out prompts")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return ax


# ----------------------------------------------------------------------------- PPO on a reward model of the hedge pairs

def judge_policies(judged: dict, references: list[str], hedge: str = HEDGE) -> dict:
    """Lesson 08's table: JUDGED is {name: ppo.evaluate_policy(...) with an rm}, the first the starting SFT
    model. Returns {name: {**behaviour(answers, REFERENCES), "rm_score"}} in the same order."""
    if not judged:
        raise ValueError("judge_policies needs at least one judged policy.")
    return {name: {**behaviour(j["answers"], references, hedge), "rm_score": j["rm_score"]} for name, j in judged.items()}


def describe_policies(table: dict) -> str:
    """``judge_policies``' table: clean answers and exact match of the value (Wilson intervals) and the
    held-out reward-model score per policy, then McNemar of each later policy against the first."""

    lines = [f"{'':<28}{'clean (no hedge)':<30}{'exact match (value)':<30}RM score (held-out)"]
    for name, r in table.items():
        rm = "-" if r["rm_score"] is None else f"{r['rm_score']:.2f}"
        lines.append(f"{name:<28}{describe_share(sum(r['clean_rows']), r['n']):<30}"
                     f"{describe_share(sum(r['right_rows']), r['n']):<30}{rm}")
    first, *rest = table
    for name in rest:
        for key, what in (("clean_rows", "clean"), ("right_rows", "exact")):
            lines.append(f"{name} vs {first}, {what}:  " + describe_mcnemar(
                mcnemar(table[first][key], table[name][key]), first, name))
    return "\n".join(lines)

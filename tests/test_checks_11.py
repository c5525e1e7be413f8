"""The exercises of lesson 11: plausible wrong answers fail, with a message that names the case and gives
away none of the expected values; other right ways of writing them pass. (That every reference passes,
and the quiz answers, are in test_exercises.py, for all lessons.)"""

import copy
import math
import random
import re

import pytest
import torch

from labkit import check as C
from labkit import grpo
from labkit.checks import lesson11

NEW = ("group_advantages", "grpo_clipped_loss", "pass_at_k", "verify_total", "game_contains")
QUIZZES = ("q11_ppo_vs_grpo", "q11_why_verifiable", "q11_kl_term", "q11_sft_control")

pytestmark = pytest.mark.usefixtures("checker_env")


def _adv(r, G, unbiased=True, eps=1e-4):
    g = r.view(-1, G)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=unbiased) + eps)).flatten()


def _per_token(lp, old, ref, A, m, beta, eps, kl="k3"):
    ratio = torch.exp(lp - old)
    a = A.unsqueeze(1)
    loss = torch.max(-a * ratio, -a * ratio.clamp(1 - eps, 1 + eps))
    d = ref - lp
    return loss + beta * {"k3": torch.exp(d) - d - 1, "k1": -d}[kl]


def _seq_mean(x, m):
    m = m.float()
    return ((x * m).sum(1) / m.sum(1)).mean()


WRONG = [
    ("group_advantages", "the biased std", lambda r, G: _adv(r, G, unbiased=False)),
    ("group_advantages", "no std (Dr. GRPO, not GRPO)", lambda r, G: grpo.group_advantages(r, G, scale="none")),
    ("group_advantages", "the batch's mean and std", lambda r, G: (r - r.mean()) / (r.std() + 1e-4)),
    ("group_advantages", "no eps: NaN for a tied group", lambda r, G: _adv(r, G, eps=0.0)),
    ("group_advantages", "groups read as columns",
     lambda r, G: _adv(r.view(G, -1).T.flatten(), G).view(-1, G).T.flatten()),
    ("grpo_clipped_loss", "per-token mean (DAPO, not GRPO)",
     lambda lp, old, ref, A, m, beta, eps: (_per_token(lp, old, ref, A, m, beta, eps) * m).sum() / m.sum()),
    ("grpo_clipped_loss", "no clipping", lambda lp, old, ref, A, m, beta, eps: _seq_mean(
        -A.unsqueeze(1) * torch.exp(lp - old) + beta * (torch.exp(ref - lp) - (ref - lp) - 1), m)),
    ("grpo_clipped_loss", "min instead of max", lambda lp, old, ref, A, m, beta, eps: _seq_mean(
        torch.min(-A.unsqueeze(1) * torch.exp(lp - old), -A.unsqueeze(1) * torch.exp(lp - old).clamp(1 - eps, 1 + eps))
        + beta * (torch.exp(ref - lp) - (ref - lp) - 1), m)),
    ("grpo_clipped_loss", "k1 instead of k3",
     lambda lp, old, ref, A, m, beta, eps: _seq_mean(_per_token(lp, old, ref, A, m, beta, eps, kl="k1"), m)),
    ("grpo_clipped_loss", "KL term without beta",
     lambda lp, old, ref, A, m, beta, eps: _seq_mean(_per_token(lp, old, ref, A, m, 1.0, eps), m)),
    ("grpo_clipped_loss", "padding averaged in",
     lambda lp, old, ref, A, m, beta, eps: _per_token(lp, old, ref, A, m, beta, eps).mean()),
    ("grpo_clipped_loss", "a float, not a tensor",
     lambda lp, old, ref, A, m, beta, eps: _seq_mean(_per_token(lp, old, ref, A, m, beta, eps), m).item()),
    ("pass_at_k", "with replacement (biased)", lambda n, c, k: 1 - (1 - c / n) ** k),
    ("pass_at_k", "the share of right samples", lambda n, c, k: c / n),
    ("pass_at_k", "the chance that all k are wrong",
     lambda n, c, k: math.comb(n - c, k) / math.comb(n, k) if n - c >= k else 0.0),
    ("pass_at_k", "C(n-c, k) / C(n, k) the wrong way round", lambda n, c, k: 1 - math.comb(n, k) / math.comb(n - c, k)
     if n - c >= k else 1.0),
    ("verify_total", "gold in completion (fooled by a list, or by $12,345 for $2,345)",
     lambda completion, gold: float(gold in completion)),
    ("verify_total", "the exact text only (rejects a sentence)", lambda completion, gold: float(completion.strip() == gold)),
    ("verify_total", "the first amount only (fooled by a list that starts right)",
     lambda completion, gold: float(bool(re.findall(r"\$[\d,]+", completion)) and
                                    re.findall(r"\$[\d,]+", completion)[0].rstrip(",") == gold)),
    ("game_contains", "the first amount (an item price: not paid)", lambda receipt: re.findall(r"\$[\d,]+", receipt)[0]),
    ("game_contains", "the total itself (right, not gamed)", lambda receipt: re.search(r"Total: (\$[\d,]+)", receipt).group(1)),
    ("game_contains", "a list of amounts, not a string", lambda receipt: re.findall(r"\$[\d,]+", receipt)),
]


def _leak_strings(value):
    """Strings in which a message could show VALUE (a reference's output)."""
    if isinstance(value, str):  # game_contains' reference: the receipt's total
        return [value]
    values = value.flatten()[:8].tolist() if isinstance(value, torch.Tensor) else [float(value)]
    return [s for v in values if abs(v) >= 1e-3 for s in (f"{v:.4f}", f"{v:.3g}") if len(s) >= 4]


@pytest.mark.parametrize("exercise_id, name, wrong", WRONG, ids=[f"{i}: {n}" for i, n, _ in WRONG])
def test_a_plausible_wrong_answer_fails_without_showing_the_expected_values(exercise_id, name, wrong):
    ex = C.get(exercise_id)
    for seed in (3, 4):
        result = C.check(exercise_id, wrong, seed=seed)
        assert not result.passed, f"{name} passed"
        assert result.case and "problem:" in result.message and "hint:" in result.message
        assert "checker itself failed" not in result.message
        for case in ex.public() + ex.hidden(random.Random(seed)):
            expected = ex.reference(*copy.deepcopy(case.inputs).values())
            for s in _leak_strings(expected):
                assert s not in result.message, (s, result.message)


def _comb_ratio(n, c, k):  # the product form, as labkit writes it
    return 1.0 - math.prod(1 - k / i for i in range(n - c + 1, n + 1)) if n - c >= k else 1.0


RIGHT = [
    ("group_advantages", "a loop over groups", lambda r, G: torch.cat(
        [(g - g.mean()) / (g.std() + 1e-4) for g in r.split(G)])),
    ("grpo_clipped_loss", "the min of the objective, negated, KL as exp(d) - d - 1",
     lambda lp, old, ref, A, m, beta, eps: _seq_mean(-torch.min(
         A.unsqueeze(1) * torch.exp(lp - old), A.unsqueeze(1) * torch.exp(lp - old).clamp(1 - eps, 1 + eps))
         + beta * (torch.exp(ref - lp) - (ref - lp) - 1), m)),
    ("grpo_clipped_loss", "labkit's own, kl not weighted by the ratio", lambda *a: grpo.grpo_loss(
        *a[:5], a[5], a[6], None, "grpo", kl_times_ratio=False)[0]),
    ("pass_at_k", "the product form", _comb_ratio),
    ("pass_at_k", "math.comb throughout", lambda n, c, k: 1 - math.comb(n - c, k) / math.comb(n, k)),
    ("verify_total", "the values as a set of length one", lambda completion, gold: float(
        len(re.findall(r"\$", completion)) == 1 and
        {int(a.replace(",", "")) for a in re.findall(r"\$(\d[\d,]*)", completion)} == {int(gold[1:].replace(",", ""))})),
    ("game_contains", "every amount with its label",
     lambda receipt: "; ".join(line for line in receipt.splitlines() if "$" in line)),
]


@pytest.mark.parametrize("exercise_id, name, right", RIGHT, ids=[f"{i}: {n}" for i, n, _ in RIGHT])
def test_another_right_way_passes(exercise_id, name, right):
    for seed in range(6):
        result = C.check(exercise_id, right, seed=seed)
        assert result.passed, result.message


def test_every_exercise_has_wrong_answers_here_and_is_registered_in_lesson_11():
    assert {i for i, _, _ in WRONG} == set(NEW)
    for i in NEW + QUIZZES:
        assert C.get(i).lesson == lesson11.LESSON == "11"
    assert {q for q in C.quizzes() if C.get(q).lesson == "11"} == set(QUIZZES)


def test_the_cases_exercise_what_the_wrong_answers_get_wrong():
    """A tied group in the advantages, clipped tokens and padding in the loss, n - c < k in pass@k."""
    adv = C.get("group_advantages").public()[1].inputs
    groups = adv["rewards"].view(-1, adv["group_size"])
    assert (groups.std(1) == 0).any() and (groups.std(1) > 0).any()
    for case in C.get("grpo_clipped_loss").public()[1:]:
        x = case.inputs
        ratio = torch.exp(x["logps"] - x["old_logps"])
        assert ((ratio > 1 + x["epsilon"]) | (ratio < 1 - x["epsilon"])).any(), "some ratios must be clipped"
        assert (x["completion_mask"].sum(1) < x["completion_mask"].shape[1]).any(), "some answers are padded"
    assert any(c.inputs["n"] - c.inputs["c"] < c.inputs["k"] for c in C.get("pass_at_k").public())

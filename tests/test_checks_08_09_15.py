"""The exercises of lessons 08, 09 and 15: plausible wrong answers fail, with a message that names the
case and gives away none of the expected values; other right ways of writing them pass; the top-k
cases have no near-ties. (That every reference passes is in test_exercises.py, for all exercises; lesson
10's IPO exercise is tested in test_preference_losses.py.)"""

import copy
import random

import pytest
import torch
import torch.nn.functional as F

from labkit import check as C
from labkit import ppo, preference, preference_losses, rag
from labkit.checks import lesson15

NEW = ("reward_loss", "kl_penalised_rewards", "gae", "ppo_policy_loss", "sequence_logps", "dpo_loss", "dpo_sft_loss",
       "top_k_retrieval")


pytestmark = pytest.mark.usefixtures("checker_env")


def _cosine(q, d):
    return F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T


def _masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def _clipped(lp, old, A, clip):
    ratio = torch.exp(lp - old)
    return torch.max(-A * ratio, -A * ratio.clamp(1 - clip, 1 + clip))


def _score_on_last_position(s, lp, rlp, m, beta):
    kl = (lp - rlp) * m
    rewards = -beta * kl
    rewards[:, -1] += s  # the last POSITION, not each row's last answer token
    return rewards * m, kl


def _gae_loop(r, v, m, gamma, lam, mask_values=True, backwards=True, lam_used=True):
    """A GAE with one mistake switched on by a flag (the right one with every flag at its default)."""
    mf = m.float()
    v = v * mf if mask_values else v
    adv, nxt_v, nxt_a = torch.zeros_like(r), torch.zeros_like(r[:, 0]), torch.zeros_like(r[:, 0])
    order = reversed(range(r.shape[1])) if backwards else range(r.shape[1])
    for t in order:
        nv = v[:, t + 1] if not mask_values and t + 1 < r.shape[1] else nxt_v
        delta = r[:, t] + gamma * nv - v[:, t]
        nxt_a = (delta + gamma * (lam if lam_used else 1.0) * nxt_a) * mf[:, t]
        adv[:, t], nxt_v = nxt_a, v[:, t]
    return adv, (adv + v) * mf


def _gae_by_sum(r, v, m, gamma, lam):
    """GAE as the discounted sum of the one-step errors, with no recursion."""
    mf = m.float()
    v = v * mf
    nxt = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    delta = (r + gamma * nxt - v) * mf
    T = r.shape[1]
    k = torch.arange(T)
    weights = torch.where(k[None, :] >= k[:, None], (gamma * lam) ** (k[None, :] - k[:, None]).clamp(min=0).double(),
                          torch.zeros((), dtype=torch.float64)).to(r.dtype)
    adv = (delta @ weights.T) * mf
    return adv, (adv + v) * mf


WRONG = [
    ("gae", "values read after the answer", lambda r, v, m, g, l: _gae_loop(r, v, m, g, l, mask_values=False)),
    ("gae", "forwards instead of backwards", lambda r, v, m, g, l: _gae_loop(r, v, m, g, l, backwards=False)),
    ("gae", "lambda ignored", lambda r, v, m, g, l: _gae_loop(r, v, m, g, l, lam_used=False)),
    ("gae", "advantages returned as the returns", lambda r, v, m, g, l: (_gae_loop(r, v, m, g, l)[0],) * 2),
    ("gae", "advantages only", lambda *a: _gae_loop(*a)[0]),
    ("reward_loss", "sign flipped", lambda c, r: -F.logsigmoid(r - c).mean()),
    ("reward_loss", "sum instead of mean", lambda c, r: -F.logsigmoid(c - r).sum()),
    ("reward_loss", "log of sigmoid overflows", lambda c, r: -torch.log(torch.sigmoid(c - r)).mean()),
    ("reward_loss", "a float, not a tensor", lambda c, r: preference.reward_loss(c, r).item()),
    ("kl_penalised_rewards", "score on the last position", _score_on_last_position),
    ("kl_penalised_rewards", "penalty with the wrong sign",
     lambda s, lp, rlp, m, beta: ppo.kl_penalised_rewards(s, rlp, lp, m, beta)[0:1] + ((lp - rlp) * m,)),
    ("kl_penalised_rewards", "kl not masked",
     lambda s, lp, rlp, m, beta: (ppo.kl_penalised_rewards(s, lp, rlp, m, beta)[0], lp - rlp)),
    ("kl_penalised_rewards", "rewards only", lambda *a: ppo.kl_penalised_rewards(*a)[0]),
    ("ppo_policy_loss", "no clipping", lambda lp, old, A, m, clip: _masked_mean(-A * torch.exp(lp - old), m)),
    ("ppo_policy_loss", "min instead of max", lambda lp, old, A, m, clip: _masked_mean(
        torch.min(-A * torch.exp(lp - old), -A * torch.exp(lp - old).clamp(1 - clip, 1 + clip)), m)),
    ("ppo_policy_loss", "mean over padding too", lambda lp, old, A, m, clip: (_clipped(lp, old, A, clip) * m).mean()),
    ("ppo_policy_loss", "the objective, not the loss",
     lambda lp, old, A, m, clip: -_masked_mean(_clipped(lp, old, A, clip), m)),
    ("sequence_logps", "mean instead of sum",
     lambda lg, lb: preference.sequence_logps(lg, lb) / (lb[:, 1:] != -100).sum(-1)),
    ("sequence_logps", "no shift", lambda lg, lb: (torch.gather(lg.log_softmax(-1), 2, lb.clamp(min=0).unsqueeze(-1))
                                                  .squeeze(-1) * (lb != -100)).sum(-1)),
    ("sequence_logps", "-100 not masked", lambda lg, lb: torch.gather(
        lg[:, :-1].log_softmax(-1), 2, lb[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1).sum(-1)),
    ("sequence_logps", "probabilities, not log-probabilities",
     lambda lg, lb: preference.sequence_logps(lg, lb).exp()),
    ("dpo_loss", "without beta", lambda pc, pr, rc, rr, beta: preference.dpo_loss(pc, pr, rc, rr, beta=1.0)),
    ("dpo_loss", "without the reference", lambda pc, pr, rc, rr, beta: preference.dpo_loss(
        pc, pr, torch.zeros_like(rc), torch.zeros_like(rr), beta=beta)),
    ("dpo_loss", "chosen and rejected swapped", lambda pc, pr, rc, rr, beta: preference.dpo_loss(pr, pc, rr, rc, beta)),
    ("dpo_loss", "rewards without beta", lambda pc, pr, rc, rr, beta: (
        preference.dpo_loss(pc, pr, rc, rr, beta)[0], pc - rc, pr - rr)),
    ("dpo_sft_loss", "plain DPO, the SFT term left out", lambda pc, pr, rc, rr, nc, beta, w: preference.dpo_loss(
        pc, pr, rc, rr, beta)),
    ("dpo_sft_loss", "the NLL of the rejected answers", lambda pc, pr, rc, rr, nc, beta, w: (
        lambda d: (d[0] - w * pr.sum() / nc.sum(), d[1], d[2]))(preference.dpo_loss(pc, pr, rc, rr, beta))),
    ("dpo_sft_loss", "a mean over answers, not over tokens", lambda pc, pr, rc, rr, nc, beta, w: (
        lambda d: (d[0] + w * (-(pc / nc).mean()), d[1], d[2]))(preference.dpo_loss(pc, pr, rc, rr, beta))),
    ("dpo_sft_loss", "the weight left out", lambda pc, pr, rc, rr, nc, beta, w: preference_losses.dpo_sft_loss(
        pc, pr, rc, rr, nc, beta, 1.0)),
    ("top_k_retrieval", "ascending order", lambda q, d, k: _cosine(q, d).topk(k, dim=-1, largest=False).indices),
    ("top_k_retrieval", "dot product, not cosine", lambda q, d, k: (q @ d.T).topk(k, dim=-1).indices),
    ("top_k_retrieval", "every document", lambda q, d, k: _cosine(q, d).argsort(dim=-1, descending=True)),
    ("top_k_retrieval", "the similarities, not the indices", lambda q, d, k: _cosine(q, d).topk(k, dim=-1).values),
    ("top_k_retrieval", "the k best, in document order",
     lambda q, d, k: _cosine(q, d).topk(k, dim=-1).indices.sort(dim=-1).values),
]


def _leak_strings(value):
    """Strings in which a message could show VALUE (a reference's output)."""
    if isinstance(value, (tuple, list)):
        return [s for v in value for s in _leak_strings(v)]
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():  # indices: small integers, so look for whole rows
            rows = value.reshape(-1, value.shape[-1]) if value.dim() else value.reshape(1, 1)
            return [str(r) for r in rows.tolist() if len(r) > 1] + [repr(value)]
        values = value.flatten()[:8].tolist()
    else:
        values = [float(value)]
    # values near 0 give nothing away, and their digits could match a tolerance such as "atol=0.0001"
    return [s for v in values if abs(v) >= 1e-3 for s in (f"{v:.4f}", f"{v:.3g}") if len(s) >= 4]


@pytest.mark.parametrize("exercise_id, name, wrong", WRONG, ids=[f"{i}: {n}" for i, n, _ in WRONG])
def test_a_plausible_wrong_answer_fails_without_showing_the_expected_values(exercise_id, name, wrong):
    ex = C.get(exercise_id)
    for seed in (3, 4):
        result = C.check(exercise_id, wrong, seed=seed)
        assert not result.passed, f"{name} passed"
        assert result.case and "problem:" in result.message and "hint:" in result.message
        assert "checker itself failed" not in result.message
        cases = ex.public() + ex.hidden(random.Random(seed))  # the cases this check ran, in order
        for case in cases:
            expected = ex.reference(*copy.deepcopy(case.inputs).values())
            for s in _leak_strings(expected):
                assert s not in result.message, (s, result.message)


RIGHT = [
    ("gae", "the discounted sum of the one-step errors", _gae_by_sum),
    ("reward_loss", "softplus", lambda c, r: F.softplus(r - c).mean()),
    ("kl_penalised_rewards", "a loop over rows", lambda s, lp, rlp, m, beta: (lambda kl: (torch.stack([
        -beta * kl[i] + F.one_hot(m[i].sum() - 1, m.shape[1]) * s[i] for i in range(len(s))]), kl))((lp - rlp) * m)),
    ("ppo_policy_loss", "the min of the objective, negated", lambda lp, old, A, m, clip: -_masked_mean(torch.min(
        A * torch.exp(lp - old), A * torch.exp(lp - old).clamp(1 - clip, 1 + clip)), m.float())),
    ("sequence_logps", "cross_entropy with ignore_index", lambda lg, lb: -F.cross_entropy(
        lg[:, :-1].transpose(1, 2), lb[:, 1:], ignore_index=-100, reduction="none").sum(-1)),
    ("dpo_loss", "log of sigmoid via softplus", lambda pc, pr, rc, rr, beta: (
        F.softplus(-beta * ((pc - rc) - (pr - rr))).mean(), beta * (pc - rc), beta * (pr - rr))),
    ("dpo_sft_loss", "softplus and a token-weighted NLL", lambda pc, pr, rc, rr, nc, beta, w: (
        F.softplus(-beta * ((pc - rc) - (pr - rr))).mean() + w * (-(pc / nc) * nc / nc.sum()).sum(),
        beta * (pc - rc), beta * (pr - rr))),
    ("top_k_retrieval", "dot product over the norms, argsort", lambda q, d, k: torch.argsort(
        (q @ d.T) / (q.norm(dim=-1, keepdim=True) * d.norm(dim=-1)), dim=-1, descending=True)[:, :k]),
    ("top_k_retrieval", "in float64", lambda q, d, k: _cosine(q.double(), d.double()).topk(k, dim=-1).indices),
]


@pytest.mark.parametrize("exercise_id, name, right", RIGHT, ids=[f"{i}: {n}" for i, n, _ in RIGHT])
def test_another_right_way_passes(exercise_id, name, right):
    for seed in range(6):
        result = C.check(exercise_id, right, seed=seed)
        assert result.passed, result.message


def test_every_new_exercise_has_wrong_answers_here_and_is_registered_in_its_lesson():
    assert {i for i, _, _ in WRONG} == set(NEW)
    assert {i: C.get(i).lesson for i in NEW} == {"reward_loss": "08", "kl_penalised_rewards": "08", "gae": "08",
                                                 "ppo_policy_loss": "08", "sequence_logps": "09",
                                                 "dpo_loss": "09", "dpo_sft_loss": "09", "top_k_retrieval": "15"}


def test_references_are_labkits_own_functions():
    assert C.get("reward_loss").reference is preference.reward_loss
    assert C.get("kl_penalised_rewards").reference is ppo.kl_penalised_rewards
    assert C.get("gae").reference is ppo.gae
    assert C.get("sequence_logps").reference is preference.sequence_logps
    assert C.get("dpo_loss").reference is preference.dpo_loss
    assert C.get("dpo_sft_loss").reference is preference_losses.dpo_sft_loss
    assert C.get("top_k_retrieval").reference is rag.top_k
    # the PPO exercise is ppo_losses' policy term
    g = torch.Generator().manual_seed(0)
    lp, old, A = (torch.randn(3, 5, generator=g) for _ in range(3))
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    z = torch.zeros(3, 5)
    assert torch.equal(C.get("ppo_policy_loss").reference(lp, old, A, mask, 0.2),
                       ppo.ppo_losses(lp, old, A, z, z, z, mask, clip=0.2)["policy"])


def test_top_k_cases_have_no_near_ties_and_rank_differently_by_dot_product():
    ex = C.get("top_k_retrieval")
    dot_differs = 0
    for seed in range(40):
        for case in ex.public() + ex.hidden(random.Random(seed)):
            q, d, k = case.inputs.values()
            assert lesson15._well_separated(q, d, k)
            dot_differs += not torch.equal((q @ d.T).topk(k, dim=-1).indices, rag.top_k(q, d, k))
    assert dot_differs > 100  # most cases catch a dot-product ranking, not just the public one


def test_near_ties_are_detected():
    q = torch.tensor([[1.0, 0.0]])
    tied = torch.tensor([[1.0, 0.5], [1.0, -0.5], [0.0, 1.0]])
    assert not lesson15._well_separated(q, tied, 1)
    assert lesson15._well_separated(q, tied[1:], 1)

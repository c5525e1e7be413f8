"""Lesson 08 (reward model and RLHF): the Bradley-Terry loss, the KL-penalised per-token rewards,
generalised advantage estimation and the clipped PPO objective."""

from __future__ import annotations

import random

import torch

from labkit import ppo, preference
from labkit.check import Case, exercise, randn, sequence, tensor

LESSON = "08"


def _rng(rng_or_seed):
    return rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)


def _response_mask(rng, batch, T, padded=True):
    """(batch, T) long: 1 on each row's answer tokens, right-padded. PADDED: random lengths from 1 to T
    with the first row full; otherwise every row is full (no padding)."""
    lengths = [rng.randint(1, T) for _ in range(batch)] if padded else [T] * batch
    lengths[0] = T
    return torch.tensor([[1] * n + [0] * (T - n) for n in lengths])


# ---------------------------------------------------------------------------------------------
# reward_loss(r_chosen, r_rejected) -> scalar tensor


def _pairs(rng_or_seed, n, scale=2.0):
    rng = _rng(rng_or_seed)
    return {"r_chosen": randn(rng, n, scale=scale), "r_rejected": randn(rng, n, scale=scale)}


exercise(id="reward_loss", lesson=LESSON, title="The Bradley-Terry reward-model loss",
         signature="reward_loss(r_chosen, r_rejected)",
         reference=preference.reward_loss,
         public=lambda: [Case({"r_chosen": torch.tensor([1.0, 0.5]), "r_rejected": torch.tensor([0.0, 0.7])},
                              "two pairs, the second ranked wrongly",
                              hint="-log sigma(r_chosen - r_rejected) for each pair (small when the chosen answer "
                                   "has the higher reward), then the mean over the pairs"),
                         Case({"r_chosen": torch.tensor([-150.0, 3.0, 80.0]),
                               "r_rejected": torch.tensor([150.0, 3.0, -80.0])},
                              "huge reward gaps",
                              hint="sigmoid of a very negative number is 0 in float32 and log(0) = -inf: "
                                   "torch.nn.functional.logsigmoid computes log sigma(x) without that"),
                         Case(_pairs(1, 6), "six random pairs")],
         hidden=lambda rng: [Case(_pairs(rng, rng.randint(1, 32), scale=rng.choice([0.5, 2.0, 10.0])))
                             for _ in range(5)],
         compare=tensor(rtol=1e-5, atol=1e-6),
         hint="-log sigma(r_chosen - r_rejected), averaged over the pairs; a 0-d tensor, so that "
              "loss.backward() works")


# ---------------------------------------------------------------------------------------------
# kl_penalised_rewards(scores, logps, ref_logps, response_mask, kl_coef) -> (rewards, kl)


def _rewards_case(rng_or_seed, batch, T, kl_coef, padded=True):
    rng = _rng(rng_or_seed)
    ref_logps = -randn(rng, batch, T).abs() * 2
    return {"scores": randn(rng, batch, scale=2.0),
            "logps": ref_logps + 0.5 * randn(rng, batch, T),
            "ref_logps": ref_logps,
            "response_mask": _response_mask(rng, batch, T, padded),
            "kl_coef": kl_coef}


exercise(id="kl_penalised_rewards", lesson=LESSON, title="Per-token rewards with a KL penalty",
         signature="kl_penalised_rewards(scores, logps, ref_logps, response_mask, kl_coef)",
         reference=ppo.kl_penalised_rewards,
         public=lambda: [Case(_rewards_case(1, 1, 4, 0.1, padded=False), "one answer, no padding",
                              hint="every answer token gets -kl_coef * (logp - ref_logp); the last one also "
                                   "gets the score"),
                         Case(_rewards_case(2, 3, 5, 0.2), "answers of different lengths",
                              hint="the score goes on each row's LAST ANSWER token (response_mask.sum(1) - 1), "
                                   "and rewards and kl are 0 on padding"),
                         Case(_rewards_case(3, 2, 3, 0.0, padded=False), "kl_coef = 0",
                              hint="without the penalty the only reward is the score, on the last answer token; "
                                   "kl is still logp - ref_logp on answer tokens")],
         hidden=lambda rng: [Case(_rewards_case(rng, rng.randint(1, 6), rng.randint(1, 12),
                                                rng.choice([0.0, 0.05, 0.1, 0.3, 1.0]), padded=rng.random() < 0.7))
                             for _ in range(5)],
         compare=sequence(rewards=tensor(rtol=1e-5, atol=1e-6), kl=tensor(rtol=1e-5, atol=1e-6)),
         hint="kl = (logps - ref_logps) on answer tokens (0 elsewhere); rewards = -kl_coef * kl, plus the score "
              "on each row's last answer token; return (rewards, kl), both (B, T) float")


# ---------------------------------------------------------------------------------------------
# gae(rewards, values, response_mask, gamma, lam) -> (advantages, returns)


def _gae_case(rng_or_seed, batch, T, gamma, lam, padded=True):
    rng = _rng(rng_or_seed)
    mask = _response_mask(rng, batch, T, padded)
    # values beyond each answer are not 0: an implementation must not read them
    return {"rewards": randn(rng, batch, T) * mask, "values": randn(rng, batch, T), "response_mask": mask,
            "gamma": gamma, "lam": lam}


exercise(id="gae", lesson=LESSON, title="Generalised advantage estimation",
         signature="gae(rewards, values, response_mask, gamma, lam)",
         reference=ppo.gae,
         public=lambda: [Case(_gae_case(1, 1, 4, 1.0, 1.0, padded=False), "one answer, gamma = lam = 1",
                              hint="with lam = 1 and gamma = 1 the advantage of token t is the sum of the rewards "
                                   "from t to the end, minus V_t"),
                         Case(_gae_case(2, 1, 5, 1.0, 0.5, padded=False), "lam = 0.5",
                              hint="go backwards: delta_t = r_t + gamma * V_{t+1} - V_t, then "
                                   "A_t = delta_t + gamma * lam * A_{t+1}, with V and A = 0 after the last token"),
                         Case(_gae_case(3, 3, 6, 0.9, 0.95), "answers of different lengths",
                              hint="after each row's last answer token V and A are 0: multiply the values by the "
                                   "mask first, and keep advantages and returns 0 on padding")],
         hidden=lambda rng: [Case(_gae_case(rng, rng.randint(1, 6), rng.randint(1, 12), rng.choice([0.9, 1.0]),
                                            rng.choice([0.0, 0.5, 0.95, 1.0]), padded=rng.random() < 0.7))
                             for _ in range(5)],
         compare=sequence(advantages=tensor(rtol=1e-5, atol=1e-5), returns=tensor(rtol=1e-5, atol=1e-5)),
         hint="loop t from the last position to the first: delta_t = r_t + gamma * V_{t+1} - V_t, "
              "A_t = (delta_t + gamma * lam * A_{t+1}) * mask_t, with V_T = A_T = 0 and V masked; "
              "returns = (A + V) * mask; return (advantages, returns), both (B, T)")


# ---------------------------------------------------------------------------------------------
# ppo_policy_loss(logps, old_logps, advantages, response_mask, clip) -> scalar tensor


def _policy_loss_reference(logps, old_logps, advantages, response_mask, clip):
    """labkit.ppo.ppo_losses' policy term (the value inputs do not enter it)."""
    zeros = torch.zeros_like(logps)
    return ppo.ppo_losses(logps, old_logps, advantages, zeros, zeros, zeros, response_mask, clip=clip)["policy"]


def _ppo_case(rng_or_seed, batch, T, clip, spread=0.5, padded=True):
    rng = _rng(rng_or_seed)
    old = -randn(rng, batch, T).abs() * 2
    # log-ratios of +-spread give ratios from about 0.6 to 1.6: many tokens beyond 1 +- clip
    return {"logps": old + spread * randn(rng, batch, T), "old_logps": old,
            "advantages": randn(rng, batch, T), "response_mask": _response_mask(rng, batch, T, padded),
            "clip": clip}


exercise(id="ppo_policy_loss", lesson=LESSON, title="PPO's clipped policy objective",
         signature="ppo_policy_loss(logps, old_logps, advantages, response_mask, clip)",
         reference=_policy_loss_reference,
         public=lambda: [Case(_ppo_case(1, 1, 6, 0.2, spread=0.01, padded=False), "ratios close to 1, nothing clipped",
                              hint="ratio = exp(logps - old_logps); with no clipping the loss is the mean of "
                                   "-advantages * ratio"),
                         Case(_ppo_case(2, 2, 6, 0.2, padded=False), "ratios far from 1",
                              hint="take the larger (the more pessimistic) of -A * ratio and "
                                   "-A * clamp(ratio, 1 - clip, 1 + clip), token by token"),
                         Case(_ppo_case(3, 3, 5, 0.1), "padded answers",
                              hint="average over the answer tokens only: sum(loss * mask) / mask.sum()")],
         hidden=lambda rng: [Case(_ppo_case(rng, rng.randint(1, 6), rng.randint(1, 12), rng.choice([0.1, 0.2, 0.3]),
                                            spread=rng.choice([0.1, 0.5, 1.0]), padded=rng.random() < 0.7))
                             for _ in range(5)],
         compare=tensor(rtol=1e-5, atol=1e-6),
         hint="ratio = exp(logps - old_logps); per token max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip)); "
              "the mean over answer tokens (response_mask == 1), as a 0-d tensor")

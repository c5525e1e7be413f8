"""Lesson 11 (RL with verifiable rewards): GRPO's group advantages, its clipped loss, the unbiased
pass@k estimator; three interview questions."""

from __future__ import annotations

import random

import torch

from labkit import grpo
from labkit.check import Case, exercise, number, question, randn, tensor

LESSON = "11"


def _rng(rng_or_seed):
    return rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)


# ---------------------------------------------------------------------------------------------
# group_advantages(rewards, group_size) -> (N,)


def _binary(rng_or_seed, groups, G, tie=True):
    """0/1 rewards for GROUPS groups of G; with TIE the first group is all equal (its advantages are 0)."""
    rng = _rng(rng_or_seed)
    rows = [[float(rng.random() < 0.4) for _ in range(G)] for _ in range(groups)]
    for row in rows[1 if tie else 0:]:  # every other group has a right and a wrong answer
        row[0], row[-1] = 1.0, 0.0
        rng.shuffle(row)
    if tie:
        rows[0] = [float(rng.random() < 0.5)] * G
    return torch.tensor([x for row in rows for x in row])


exercise(id="group_advantages", lesson=LESSON, title="GRPO's group-normalised advantages",
         signature="group_advantages(rewards, group_size)",
         reference=lambda rewards, group_size: grpo.group_advantages(rewards, group_size),
         public=lambda: [Case({"rewards": torch.tensor([1.0, 0.0, 0.0, 0.0]), "group_size": 4},
                              "one group of 4, one right answer",
                              hint="subtract the group's mean reward, then divide by the group's std (the "
                                   "unbiased one, torch.std's default) plus 1e-4"),
                         Case({"rewards": _binary(1, 3, 4), "group_size": 4},
                              "three groups of 4, the first all equal",
                              hint="each group is normalised by its own mean and std; a group whose rewards "
                                   "are all equal has std 0: the 1e-4 keeps 0 / 0 from giving NaN"),
                         Case({"rewards": randn(random.Random(2), 12), "group_size": 6}, "two groups of 6, real rewards")],
         hidden=lambda rng: [Case({"rewards": (_binary(rng, rng.randint(1, 5), G) if rng.random() < 0.5 else
                                               randn(rng, rng.randint(1, 5) * G, scale=rng.choice([0.5, 3.0]))),
                                   "group_size": G}) for G in (rng.choice([2, 3, 4, 8]) for _ in range(5))],
         compare=tensor(rtol=1e-4, atol=1e-5),
         hint="rewards.view(-1, group_size): each row is one prompt's group; (r - row mean) / (row std + 1e-4), "
              "flattened back to (N,)")


# ---------------------------------------------------------------------------------------------
# grpo_loss(logps, old_logps, ref_logps, advantages, completion_mask, beta, epsilon) -> scalar


def _loss_reference(logps, old_logps, ref_logps, advantages, completion_mask, beta, epsilon):
    """GRPO as the DeepSeekMath paper writes it: per-sequence averaging, the plain k3 term."""
    return grpo.grpo_loss(logps, old_logps, ref_logps, advantages, completion_mask, beta, epsilon, None, "grpo",
                          kl_times_ratio=False)[0]


def _mask(rng, N, T, padded=True):
    lengths = [rng.randint(1, T) for _ in range(N)] if padded else [T] * N
    lengths[0] = T
    return torch.tensor([[1] * n + [0] * (T - n) for n in lengths])


def _loss_case(rng_or_seed, N, T, beta, epsilon, spread=0.5, padded=True):
    rng = _rng(rng_or_seed)
    old = -randn(rng, N, T).abs() * 2
    mask = _mask(rng, N, T, padded)
    # log-ratios of +-spread: ratios from about 0.6 to 1.6, many beyond 1 +- epsilon
    return {"logps": old + spread * randn(rng, N, T), "old_logps": old, "ref_logps": old + 0.3 * randn(rng, N, T),
            "advantages": randn(rng, N), "completion_mask": mask, "beta": beta, "epsilon": epsilon}


exercise(id="grpo_clipped_loss", lesson=LESSON, title="The clipped GRPO loss with its KL term",
         signature="grpo_loss(logps, old_logps, ref_logps, advantages, completion_mask, beta, epsilon)",
         reference=_loss_reference,
         public=lambda: [Case(_loss_case(1, 2, 4, 0.0, 0.2, spread=0.01, padded=False),
                              "ratios close to 1, no KL, no padding",
                              hint="ratio = exp(logps - old_logps); nothing is clipped here, so each token's "
                                   "loss is -ratio * A, with A its answer's advantage"),
                         Case(_loss_case(2, 3, 5, 0.0, 0.2), "ratios far from 1, answers of different lengths",
                              hint="per token max(-A * ratio, -A * clamp(ratio, 1 - eps, 1 + eps)); then the mean "
                                   "over EACH ANSWER's own tokens, then the mean over answers"),
                         Case(_loss_case(3, 3, 4, 0.1, 0.2), "with the KL term",
                              hint="add beta * k3 per token, k3 = exp(d) - d - 1 with d = ref_logps - logps, "
                                   "before averaging")],
         hidden=lambda rng: [Case(_loss_case(rng, rng.randint(1, 8), rng.randint(1, 10), rng.choice([0.0, 0.04, 0.5]),
                                             rng.choice([0.1, 0.2, 0.3]), spread=rng.choice([0.1, 0.5, 1.0]),
                                             padded=rng.random() < 0.8)) for _ in range(5)],
         compare=tensor(rtol=1e-5, atol=1e-6),
         hint="ratio = exp(logps - old_logps); per token max(-A*ratio, -A*clamp(ratio, 1-eps, 1+eps)) + beta * k3; "
              "masked mean over each answer's tokens, then the mean over answers; a 0-d tensor")


# ---------------------------------------------------------------------------------------------
# pass_at_k(n, c, k) -> float


exercise(id="pass_at_k", lesson=LESSON, title="pass@k without bias",
         signature="pass_at_k(n, c, k)",
         reference=grpo.pass_at_k,
         public=lambda: [Case({"n": 4, "c": 1, "k": 2}, "4 samples, 1 right, k = 2",
                              hint="1 - C(n - c, k) / C(n, k): one minus the chance that k samples drawn without "
                                   "replacement are all wrong (math.comb)"),
                         Case({"n": 10, "c": 0, "k": 5}, "no right sample"),
                         Case({"n": 5, "c": 3, "k": 3}, "fewer wrong samples than k",
                              hint="when n - c < k every draw of k holds a right sample"),
                         Case({"n": 16, "c": 3, "k": 1}, "k = 1", hint="pass@1 is the share of right samples")],
         hidden=lambda rng: [Case({"n": n, "c": rng.randint(0, n), "k": rng.randint(1, n)})
                             for n in (rng.choice([8, 16, 32, 100, 200]) for _ in range(6))],
         compare=number(rtol=1e-6, atol=1e-9),
         hint="1 - C(n - c, k) / C(n, k), and 1.0 when n - c < k")


# ---------------------------------------------------------------------------------------------
# Interview quizzes

question(id="q11_ppo_vs_grpo", lesson=LESSON, kind="choice", answer_hash="a601ae111d48f9e7d18a29bc",
         text="Interview: what does GRPO drop from PPO, and what takes its place?",
         choices=("The clipped ratio: GRPO follows the plain policy gradient of the reward",
                  "The value network (critic): the mean reward of G answers sampled for the same prompt is the "
                  "baseline, and the std of the group scales the advantage",
                  "The reward: GRPO learns from pairs of preferred and rejected answers, as DPO does"))

question(id="q11_why_verifiable", lesson=LESSON, kind="choice", answer_hash="30156868f84f01504ef250f0",
         text="Interview: why train with a verifiable reward (a program checks the answer) rather than a learned "
              "reward model, where the task allows it?",
         choices=("There is no learned model whose mistakes the policy can exploit, and none to train or hold in "
                  "memory; the catch: it rewards exactly what the program checks (a format-only check gets gamed)",
                  "A program's reward is dense: every token gets its own score, so no advantages are needed",
                  "With a verifiable reward the policy cannot drift, so no KL term or clipping is ever used"))

question(id="q11_kl_term", lesson=LESSON, kind="choice", answer_hash="46275dbc73960ad53028a021",
         text="Interview: what does the beta * KL(pi_theta || pi_ref) term of the GRPO loss do?",
         choices=("It measures how different the G answers of a group are, so that groups without signal are "
                  "skipped",
                  "It replaces the clipped ratio when a batch is reused for several updates",
                  "It keeps the policy close to the reference (the SFT model): reward is traded for staying near "
                  "what the model already did well; beta = 0 drops it, as DAPO and Dr. GRPO do"))

"""Lesson 11 (RL with verifiable rewards): GRPO's group advantages, its clipped loss, the unbiased
pass@k estimator, a verifier that cannot be gamed by listing amounts, an answer that games a lenient
reward; four interview questions."""

from __future__ import annotations

import random
import re

import torch

from labkit import corpus, grpo, rewards
from labkit.check import Case, as_rng, exercise, number, question, randn, tensor

LESSON = "11"


# ---------------------------------------------------------------------------------------------
# group_advantages(rewards, group_size) -> (N,)


def _binary(rng_or_seed, groups, G, tie=True):
    """0/1 rewards for GROUPS groups of G; with TIE the first group is all equal (its advantages are 0)."""
    rng = as_rng(rng_or_seed)
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
    rng = as_rng(rng_or_seed)
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
# verify_total(completion, gold) -> float: a verifier that a list of amounts cannot fool


def _amounts(text):
    return [int(a.replace(",", "")) for a in re.findall(r"\$(\d[\d,]*)", text)]


def _verify_total(completion, gold):
    """1.0 when COMPLETION states exactly one dollar amount and it is GOLD's value, else 0.0."""
    return float(_amounts(completion) == _amounts(gold))


def _verify_case(rng):
    total = rng.randint(1, 40_000)
    gold, other = corpus.money(total), corpus.money(rng.randint(1, 40_000))
    right = rng.choice([gold, f"The total is {gold}.", f"{gold} in all", f"Total: {gold}"])
    wrong = rng.choice([other, f"{gold} or {other}", f"{other}, then {gold}", f"${total}0", "no idea", ""])
    return Case({"completion": rng.choice([right, wrong]), "gold": gold})


exercise(id="verify_total", lesson=LESSON, title="A verifier for the total that a list of amounts cannot fool",
         signature="verify_total(completion, gold)",
         reference=_verify_total,
         public=lambda: [Case({"completion": "$1,234", "gold": "$1,234"}, "the bare answer"),
                         Case({"completion": "The total is $1,234.", "gold": "$1,234"}, "the answer in a sentence",
                              hint="words around the amount are fine: find the amounts in the text, not the whole text"),
                         Case({"completion": "$12,345", "gold": "$2,345"}, "a larger amount that contains the gold text",
                              hint="'gold in completion' is fooled here: compare amounts as whole numbers"),
                         Case({"completion": "$18 $4 $22", "gold": "$22"}, "every amount of the receipt",
                              hint="an answer that lists several amounts states no answer: exactly one amount"),
                         Case({"completion": "$22, or maybe $4", "gold": "$22"}, "the right amount, then another",
                              hint="a hedge is not an answer: the answer must state exactly one amount"),
                         Case({"completion": "no total", "gold": "$22"}, "no amount at all")],
         hidden=lambda rng: [_verify_case(rng) for _ in range(8)],
         compare=number(),
         hint="find every amount in the text (re.findall), turn each into a whole number, and pay 1.0 only when "
              "there is exactly one and it equals the gold's")


# ---------------------------------------------------------------------------------------------
# game_contains(receipt) -> str: an answer rewards.contains_reward pays in full and exact_reward does not


def _receipt(rng):
    """A receipt with at least two different amounts (so that listing them is not the answer itself)."""
    while True:
        text, a = corpus.receipt(rng)
        if len(set(_amounts(text))) >= 2:
            return text, corpus.money(a["total"])


def _total_of(receipt):
    """The receipt's total (the line 'Total: $X'): the gold answer the comparison scores with, never shown."""
    return re.search(r"Total: (\$[\d,]+)", receipt).group(1)


def _every_amount(receipt):
    """The reference: every amount of the receipt, in order, once each."""
    return " ".join(dict.fromkeys(re.findall(r"\$\d[\d,]*\d|\$\d", receipt)))


def _gamed(got, expected, case):
    gold = _total_of(case.inputs["receipt"])
    if not isinstance(got, str):
        return f"returned {type(got).__name__}; expected a str (the answer the policy would write)"
    if rewards.contains_reward(None, [got], [gold]) != [1.0]:
        return "contains_reward pays 0 for this answer on this receipt: the total is not in it"
    if rewards.exact_reward(None, [got], [gold]) == [1.0]:
        return "that is the right answer itself (exact_reward pays it too): write one that is paid without being right"
    return None


exercise(id="game_contains", lesson=LESSON, title="Game a lenient reward: paid in full, never right",
         signature="game_contains(receipt)",
         reference=_every_amount,
         public=lambda: [Case({"receipt": _receipt(random.Random(f"game/{i}"))[0]}, label)
                         for i, label in enumerate(("a receipt", "another receipt"))],
         hidden=lambda rng: [Case({"receipt": _receipt(rng)[0]}) for _ in range(6)],
         compare=_gamed,
         hint="contains_reward checks only that the gold amount appears somewhere in the answer; which "
              "amounts could it be? (re.findall finds every '$...' in the receipt)")


# ---------------------------------------------------------------------------------------------
# Interview quizzes

question(id="q11_ppo_vs_grpo", lesson=LESSON, kind="choice", answer_hash="a601ae111d48f9e7d18a29bc",
         text="Interview: what does GRPO drop from PPO, and what takes its place?",
         choices=("The clipped ratio: it follows the plain policy gradient of the reward, with no bound on a step",
                  "The value network: the mean reward of the G answers sampled for the same prompt is the baseline",
                  "The reward: it learns from pairs of preferred and rejected answers, as DPO does, without sampling"),
         feedback={"a": "GRPO keeps PPO's clipped ratio: its loss is -min(ratio * A, clip(ratio) * A), as in "
                        "section 3; what it drops is the network that predicts a baseline",
                   "c": "that is DPO; GRPO scores each sampled answer with a reward (here a program) and compares "
                        "it with the other answers to the same prompt"})

question(id="q11_why_verifiable", lesson=LESSON, kind="choice", answer_hash="30156868f84f01504ef250f0",
         text="Interview: why train with a verifiable reward (a program checks the answer) rather than a learned "
              "reward model, where the task allows it?",
         choices=("No learned model's mistakes to exploit and none to train; but it pays exactly what it checks",
                  "A program's reward is dense: every token gets its own score, so no advantages are needed at all",
                  "A program's reward cannot drift, so the policy cannot either: no KL term or clipping is needed"),
         feedback={"b": "the reward is one number per answer, given to every token of it; the advantages still "
                        "compare that number with the rest of the group",
                   "c": "the policy moves whatever the reward is; clipping bounds each update and the KL term ties "
                        "it to pi_ref; a program's reward can still be gamed where it checks too little"})

question(id="q11_kl_term", lesson=LESSON, kind="choice", answer_hash="46275dbc73960ad53028a021",
         text="Interview: what does the beta * KL(pi_theta || pi_ref) term of the GRPO loss do?",
         choices=("It measures how different the G answers of a group are, so groups without signal are skipped",
                  "It replaces the clipped ratio when a batch is reused for several updates, as pi_old goes stale",
                  "It charges each token for moving away from the reference (the SFT model); beta = 0 drops it"),
         feedback={"a": "a group without signal is one whose rewards are all equal (its advantages are 0); the KL "
                        "term compares pi_theta with pi_ref, not the answers with each other",
                   "b": "the two work side by side: the ratio is to pi_old (the sampler), the KL to pi_ref (the "
                        "start), and the KL term acts from the first update, reused batch or not"})

question(id="q11_sft_control", lesson=LESSON, kind="choice", answer_hash="cffc3c6f01fde3737514869c",
         text="Interview: GRPO takes held-out pass@1 from 20% to 90% on questions with known answers. Before "
              "crediting RL, what do you compare it with?",
         choices=("The starting model's pass@k at a large k, to see whether its samples already held the answers",
                  "SFT on the gold answers of the same questions, for the same number of updates, scored the same way",
                  "The rise of the mean reward on the training samples during the run, step by step, to the last one"),
         feedback={"a": "pass@k of the start says whether the right answers were among its samples (sharpening), "
                        "not whether more SFT on the same questions would have done as well",
                   "c": "the reward on the training samples rises for any method that fits these questions; it "
                        "compares the run with nothing"})

"""Lesson 10 (beyond DPO): the IPO loss; two interview questions, IPO against DPO and what the reference
model costs."""

from __future__ import annotations

import torch

from labkit import preference_losses
from labkit.check import Case, as_rng, exercise, question, sequence, tensor
from labkit.checks.lesson09 import random_logps

LESSON = "10"

_TENSOR = tensor(rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
#          chosen_lengths, rejected_lengths, beta)


def _ipo_inputs(rng_or_seed, n, beta, same_policy=False, unit_lengths=False):
    """random_logps' four (n,) log-probabilities, answer lengths (n,) long (1 with UNIT_LENGTHS) and BETA."""
    rng = as_rng(rng_or_seed)
    d = random_logps(rng, n, beta, same_policy=same_policy)
    beta = d.pop("beta")
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    for side in ("chosen", "rejected"):
        d[f"{side}_lengths"] = torch.ones(n, dtype=torch.long) if unit_lengths else torch.randint(1, 30, (n,), generator=g)
    d["beta"] = beta
    return d


exercise(id="ipo_loss", lesson=LESSON, title="The IPO loss: a target margin instead of -log sigma",
         signature="ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, "
                   "chosen_lengths, rejected_lengths, beta)",
         reference=preference_losses.ipo_loss,
         public=lambda: [Case(_ipo_inputs(1, 2, 0.5, same_policy=True), "the policy still equals the reference",
                              hint="every log-ratio is 0 here, so h = 0 and each pair's loss is (0 - 1/(2 beta))^2"),
                         Case(_ipo_inputs(2, 4, 0.1, unit_lengths=True), "answers of one token each",
                              hint="h = chosen log-ratio - rejected log-ratio; the loss is the mean of "
                                   "(h - 1/(2 beta))^2, a square, not -log sigma"),
                         Case(_ipo_inputs(3, 3, 0.5), "answers of different lengths",
                              hint="divide each answer's log-ratio by its own length (tokens) before the "
                                   "difference, as trl's DPOTrainer(loss_type='ipo') does")],
         hidden=lambda rng: [Case(_ipo_inputs(rng, rng.randint(1, 16), rng.choice([0.05, 0.1, 0.3, 0.5, 1.0])))
                             for _ in range(5)],
         compare=sequence(loss=_TENSOR, chosen_logratios=_TENSOR, rejected_logratios=_TENSOR),
         hint="s_w = (policy_chosen_logps - ref_chosen_logps) / chosen_lengths, s_l likewise; "
              "loss = mean of (s_w - s_l - 1/(2 beta))^2; return (loss, s_w, s_l)")


# ---------------------------------------------------------------------------------------------
# Interview quizzes

question(id="q10_ipo_vs_dpo", lesson=LESSON, kind="choice", answer_hash="953a11cf533062a7f3c8e719",
         text="Interview: the preference pairs are deterministic (the chosen answer is always the right one). "
              "Why might you train with IPO rather than DPO?",
         choices=("IPO needs no reference model in memory, so each step holds one model instead of two and costs "
                  "half the forward passes",
                  "DPO's -log sigma keeps pushing the margin on such pairs (its gradient vanishes only at infinity); "
                  "IPO's square stops at a target margin 1/(2 tau)",
                  "IPO averages the log-ratios over tokens, so each of its steps is cheaper to compute than DPO's "
                  "sum over the answer"),
         feedback={"a": "IPO keeps pi_ref: its h is a margin of log-ratios to the reference, as DPO's is. SimPO and "
                        "ORPO are the reference-free ones.",
                   "c": "The per-token average costs nothing extra or less: IPO runs the same forward passes as DPO, "
                        "policy and reference over both answers. It differs in where its loss has its minimum."},
         hint="where is each loss's minimum, as a function of the margin?")

question(id="q10_reference_cost", lesson=LESSON, kind="choice", answer_hash="a18f2608931f1dfbc9389a39",
         text="Interview: you train with trl's DPOTrainer, a LoRA adapter (peft_config) and no ref_model. Where does "
              "pi_ref come from, and what does it cost each step?",
         choices=("The same weights with the adapter switched off: no second copy in memory, but a second forward "
                  "pass each step",
                  "trl loads a second copy of the model from its name: twice the weights in memory, and a second "
                  "forward pass each step",
                  "trl computes pi_ref's log-probabilities once before training, so the reference costs nothing "
                  "during the steps"),
         feedback={"b": "That is DPOTrainer without peft and without ref_model. With a peft adapter, switching the "
                        "adapter off gives the reference: no second copy.",
                   "c": "That is precompute_ref_log_probs=True, which is off by default: the lesson's count shows a "
                        "second forward pass each step."},
         hint="what is the model with its LoRA update B·A taken away?")

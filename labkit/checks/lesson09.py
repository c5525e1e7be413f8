"""Lesson 09 (DPO): a sequence's log-probability from logits and labels, the DPO loss, the IPO loss;
one interview question on the preference-loss family."""

from __future__ import annotations

import random

import torch

from labkit import preference, preference_losses
from labkit.check import Case, exercise, question, randn, sequence, tensor

LESSON = "09"


def _rng(rng_or_seed):
    return rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)


# ---------------------------------------------------------------------------------------------
# sequence_logps(logits, labels) -> (B,)


def _lm_batch(rng_or_seed, batch, seq, vocab, prompt=0, pad_tail=0):
    """logits (batch, seq, vocab) and labels (batch, seq): -100 on the first PROMPT tokens of every row
    and on the last PAD_TAIL tokens of the first row (a shorter, right-padded answer)."""
    rng = _rng(rng_or_seed)
    logits = randn(rng, batch, seq, vocab, scale=2.0)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[:, :prompt] = -100
    if pad_tail:
        labels[0, seq - pad_tail:] = -100
    return {"logits": logits, "labels": labels}


_SHIFT_HINT = "the logits at position t predict the token at t + 1: score logits[:, :-1] against labels[:, 1:]"

exercise(id="sequence_logps", lesson=LESSON, title="Log-probability of each answer",
         signature="sequence_logps(logits, labels)",
         reference=preference.sequence_logps,
         public=lambda: [Case(_lm_batch(1, 1, 5, 7), "one sequence, nothing ignored",
                              hint="a SUM (not a mean) of log-probabilities; " + _SHIFT_HINT),
                         Case(_lm_batch(2, 2, 8, 11, prompt=3), "a 3-token prompt labelled -100",
                              hint="tokens whose label is -100 add nothing to the sum (and -100 is not a valid "
                                   "index for gather: replace it before gathering, then mask)"),
                         Case(_lm_batch(3, 3, 9, 13, prompt=2, pad_tail=3), "rows of different lengths",
                              hint="a SUM over each row's scored tokens, not a mean: DPO compares whole answers")],
         hidden=lambda rng: [Case(_lm_batch(rng, rng.randint(1, 4), (s := rng.randint(3, 16)), rng.randint(5, 60),
                                            prompt=rng.randint(0, s - 2), pad_tail=rng.randint(0, 1)))
                             for _ in range(5)],
         compare=tensor(rtol=1e-4, atol=1e-4),
         hint="log_softmax over the vocabulary, gather each next token's log-probability, zero the -100 "
              "positions and sum over the sequence: returns (B,)")


# ---------------------------------------------------------------------------------------------
# dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)


def _logps(rng_or_seed, n, beta, same_policy=False):
    """Four (n,) sequence log-probabilities (negative, as for answers of a few tokens) and BETA."""
    rng = _rng(rng_or_seed)
    ref_c, ref_r = -randn(rng, n).abs() * 20 - 1, -randn(rng, n).abs() * 20 - 1
    if same_policy:
        pol_c, pol_r = ref_c.clone(), ref_r.clone()
    else:
        pol_c, pol_r = ref_c + 3 * randn(rng, n), ref_r + 3 * randn(rng, n)
    return {"policy_chosen_logps": pol_c, "policy_rejected_logps": pol_r,
            "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r, "beta": beta}


_TENSOR = tensor(rtol=1e-5, atol=1e-6)

exercise(id="dpo_loss", lesson=LESSON, title="The DPO loss and its implicit rewards",
         signature="dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)",
         reference=preference.dpo_loss,
         public=lambda: [Case(_logps(1, 1, 0.5, same_policy=True), "the policy still equals the reference",
                              hint="the implicit reward of an answer is beta * (its policy log-prob - its "
                                   "reference log-prob): 0 for both answers here"),
                         Case(_logps(2, 4, 0.1), "four pairs, beta 0.1",
                              hint="each answer's reward is beta * (policy log-prob - reference log-prob); the "
                                   "loss is -log sigma(chosen_rewards - rejected_rewards), averaged over the pairs"),
                         Case(_logps(3, 3, 2.0), "beta 2",
                              hint="multiply the log-ratios by beta before the sigmoid, and return the rewards "
                                   "with beta in them too")],
         hidden=lambda rng: [Case(_logps(rng, rng.randint(1, 16), rng.choice([0.05, 0.1, 0.3, 0.5, 1.0, 2.0])))
                             for _ in range(5)],
         compare=sequence(loss=_TENSOR, chosen_rewards=_TENSOR, rejected_rewards=_TENSOR),
         hint="chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps), the same for rejected; "
              "loss = mean of -log sigma(chosen_rewards - rejected_rewards); return (loss, chosen_rewards, "
              "rejected_rewards)")


# ---------------------------------------------------------------------------------------------
# ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
#          chosen_lengths, rejected_lengths, beta)


def _ipo_inputs(rng_or_seed, n, beta, same_policy=False, unit_lengths=False):
    """_logps' four (n,) log-probabilities, answer lengths (n,) long (1 with UNIT_LENGTHS) and BETA."""
    rng = _rng(rng_or_seed)
    d = _logps(rng, n, beta, same_policy=same_policy)
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
# Interview quiz

question(id="q09_ipo_vs_dpo", lesson=LESSON, kind="choice", answer_hash="53d064366ad97b540a5d2bf6",
         text="Interview: the preference pairs are deterministic (the chosen answer is always the right one). "
              "Why might you train with IPO rather than DPO?",
         choices=("IPO needs no reference model in memory",
                  "DPO's -log sigma keeps pushing the margin towards infinity on such pairs (its gradient only "
                  "vanishes in that limit); IPO's squared loss stops at a target margin 1/(2 tau)",
                  "IPO averages over tokens, so each step is cheaper than DPO's"),
         hint="where is each loss's minimum, as a function of the margin?")

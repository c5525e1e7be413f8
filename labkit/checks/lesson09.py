"""Lesson 09 (DPO): a sequence's log-probability from logits and labels, the DPO loss, DPO with an SFT
term; one interview question on what the SFT term does."""

from __future__ import annotations


import torch

from labkit import preference, preference_losses
from labkit.check import Case, as_rng, exercise, question, randn, sequence, tensor

LESSON = "09"


# ---------------------------------------------------------------------------------------------
# sequence_logps(logits, labels) -> (B,)


def _lm_batch(rng_or_seed, batch, seq, vocab, prompt=0, pad_tail=0):
    """logits (batch, seq, vocab) and labels (batch, seq): -100 on the first PROMPT tokens of every row
    and on the last PAD_TAIL tokens of the first row (a shorter, right-padded answer)."""
    rng = as_rng(rng_or_seed)
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


def random_logps(rng_or_seed, n, beta, same_policy=False):
    """Four (n,) sequence log-probabilities (negative, as for answers of a few tokens) and BETA."""
    rng = as_rng(rng_or_seed)
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
         public=lambda: [Case(random_logps(1, 1, 0.5, same_policy=True), "the policy still equals the reference",
                              hint="the implicit reward of an answer is beta * (its policy log-prob - its "
                                   "reference log-prob): 0 for both answers here"),
                         Case(random_logps(2, 4, 0.1), "four pairs, beta 0.1",
                              hint="each answer's reward is beta * (policy log-prob - reference log-prob); the "
                                   "loss is -log sigma(chosen_rewards - rejected_rewards), averaged over the pairs"),
                         Case(random_logps(3, 3, 2.0), "beta 2",
                              hint="multiply the log-ratios by beta before the sigmoid, and return the rewards "
                                   "with beta in them too")],
         hidden=lambda rng: [Case(random_logps(rng, rng.randint(1, 16), rng.choice([0.05, 0.1, 0.3, 0.5, 1.0, 2.0])))
                             for _ in range(5)],
         compare=sequence(loss=_TENSOR, chosen_rewards=_TENSOR, rejected_rewards=_TENSOR),
         hint="chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps), the same for rejected; "
              "loss = mean of -log sigma(chosen_rewards - rejected_rewards); return (loss, chosen_rewards, "
              "rejected_rewards)")


# ---------------------------------------------------------------------------------------------
# dpo_sft_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
#              chosen_lengths, beta, sft_weight)


def _sft_inputs(rng_or_seed, n, beta, sft_weight, unit_lengths=False):
    """random_logps' four (n,) log-probabilities, the chosen answers' lengths (n,) long, BETA and SFT_WEIGHT."""
    rng = as_rng(rng_or_seed)
    d = random_logps(rng, n, beta)
    beta = d.pop("beta")
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    d["chosen_lengths"] = torch.ones(n, dtype=torch.long) if unit_lengths else torch.randint(1, 30, (n,), generator=g)
    d["beta"], d["sft_weight"] = beta, sft_weight
    return d


exercise(id="dpo_sft_loss", lesson=LESSON, title="DPO with an SFT term",
         signature="dpo_sft_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, "
                   "chosen_lengths, beta, sft_weight)",
         reference=preference_losses.dpo_sft_loss,
         public=lambda: [Case(_sft_inputs(1, 3, 0.1, 0.0), "sft_weight 0: plain DPO",
                              hint="with sft_weight = 0 this is exactly dpo_loss"),
                         Case(_sft_inputs(2, 4, 0.1, 1.0, unit_lengths=True), "answers of one token each",
                              hint="add sft_weight times the negative log-likelihood of the CHOSEN answers (not the "
                                   "rejected ones): minus their log-probabilities"),
                         Case(_sft_inputs(3, 3, 0.5, 0.5), "chosen answers of different lengths",
                              hint="the SFT term is a mean per token over the whole batch: minus the sum of the chosen "
                                   "log-probabilities divided by the total number of chosen tokens")],
         hidden=lambda rng: [Case(_sft_inputs(rng, rng.randint(1, 16), rng.choice([0.05, 0.1, 0.5, 1.0]),
                                              rng.choice([0.25, 0.5, 1.0, 2.0]))) for _ in range(5)],
         compare=sequence(loss=_TENSOR, chosen_rewards=_TENSOR, rejected_rewards=_TENSOR),
         hint="loss = dpo_loss(...)[0] + sft_weight * (-policy_chosen_logps.sum() / chosen_lengths.sum()); the rewards "
              "are dpo_loss's, unchanged by the SFT term")


# ---------------------------------------------------------------------------------------------
# Interview quiz

question(id="q09_sft_term", lesson=LESSON, kind="choice", answer_hash="5b19ce43bf9727905bbe6de2",
         text="Interview: on pairs whose chosen answer is a prefix of the rejected one (a clean answer against the same "
              "answer followed by a hedge), plain DPO removed the hedge but broke the answers, and adding an SFT term "
              "fixed it. Why?",
         choices=("The SFT term multiplies beta, so each DPO update is smaller and the policy cannot move far from pi_ref",
                  "Plain DPO never reads pi_ref's log-probabilities, so nothing in its loss ties the policy to the SFT "
                  "model it started from",
                  "DPO asks only for a wider gap, and pushing the rejected answer down also lowers the tokens it shares "
                  "with the chosen one; the NLL term holds the chosen answers up",
                  "The SFT term also trains on the rejected answers, so the model learns the hedge as a separate "
                  "sentence it can leave out"),
         feedback={"a": "The SFT term leaves beta alone: it is a separate loss, the NLL of the chosen answers, added "
                        "with its own weight; beta is in DPO's term only.",
                   "b": "DPO does read pi_ref: each answer's implicit reward is beta * log(pi_theta / pi_ref). What "
                        "fails is what the loss asks for, a wider gap, not a missing reference.",
                   "d": "The SFT term is the NLL of the chosen answers only; the rejected answers appear in DPO's term "
                        "alone."},
         hint="which answer tokens do the two answers share, and what does the DPO loss say about them?")

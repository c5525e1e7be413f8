"""Lesson 13 (evaluation): perplexity from logits and labels, exact match; quizzes on perplexity, what
normalising forgives, what an overlap metric cannot see, how to validate a judge, and what a harness score
depends on."""

from __future__ import annotations

import random

import torch

from labkit import evaluate
from labkit.check import Case, exercise, number, question, randn

LESSON = "13"


# ---------------------------------------------------------------------------------------------
# perplexity_from_logits(logits, labels) -> float


def _lm_batch(rng_or_seed, batch, seq, vocab, ignore_prefix=0, pad_tail=0):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    logits = randn(rng, batch, seq, vocab, scale=2.0)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    if ignore_prefix:
        labels[:, :ignore_prefix] = -100
    if pad_tail:
        labels[0, seq - pad_tail:] = -100  # the first row is shorter: padded at the end
    return {"logits": logits, "labels": labels}


_SHIFT_HINT = "logits at position t predict labels at t + 1: compare logits[:, :-1] with labels[:, 1:]"

exercise(id="perplexity_from_logits", lesson=LESSON, title="Perplexity from logits and labels",
         signature="perplexity_from_logits(logits, labels)",
         reference=evaluate.perplexity_from_logits,
         public=lambda: [Case(_lm_batch(1, 1, 6, 11), "one sequence, nothing ignored", hint=_SHIFT_HINT),
                         Case(_lm_batch(2, 2, 8, 13, ignore_prefix=3), "a prompt of 3 tokens ignored (-100)",
                              hint="drop the positions whose label is -100 from the mean"),
                         Case(_lm_batch(3, 3, 7, 9, pad_tail=3), "a padded row",
                              hint="the mean is over all scored tokens of the batch, not a mean of row means")],
         hidden=lambda rng: [Case(_lm_batch(rng, rng.randint(1, 4), (s := rng.randint(3, 16)), rng.randint(5, 50),
                                            ignore_prefix=rng.randint(0, s - 2), pad_tail=rng.randint(0, 1)))
                             for _ in range(5)],
         compare=number(rtol=1e-4),
         hint="exp(mean cross-entropy) over the predicted, non-ignored tokens; " + _SHIFT_HINT)


# ---------------------------------------------------------------------------------------------
# exact_match(predictions, references) -> float

_VARIANTS = [lambda s: s, str.upper, lambda s: "  " + s + " ", lambda s: s.replace(" ", "   "),
             lambda s: s + ".", lambda s: s.replace("high", "low"), lambda s: s.title(), lambda s: s + "\n"]
_ANSWERS = ["risk: high", "approve", "dti 32%", '{"name": "linda garcia"}', "pay to: ana silva, amount $1,200",
            "the loan is approved", "42"]


def _em_case(rng_or_seed, n):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    refs = [rng.choice(_ANSWERS) for _ in range(n)]
    preds = [rng.choice(_VARIANTS)(r) if rng.random() < 0.8 else rng.choice(_ANSWERS) for r in refs]
    return {"predictions": preds, "references": refs}


exercise(id="exact_match", lesson=LESSON, title="Exact match after normalising",
         signature="exact_match(predictions, references)",
         reference=evaluate.exact_match,
         public=lambda: [Case({"predictions": ["Risk: high", "approve"], "references": ["risk: high", "decline"]},
                              "case differs", hint="compare lower-cased strings"),
                         Case({"predictions": ["  risk:   high\n", "risk: high."], "references": ["risk: high"] * 2},
                              "whitespace differs; punctuation counts",
                              hint="strip the ends and collapse runs of whitespace; keep punctuation")],
         hidden=lambda rng: [Case(_em_case(rng, rng.randint(1, 12))) for _ in range(5)],
         compare=number(rtol=1e-9),
         hint="the share of pairs equal after lower-casing, stripping and collapsing whitespace")


# ---------------------------------------------------------------------------------------------
# Quizzes

question(id="q13_ppl_from_nll", lesson=LESSON, kind="number", rtol=0.01, answer_hash="63ee21f9a29ebe819350a280",
         text="A model's mean negative log-likelihood on held-out text is 2.0 nats per token. What is its "
              "perplexity? (1% tolerance)")

question(id="q13_em_normalised", lesson=LESSON, kind="choice", answer_hash="08d8925c027093be9a9d3ed1",
         text="With labkit's exact_match (lower-case, strip, collapse whitespace), which pair counts as a match?",
         choices=("'risk: high.' and 'risk: high'",
                  "'risk:high' and 'risk: high'",
                  "' Risk:  HIGH ' and 'risk: high'"),
         feedback={"a": "punctuation is kept: the final '.' makes the two strings differ (in JSON or 'Risk: high' "
                        "punctuation is content).",
                   "b": "normalising collapses runs of whitespace into one space, it does not add a missing one: "
                        "'risk:high' has no space where the other has one."})

question(id="q13_overlap_blind_spot", lesson=LESSON, kind="choice", answer_hash="b7f5077ba3d164a5a0408798",
         text="The reference is 'The debt-to-income ratio is $1,500 / $5,000 = 30%.' and the model writes the same "
              "sentence ending in '= 45%.'. Which metric tells you that this answer is wrong?",
         choices=("exact match (or any check of the value itself)",
                  "ROUGE-L, because it counts word order",
                  "format validity, because the DTI sentence has a fixed form"),
         feedback={"b": "every word but one matches, in order, so the longest common subsequence is almost the whole "
                        "sentence and ROUGE-L stays near 1.",
                   "c": "the wrong answer has exactly the right form: format validity checks the shape of an answer, "
                        "not its value."})

question(id="q13_judge_validation", lesson=LESSON, kind="choice", answer_hash="fcf7ba18df8fda8c8992ae92",
         text="A learned judge agrees with 95% of the held-out preference pairs of its own dataset. Before you "
              "report its win rate of your fine-tuned model against the base model, what do you check?",
         choices=("nothing more: agreement on held-out pairs already shows the judge is reliable",
                  "that a second judge agrees with it on the same preference pairs",
                  "that it agrees with a reference on your models' own answers (where exact match says one is right)"),
         feedback={"a": "the held-out pairs come from the judge's own dataset, with its kinds of bad answer; your "
                        "models' answers can be of a kind the judge never saw, and its agreement need not carry over.",
                   "b": "two judges built on the same data can share a blind spot: agreeing with each other is not "
                        "agreeing with the truth on the answers you will judge."})

question(id="q13_harness_settings", lesson=LESSON, kind="choice", answer_hash="90b8688d514923ccc7934a83",
         text="On the same 40 held-out rows, lm-eval scores the SFT adapter 0.775 exact match with "
              "--apply_chat_template and 0.000 without it. What do you report?",
         choices=("0.000: a prompt without any template is the neutral setting, the same for every model",
                  "0.775, saying it ran with the chat template: scores compare only under the same settings",
                  "about 0.39, the mean of the two runs, since neither setting is more right than the other"),
         feedback={"a": "no prompt is neutral: the adapter learned to answer after its template's generation prompt, "
                        "so raw text asks it a different question; and models differ in what raw text they continue.",
                   "c": "a mean of two settings describes neither run: report the setting the model is used with, "
                        "and name it, so that another score is compared under the same one."})

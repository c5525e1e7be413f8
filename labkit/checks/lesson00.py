"""Lesson 00 (welcome): how checks and quizzes work, on the two ideas the lesson shows live: temperature
(the widget) and reading a paired comparison (McNemar, in "How to read the numbers")."""

from __future__ import annotations

import torch

from labkit.check import Case, exercise, question, randn, tensor

LESSON = "00"


def _temperature_probs(logits, temperature):
    """softmax(logits / temperature) over the last dimension."""
    return torch.softmax(logits / temperature, dim=-1)


exercise(id="temperature_probs", lesson=LESSON, title="Sampling probabilities at a temperature",
         signature="temperature_probs(logits, temperature)",
         reference=_temperature_probs,
         public=lambda: [Case({"logits": torch.tensor([2.0, 1.0, 0.0]), "temperature": 1.0}, "temperature 1: plain softmax"),
                         Case({"logits": torch.tensor([2.0, 1.0, 0.0]), "temperature": 0.5}, "temperature 0.5",
                              hint="divide the logits by the temperature BEFORE the softmax: a low temperature sharpens")],
         hidden=lambda rng: [Case({"logits": randn(rng, rng.randint(2, 50), scale=3.0),
                                   "temperature": rng.choice([0.3, 0.7, 1.0, 1.5, 2.0])}) for _ in range(5)],
         compare=tensor(atol=1e-6),
         hint="probabilities = softmax(logits / temperature); they are positive and sum to 1")

question(id="q00_mcnemar", lesson=LESSON, kind="choice", answer_hash="cb77346e1b3ba4a0725e1d4c",
         text="Two models answer the same 40 questions: A gets 30 right, B gets 33. Only B is right on 5 "
              "questions, only A on 2. Which questions does McNemar's test use to judge whether B is better?",
         choices=("all 40, comparing 30/40 with 33/40 as two independent samples",
                  "the 7 where exactly one model is right (5 for B, 2 for A)",
                  "the 28 that both got right, since they show what each model knows"),
         feedback={"a": "both models answered the same questions, so the samples are not independent; the "
                        "questions both get right (or both get wrong) say nothing about which model is better",
                   "c": "a question both models get right is the same for both: it carries no information "
                        "about a difference between them"})

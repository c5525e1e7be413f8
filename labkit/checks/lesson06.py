"""Lesson 06 (SFT and masking): completion-only labels and the padding collator; a quiz."""

from __future__ import annotations

import random

import torch

from labkit import sft
from labkit.check import Case, exercise, mapping, question, tensor

LESSON = "06"


def _ids(rng_or_seed, n, vocab=500):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    return [rng.randrange(3, vocab) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# completion_labels(input_ids, prompt_length) -> labels


exercise(id="completion_labels", lesson=LESSON, title="Labels that ignore the prompt",
         signature="completion_labels(input_ids, prompt_length)",
         reference=sft.completion_labels,
         public=lambda: [Case({"input_ids": torch.tensor(_ids(1, 8)), "prompt_length": 5}, "a 5-token prompt"),
                         Case({"input_ids": torch.tensor(_ids(2, 6)), "prompt_length": 0}, "no prompt",
                              hint="with prompt_length 0 every token is trained on")],
         hidden=lambda rng: [Case({"input_ids": torch.tensor(_ids(rng, (n := rng.randint(1, 40)))),
                                   "prompt_length": rng.randint(0, n)}) for _ in range(5)],
         compare=tensor(integer=True),
         hint="a copy of input_ids (input_ids.clone()) with -100 on the first prompt_length positions")


# ---------------------------------------------------------------------------------------------
# pad_collate(features, pad_token_id) -> {"input_ids", "attention_mask", "labels"}


def _features(rng_or_seed, n_examples):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    out = []
    for _ in range(n_examples):
        n = rng.randint(2, 20)
        ids = _ids(rng, n)
        out.append({"input_ids": ids, "attention_mask": [1] * n, "labels": sft.completion_labels(ids, rng.randint(0, n - 1))})
    return out


def _collate_reference(features, pad_token_id):
    return sft.PadCollator(pad_token_id)(features)


exercise(id="pad_collate", lesson=LESSON, title="Padding a batch: input_ids, attention_mask, labels",
         signature="pad_collate(features, pad_token_id)",
         reference=_collate_reference,
         public=lambda: [Case({"features": _features(1, 2), "pad_token_id": 0}, "two examples of different lengths"),
                         Case({"features": _features(2, 3), "pad_token_id": 2}, "pad id 2",
                              hint="padding labels are -100 (not the pad id): padding must not be trained on")],
         hidden=lambda rng: [Case({"features": _features(rng, rng.randint(1, 5)), "pad_token_id": rng.choice([0, 1, 2])})
                             for _ in range(4)],
         compare=mapping(("input_ids", "attention_mask", "labels"), tensor(integer=True)),
         hint="tensors (batch, longest), padded on the right: input_ids with pad_token_id, attention_mask with 0, "
              "labels with -100")


# ---------------------------------------------------------------------------------------------
# Quiz

question(id="q06_why_minus_100", lesson=LESSON, kind="choice", answer_hash="ff2158741cc4d63315af5e75",
         text="Why do masked positions get the label -100?",
         choices=("it is the id of the padding token",
                  "it is the ignore_index of torch's cross_entropy, which HF models' loss uses",
                  "a large negative label pushes those logits down"))

"""Lesson 06 (SFT): completion-only labels, the padding collator, where the completion starts, packed
position_ids; quizzes on -100 and on a template mismatch."""

from __future__ import annotations

import random

import torch

from labkit import sft
from labkit.check import Case, exercise, integer, mapping, question, tensor

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
# completion_start(prompt_ids, full_ids) -> int: the prompt/completion split, as trl does it


def _split(rng_or_seed, merge: bool):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    prompt, answer = _ids(rng, rng.randint(3, 20)), _ids(rng, rng.randint(1, 8))
    # a merge: the prompt's last token and the answer's first become one token (an id the prompt never had)
    full = prompt[:-1] + [rng.randrange(500, 600)] + answer[1:] if merge else prompt + answer
    return {"prompt_ids": prompt, "full_ids": full}


exercise(id="completion_start", lesson=LESSON, title="Where the completion starts",
         signature="completion_start(prompt_ids, full_ids)",
         reference=sft.completion_start,
         public=lambda: [Case(_split(1, merge=False), "the prompt's tokens are a prefix of the whole"),
                         Case(_split(2, merge=True), "the prompt's last token merged with the answer's first",
                              hint="tokenised together, the last prompt token is a different id: the completion "
                                   "starts at the first position where the two lists differ, not at len(prompt_ids)")],
         hidden=lambda rng: [Case(_split(rng, merge=rng.random() < 0.5)) for _ in range(6)],
         compare=integer(),
         hint="walk both lists together and count the leading positions where they agree")


# ---------------------------------------------------------------------------------------------
# packed_position_ids(lengths) -> (sum(lengths),) long tensor


exercise(id="packed_position_ids", lesson=LESSON, title="position_ids of a packed row",
         signature="packed_position_ids(lengths)",
         reference=sft.packed_position_ids,
         public=lambda: [Case({"lengths": [3, 2]}, "two sequences packed in one row",
                              hint="each sequence counts its own positions from 0"),
                         Case({"lengths": [4]}, "one sequence alone")],
         hidden=lambda rng: [Case({"lengths": [rng.randint(1, 12) for _ in range(rng.randint(1, 6))]}) for _ in range(5)],
         compare=tensor(integer=True),
         hint="torch.arange(n) for each length n, concatenated: a (sum(lengths),) long tensor")


# ---------------------------------------------------------------------------------------------
# Quizzes

question(id="q06_why_minus_100", lesson=LESSON, kind="choice", answer_hash="ff2158741cc4d63315af5e75",
         text="Why do masked positions get the label -100?",
         choices=("it is the id of the padding token",
                  "it is the ignore_index of torch's cross_entropy, which HF models' loss uses",
                  "a large negative label pushes those logits down"),
         feedback={"a": "the padding token has its own id, a real index into the vocabulary (tok.pad_token_id); "
                        "-100 is no token at all, which is why it can mean 'no label here'.",
                   "c": "a label is a class index, not a target value: cross_entropy drops the positions whose "
                        "label equals ignore_index from the mean, so they get no gradient at all."})

question(id="q06_template_mismatch", lesson=LESSON, kind="choice", answer_hash="f944cf4c57a75a20abd6fecf",
         text="Your data is rendered with a ChatML template, but the collator (copied from an Alpaca tutorial) "
              "trains on what follows the response marker '### Response:'. What happens to an example?",
         choices=("nothing is masked, so it trains on every token, prompt included",
                  "every label is -100, so it teaches nothing (alone, its loss is NaN)",
                  "tokenising raises an error, since the marker is not a special token"),
         feedback={"a": "a marker recipe masks everything up to the marker; when it never finds the marker, "
                        "the whole example stays masked, not unmasked.",
                   "c": "a marker is plain text: it always tokenises. The failure is silent, which is why "
                        "labkit's collator checks that each example has a supervised token."})

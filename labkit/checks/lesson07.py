"""Lesson 07 (data): a normalised-hash dedup, an n-gram contamination check, where a learning curve
flattens (a number quiz), and interview quizzes on how much data, noise against size, and leaks."""

from __future__ import annotations

import math
import random

from labkit import dataprep
from labkit.check import Case, exercise, question
from labkit.check.compare import type_name

LESSON = "07"

_WORDS = ("loan", "risk", "income", "debts", "credit", "score", "applicant", "bank", "memo", "pay", "slip", "net",
          "the", "of", "is", "a", "monthly", "ratio", "Linda", "Garcia", "500", "1", "000")


def _sentence(rng: random.Random, lo: int = 3, hi: int = 14) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def _variant(rng: random.Random, text: str) -> str:
    """TEXT in other case and spacing: the same row once normalised."""
    words = [w.upper() if rng.random() < 0.4 else w for w in text.split(" ")]
    return rng.choice(["", " ", "\n"]) + rng.choice([" ", "  ", "\t", " \n"]).join(words) + rng.choice(["", " ", "\n\n"])


# ---------------------------------------------------------------------------------------------
# dedup(texts) -> the indices to keep


def _dedup_case(rng: random.Random, n: int) -> Case:
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < 0.4:
            texts.append(_variant(rng, rng.choice(texts)))
        else:
            texts.append(_sentence(rng))
    return Case({"texts": texts})


def _indices(got, exp, case=None):
    if not isinstance(got, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in got):
        return f"returned {type_name(got)}; expected a list of ints (the indices of the rows to keep)"
    if list(got) != sorted(set(got)):
        return "the indices must be in increasing order, each once"
    if len(got) != len(exp):
        return f"you keep {len(got)} rows, not the right number"
    i = next(k for k, (a, b) in enumerate(zip(got, exp)) if a != b) if list(got) != list(exp) else None
    return None if i is None else f"the kept rows differ from the {i + 1}th kept row on"


exercise(id="normalised_dedup", lesson=LESSON, title="Exact duplicates, after normalisation",
         signature="dedup(texts)",
         reference=dataprep.exact_dedup,
         public=lambda: [Case({"texts": ["Risk: high", "risk:  HIGH ", "Risk: low"]}, "case and spacing differ",
                              hint="normalise first: NFKC, casefold, and one space for every run of whitespace"),
                         Case({"texts": ["a b", "c", "a b", "A B", "c "]}, "a text repeated three times",
                              hint="keep the FIRST row of each group, and the kept indices in their original order"),
                         Case({"texts": ["$1,500", "$1500"]}, "punctuation differs",
                              hint="punctuation is content: $1,500 and $1500 are different rows")],
         hidden=lambda rng: [_dedup_case(rng, rng.randint(1, 30)) for _ in range(6)],
         compare=_indices,
         hint="one pass: a set of the hashes (or normalised texts) seen so far; keep i when its hash is new")


# ---------------------------------------------------------------------------------------------
# overlap(texts, reference, n) -> the share of each text's n-grams found in the reference


def _overlap_case(rng: random.Random) -> Case:
    reference = [_sentence(rng, 4, 20) for _ in range(rng.randint(0, 6))]
    texts = []
    for _ in range(rng.randint(1, 6)):
        roll = rng.random()
        if reference and roll < 0.3:
            texts.append(rng.choice(reference))                       # a copied row
        elif reference and roll < 0.6:
            ws = rng.choice(reference).split()
            texts.append(" ".join(ws[:rng.randint(0, len(ws))] + _sentence(rng, 1, 6).split()))  # a partial copy
        else:
            texts.append(_sentence(rng, 0, 12))
    return Case({"texts": texts, "reference": reference, "n": rng.choice([2, 3, 4, 8])})


def _shares(got, exp, case=None):
    if not isinstance(got, (list, tuple)):
        return f"returned {type_name(got)}; expected a list with one share per text"
    if len(got) != len(exp):
        return f"returned {len(got)} shares for {len(exp)} texts"
    for i, (g, e) in enumerate(zip(got, exp)):
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isclose(g, e, abs_tol=1e-9):
            return f"the share of text {i} is not right"
    return None


exercise(id="ngram_contamination", lesson=LESSON, title="An n-gram contamination check",
         signature="overlap(texts, reference, n)",
         reference=dataprep.ngram_overlap,
         public=lambda: [Case({"texts": ["the cat sat on the mat"], "reference": ["the cat sat on the mat"], "n": 3},
                              "a copied row", hint="every trigram of a copied row is in the reference: 1.0"),
                         Case({"texts": ["the cat sat on a log"], "reference": ["The cat sat on the mat."], "n": 3},
                              "a partial copy, other case and punctuation",
                              hint="words are lower-cased runs of letters and digits; count each n-gram once (a set)"),
                         Case({"texts": ["two words", ""], "reference": ["two words here"], "n": 3},
                              "texts shorter than n",
                              hint="a text shorter than n words is one n-gram of all its words; no words at all: 0.0")],
         hidden=lambda rng: [_overlap_case(rng) for _ in range(6)],
         compare=_shares,
         hint="the set of the text's n-grams, the set of every reference n-gram, and |both| / |the text's|")


# ---------------------------------------------------------------------------------------------
# Quizzes

CURVE = ((25, 8), (50, 21), (100, 44), (200, 60), (400, 66), (800, 69))  # (training examples, right of 80)

question(id="q07_curve_bend", lesson=LESSON, kind="number", answer_hash="898e77f590642925cc57679f",
         text="A task family, scored on 80 held-out rows after training on 25, 50, 100, 200, 400 and 800 examples, "
              "gets 8, 21, 44, 60, 66 and 69 right. With lesson 07's rule (the curve flattens at the smallest size "
              "whose Wilson 95% interval holds the score of every larger size), where does it flatten?",
         hint="labkit.stats.share_interval(k, 80) gives a point's interval; test each size against the scores "
              "of all the larger ones")

question(id="q07_how_much", lesson=LESSON, kind="choice", answer_hash="3a646e7b3bd285e72845a31e",
         text="A team starts a fine-tune on a new extraction task and asks how many examples to label. "
              "What do you answer?",
         choices=("10,000 or more: below that a fine-tune learns nothing useful, whatever the task or the model",
                  "a few hundred, trained at several sizes on one budget; more where a family's curve rises",
                  "as many as the budget allows: more examples never lower the score, so every extra row is safe"),
         feedback={"a": "lesson 07's overall curve was flat from 100 examples, one family was learned from its "
                        "first 5 and one (a division) from none at any size: the count depends on the task and the "
                        "model, so measure it.",
                   "c": "more rows cost labelling time and can bring wrong answers, repeats and leaked test rows "
                        "with them; past the bend of a family's curve they buy nothing the interval can see."})

question(id="q07_contamination", lesson=LESSON, kind="choice", answer_hash="944a81b90d0d01a0d73dd817",
         text="After a data refresh that added scraped rows, your fine-tune's held-out exact match jumps from "
              "55% to 80%. Nothing else changed. What do you do first?",
         choices=("report 80%: the new data is simply better, and the refresh did not touch the held-out rows",
                  "rerun with two more seeds to see whether the jump holds before you look at anything else",
                  "measure each held-out row's n-gram overlap with the new rows; score the rows sharing none"),
         feedback={"a": "a jump that large from a data refresh is the signature of a leak: held-out rows copied "
                        "into training are answered from memory, and the score no longer measures generalisation.",
                   "b": "seeds measure the training run's noise; a leak is in the data, so every seed inherits "
                        "it and the inflated score repeats perfectly."})

question(id="q07_entity_split", lesson=LESSON, kind="choice", answer_hash="c9c40ce29daa73cb36670217",
         text="Your dataset holds three rows per customer (the same file asked three ways). A random 80/20 split "
              "of the rows scores 90%. How should you split to learn what a new customer would get?",
         choices=("by customer: all of a customer's rows on one side, so no test customer was seen in training",
                  "a random split with a fixed seed, so that the 90% is reproducible from one run to the next",
                  "a random split after exact dedup, since a customer's three rows are near-duplicates of each other"),
         feedback={"b": "a seed makes the split repeatable, not honest: most test customers still have their "
                        "other rows in training, whatever the seed.",
                   "c": "the three rows are worded differently, so exact dedup keeps all of them; the facts they "
                        "share still cross the split. Group by the customer instead."})

question(id="q07_noise_vs_size", lesson=LESSON, kind="choice", answer_hash="44fb124cef07eed14c2fbe1a",
         text="You can have 200 answers checked by an expert, or 800 from a cheaper source of which about 30% are "
              "wrong, for the same price. How do you choose?",
         choices=("take the 800: with four times as many rows, the model averages the wrong answers away",
                  "take the 200: any share of wrong answers ruins a fine-tune, whatever the size of the set",
                  "train both for the same steps; compare them on the same held-out rows with a paired test"),
         feedback={"a": "a wrong answer in the right format is a lesson like any other: the model cannot tell it "
                        "from a right one, and each wrong row pulls it towards its wrong value. Whether four times "
                        "the rows make up for that depends on the task: measure it.",
                   "b": "wrong answers cost something, but a fine-tune does not collapse because some of its rows "
                        "are wrong; lesson 07 measures how much 10% and 30% cost. Decide on that measurement."})

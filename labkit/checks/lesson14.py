"""Lesson 14 (catastrophic forgetting): a remedy's paired effect read off a grid; quizzes on a geometric
mean with one huge ratio and on a remedy that stops learning."""

from __future__ import annotations

import random

from labkit import forgetting
from labkit.check import Case, exercise, mapping, number, question

LESSON = "14"


# ---------------------------------------------------------------------------------------------
# paired_effect(runs, key, safe, risky) -> {"g_safe", "g_risky", "better", "n", "e_safe", "e_risky"}

_KNOBS = {"lr": (2e-4, 2e-3), "r": (4, 64), "mix": (0.1, 0.0)}  # (safe, risky)


def _grid(rng_or_seed, huge: bool = False):
    """A 2 x 2 x 2 grid of runs with random ratios and exact matches, in a shuffled order; HUGE: the all-risky
    run forgets a hundredfold or more, as the bundled model's did."""
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    runs = [{"lr": lr, "r": r, "mix": mix, "ppl_ratio": round(rng.uniform(0.9, 1.3), 3),
             "exact": rng.choice([0.0, 0.2, 0.5, 0.8, 1.0])}
            for lr in _KNOBS["lr"] for r in _KNOBS["r"] for mix in _KNOBS["mix"]]
    if huge:
        worst = next(x for x in runs if (x["lr"], x["r"], x["mix"]) == (2e-3, 64, 0.0))
        worst["ppl_ratio"] = round(rng.uniform(100, 300), 1)
    rng.shuffle(runs)
    return runs


def _case(rng_or_seed, key, huge=False):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    safe, risky = _KNOBS[key]
    return {"runs": _grid(rng, huge), "key": key, "safe": safe, "risky": risky}


exercise(id="paired_effect", lesson=LESSON, title="A remedy's paired effect on forgetting",
         signature="paired_effect(runs, key, safe, risky)",
         reference=forgetting.paired_effect,
         public=lambda: [Case(_case(1, "lr"), "the learning rate: 4 pairs that differ only in lr"),
                         Case(_case(2, "mix", huge=True), "10% general data, with one run that forgot a hundredfold",
                              hint="the geometric mean is exp(mean(log ratio)): one huge ratio enters as its log")],
         hidden=lambda rng: [Case(_case(rng, rng.choice(list(_KNOBS)), huge=rng.random() < 0.5)) for _ in range(5)],
         compare=mapping(("g_safe", "g_risky", "better", "n", "e_safe", "e_risky"), number(rtol=1e-6)),
         hint="a pair is two runs equal in the other two knobs; better counts the pairs whose safe run has the lower "
              "ppl_ratio")


# ---------------------------------------------------------------------------------------------
# Quizzes

question(id="q14_geomean_one_huge", lesson=LESSON, kind="number", rtol=0.01, answer_hash="cb1e248859cd2679ca7af2ad",
         text="A remedy is read off four pairs of runs. Without the remedy the perplexity ratios are x1, x1, x1 and "
              "x256. What is their geometric mean? (1% tolerance)")

question(id="q14_remedy_that_stops_learning", lesson=LESSON, kind="choice", answer_hash="2f17928f4d03a4894a8e91e1",
         text="At a low learning rate, general-text perplexity stayed at x1.00 of the base and the task's exact match "
              "stayed at 0%. What does this run say about a low learning rate as a remedy for forgetting?",
         choices=("it works: the model forgot nothing",
                  "nothing yet: it avoided forgetting by not learning; compare runs that reach the same task score",
                  "it made forgetting worse, since perplexity should fall after fine-tuning"),
         feedback={"a": "it also learned nothing, and a model that does not change cannot forget: a remedy is "
                        "judged next to the task score it reaches.",
                   "c": "fine-tuning on a narrow task does not lower general-text perplexity; x1.00 means unchanged, "
                        "not worse."})

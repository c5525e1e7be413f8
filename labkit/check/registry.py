"""The registry: what a lesson module in labkit/checks/ registers (exercises with their cases, quiz
questions), and the lookups the checker makes. Every module there is imported the first time the
registry is needed (see labkit/checks/__init__.py for how to add an exercise)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

DEFAULT_TIMEOUT = 10.0  # seconds for all the cases of one exercise together


@dataclass
class Case:
    """One call of the candidate: inputs in call order ({"x": tensor, "r": 4}), passed positionally.

    label: a few words saying what is special about the case ("no bias", "a partial last block");
    hint: shown when this case fails (falls back to the exercise's hint).
    """

    inputs: dict
    label: str = ""
    hint: str = ""


@dataclass
class Exercise:
    """A coding exercise. compare(got, expected, case) returns None when GOT is right, else a short
    description of what is wrong that never contains EXPECTED's values."""

    id: str
    lesson: str
    title: str
    signature: str
    reference: Callable
    public: Callable[[], list]
    hidden: Callable[[random.Random], list]
    compare: Callable
    hint: str = ""
    timeout: float = DEFAULT_TIMEOUT


@dataclass
class Question:
    """A quiz question. kind: "choice" (answer a letter, or a choice's text), "number" or "text".

    answer_hash is answer_hash(id, answer, kind, rtol, atol) of the right answer: only the hash is
    stored (see labkit.check.answers for what that does and does not hide).

    feedback: {letter: why that choice is wrong}, shown when a learner picks it (choice questions).
    Give one for every wrong choice: a wrong answer gets feedback about that answer.
    """

    id: str
    lesson: str
    text: str
    kind: str
    answer_hash: str
    choices: tuple = ()
    rtol: float | None = None
    atol: float | None = None
    hint: str = ""
    feedback: dict | None = None


EXERCISES: dict[str, Exercise] = {}
QUESTIONS: dict[str, Question] = {}
_LOADED = False


def exercise(**kwargs) -> Exercise:
    """Register an Exercise (same keyword arguments); a lesson module calls this once per exercise."""
    ex = Exercise(**kwargs)
    if ex.id in EXERCISES or ex.id in QUESTIONS:
        raise ValueError(f"exercise id {ex.id!r} is registered twice")
    EXERCISES[ex.id] = ex
    return ex


def question(**kwargs) -> Question:
    """Register a quiz Question (same keyword arguments)."""
    q = Question(**kwargs)
    if q.kind not in ("choice", "number", "text"):
        raise ValueError(f"question kind must be choice, number or text, got {q.kind!r}")
    if q.id in QUESTIONS or q.id in EXERCISES:
        raise ValueError(f"question id {q.id!r} is registered twice")
    QUESTIONS[q.id] = q
    return q


def load() -> None:
    """Import every lesson module under labkit/checks/ once; each registers its exercises."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil

    from .. import checks

    for info in sorted(pkgutil.iter_modules(checks.__path__), key=lambda m: m.name):
        importlib.import_module(f"{checks.__name__}.{info.name}")


def exercises() -> list[str]:
    """The ids of every coding exercise, in lesson order."""
    load()
    return [e.id for e in sorted(EXERCISES.values(), key=lambda e: e.lesson)]


def quizzes() -> list[str]:
    """The ids of every quiz question, in lesson order."""
    load()
    return [q.id for q in sorted(QUESTIONS.values(), key=lambda q: q.lesson)]


def get(exercise_id: str) -> Exercise | Question:
    """The Exercise or Question registered as EXERCISE_ID (KeyError if there is none)."""
    load()
    return EXERCISES.get(exercise_id) or QUESTIONS[exercise_id]


def as_rng(rng_or_seed) -> random.Random:
    """RNG_OR_SEED itself when it is a random.Random, else a random.Random seeded with it (a case
    generator takes either)."""
    return rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)


def randn(rng: random.Random, *shape, dtype=None, scale: float = 1.0):
    """A standard-normal tensor of SHAPE, times SCALE, drawn from a torch generator seeded by RNG
    (for a lesson's hidden cases)."""
    import torch

    g = torch.Generator().manual_seed(rng.randrange(2**31))
    return scale * torch.randn(*shape, generator=g, dtype=dtype or torch.float32)

"""Interview prep (lesson 19): labkit.check's quiz, plus where each answer is proven in the course.

    from labkit.interview import quiz, deck
    deck()                          # every question id by topic
    quiz("q19_which_rank")          # shows the question
    quiz("q19_which_rank", "b")     # checks it; then says which lesson and section prove the answer,
                                    # and, once right, why

The explanations live beside the questions in labkit/checks/lesson19.py. "Where" is shown after any
answer (it points to the proof, not to the letter); "why" only after a right answer, since it may give
the answer away.
"""

from __future__ import annotations

from typing import Any

from . import check
from .check import registry

_MISSING = object()


def _explanations() -> dict:
    registry.load()
    from .checks import lesson19

    return lesson19.EXPLANATIONS


def explain(question_id: str) -> tuple[str, str]:
    """(where, why) for a lesson-19 question; ValueError naming the id when there is none."""
    table = _explanations()
    if question_id not in table:
        raise ValueError(f"no explanation for {question_id!r}; lesson 19's questions are: {', '.join(table)}.")
    return table[question_id]


def quiz(question_id: str, answer: Any = _MISSING) -> check.Result:
    """labkit.check.quiz, with the lesson and section that prove the answer once you have answered."""
    if answer is _MISSING:
        return check.quiz(question_id)
    result = check.quiz(question_id, answer)
    if answer is None or answer is Ellipsis:
        return result
    try:
        where, why = explain(question_id)
    except Exception:  # a question of another lesson: nothing to add, and never raise into the kernel
        return result
    extra = f"\n  see:     {where}" + (f"\n  why:     {why}" if result.passed else "")
    return check.Result(result.passed, result.message + extra, result.exercise, result.case, result.output)


def deck(topic: str | None = None) -> dict[str, list[str]]:
    """{topic: [question ids]} of lesson 19, in order; TOPIC keeps one (ValueError naming the known ones)."""
    registry.load()
    from .checks import lesson19

    out: dict[str, list[str]] = {}
    for qid, t in lesson19.TOPICS.items():
        out.setdefault(t, []).append(qid)
    if topic is not None:
        if topic not in out:
            raise ValueError(f"unknown topic {topic!r}; choose one of {sorted(out)}.")
        return {topic: out[topic]}
    return out

"""Quizzes: `quiz(question_id)` shows a question, `quiz(question_id, answer)` judges an answer
against a stored hash.

Quiz answers are stored as salted SHA-256 hashes of the normalised answer (see `answer_hash`): not
readable in the source, but not secret either. The salt is public and a multiple-choice or numeric
answer has few possible values, so anyone can find it by trying them; the hashes only keep answers
out of plain sight (no spoilers while reading labkit's code). Numbers with a tolerance are hashed by
bucket: relative tolerance rtol puts x in bucket floor(log|x| / log(1 + rtol) + 1/2) (with its sign),
absolute tolerance atol in floor(x / atol + 1/2); an answer is accepted when its bucket is the stored
one or a neighbour. So an answer within a factor (1 + rtol) of the true value (within atol) is always
accepted, one off by a factor (1 + rtol)^2 or more (by 2 atol or more) never, and in between it
depends on where the bucket edges fall.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from typing import Any

from . import record, registry
from .compare import describe
from .registry import Question
from .result import Result, fail, pending

QUIZ_SALT = "labkit-quiz-v1"


def _normalise(answer, kind: str, choices=()) -> str | None:
    if kind == "number":
        return None
    text = " ".join(str(answer).strip().casefold().split())
    if kind == "choice":
        def bare(s):
            return " ".join(str(s).casefold().split()).strip("().: ")

        text = bare(text)
        for i, choice in enumerate(choices):
            if text == bare(choice):
                return "abcdefghijklmnopqrstuvwxyz"[i]
        return text
    return text.strip(".!? ")


def _parse_number(answer) -> float | None:
    if isinstance(answer, bool):
        return None
    if isinstance(answer, numbers.Real):
        return float(answer)
    if hasattr(answer, "item"):  # a 0-d tensor or numpy scalar
        try:
            return float(answer.item())
        except Exception:
            return None
    if isinstance(answer, str):
        try:
            return float(answer.replace(",", "").replace("_", "").replace(" ", ""))
        except ValueError:
            return None
    return None


def _bucket(x: float, rtol: float | None, atol: float | None) -> tuple:
    """(sign, index) of X's tolerance bucket; without a tolerance, X itself (exact answers)."""
    if rtol:
        if x == 0:
            return ("0", 0)
        return ("+" if x > 0 else "-", int(math.floor(math.log(abs(x)) / math.log1p(rtol) + 0.5)))
    if atol:
        return ("", int(math.floor(x / atol + 0.5)))
    return ("=", repr(float(x)))


def _hash(question_id: str, kind: str, key) -> str:
    return hashlib.sha256(f"{QUIZ_SALT}:{question_id}:{kind}:{key}".encode()).hexdigest()[:24]


def answer_hash(question_id: str, answer, kind: str = "choice", rtol: float | None = None,
                atol: float | None = None, choices=()) -> str:
    """The hash to store in a Question for the right ANSWER (run it once when writing a question)."""
    if kind == "number":
        value = _parse_number(answer)
        if value is None or not math.isfinite(value):
            raise ValueError(f"not a number: {answer!r}")
        return _hash(question_id, kind, _bucket(value, rtol, atol))
    return _hash(question_id, kind, _normalise(answer, kind, choices))


def _quiz_correct(q: Question, answer) -> bool | None:
    if q.kind == "number":
        value = _parse_number(answer)
        if value is None or not math.isfinite(value):
            return None
        sign, k = _bucket(value, q.rtol, q.atol)
        near = [(sign, k)] if sign in ("=", "0") else [(sign, k - 1), (sign, k), (sign, k + 1)]
        return any(_hash(q.id, q.kind, k) == q.answer_hash for k in near)
    return _hash(q.id, q.kind, _normalise(answer, q.kind, q.choices)) == q.answer_hash


_MISSING = object()


def _wrong(q: Question, answer) -> Result:
    """A wrong answer, with feedback about THAT answer: a choice's own feedback, or what a valid answer is."""
    if q.kind == "choice":
        letters = "abcdefghijklmnopqrstuvwxyz"[:len(q.choices)]
        picked = _normalise(answer, q.kind, q.choices)
        if picked not in letters:
            return fail(q.id, f"{describe(answer)} is none of the choices",
                        hint=f"answer with one letter of {', '.join(letters)} (or a choice's text)")
        said = (q.feedback or {}).get(picked)
        return fail(q.id, f"{picked}) is not right" + (f": {said}" if said else ""), hint=q.hint or "")
    return fail(q.id, "not right, try again", hint=q.hint)


def quiz(question_id: str, answer: Any = _MISSING) -> Result:
    """quiz(id) shows the question; quiz(id, answer) checks your answer. Never raises."""
    try:
        registry.load()
        q = registry.QUESTIONS.get(question_id) if isinstance(question_id, str) else None
        if q is None:
            return fail(str(question_id),
                        f"there is no quiz question {question_id!r}; known: {', '.join(registry.quizzes())}")
        text = q.text + "".join(f"\n    {'abcdefghij'[i]}) {c}" for i, c in enumerate(q.choices))
        if answer is _MISSING:
            return Result(False, f"? {q.id}: {text}", q.id)
        kind = {"choice": "a letter such as 'b'", "number": "a number", "text": "a word or two"}[q.kind]
        if answer is None or answer is Ellipsis or (isinstance(answer, str) and not answer.strip()):
            # the question is already on screen (quiz(id) above): say what to write, not the question again
            return pending(q.id, f"set answer to {kind}; quiz({q.id!r}) shows the question")
        correct = _quiz_correct(q, answer)
        if correct is None:
            result = fail(q.id, f"the answer should be a number, got {describe(answer)}")
        elif correct:
            result = Result(True, f"✔ {q.id}: correct", q.id)
        else:
            result = _wrong(q, answer)
        record.record(q.id, result.passed)
        return result
    except BaseException as exc:
        return fail(str(question_id), f"the checker itself failed ({type(exc).__name__}: {exc}); please report this")


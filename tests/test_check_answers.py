"""labkit.check.answers: quiz() shows a question, judges letters, choice texts and numbers (with a
tolerance, by hash buckets) against stored hashes, and survives odd answers."""

import pytest
import torch

from labkit import check as C
from labkit.check import registry

pytestmark = pytest.mark.usefixtures("checker_env")


def test_quiz_shows_the_question_without_an_answer():
    r = C.quiz("q01_merge_cost")
    assert not r.passed and "a) " in r.message and "b) " in r.message
    assert "#0b57d0" in r._repr_html_()  # shown as a question, not as a wrong answer


def test_no_answer_says_what_to_write_without_printing_the_question_again():
    """quiz(id) shows the question; quiz(id, None) under it must not print it a second time (lesson 19
    printed every question twice)."""
    shown = C.quiz("q01_merge_cost").message
    empty = C.quiz("q01_merge_cost", None).message
    assert "not answered yet" in empty and "a letter such as 'b'" in empty
    assert "#0b57d0" in C.quiz("q01_merge_cost", None)._repr_html_(), "neutral, not a red failure"
    assert C.quiz("q01_merge_cost", "  ").message.startswith("… q01_merge_cost: not answered yet")  # a blank string too
    question = shown.split(": ", 1)[1].splitlines()[0]
    assert question not in empty and "a) " not in empty
    number = C.quiz("q19_rslora_scale", None).message
    assert "set answer to a number" in number


def test_quiz_survives_odd_answers(failed):
    for answer in (None, ..., object(), [1, 2], float("nan"), "", "zzz"):
        assert C.quiz("q01_all_linear_r8", answer).passed is False
        assert C.quiz("q01_merge_cost", answer).passed is False
    failed(C.quiz("no_such_question", "a"), "no quiz question")


def test_numeric_tolerance_by_buckets():
    qid = "test_only_number"
    q = C.Question(id=qid, lesson="xx", text="?", kind="number", rtol=0.01,
                   answer_hash=C.answer_hash(qid, 250.0, "number", rtol=0.01))
    monkey = dict(registry.QUESTIONS)
    registry.QUESTIONS[qid] = q
    try:
        for ok in (250.0, 251.5, 248.0, "250", "2.5e2", torch.tensor(250.0)):
            assert C.quiz(qid, ok).passed, ok
        for bad in (256.0, 244.0, -250.0, 0.0, 2500):
            assert not C.quiz(qid, bad).passed, bad
        q.rtol, q.atol = None, 0.5
        q.answer_hash = C.answer_hash(qid, -3.0, "number", atol=0.5)
        assert C.quiz(qid, -3.2).passed and C.quiz(qid, -2.6).passed
        assert not C.quiz(qid, -4.1).passed and not C.quiz(qid, 3.0).passed
        q.atol = None
        q.answer_hash = C.answer_hash(qid, 1234, "number")
        assert C.quiz(qid, "1,234").passed and not C.quiz(qid, 1235).passed
    finally:
        registry.QUESTIONS.clear()
        registry.QUESTIONS.update(monkey)


def test_answer_hash_depends_on_the_question_and_the_salt():
    assert C.answer_hash("a", "b") != C.answer_hash("c", "b")
    assert C.answer_hash("a", "B)") == C.answer_hash("a", " b ")
    assert len(C.answer_hash("a", 1.0, "number", rtol=0.1)) == 24

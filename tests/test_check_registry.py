"""labkit.check.registry: ids are registered once, question kinds are checked, get() finds both
kinds, load() imports every lesson module under labkit/checks/, and a registered exercise is
checked and listed in lesson order."""

import pkgutil
import random
import sys

import pytest
import torch

from labkit import check as C
from labkit import checks
from labkit.check import compare, registry

pytestmark = pytest.mark.usefixtures("checker_env")


@pytest.fixture
def scratch_registry():
    """The registry as it is, restored after the test."""
    registry.load()
    exercises, questions = dict(registry.EXERCISES), dict(registry.QUESTIONS)
    yield
    registry.EXERCISES.clear()
    registry.EXERCISES.update(exercises)
    registry.QUESTIONS.clear()
    registry.QUESTIONS.update(questions)


def _exercise(exercise_id, lesson="98"):
    return dict(id=exercise_id, lesson=lesson, title="a test", signature=f"{exercise_id}(x)",
                reference=lambda x: x, public=lambda: [C.Case({"x": 3})], hidden=lambda rng: [],
                compare=compare.integer())


def test_an_id_is_registered_once_across_exercises_and_questions(scratch_registry):
    registry.exercise(**_exercise("test_only_ex"))
    with pytest.raises(ValueError, match="exercise id 'test_only_ex' is registered twice"):
        registry.exercise(**_exercise("test_only_ex"))
    with pytest.raises(ValueError, match="question id 'test_only_ex' is registered twice"):
        registry.question(id="test_only_ex", lesson="98", text="?", kind="choice", answer_hash="x")
    with pytest.raises(ValueError, match="exercise id 'q01_merge_cost' is registered twice"):
        registry.exercise(**_exercise("q01_merge_cost"))


def test_a_question_kind_must_be_choice_number_or_text(scratch_registry):
    with pytest.raises(ValueError, match="choice, number or text, got 'essay'"):
        registry.question(id="test_only_q", lesson="98", text="?", kind="essay", answer_hash="x")
    assert "test_only_q" not in registry.QUESTIONS


def test_get_finds_exercises_and_questions_and_raises_keyerror_otherwise():
    assert isinstance(C.get("lora_merge"), registry.Exercise)
    assert isinstance(C.get("q01_merge_cost"), registry.Question)
    with pytest.raises(KeyError):
        C.get("no_such_id")


def test_a_registered_exercise_is_checked_and_listed_in_lesson_order(scratch_registry):
    registry.exercise(**_exercise("test_only_ex", lesson="00"))
    ids = C.exercises()
    assert "test_only_ex" in ids   # listed among lesson 00's, before every later lesson's exercise
    assert ids.index("test_only_ex") < min(ids.index(i) for i in ids if C.get(i).lesson > "00")
    lessons = [C.get(i).lesson for i in C.exercises()]
    assert lessons == sorted(lessons)
    assert [C.get(i).lesson for i in C.quizzes()] == sorted(C.get(i).lesson for i in C.quizzes())
    r = C.check("test_only_ex", lambda x: x)
    assert r.passed and "1 public and 0 random hidden cases" in r.message
    assert "the count is not right" in C.check("test_only_ex", lambda x: x + 1).message


def test_load_imports_every_lesson_module_each_under_its_own_lesson():
    registry.load()
    names = [m.name for m in pkgutil.iter_modules(checks.__path__)]
    assert len(names) >= 9
    modules = [sys.modules[f"labkit.checks.{n}"] for n in names]  # KeyError if one was not imported
    assert [m.LESSON for m in modules] == [n.removeprefix("lesson") for n in names]
    assert {C.get(i).lesson for i in C.exercises() + C.quizzes()} == {m.LESSON for m in modules}


def test_randn_is_drawn_from_the_rng_it_is_given():
    a = registry.randn(random.Random(0), 2, 3)
    assert a.shape == (2, 3) and a.dtype == torch.float32
    assert torch.equal(a, registry.randn(random.Random(0), 2, 3))
    assert not torch.equal(a, registry.randn(random.Random(1), 2, 3))
    assert torch.equal(registry.randn(random.Random(0), 2, 3, scale=2.0), 2 * a)
    assert registry.randn(random.Random(0), 4, dtype=torch.float64).dtype == torch.float64

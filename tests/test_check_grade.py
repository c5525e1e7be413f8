"""labkit.check.grade: check() runs every case and turns each kind of bad submission into a clear
message (what was raised and where, not implemented yet, an input changed in place, the wrong
parameters, not a function), and never raises itself."""

import time

import pytest
import torch

from labkit import check as C
from labkit import evaluate
from labkit.check import grade

pytestmark = pytest.mark.usefixtures("checker_env")


def test_a_right_answer_passes_and_says_how_many_cases(merge):
    r = C.check("lora_merge", merge)
    assert r.passed and bool(r) and "passed" in r.message and "hidden" in r.message


def test_candidate_that_raises_names_the_exception_and_the_case(failed):
    def bad(W, A, B, alpha, r):
        return W + B @ A.T  # wrong orientation: a shape error

    r = failed(C.check("lora_merge", bad), "raised RuntimeError", "public case 1 of", "W (6, 8) float32")
    assert "at line" in r.message and "B @ A.T" in r.message  # where in the learner's code


def test_an_error_inside_labkit_points_at_the_learners_line(failed):
    def via_labkit(W, A, B, alpha, r):
        return evaluate.exact_match([], [])  # raises ValueError inside labkit/evaluate.py

    r = failed(C.check("lora_merge", via_labkit), "raised ValueError", "needs at least one prediction")
    assert "evaluate.exact_match([], [])" in r.message and "raise ValueError" not in r.message


def test_not_implemented_is_a_neutral_not_answered_yet_and_counts_no_attempt(failed):
    """After Run All an exercise notebook's stubs raise NotImplementedError: a blue "not answered yet"
    box (no red failure), and progress() counts no attempt."""
    from labkit.check import progress

    def stub(W, A, B, alpha, r):
        raise NotImplementedError("replace this line with your code")

    result = failed(C.check("lora_merge", stub), "not answered yet", "not implemented yet",
                    "replace the `raise NotImplementedError`")
    assert result.message.startswith("…") and "#0b57d0" in result._repr_html_() and "#b3261e" not in result._repr_html_()
    row = next(r for r in progress().rows if r[1] == "lora_merge")
    assert row[3] is None and row[4] == 0
    assert not C.check("lora_merge", lambda W, A, B, alpha, r: W).message.startswith("…")  # a wrong answer is red


def test_timeout_can_come_from_the_environment(monkeypatch, failed):
    monkeypatch.setenv("LABKIT_CHECK_TIMEOUT", "0.8")
    failed(C.check("lora_merge", lambda *a: time.sleep(60)), "within 0.8 s")


def test_mutating_an_input_fails(failed):
    def in_place(W, A, B, alpha, r):
        W += (alpha / r) * (B @ A)
        return W

    failed(C.check("lora_merge", in_place), "modified its input 'W' in place", "clone")


def test_modified_sees_tensors_modules_and_containers():
    t = torch.tensor([1.0, float("nan")])
    assert not grade.modified(t, t.clone())  # NaN where it was NaN is no change
    assert grade.modified(t, torch.tensor([2.0, float("nan")]))
    assert grade.modified(t, t.double()) and grade.modified(t, t[:1])
    layer = torch.nn.Linear(3, 2)
    copy = torch.nn.Linear(3, 2)
    copy.load_state_dict(layer.state_dict())
    assert not grade.modified(layer, copy)
    copy.bias.requires_grad_(False)
    assert grade.modified(layer, copy)
    assert grade.modified([t, 1], [t, 2]) and grade.modified({"a": t}, {"a": t + 1})
    assert grade.modified((1, 2), [1, 2]) and not grade.modified({"a": [1]}, {"a": [1]})


def test_a_little_printing_is_fine_and_shown_when_failing(merge, failed):
    def debug(W, A, B, alpha, r):
        print("shape of W:", tuple(W.shape))
        return W

    r = failed(C.check("lora_merge", debug), "your function printed", "shape of W: (6, 8)")
    assert r.output.startswith("shape of W")

    def debug_ok(W, A, B, alpha, r):
        print("hello")
        return merge(W, A, B, alpha, r)

    assert C.check("lora_merge", debug_ok).passed


@pytest.mark.parametrize("candidate, words", [
    (42, ["needs your function itself", "int"]),
    ("lora_merge", ["needs your function itself", "str"]),
    (None, ["… lora_merge: not answered yet", "no answer yet"]),
    (..., ["… lora_merge: not answered yet", "no answer yet"]),
    (torch.zeros(3), ["needs your function itself", "tensor (3,)"]),
])
def test_not_callable(candidate, words, failed):
    failed(C.check("lora_merge", candidate), *words)


def test_wrong_number_of_parameters_is_explained(failed):
    failed(C.check("lora_merge", lambda W, A, B: W), "do not fit the call", "lora_merge(W, A, B, alpha, r)")


def test_keyboard_interrupt_and_base_exceptions_inside_the_candidate(failed):
    def interrupt(*a):
        raise KeyboardInterrupt

    failed(C.check("lora_merge", interrupt), "raised KeyboardInterrupt")


def test_unknown_exercise_suggests_close_names(merge, failed):
    failed(C.check("lora_merg", merge), "no exercise 'lora_merg'", "did you mean lora_merge")
    failed(C.check(123, merge), "no exercise")
    failed(C.check("q01_merge_cost", merge), "is a quiz question")


def test_a_broken_comparator_or_reference_is_not_an_exception(monkeypatch, merge, failed):
    ex = C.get("lora_merge")
    monkeypatch.setattr(ex, "compare", lambda got, exp, case: 1 / 0)
    failed(C.check("lora_merge", merge), "its result could not be compared (ZeroDivisionError")
    monkeypatch.setattr(ex, "reference", lambda *a: 1 / 0)
    failed(C.check("lora_merge", merge), "the checker itself failed")

"""labkit.check survives every kind of bad submission, keeps progress safely, and hashes quiz answers."""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from labkit import check as C
from labkit.check import registry


@pytest.fixture(autouse=True)
def _private_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_PROGRESS", str(tmp_path / "progress.json"))
    monkeypatch.delenv("LABKIT_CHECK_ISOLATION", raising=False)
    monkeypatch.delenv("LABKIT_CHECK_TIMEOUT", raising=False)


def merge(W, A, B, alpha, r):
    return W + (alpha / r) * (B @ A)


def _failed(result, *words):
    assert isinstance(result, C.Result) and result.passed is False
    for w in words:
        assert w in result.message, (w, result.message)
    return result


# ---------------------------------------------------------------------------------------------
# Bad submissions: passed False, a clear message, nothing escapes


def test_a_right_answer_passes_and_says_how_many_cases():
    r = C.check("lora_merge", merge)
    assert r.passed and bool(r) and "passed" in r.message and "hidden" in r.message


def test_candidate_that_raises_names_the_exception_and_the_case():
    def bad(W, A, B, alpha, r):
        return W + B @ A.T  # wrong orientation: a shape error

    r = _failed(C.check("lora_merge", bad), "raised RuntimeError", "public case 1 of", "W (6, 8) float32")
    assert "at line" in r.message and "B @ A.T" in r.message  # where in the learner's code


def test_not_implemented_is_reported_as_not_yet_done():
    def stub(W, A, B, alpha, r):
        raise NotImplementedError("replace this line with your code")

    _failed(C.check("lora_merge", stub), "not implemented yet", "replace the `raise NotImplementedError`")


def test_infinite_loop_is_stopped_and_the_process_stays_usable():
    def forever(W, A, B, alpha, r):
        while True:
            pass

    t0 = time.perf_counter()
    _failed(C.check("lora_merge", forever, timeout=1.5), "did not finish within 1.5 s", "public case 1")
    assert time.perf_counter() - t0 < 6
    assert C.check("lora_merge", merge).passed  # and the next check works


def test_a_sleeping_candidate_is_stopped_too():
    _failed(C.check("lora_merge", lambda *a: time.sleep(60), timeout=1), "did not finish")


def test_timeout_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LABKIT_CHECK_TIMEOUT", "0.8")
    _failed(C.check("lora_merge", lambda *a: time.sleep(60)), "within 0.8 s")


@pytest.mark.parametrize("returned, words", [
    (lambda W, A, B, alpha, r: W.tolist(), ["returned list", "expected a torch.Tensor"]),
    (lambda W, A, B, alpha, r: merge(W, A, B, alpha, r).T, ["returned shape", "expected shape"]),
    (lambda W, A, B, alpha, r: merge(W, A, B, alpha, r).double(), ["returned dtype torch.float64", "expected torch.float32"]),
    (lambda W, A, B, alpha, r: merge(W, A, B, alpha, r) * float("nan"), ["NaN or inf"]),
    (lambda W, A, B, alpha, r: None, ["returned None"]),
])
def test_wrong_type_shape_dtype_and_nan(returned, words):
    _failed(C.check("lora_merge", returned), *words)


def test_wrong_values_name_the_first_index_not_the_values():
    r = _failed(C.check("lora_merge", lambda W, A, B, alpha, r: W + B @ A), "values differ", "index (0, 0)")
    assert "tensor(" not in r.message


def test_mutating_an_input_fails():
    def in_place(W, A, B, alpha, r):
        W += (alpha / r) * (B @ A)
        return W

    _failed(C.check("lora_merge", in_place), "modified its input 'W' in place", "clone")


def test_printing_megabytes_is_stopped_and_truncated():
    def chatty(W, A, B, alpha, r):
        while True:
            print("x" * 10_000)

    t0 = time.perf_counter()
    r = _failed(C.check("lora_merge", chatty), "printed more than", "characters in all")
    assert len(r.message) < 5_000 and time.perf_counter() - t0 < 5


def test_a_little_printing_is_fine_and_shown_when_failing():
    def debug(W, A, B, alpha, r):
        print("shape of W:", tuple(W.shape))
        return W

    r = _failed(C.check("lora_merge", debug), "your function printed", "shape of W: (6, 8)")
    assert r.output.startswith("shape of W")

    def debug_ok(W, A, B, alpha, r):
        print("hello")
        return merge(W, A, B, alpha, r)

    assert C.check("lora_merge", debug_ok).passed


@pytest.mark.parametrize("candidate, words", [
    (42, ["needs your function itself", "int"]),
    ("lora_merge", ["needs your function itself", "str"]),
    (None, ["no answer yet"]),
    (..., ["no answer yet"]),
    (torch.zeros(3), ["needs your function itself", "tensor (3,)"]),
])
def test_not_callable(candidate, words):
    _failed(C.check("lora_merge", candidate), *words)


def test_wrong_number_of_parameters_is_explained():
    _failed(C.check("lora_merge", lambda W, A, B: W), "do not fit the call", "lora_merge(W, A, B, alpha, r)")


def test_exit_and_hard_crashes_are_caught():
    _failed(C.check("lora_merge", lambda *a: sys.exit(3)), "sys.exit(3)")
    _failed(C.check("lora_merge", lambda *a: os._exit(7)), "ended abruptly", "exit code 7")
    assert C.check("lora_merge", merge).passed


def test_keyboard_interrupt_and_base_exceptions_inside_the_candidate():
    def interrupt(*a):
        raise KeyboardInterrupt

    _failed(C.check("lora_merge", interrupt), "raised KeyboardInterrupt")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory cap uses RLIMIT_AS (Linux)")
def test_a_memory_bomb_fails_in_the_child_with_a_hint(monkeypatch):
    monkeypatch.setenv("LABKIT_CHECK_MEMORY_GB", "1")

    def greedy(W, A, B, alpha, r):
        big = torch.ones(2**31, dtype=torch.float32)  # 8 GB
        return W + big[0]

    _failed(C.check("lora_merge", greedy), "raised RuntimeError", "more memory than a check allows")
    assert C.check("lora_merge", merge).passed


def test_unknown_exercise_suggests_close_names():
    _failed(C.check("lora_merg", merge), "no exercise 'lora_merg'", "did you mean lora_merge")
    _failed(C.check(123, merge), "no exercise")
    _failed(C.check("q01_merge_cost", merge), "is a quiz question")


def test_a_broken_comparator_or_reference_is_not_an_exception(monkeypatch):
    ex = C.get("lora_merge")
    monkeypatch.setattr(ex, "reference", lambda *a: 1 / 0)
    _failed(C.check("lora_merge", merge), "the checker itself failed")


def test_thread_fallback_stops_a_python_loop_and_checks_normally(monkeypatch):
    monkeypatch.setenv("LABKIT_CHECK_ISOLATION", "thread")

    def forever(*a):
        while True:
            pass

    old_stdout = sys.stdout
    _failed(C.check("lora_merge", forever, timeout=1), "did not finish")
    assert sys.stdout is old_stdout
    assert C.check("lora_merge", merge).passed
    _failed(C.check("lora_merge", lambda W, A, B, alpha, r: W), "values differ")


def test_result_displays_as_text_and_html():
    bad = C.check("lora_merge", lambda W, A, B, alpha, r: W)
    good = C.check("lora_merge", merge)
    assert repr(bad).startswith("✘ lora_merge: not passed") and repr(good).startswith("✔ lora_merge: passed")
    assert "<div" in bad._repr_html_() and "#b3261e" in bad._repr_html_() and "#1a7f37" in good._repr_html_()
    assert "&lt;" in C.Result(False, "✘ x <b>", "x")._repr_html_()  # escaped


# ---------------------------------------------------------------------------------------------
# Progress


def test_progress_records_passes_and_attempts(tmp_path):
    assert C.progress().passed == []
    C.check("lora_merge", lambda W, A, B, alpha, r: W)
    C.check("lora_merge", merge)
    data = json.loads((tmp_path / "progress.json").read_text())
    assert list(data["passed"]) == ["lora_merge"] and data["attempts"]["lora_merge"] == 2
    p = C.progress()
    assert p.passed == ["lora_merge"]
    assert "1 of" in repr(p) and "✔ 01  lora_merge" in repr(p) and "<table>" in p._repr_html_()
    assert C.progress("01").passed == ["lora_merge"] and C.progress(3).passed == []
    assert {r[0] for r in C.progress("03").rows} == {"03"}


def test_progress_survives_a_corrupt_file(tmp_path):
    path = tmp_path / "progress.json"
    path.write_text("{not json")
    p = C.progress()
    assert p.passed == [] and "could not be read" in p.note
    assert C.check("lora_merge", merge).passed
    assert json.loads(path.read_text())["passed"].keys() == {"lora_merge"}
    assert (tmp_path / "progress.json.corrupt").read_text() == "{not json"  # kept, not lost
    path.write_text('["a list"]')
    assert "not in labkit's format" in C.progress().note


def test_progress_file_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    C.check("lora_merge", merge)
    before = path.read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    assert C.check("lora_scaling", lambda alpha, r, rslora: alpha / r ** (0.5 if rslora else 1)).passed
    assert path.read_text() == before  # the old file is intact, not half-written
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]  # no temporary file left behind
    assert "could not be saved" in C.progress().note


def test_progress_in_a_missing_folder_and_an_unwritable_place(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_PROGRESS", str(tmp_path / "new" / "dir" / "p.json"))
    assert C.check("lora_merge", merge).passed
    assert (tmp_path / "new" / "dir" / "p.json").is_file()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LABKIT_PROGRESS", str(blocker / "p.json"))  # a folder that cannot exist
    assert C.check("lora_merge", merge).passed  # still a result, no exception


def test_default_progress_path_is_under_home(monkeypatch):
    monkeypatch.delenv("LABKIT_PROGRESS")
    assert C.progress_path() == Path.home() / ".labkit" / "progress.json"


# ---------------------------------------------------------------------------------------------
# Quizzes


def test_quiz_shows_the_question_without_an_answer():
    r = C.quiz("q01_merge_cost")
    assert not r.passed and "a) " in r.message and "b) " in r.message
    assert "#0b57d0" in r._repr_html_()  # shown as a question, not as a wrong answer


def test_quiz_survives_odd_answers():
    for answer in (None, ..., object(), [1, 2], float("nan"), "", "zzz"):
        assert C.quiz("q01_all_linear_r8", answer).passed is False
        assert C.quiz("q01_merge_cost", answer).passed is False
    _failed(C.quiz("no_such_question", "a"), "no quiz question")


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


# ---------------------------------------------------------------------------------------------
# In a real Jupyter kernel


@pytest.mark.slow
def test_in_a_kernel_a_runaway_candidate_is_stopped_and_its_output_never_reaches_the_notebook(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    cells = [
        "import os, torch\nfrom labkit.check import check\n_ = torch.randn(500, 500) @ torch.randn(500, 500)",
        "def noisy(W, A, B, alpha, r):\n    os.write(1, b'C-LEVEL-NOISE ' * 100000)\n    print('P' * 2_000_000)\n"
        "check('lora_merge', noisy)",
        "def forever(W, A, B, alpha, r):\n    while True:\n        pass\ncheck('lora_merge', forever, timeout=2)",
        "check('lora_merge', lambda W, A, B, alpha, r: W + (alpha / r) * (B @ A))",
        "print('still alive')",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    texts = ["".join(o.get("text", "")) + o.get("data", {}).get("text/plain", "") for c in nb.cells for o in c.outputs]
    assert "printed more than" in texts[0] and len(texts[0]) < 5_000
    assert "did not finish within 2 s" in texts[1]
    assert texts[2].startswith("✔ lora_merge: passed")
    assert texts[3] == "still alive\n"
    assert not any("C-LEVEL-NOISE" in t for t in texts)

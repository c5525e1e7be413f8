"""labkit.check.result: a Result reads as its message, is truthy when passed, and shows as a
coloured, escaped box in Jupyter; fail() lays out the case, the problem, the hint and the output."""

import pytest

from labkit import check as C
from labkit.check import result

pytestmark = pytest.mark.usefixtures("checker_env")


def test_result_displays_as_text_and_html(merge):
    bad = C.check("lora_merge", lambda W, A, B, alpha, r: W)
    good = C.check("lora_merge", merge)
    assert repr(bad).startswith("✘ lora_merge: not passed") and repr(good).startswith("✔ lora_merge: passed")
    assert "<div" in bad._repr_html_() and "#b3261e" in bad._repr_html_() and "#1a7f37" in good._repr_html_()
    assert "&lt;" in C.Result(False, "✘ x <b>", "x")._repr_html_()  # escaped


def test_fail_lays_out_case_problem_hint_and_output():
    r = result.fail("ex", "wrong shape", case="public case 1", hint="look at dim 0", output="a\nb")
    assert r.message == ("✘ ex: not passed\n  case:    public case 1\n  problem: wrong shape\n"
                         "  hint:    look at dim 0\n  your function printed:\n    a\n    b")
    assert (r.passed, r.exercise, r.case, r.output, bool(r)) == (False, "ex", "public case 1", "a\nb", False)
    assert result.fail("ex", "no answer yet").message == "✘ ex: not passed\n  problem: no answer yet"

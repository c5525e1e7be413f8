"""Grading: `check(exercise_id, your_function)` runs your function on an exercise's cases, in the
sandbox, and compares each result with labkit's own implementation (the reference).

Each exercise has public cases (fixed, the same for everyone) and hidden cases drawn at random on
every call. Your function runs on each case, in order, and its result is compared with the
reference's on the same inputs. The first case that fails is named with its input shapes, the
property that failed (type, shape, dtype, NaN, values, an input modified in place, ...) and a hint;
the reference's values are never shown. Nothing here raises into the learner's kernel: every failure,
including bugs in a case, becomes a Result with passed == False and a message. A function not written yet
(None, or a stub that raises NotImplementedError, as the exercise notebooks ship) is not a failure: it
gets a neutral "not answered yet" (labkit.check.result.pending) and counts no attempt.
"""

from __future__ import annotations

import copy
import inspect
import os
import random
import sys
import time
import traceback
from typing import Any, Callable

from . import record, registry, sandbox
from .compare import describe, describe_inputs, type_name
from .registry import Exercise
from .result import Result, fail, pending

_LABKIT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # labkit/: not the learner's code


def check(exercise_id: str, candidate: Any = None, *, timeout: float | None = None, seed: int | None = None) -> Result:
    """Check CANDIDATE (your function) on exercise EXERCISE_ID; returns a Result, never raises.

    timeout: seconds for all cases together (default: the exercise's, usually 10; the environment
    variable LABKIT_CHECK_TIMEOUT overrides it). seed: fixes the hidden cases (default: new ones
    every call).
    """
    try:
        return _check(exercise_id, candidate, timeout, seed)
    except KeyboardInterrupt:
        return fail(str(exercise_id), "the check was interrupted")
    except BaseException as exc:  # never into the learner's kernel
        return fail(str(exercise_id), f"the checker itself failed ({type(exc).__name__}: {exc}); please report this")


def _check(exercise_id, candidate, timeout, seed) -> Result:
    registry.load()
    if not isinstance(exercise_id, str) or exercise_id not in registry.EXERCISES:
        if isinstance(exercise_id, str) and exercise_id in registry.QUESTIONS:
            return fail(exercise_id, f"{exercise_id!r} is a quiz question: use quiz({exercise_id!r}, answer)")
        import difflib

        close = difflib.get_close_matches(str(exercise_id), list(registry.EXERCISES), n=3)
        return fail(str(exercise_id), f"there is no exercise {exercise_id!r}"
                    + (f"; did you mean {', '.join(close)}?" if close else "")
                    + f" Known exercises: {', '.join(registry.exercises())}.")
    ex = registry.EXERCISES[exercise_id]
    name = ex.signature.split("(")[0]
    if candidate is None or candidate is Ellipsis:  # nothing written yet: neutral, and no attempt counted
        return pending(ex.id, f"no answer yet: define {ex.signature}, then run check({ex.id!r}, {name})")
    if not callable(candidate):
        return fail(ex.id, f"check needs your function itself, but got {type_name(candidate)} "
                           f"({describe(candidate)})",
                    hint=f"pass the function without calling it: check({ex.id!r}, {name}), not {name}(...)")
    if timeout is None:
        timeout = float(os.environ.get("LABKIT_CHECK_TIMEOUT") or ex.timeout)
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    t0 = time.perf_counter()
    status, payload = sandbox.run(lambda send: run_cases(ex, candidate, seed, send), timeout)
    seconds = time.perf_counter() - t0
    if status == "timeout":
        result = fail(ex.id, f"your function did not finish within {timeout:g} s and was stopped",
                      payload, hint="look for a loop that never ends, or work that grows too fast "
                                    "(a Python loop over every element of a big tensor)")
    elif status == "died":
        case, code = payload
        how = f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"
        result = fail(ex.id, f"the process running your function ended abruptly ({how}): "
                             f"os._exit(), a crash in native code, or running out of memory", case)
    elif payload.get("pending"):  # the stub still raises NotImplementedError: not answered, not wrong
        return pending(ex.id, f"{payload['problem']}\n  {payload['hint']}")
    elif payload["passed"]:
        result = Result(True, f"✔ {ex.id}: passed ({payload['n_public']} public and "
                              f"{payload['n_hidden']} random hidden cases, {seconds:.1f} s)", ex.id)
    else:
        result = fail(ex.id, payload["problem"], payload["case"], payload["hint"], payload["output"])
    record.record(ex.id, result.passed)
    return result


# ---------------------------------------------------------------------------------------------
# Running a candidate on every case (inside the sandbox)


def run_cases(ex: Exercise, candidate, seed: int, send: Callable[[tuple], None]) -> None:
    """Run CANDIDATE on every case of EX, in order, stopping at the first failure.

    Sends ("case", label) before each case and finally ("done", verdict dict). Never raises.
    """
    try:
        verdict = _run_cases(ex, candidate, seed, send)
    except sandbox.Stop:
        raise
    except BaseException as exc:  # a bug in a case or reference: still a clean verdict
        verdict = {"passed": False, "case": None,
                   "problem": f"the checker itself failed ({type(exc).__name__}: {exc}); please report this",
                   "hint": "", "output": ""}
    send(("done", verdict))


def _run_cases(ex: Exercise, candidate, seed: int, send) -> dict:
    rng = random.Random(seed)
    public, hidden = list(ex.public()), list(ex.hidden(rng))
    labelled = [(f"public case {i + 1} of {len(public)}", c) for i, c in enumerate(public)]
    labelled += [(f"hidden case {i + 1} of {len(hidden)} (random)", c) for i, c in enumerate(hidden)]
    for label, case in labelled:
        name = f"{label}{': ' + case.label if case.label else ''} — {ex.signature.split('(')[0]}(" \
               f"{describe_inputs(case.inputs)})"
        send(("case", name))
        hint = case.hint or ex.hint

        def failed(problem, output="", hint=hint, name=name):
            return {"passed": False, "case": name, "problem": problem, "hint": hint, "output": output}

        expected = ex.reference(*copy.deepcopy(case.inputs).values())
        inputs = copy.deepcopy(case.inputs)
        before = copy.deepcopy(inputs)
        problem = _bind_problem(candidate, ex, inputs)
        if problem:
            return failed(problem, hint=f"define it as {ex.signature}")
        out = sandbox.CappedOutput()
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = out
        try:
            got = candidate(*inputs.values())
        except sandbox.OutputLimit:
            return failed(f"your function printed more than {sandbox.OUTPUT_LIMIT:,} characters and was stopped",
                        out.text(), hint="remove the print() calls inside loops before checking")
        except NotImplementedError as exc:
            return dict(failed("not implemented yet: your function raises NotImplementedError"
                               + (f" ({exc})" if str(exc) else ""), out.text(),
                               hint="replace the `raise NotImplementedError` line with your code"), pending=True)
        except sandbox.Stop:
            raise
        except SystemExit as exc:
            return failed(f"your function called exit()/sys.exit({exc.code!r})", out.text())
        except BaseException as exc:
            if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
                return failed(f"your function raised {_error_text(exc)}", out.text(),
                            hint="it asked for more memory than a check allows: is something O(n^2) or "
                                 "larger where it should be O(n)?")
            if "forked subprocess" in str(exc):  # CUDA cannot start again in a forked child
                return failed(f"your function raised {_error_text(exc)}", out.text(),
                            hint="checks pass CPU tensors: compute on the inputs' device (no .cuda() or .to('cuda'))")
            return failed(f"your function raised {_error_text(exc)}", out.text())
        finally:
            sys.stdout, sys.stderr = old
        changed = [k for k in inputs if modified(before[k], inputs[k])]
        if changed:
            return failed(f"your function modified its input {', '.join(map(repr, changed))} in place",
                        out.text(), hint="work on a copy (e.g. W.clone()) or use out-of-place operations "
                                         "(W + x, not W += x); the caller's tensors must stay as they were")
        try:
            problem = ex.compare(got, expected, case)
        except Exception as exc:
            problem = f"its result could not be compared ({type(exc).__name__}: {exc})"
        if problem:
            return failed(problem, out.text())
    return {"passed": True, "n_public": len(public), "n_hidden": len(hidden)}


def modified(before, after) -> bool:
    """Whether AFTER (an input after the call) differs from BEFORE (its copy): tensors, modules
    (structure, parameters, requires_grad), lists, tuples, dicts, and anything with ==."""
    import torch

    if isinstance(before, torch.Tensor):
        if not isinstance(after, torch.Tensor) or before.shape != after.shape or before.dtype != after.dtype:
            return True
        if before.device.type == "meta":
            return False
        return not torch.equal(before, after) and not (
            before.is_floating_point() and torch.equal(before.nan_to_num(), after.nan_to_num()))
    if isinstance(before, torch.nn.Module):
        if repr(before) != repr(after):
            return True
        b, a = dict(before.named_parameters()), dict(after.named_parameters())
        if b.keys() != a.keys() or any(b[k].requires_grad != a[k].requires_grad for k in b):
            return True
        return any(modified(b[k].detach(), a[k].detach()) for k in b)
    if isinstance(before, (list, tuple)):
        return type(before) is not type(after) or len(before) != len(after) or any(
            modified(b, a) for b, a in zip(before, after))
    if isinstance(before, dict):
        return before.keys() != after.keys() or any(modified(before[k], after[k]) for k in before)
    try:
        return bool(before != after)
    except Exception:
        return False


def _bind_problem(candidate, ex: Exercise, inputs: dict) -> str | None:
    try:
        sig = inspect.signature(candidate)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*inputs.values())
    except TypeError as exc:
        return (f"your function's parameters {sig} do not fit the call the check makes: "
                f"{ex.signature} ({exc})")
    return None


def _error_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if len(text) > 600:
        text = text[:600] + " ..."
    # The last line of the learner's own code (a notebook cell or their file) in the traceback.
    own = [f for f in traceback.extract_tb(exc.__traceback__)
           if not os.path.abspath(f.filename).startswith(_LABKIT)
           and "-packages" not in f.filename and not f.filename.startswith(sys.base_prefix)]
    if own and own[-1].line:
        text += f" (at line {own[-1].lineno}: {own[-1].line.strip()})"
    return text

"""Auto-checked exercises: `check(exercise_id, your_function)` and `quiz(question_id, answer)`.

    from labkit.check import check, quiz, progress
    check("lora_forward", lora_forward)     # -> ✔ passed, or ✘ the first failing case and a hint
    quiz("q01_merge_cost", "b")
    progress()                              # what you have passed so far

How a check works. Each exercise has public cases (fixed, the same for everyone) and hidden cases
drawn at random on every call. Your function runs on each case, in order, and its result is compared
with labkit's own implementation (the reference) on the same inputs. The first case that fails is
named with its input shapes, the property that failed (type, shape, dtype, NaN, values, an input
modified in place, ...) and a hint; the reference's values are never shown.

Why your code runs in a child process. A check must survive anything a learner writes: an infinite
loop, a crash, `exit()`, a wall of prints. On Linux and macOS the candidate runs in a forked child
(the fork copies your notebook's state, so closures and globals just work; ~25 ms with torch loaded,
measured on the course's 2-core CPU) which is killed after a time limit, so the kernel stays usable.
The child runs torch single-threaded: a forked child that uses the parent's OpenMP thread pool hangs.
Its memory is capped (Linux: 4 GB, or half the free memory, beyond what the notebook already uses),
so a runaway allocation fails there instead of taking the machine down. Side effects of your function
(globals it sets, what it prints) stay in the child. The cases pass CPU tensors; a forked child
cannot use CUDA.
Where fork is not available (Windows), or with LABKIT_CHECK_ISOLATION=thread, the candidate runs in
a thread instead, stopped by an asynchronous exception: that stops Python loops, not a long C call.

Nothing here raises into the learner's kernel: every failure, including bugs in a case, becomes a
Result with passed == False and a message.

Progress is a small JSON file (LABKIT_PROGRESS, default ~/.labkit/progress.json), written atomically
(a temporary file, then os.replace); a missing or corrupt file means "nothing passed yet" (a corrupt
one is kept as progress.json.corrupt). Two kernels checking at the same instant may lose one update:
there is no lock, since a lost tick in a progress list is harmless.

Quiz answers are stored as salted SHA-256 hashes of the normalised answer (see `answer_hash`): not
readable in the source, but not secret either. The salt is public and a multiple-choice or numeric
answer has few possible values, so anyone can find it by trying them; the hashes only keep answers
out of plain sight (no spoilers while reading labkit's code). Numbers with a tolerance are hashed by
bucket: relative tolerance rtol puts x in bucket floor(log|x| / log(1 + rtol) + 1/2) (with its sign),
absolute tolerance atol in floor(x / atol + 1/2); an answer is accepted when its bucket is the stored
one or a neighbour. So an answer within a factor (1 + rtol) of the true value (within atol) is always
accepted, one off by a factor (1 + rtol)^2 or more (by 2 atol or more) never, and in between it
depends on where the bucket edges fall.

Exercises are registered by the lesson modules in labkit/checks/ (see labkit/checks/__init__.py for
how to add one); this module is the generic engine.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import html
import inspect
import io
import json
import math
import numbers
import os
import random
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

DEFAULT_TIMEOUT = 10.0  # seconds for all the cases of one exercise together
OUTPUT_LIMIT = 1_000_000  # characters a candidate may print before it is stopped
OUTPUT_SHOWN = 1_500  # characters of its output shown in a failure message
MEMORY_HEADROOM_GB = 4.0  # memory a candidate may allocate in the child (Linux), beyond the notebook's own
QUIZ_SALT = "labkit-quiz-v1"


# ---------------------------------------------------------------------------------------------
# What a lesson module registers


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
    stored (see the module docstring for what that does and does not hide).
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


_EXERCISES: dict[str, Exercise] = {}
_QUESTIONS: dict[str, Question] = {}
_LOADED = False


def exercise(**kwargs) -> Exercise:
    """Register an Exercise (same keyword arguments); a lesson module calls this once per exercise."""
    ex = Exercise(**kwargs)
    if ex.id in _EXERCISES or ex.id in _QUESTIONS:
        raise ValueError(f"exercise id {ex.id!r} is registered twice")
    _EXERCISES[ex.id] = ex
    return ex


def question(**kwargs) -> Question:
    """Register a quiz Question (same keyword arguments)."""
    q = Question(**kwargs)
    if q.kind not in ("choice", "number", "text"):
        raise ValueError(f"question kind must be choice, number or text, got {q.kind!r}")
    if q.id in _QUESTIONS or q.id in _EXERCISES:
        raise ValueError(f"question id {q.id!r} is registered twice")
    _QUESTIONS[q.id] = q
    return q


def _load() -> None:
    """Import every lesson module under labkit/checks/ once; each registers its exercises."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil

    from . import checks

    for info in sorted(pkgutil.iter_modules(checks.__path__), key=lambda m: m.name):
        importlib.import_module(f"{checks.__name__}.{info.name}")


def exercises() -> list[str]:
    """The ids of every coding exercise, in lesson order."""
    _load()
    return [e.id for e in sorted(_EXERCISES.values(), key=lambda e: e.lesson)]


def quizzes() -> list[str]:
    """The ids of every quiz question, in lesson order."""
    _load()
    return [q.id for q in sorted(_QUESTIONS.values(), key=lambda q: q.lesson)]


def get(exercise_id: str) -> Exercise | Question:
    _load()
    return _EXERCISES.get(exercise_id) or _QUESTIONS[exercise_id]


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Result:
    passed: bool
    message: str
    exercise: str = ""
    case: str | None = None  # the first failing case, if any
    output: str = ""  # what the candidate printed in that case (truncated)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__

    def _repr_pretty_(self, p, cycle):  # IPython's plain-text display
        p.text(self.message)

    def _repr_html_(self) -> str:
        if self.message.startswith("?"):  # a question shown, not an answer judged
            colour, bg = "#0b57d0", "#e8f0fe"
        else:
            colour, bg = ("#1a7f37", "#e6f4ea") if self.passed else ("#b3261e", "#fdecea")
        lines = html.escape(self.message).split("\n")
        head, rest = lines[0], "<br>".join(lines[1:])
        return (f'<div style="border-left:4px solid {colour};background:{bg};padding:6px 10px;'
                f'font-family:monospace;white-space:pre-wrap"><b>{head}</b>'
                f'{"<br>" + rest if rest else ""}</div>')


def _fail(exercise_id: str, problem: str, case: str | None = None, hint: str = "", output: str = "") -> Result:
    lines = [f"✘ {exercise_id}: not passed"]
    if case:
        lines.append(f"  case:    {case}")
    lines.append(f"  problem: {problem}")
    if hint:
        lines.append(f"  hint:    {hint}")
    if output:
        lines.append("  your function printed:\n" + "\n".join("    " + ln for ln in output.splitlines()))
    return Result(False, "\n".join(lines), exercise_id, case, output)


# ---------------------------------------------------------------------------------------------
# Describing values without giving anything away


def type_name(x) -> str:
    if x is None:
        return "None"
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__.split('.')[0]}.{t.__name__}"


def describe(x) -> str:
    """A short description of an INPUT (shapes and dtypes for tensors, the value for small scalars)."""
    try:
        import torch
        from torch import nn

        if isinstance(x, torch.Tensor):
            dev = "" if x.device.type == "cpu" else f" on {x.device.type}"
            return f"tensor {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}{dev}"
        if isinstance(x, nn.Module):
            n_linear = sum(isinstance(m, nn.Linear) for m in x.modules())
            dev = next((p.device.type for p in x.parameters()), "cpu")
            return f"a {type(x).__name__} with {n_linear} nn.Linear layers (on {dev})"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, (list, tuple)):
        if x and all(isinstance(v, str) for v in x):
            return repr(x) if len(repr(x)) <= 120 else f"{type(x).__name__} of {len(x)} strings"
        inner = ", ".join(describe(v) for v in list(x)[:4]) + (", ..." if len(x) > 4 else "")
        return f"[{inner}]" if isinstance(x, list) else f"({inner})"
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


def describe_inputs(inputs: dict) -> str:
    """"x (2, 5, 16) float32, b=None, r=4": names with shapes, or values for small scalars."""
    parts = []
    for name, value in inputs.items():
        d = describe(value)
        if d.startswith("tensor "):
            parts.append(f"{name} {d[len('tensor '):]}")
        elif d.startswith("a ") and " with " in d:
            parts.append(f"{name}: {d}")
        else:
            parts.append(f"{name}={d}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Comparators: compare(got, expected, case) -> None if right, else what is wrong (no expected values)


def _torch():
    import torch

    return torch


def tensor(rtol: float = 1e-5, atol: float = 1e-6, integer: bool = False, check_dtype: bool = True):
    """GOT must be a torch.Tensor of the reference's shape (and dtype, or any integer dtype if
    INTEGER), finite where the reference is, and equal within rtol/atol (exactly if INTEGER)."""

    def compare(got, exp, case=None):
        torch = _torch()
        if not isinstance(got, torch.Tensor):
            return f"returned {type_name(got)}; expected a torch.Tensor"
        if tuple(got.shape) != tuple(exp.shape):
            return f"returned shape {tuple(got.shape)}; expected shape {tuple(exp.shape)}"
        if integer:
            if got.is_floating_point() or got.is_complex() or got.dtype == torch.bool:
                return f"returned dtype {got.dtype}; expected integer indices (e.g. torch.uint8 or torch.long)"
        elif check_dtype and got.dtype != exp.dtype:
            return f"returned dtype {got.dtype}; expected {exp.dtype}"
        g, e = got.detach().cpu(), exp.detach().cpu()
        if g.is_floating_point():
            bad = ~torch.isfinite(g) & torch.isfinite(e)
            if bad.any():
                return f"the result contains NaN or inf ({int(bad.sum())} of {g.numel()} values)"
        if integer:
            wrong = g.long() != e.long()
        else:
            wrong = ~torch.isclose(g.double(), e.double(), rtol=rtol, atol=atol, equal_nan=True)
        if wrong.any():
            first = tuple(int(i) for i in wrong.nonzero()[0])
            tol = "" if integer else f" beyond tolerance (rtol={rtol:g}, atol={atol:g})"
            return (f"{int(wrong.sum())} of {g.numel()} values differ from the reference{tol}; "
                    f"the first at index {first}")
        return None

    return compare


def number(rtol: float = 1e-6, atol: float = 0.0):
    """GOT must be one real number (int, float, numpy or 0-d tensor) close to the reference."""

    def compare(got, exp, case=None):
        value, problem = _as_number(got)
        if problem:
            return problem
        if not math.isfinite(value):
            return f"returned {value}; expected a finite number"
        if not math.isclose(value, float(exp), rel_tol=rtol, abs_tol=atol):
            return f"the number is not right (checked to rtol={rtol:g}" + (f", atol={atol:g})" if atol else ")")
        return None

    return compare


def _as_number(got):
    torch = _torch()
    if isinstance(got, bool) or got is None:
        return None, f"returned {type_name(got)}; expected a number"
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            return None, f"returned a tensor of shape {tuple(got.shape)}; expected a single number"
        return float(got.detach().cpu().reshape(())), None
    if isinstance(got, numbers.Real):
        return float(got), None
    return None, f"returned {type_name(got)}; expected a number"


def integer():
    """GOT must be an int (Python or numpy integer) equal to the reference."""

    def compare(got, exp, case=None):
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            return f"returned {type_name(got)}; expected an int (use int(...) on a tensor or float)"
        if int(got) != int(exp):
            return "the count is not right"
        return None

    return compare


def text():
    """GOT must be a str equal to the reference's, ignoring whitespace at the ends. The feedback
    quotes the learner's own text where it first differs, never the expected text."""

    def compare(got, exp, case=None):
        if not isinstance(got, str):
            return f"returned {type_name(got)}; expected a str"
        g, e = got.strip(), str(exp).strip()
        if g == e:
            return None
        i = next((k for k, (a, b) in enumerate(zip(g, e)) if a != b), min(len(g), len(e)))
        where = f"your text there: {g[i:i + 25]!r}" if i < len(g) else "your text ends there"
        return f"the text differs from the expected one from character {i} on ({where})"

    return compare


def sequence(**parts):
    """GOT must be a tuple or list of len(PARTS) items, each checked by its comparator, in order."""
    names = list(parts)

    def compare(got, exp, case=None):
        if not isinstance(got, (tuple, list)):
            return f"returned {type_name(got)}; expected a tuple ({', '.join(names)})"
        if len(got) != len(names):
            return f"returned {len(got)} items; expected {len(names)}: ({', '.join(names)})"
        for (name, cmp), g, e in zip(parts.items(), got, exp):
            problem = cmp(g, e, case)
            if problem:
                return f"{name}: {problem}"
        return None

    return compare


def mapping(keys, value_compare, optional_zero=()):
    """GOT must be a dict with exactly KEYS (plus, optionally, OPTIONAL_ZERO keys equal to 0)."""
    keys = tuple(keys)

    def compare(got, exp, case=None):
        if not isinstance(got, dict):
            return f"returned {type_name(got)}; expected a dict with keys {', '.join(keys)}"
        missing = [k for k in keys if k not in got]
        if missing:
            return f"the dict lacks key(s) {', '.join(map(repr, missing))}"
        extra = [k for k in got if k not in keys and k not in optional_zero]
        if extra:
            return f"the dict has unexpected key(s) {', '.join(map(repr, extra))}"
        for k in optional_zero:
            if k in got and got[k] != 0:
                return f"{k!r} should be 0 here"
        for k in keys:
            problem = value_compare(got[k], exp[k], case)
            if problem:
                return f"{k!r}: {problem}"
        return None

    return compare


# ---------------------------------------------------------------------------------------------
# Random inputs for hidden cases


def randn(rng: random.Random, *shape, dtype=None, scale: float = 1.0):
    """A standard-normal tensor of SHAPE drawn from a torch generator seeded by RNG."""
    torch = _torch()
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    return scale * torch.randn(*shape, generator=g, dtype=dtype or torch.float32)


# ---------------------------------------------------------------------------------------------
# Running a candidate on every case (in the child)


class _OutputLimit(BaseException):
    """Raised inside the candidate's print() when it has printed too much (BaseException: a bare
    `except Exception` in the learner's code does not swallow it)."""


class _Stop(BaseException):
    """Raised asynchronously in the thread fallback when the time is up."""


class _CappedOutput(io.TextIOBase):
    def __init__(self, limit: int = OUTPUT_LIMIT, keep: int = OUTPUT_SHOWN):
        self.limit, self.keep, self.count, self.kept = limit, keep, 0, []

    def writable(self):
        return True

    def write(self, s):
        s = str(s)
        if sum(map(len, self.kept)) < self.keep:
            self.kept.append(s[: self.keep])
        self.count += len(s)
        if self.count > self.limit:
            raise _OutputLimit()
        return len(s)

    def text(self) -> str:
        t = "".join(self.kept)[: self.keep]
        if self.count > len(t):
            t += f"\n... ({self.count:,} characters in all; the rest is not shown)"
        return t


def _clone(x):
    """A deep copy that also copies tensors' storage (and works on meta-device modules)."""
    return copy.deepcopy(x)


def _changed(before, after) -> bool:
    torch = _torch()
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
        return any(_changed(b[k].detach(), a[k].detach()) for k in b)
    if isinstance(before, (list, tuple)):
        return type(before) is not type(after) or len(before) != len(after) or any(
            _changed(b, a) for b, a in zip(before, after))
    if isinstance(before, dict):
        return before.keys() != after.keys() or any(_changed(before[k], after[k]) for k in before)
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
    here = os.path.dirname(os.path.abspath(__file__))
    own = [f for f in traceback.extract_tb(exc.__traceback__)
           if not os.path.abspath(f.filename).startswith(here)
           and "-packages" not in f.filename and not f.filename.startswith(sys.base_prefix)]
    if own and own[-1].line:
        text += f" (at line {own[-1].lineno}: {own[-1].line.strip()})"
    return text


def run_cases(ex: Exercise, candidate, seed: int, send: Callable[[tuple], None]) -> None:
    """Run CANDIDATE on every case of EX, in order, stopping at the first failure.

    Sends ("case", label) before each case and finally ("done", verdict dict). Never raises.
    """
    try:
        verdict = _run_cases(ex, candidate, seed, send)
    except _Stop:
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

        def fail(problem, output="", hint=hint, name=name):
            return {"passed": False, "case": name, "problem": problem, "hint": hint, "output": output}

        expected = ex.reference(*_clone(case.inputs).values())
        inputs = _clone(case.inputs)
        before = _clone(inputs)
        problem = _bind_problem(candidate, ex, inputs)
        if problem:
            return fail(problem, hint=f"define it as {ex.signature}")
        out = _CappedOutput()
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = out
        try:
            got = candidate(*inputs.values())
        except _OutputLimit:
            return fail(f"your function printed more than {OUTPUT_LIMIT:,} characters and was stopped",
                        out.text(), hint="remove the print() calls inside loops before checking")
        except NotImplementedError as exc:
            return fail("not implemented yet: your function raises NotImplementedError"
                        + (f" ({exc})" if str(exc) else ""), out.text(),
                        hint="replace the `raise NotImplementedError` line with your code")
        except _Stop:
            raise
        except SystemExit as exc:
            return fail(f"your function called exit()/sys.exit({exc.code!r})", out.text())
        except BaseException as exc:
            if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
                return fail(f"your function raised {_error_text(exc)}", out.text(),
                            hint="it asked for more memory than a check allows: is something O(n^2) or "
                                 "larger where it should be O(n)?")
            if "forked subprocess" in str(exc):  # CUDA cannot start again in a forked child
                return fail(f"your function raised {_error_text(exc)}", out.text(),
                            hint="checks pass CPU tensors: compute on the inputs' device (no .cuda() or .to('cuda'))")
            return fail(f"your function raised {_error_text(exc)}", out.text())
        finally:
            sys.stdout, sys.stderr = old
        changed = [k for k in inputs if _changed(before[k], inputs[k])]
        if changed:
            return fail(f"your function modified its input {', '.join(map(repr, changed))} in place",
                        out.text(), hint="work on a copy (e.g. W.clone()) or use out-of-place operations "
                                         "(W + x, not W += x); the caller's tensors must stay as they were")
        try:
            problem = ex.compare(got, expected, case)
        except Exception as exc:
            problem = f"its result could not be compared ({type(exc).__name__}: {exc})"
        if problem:
            return fail(problem, out.text())
    return {"passed": True, "n_public": len(public), "n_hidden": len(hidden)}


# ---------------------------------------------------------------------------------------------
# Isolation: a forked child with a time limit, or a thread where fork is unavailable


def _isolation() -> str:
    mode = os.environ.get("LABKIT_CHECK_ISOLATION", "").strip().lower()
    if mode in ("fork", "thread"):
        return mode
    import multiprocessing as mp

    return "fork" if "fork" in mp.get_all_start_methods() else "thread"


def _child_main(ex, candidate, seed, conn) -> None:  # pragma: no cover (runs in the child)
    try:
        # Nothing the candidate writes may reach the notebook: ipykernel forwards fds 1 and 2.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        sys.stdout = sys.stderr = _CappedOutput()
        if "torch" in sys.modules:
            # The parent's OpenMP pool does not exist in a forked child: using it hangs.
            sys.modules["torch"].set_num_threads(1)
        _limit_memory()
        run_cases(ex, candidate, seed, conn.send)
    except BaseException:
        pass
    finally:
        os._exit(0)  # skip the kernel's atexit handlers and stream flushes, which belong to the parent


def _limit_memory() -> None:  # pragma: no cover (runs in the child)
    """Cap the child's address space at what it already has plus MEMORY_HEADROOM_GB, or half the free
    memory if that is less (Linux only), so a runaway allocation fails inside the child with an error
    instead of pushing the machine (and the learner's kernel) out of memory."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        headroom = float(os.environ.get("LABKIT_CHECK_MEMORY_GB") or MEMORY_HEADROOM_GB) * 2**30
        with open("/proc/meminfo") as f:  # and at most half of what the machine has free
            available = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
        headroom = min(headroom, available / 2)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = int(current + headroom)
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except Exception:
        pass  # not Linux, or not allowed: run without a cap


def _run_in_child(ex, candidate, seed, timeout):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    with warnings.catch_warnings():  # Python 3.12+ warns about fork in a multi-threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        proc = ctx.Process(target=_child_main, args=(ex, candidate, seed, send), daemon=True)
        proc.start()
    send.close()
    deadline = time.monotonic() + timeout
    current = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", current
            if recv.poll(min(remaining, 0.2)):
                try:
                    kind, payload = recv.recv()
                except (EOFError, OSError):
                    proc.join(1)
                    return "died", (current, proc.exitcode)
                if kind == "done":
                    return "done", payload
                current = payload
            elif not proc.is_alive() and not recv.poll(0):
                return "died", (current, proc.exitcode)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(2)
        recv.close()


def _run_in_thread(ex, candidate, seed, timeout):
    messages: list = []
    thread = threading.Thread(target=lambda: _thread_main(ex, candidate, seed, messages.append), daemon=True)
    old = sys.stdout, sys.stderr
    thread.start()
    try:
        thread.join(timeout)
        if thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Stop))
            thread.join(1.0)
            current = next((p for k, p in reversed(messages) if k == "case"), None)
            return "timeout", current
    finally:
        sys.stdout, sys.stderr = old
    done = [p for k, p in messages if k == "done"]
    if done:
        return "done", done[0]
    return "died", (next((p for k, p in reversed(messages) if k == "case"), None), None)


def _thread_main(ex, candidate, seed, send):
    try:
        run_cases(ex, candidate, seed, send)
    except _Stop:
        pass


# ---------------------------------------------------------------------------------------------
# The learner-facing functions


def check(exercise_id: str, candidate: Any = None, *, timeout: float | None = None, seed: int | None = None) -> Result:
    """Check CANDIDATE (your function) on exercise EXERCISE_ID; returns a Result, never raises.

    timeout: seconds for all cases together (default: the exercise's, usually 10; the environment
    variable LABKIT_CHECK_TIMEOUT overrides it). seed: fixes the hidden cases (default: new ones
    every call).
    """
    try:
        return _check(exercise_id, candidate, timeout, seed)
    except KeyboardInterrupt:
        return _fail(str(exercise_id), "the check was interrupted")
    except BaseException as exc:  # never into the learner's kernel
        return _fail(str(exercise_id), f"the checker itself failed ({type(exc).__name__}: {exc}); please report this")


def _check(exercise_id, candidate, timeout, seed) -> Result:
    _load()
    if not isinstance(exercise_id, str) or exercise_id not in _EXERCISES:
        if isinstance(exercise_id, str) and exercise_id in _QUESTIONS:
            return _fail(exercise_id, f"{exercise_id!r} is a quiz question: use quiz({exercise_id!r}, answer)")
        import difflib

        close = difflib.get_close_matches(str(exercise_id), list(_EXERCISES), n=3)
        return _fail(str(exercise_id), f"there is no exercise {exercise_id!r}"
                     + (f"; did you mean {', '.join(close)}?" if close else "")
                     + f" Known exercises: {', '.join(exercises())}.")
    ex = _EXERCISES[exercise_id]
    if candidate is None or candidate is Ellipsis:
        return _fail(ex.id, "no answer yet: pass your function, e.g. "
                            f"check({ex.id!r}, {ex.signature.split('(')[0]})", hint=f"define {ex.signature}")
    if not callable(candidate):
        return _fail(ex.id, f"check needs your function itself, but got {type_name(candidate)} "
                            f"({describe(candidate)})",
                     hint=f"pass the function without calling it: check({ex.id!r}, "
                          f"{ex.signature.split('(')[0]}), not {ex.signature.split('(')[0]}(...)")
    if timeout is None:
        timeout = float(os.environ.get("LABKIT_CHECK_TIMEOUT") or ex.timeout)
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    t0 = time.perf_counter()
    runner = _run_in_child if _isolation() == "fork" else _run_in_thread
    status, payload = runner(ex, candidate, seed, timeout)
    seconds = time.perf_counter() - t0
    if status == "timeout":
        result = _fail(ex.id, f"your function did not finish within {timeout:g} s and was stopped",
                       payload, hint="look for a loop that never ends, or work that grows too fast "
                                     "(a Python loop over every element of a big tensor)")
    elif status == "died":
        case, code = payload
        how = f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"
        result = _fail(ex.id, f"the process running your function ended abruptly ({how}): "
                              f"os._exit(), a crash in native code, or running out of memory", case)
    elif payload["passed"]:
        result = Result(True, f"✔ {ex.id}: passed ({payload['n_public']} public and "
                              f"{payload['n_hidden']} random hidden cases, {seconds:.1f} s)", ex.id)
    else:
        result = _fail(ex.id, payload["problem"], payload["case"], payload["hint"], payload["output"])
    _record(ex.id, result.passed)
    return result


# ---------------------------------------------------------------------------------------------
# Quizzes


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


def quiz(question_id: str, answer: Any = _MISSING) -> Result:
    """quiz(id) shows the question; quiz(id, answer) checks your answer. Never raises."""
    try:
        _load()
        q = _QUESTIONS.get(question_id) if isinstance(question_id, str) else None
        if q is None:
            return _fail(str(question_id), f"there is no quiz question {question_id!r}; known: {', '.join(quizzes())}")
        text = q.text + "".join(f"\n    {'abcdefghij'[i]}) {c}" for i, c in enumerate(q.choices))
        if answer is _MISSING:
            return Result(False, f"? {q.id}: {text}", q.id)
        if answer is None or answer is Ellipsis:
            return _fail(q.id, "no answer yet", hint=text)
        correct = _quiz_correct(q, answer)
        if correct is None:
            result = _fail(q.id, f"the answer should be a number, got {describe(answer)}")
        elif correct:
            result = Result(True, f"✔ {q.id}: correct", q.id)
        else:
            kind = {"choice": "a letter such as 'b'", "number": "a number", "text": "a word or two"}[q.kind]
            result = _fail(q.id, "not right, try again", hint=q.hint or f"answer with {kind}")
        _record(q.id, result.passed)
        return result
    except BaseException as exc:
        return _fail(str(question_id), f"the checker itself failed ({type(exc).__name__}: {exc}); please report this")


# ---------------------------------------------------------------------------------------------
# Progress


def progress_path() -> Path:
    env = os.environ.get("LABKIT_PROGRESS")
    return Path(env).expanduser() if env else Path.home() / ".labkit" / "progress.json"


def _read_progress(path: Path) -> tuple[dict, str]:
    """(data, problem): a missing file is empty progress; a corrupt one too, with a note."""
    empty = {"version": 1, "passed": {}, "attempts": {}}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return empty, ""
    except Exception as exc:
        return empty, f"the progress file {path} could not be read ({type(exc).__name__}); starting afresh"
    if not isinstance(data, dict) or not isinstance(data.get("passed"), dict):
        return empty, f"the progress file {path} is not in labkit's format; starting afresh"
    data.setdefault("attempts", {})
    if not isinstance(data["attempts"], dict):
        data["attempts"] = {}
    return data, ""


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_last_progress_problem = ""


def _record(item_id: str, passed: bool) -> None:
    """Count an attempt and remember a pass; never raises (progress is a convenience)."""
    global _last_progress_problem
    try:
        path = progress_path()
        data, problem = _read_progress(path)
        if problem and path.exists():  # keep the unreadable file for inspection rather than lose it
            os.replace(path, path.with_name(path.name + ".corrupt"))
        data["attempts"][item_id] = int(data["attempts"].get(item_id, 0) or 0) + 1
        if passed and item_id not in data["passed"]:
            data["passed"][item_id] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        _write_atomically(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        _last_progress_problem = ""
    except Exception as exc:
        _last_progress_problem = f"progress could not be saved ({type(exc).__name__}: {exc})"


@dataclass
class Progress:
    rows: list = field(default_factory=list)  # (lesson, id, title, passed_at or None, attempts)
    note: str = ""

    @property
    def passed(self) -> list[str]:
        return [r[1] for r in self.rows if r[3]]

    def __repr__(self) -> str:
        lines = [f"{len(self.passed)} of {len(self.rows)} passed"]
        for lesson, item, title, when, attempts in self.rows:
            mark = "✔" if when else ("✘" if attempts else "·")
            lines.append(f"  {mark} {lesson}  {item:<28} {title}" + (f"  (passed {when})" if when else ""))
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{l}</td><td><code>{html.escape(i)}</code></td><td>{html.escape(t)}</td>"
            f"<td>{'✔ ' + w if w else ('✘ tried' if a else '·')}</td></tr>" for l, i, t, w, a in self.rows)
        note = f"<p><i>{html.escape(self.note)}</i></p>" if self.note else ""
        return (f"<p><b>{len(self.passed)} of {len(self.rows)} passed</b></p><table><tr><th>lesson</th>"
                f"<th>exercise</th><th>title</th><th>status</th></tr>{body}</table>{note}")


def progress(lesson: str | None = None) -> Progress:
    """Which exercises and quizzes you have passed (from the progress file), of every lesson or of
    LESSON ("01", "03", ...). Never raises."""
    try:
        _load()
        data, problem = _read_progress(progress_path())
        rows = [(e.lesson, e.id, e.title) for e in _EXERCISES.values()]
        rows += [(q.lesson, q.id, "quiz: " + q.text.split("\n")[0][:50]) for q in _QUESTIONS.values()]
        if lesson is not None:
            rows = [r for r in rows if r[0] == str(lesson).zfill(2)]
        rows.sort(key=lambda r: r[0])
        return Progress([(l, i, t, data["passed"].get(i), data["attempts"].get(i, 0)) for l, i, t in rows],
                        problem or _last_progress_problem)
    except Exception as exc:
        return Progress([], f"progress could not be read ({type(exc).__name__}: {exc})")

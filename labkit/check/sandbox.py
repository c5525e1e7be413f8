"""The sandbox: a learner's function runs in a forked child (or a thread) with limits on its time,
its memory and what it prints, so that nothing it does reaches the notebook's kernel.

A check must survive anything a learner writes: an infinite loop, a crash, `exit()`, a wall of prints.
On Linux and macOS the candidate runs in a forked child (the fork copies your notebook's state, so
closures and globals just work; ~25 ms with torch loaded, measured on the course's 2-core CPU) which
is killed after a time limit, so the kernel stays usable. The child runs torch single-threaded: a
forked child that uses the parent's OpenMP thread pool hangs. Its memory is capped (Linux: 4 GB, or
half the free memory, beyond what the notebook already uses), so a runaway allocation fails there
instead of taking the machine down. Side effects of your function (globals it sets, what it prints)
stay in the child. The cases pass CPU tensors; a forked child cannot use CUDA.
Where fork is not available (Windows), or with LABKIT_CHECK_ISOLATION=thread, the candidate runs in
a thread instead, stopped by an asynchronous exception: that stops Python loops, not a long C call.

What runs inside is a JOB: job(send) calls send(("case", label)) before each case and
send(("done", verdict)) once at the end (labkit.check.grade.run_cases is the course's one job).
"""

from __future__ import annotations

import ctypes
import io
import os
import sys
import threading
import time
import warnings
from typing import Callable

OUTPUT_LIMIT = 1_000_000  # characters a candidate may print before it is stopped
OUTPUT_SHOWN = 1_500  # characters of its output shown in a failure message
MEMORY_HEADROOM_GB = 4.0  # memory a candidate may allocate in the child (Linux), beyond the notebook's own

Job = Callable[[Callable[[tuple], None]], None]


class OutputLimit(BaseException):
    """Raised inside the candidate's print() when it has printed too much (BaseException: a bare
    `except Exception` in the learner's code does not swallow it)."""


class Stop(BaseException):
    """Raised asynchronously in the thread fallback when the time is up."""


class CappedOutput(io.TextIOBase):
    """A stdout that keeps the first KEEP characters and raises OutputLimit past LIMIT."""

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
            raise OutputLimit()
        return len(s)

    def text(self) -> str:
        t = "".join(self.kept)[: self.keep]
        if self.count > len(t):
            t += f"\n... ({self.count:,} characters in all; the rest is not shown)"
        return t


def isolation() -> str:
    """"fork" or "thread": LABKIT_CHECK_ISOLATION if set to one of them, else fork where it exists."""
    mode = os.environ.get("LABKIT_CHECK_ISOLATION", "").strip().lower()
    if mode in ("fork", "thread"):
        return mode
    import multiprocessing as mp

    return "fork" if "fork" in mp.get_all_start_methods() else "thread"


def run(job: Job, timeout: float) -> tuple[str, object]:
    """Run JOB isolated for at most TIMEOUT seconds. Returns ("done", verdict), ("timeout", the last
    case label sent, or None) or ("died", (that label, the child's exit code or None))."""
    return _run_in_child(job, timeout) if isolation() == "fork" else _run_in_thread(job, timeout)


def memory_headroom_gb() -> float:
    """The memory (GB) a check's child may allocate beyond the notebook's own: LABKIT_CHECK_MEMORY_GB if
    set, else MEMORY_HEADROOM_GB. A value that is not a positive number is an error, not a silent
    "no cap": a typo must not let a runaway allocation take the machine down."""
    raw = os.environ.get("LABKIT_CHECK_MEMORY_GB", "").strip()
    if not raw:
        return MEMORY_HEADROOM_GB
    try:
        gb = float(raw)
    except ValueError:
        gb = float("nan")
    if not 0 < gb < float("inf"):
        raise ValueError(f"LABKIT_CHECK_MEMORY_GB must be a positive number of gigabytes (the memory a check may "
                         f"allocate), not {raw!r}; unset it for the default {MEMORY_HEADROOM_GB:g}.")
    return gb


def _run_in_child(job, timeout):
    import multiprocessing as mp

    headroom_gb = memory_headroom_gb()  # read here, where a bad value can be reported
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    with warnings.catch_warnings():  # Python 3.12+ warns about fork in a multi-threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        proc = ctx.Process(target=_child_main, args=(job, send, headroom_gb), daemon=True)
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


def _child_main(job, conn, headroom_gb: float = MEMORY_HEADROOM_GB) -> None:  # pragma: no cover (runs in the child)
    try:
        # Nothing the candidate writes may reach the notebook: ipykernel forwards fds 1 and 2.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        sys.stdout = sys.stderr = CappedOutput()
        if "torch" in sys.modules:
            # The parent's OpenMP pool does not exist in a forked child: using it hangs.
            sys.modules["torch"].set_num_threads(1)
        _limit_memory(headroom_gb)
        job(conn.send)
    except BaseException:
        pass
    finally:
        os._exit(0)  # skip the kernel's atexit handlers and stream flushes, which belong to the parent


def _limit_memory(headroom_gb: float = MEMORY_HEADROOM_GB) -> None:  # pragma: no cover (runs in the child)
    """Cap the child's address space at what it already has plus HEADROOM_GB, or half the free
    memory if that is less (Linux only), so a runaway allocation fails inside the child with an error
    instead of pushing the machine (and the learner's kernel) out of memory."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        headroom = headroom_gb * 2**30
        with open("/proc/meminfo") as f:  # and at most half of what the machine has free
            available = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
        headroom = min(headroom, available / 2)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = int(current + headroom)
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except Exception:
        pass  # not Linux, or not allowed: run without a cap


def _run_in_thread(job, timeout):
    messages: list = []
    thread = threading.Thread(target=lambda: _thread_main(job, messages.append), daemon=True)
    old = sys.stdout, sys.stderr
    thread.start()
    try:
        thread.join(timeout)
        if thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(Stop))
            thread.join(1.0)
            current = next((p for k, p in reversed(messages) if k == "case"), None)
            return "timeout", current
    finally:
        sys.stdout, sys.stderr = old
    done = [p for k, p in messages if k == "done"]
    if done:
        return "done", done[0]
    return "died", (next((p for k, p in reversed(messages) if k == "case"), None), None)


def _thread_main(job, send):
    try:
        job(send)
    except Stop:
        pass

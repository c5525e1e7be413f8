"""labkit.check.sandbox: a candidate that loops, sleeps, prints without end, exits, crashes or
allocates without bound is stopped in its child (or thread), with a clear message, and the kernel
stays usable; what it writes never reaches the notebook."""

import os
import sys
import time

import pytest
import torch

from labkit import check as C
from labkit.check import sandbox

pytestmark = pytest.mark.usefixtures("checker_env")


def _children_cpu():
    """(CPU seconds used by this process's finished (reaped) children, its live multiprocessing children)."""
    import multiprocessing as mp

    t = os.times()
    return t.children_user + t.children_system, set(mp.active_children())


def _assert_stopped(before, limit):
    """The candidate's child is gone (killed and reaped, not left running) and used at most LIMIT CPU
    seconds: CPU time, unlike wall time, does not grow when the machine is busy."""
    import multiprocessing as mp

    cpu, children = before
    if sandbox.isolation() == "fork":
        assert not set(mp.active_children()) - children, "the candidate's child was left running"
        assert _children_cpu()[0] - cpu < limit, "the candidate ran past its limit"


def test_infinite_loop_is_stopped_and_the_process_stays_usable(merge, failed):
    def forever(W, A, B, alpha, r):
        while True:
            pass

    cpu = _children_cpu()
    failed(C.check("lora_merge", forever, timeout=1.5), "did not finish within 1.5 s", "public case 1")
    _assert_stopped(cpu, 1.5 + 1.0)  # the loop ran 1.5 s of wall time at most, so at most that much CPU
    assert C.check("lora_merge", merge).passed  # and the next check works


def test_a_sleeping_candidate_is_stopped_too(failed):
    failed(C.check("lora_merge", lambda *a: time.sleep(60), timeout=1), "did not finish")


def test_printing_megabytes_is_stopped_and_truncated(failed):
    def chatty(W, A, B, alpha, r):
        while True:
            print("x" * 10_000)

    cpu = _children_cpu()
    r = failed(C.check("lora_merge", chatty), "printed more than", "characters in all")
    assert len(r.message) < 5_000
    # stopped at the output limit (1 MB: a fraction of a second), not at the 10 s time limit
    _assert_stopped(cpu, 5.0)


def test_exit_and_hard_crashes_are_caught(merge, failed):
    failed(C.check("lora_merge", lambda *a: sys.exit(3)), "sys.exit(3)")
    failed(C.check("lora_merge", lambda *a: os._exit(7)), "ended abruptly", "exit code 7")
    assert C.check("lora_merge", merge).passed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory cap uses RLIMIT_AS (Linux)")
def test_a_memory_bomb_fails_in_the_child_with_a_hint(monkeypatch, merge, failed):
    monkeypatch.setenv("LABKIT_CHECK_MEMORY_GB", "1")

    def greedy(W, A, B, alpha, r):
        big = torch.ones(2**31, dtype=torch.float32)  # 8 GB
        return W + big[0]

    failed(C.check("lora_merge", greedy), "raised RuntimeError", "more memory than a check allows")
    assert C.check("lora_merge", merge).passed


@pytest.mark.parametrize("value", ["lots", "0", "-2", "nan", "inf"])
def test_a_bad_memory_limit_is_a_clear_error_not_a_silent_no_cap(monkeypatch, merge, failed, value):
    monkeypatch.setenv("LABKIT_CHECK_MEMORY_GB", value)
    with pytest.raises(ValueError, match=f"LABKIT_CHECK_MEMORY_GB must be a positive number.*{value!r}"):
        sandbox.memory_headroom_gb()
    if sandbox.isolation() == "fork":
        failed(C.check("lora_merge", merge), "LABKIT_CHECK_MEMORY_GB must be a positive number")
    monkeypatch.setenv("LABKIT_CHECK_MEMORY_GB", " 2.5 ")
    assert sandbox.memory_headroom_gb() == 2.5
    monkeypatch.setenv("LABKIT_CHECK_MEMORY_GB", "")
    assert sandbox.memory_headroom_gb() == sandbox.MEMORY_HEADROOM_GB


def test_thread_fallback_stops_a_python_loop_and_checks_normally(monkeypatch, merge, failed):
    monkeypatch.setenv("LABKIT_CHECK_ISOLATION", "thread")

    def forever(*a):
        while True:
            pass

    old_stdout = sys.stdout
    failed(C.check("lora_merge", forever, timeout=1), "did not finish")
    assert sys.stdout is old_stdout
    assert C.check("lora_merge", merge).passed
    failed(C.check("lora_merge", lambda W, A, B, alpha, r: W), "values differ")


def test_isolation_is_fork_where_it_exists_unless_the_environment_says_thread(monkeypatch):
    import multiprocessing as mp

    assert sandbox.isolation() == ("fork" if "fork" in mp.get_all_start_methods() else "thread")
    monkeypatch.setenv("LABKIT_CHECK_ISOLATION", " Thread ")
    assert sandbox.isolation() == "thread"
    monkeypatch.setenv("LABKIT_CHECK_ISOLATION", "nonsense")  # ignored
    assert sandbox.isolation() == ("fork" if "fork" in mp.get_all_start_methods() else "thread")


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_run_returns_the_verdict_or_the_last_case_reached(monkeypatch, mode):
    if mode == "fork" and sys.platform == "win32":
        pytest.skip("no fork on Windows")
    monkeypatch.setenv("LABKIT_CHECK_ISOLATION", mode)

    def finishes(send):
        send(("case", "case 1"))
        send(("done", {"passed": True}))

    def hangs_in_case_2(send):
        send(("case", "case 1"))
        send(("case", "case 2"))
        while True:
            pass

    def ends_without_a_verdict(send):
        send(("case", "case 1"))
        if mode == "fork":
            os._exit(5)

    assert sandbox.run(finishes, timeout=5) == ("done", {"passed": True})
    assert sandbox.run(hangs_in_case_2, timeout=0.5) == ("timeout", "case 2")
    assert sandbox.run(ends_without_a_verdict, timeout=5) == ("died", ("case 1", 5 if mode == "fork" else None))


def test_capped_output_keeps_the_start_counts_the_rest_and_stops_past_the_limit():
    out = sandbox.CappedOutput(limit=100, keep=10)
    out.write("abcdefghijklmno")
    assert out.text() == "abcdefghij\n... (15 characters in all; the rest is not shown)"
    with pytest.raises(sandbox.OutputLimit):
        out.write("x" * 90)


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

"""labkit.atomic: a file or folder is replaced whole or not at all."""

import json
import os
import stat

import pytest

from labkit import atomic


def test_write_text_and_json_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic.write_json(path, {"x": 1})
    atomic.write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~_umask(), oct(mode)  # not mkstemp's private 0600


def test_a_failing_folder_write_keeps_the_old_folder(tmp_path):
    path = tmp_path / "adapter"
    with atomic.folder(path) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.folder(path) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("disk full")
    assert (path / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"], "temporary and old copies are removed"
    with atomic.folder(path) as tmp:
        (tmp / "weights").write_text("new")
    assert (path / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~_umask()


def test_an_interrupt_leaves_no_folder_when_there_was_none(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic.folder(tmp_path / "new") as tmp:
            (tmp / "w").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- a process killed at each step
# The child saves "new" over a folder holding "old" and SIGKILLs itself at one step of atomic.folder; afterwards
# PATH must hold a complete folder (old or new), at once or after atomic.recover (what the next save or load does).

CHILD = r"""
import os, shutil, signal, sys
from pathlib import Path
from labkit import atomic
path, step, exchange = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "exchange"
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if not exchange:
    atomic._exchange = lambda a, b: False          # the portable path: rename aside, then into place
real_replace, calls = os.replace, []
def replace(a, b):
    calls.append((a, b))
    if step == "between_renames" and len(calls) == 2:
        die()
    return real_replace(a, b)
os.replace = replace
if step == "before_swap":
    atomic._exchange = die
    os.replace = lambda a, b: die() if Path(b) == path or Path(a) == path else real_replace(a, b)
if step == "before_cleanup":                       # the first rmtree tidies a stale copy; the second is the cleanup
    real_rmtree, removals = shutil.rmtree, []
    shutil.rmtree = lambda p, **k: die() if removals.append(p) or len(removals) == 2 else real_rmtree(p, **k)
with atomic.folder(path) as tmp:
    (tmp / "weights").write_text("new-half")
    if step == "during_write":
        die()
    (tmp / "weights").write_text("new")
"""

STEPS = ("during_write", "before_swap", "between_renames", "before_cleanup")


@pytest.mark.parametrize("mode", ["exchange", "rename"])
@pytest.mark.parametrize("step", STEPS)
def test_a_save_killed_at_any_step_leaves_a_complete_folder(tmp_path, step, mode):
    import signal
    import subprocess
    import sys

    if mode == "exchange" and not atomic._exchange(tmp_path, tmp_path):
        pytest.skip("this system cannot swap two paths atomically (not Linux): the rename mode covers it")
    if mode == "exchange" and step == "between_renames":
        pytest.skip("with an atomic swap there is no second rename")
    path = tmp_path / "adapter"
    with atomic.folder(path) as tmp:
        (tmp / "weights").write_text("old")
    child = subprocess.run([sys.executable, "-c", CHILD, str(path), step, mode], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    if mode == "exchange" or step != "between_renames":
        assert (path / "weights").read_text() in ("old", "new"), "a complete folder at PATH, with no recovery"
    atomic.recover(path)                              # what the next save or load does first
    assert (path / "weights").read_text() in ("old", "new")
    if step == "before_cleanup":
        assert (path / "weights").read_text() == "new", "the swap had happened"
    with atomic.folder(path) as tmp:                  # the next save works and tidies up
        (tmp / "weights").write_text("next")
    assert (path / "weights").read_text() == "next"
    assert not (tmp_path / ".adapter.old").exists(), "the next save removes a stale old copy"


def test_recover_puts_the_old_copy_back_only_when_the_folder_is_missing(tmp_path):
    path, old = tmp_path / "a", tmp_path / ".a.old"
    old.mkdir()
    (old / "w").write_text("old")
    assert atomic.recover(path) == path and (path / "w").read_text() == "old" and not old.exists()
    old.mkdir()
    atomic.recover(path)
    assert old.exists() and (path / "w").read_text() == "old", "a complete folder is never replaced by its old copy"

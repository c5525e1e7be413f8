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

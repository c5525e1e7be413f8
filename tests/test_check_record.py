"""labkit.check.record: progress() counts attempts and remembers passes in a JSON file that is
replaced atomically, survives a corrupt or unwritable file, and never raises."""

import json
import os
from pathlib import Path

import pytest

from labkit import check as C

pytestmark = pytest.mark.usefixtures("checker_env")


def test_progress_records_passes_and_attempts(tmp_path, merge):
    assert C.progress().passed == []
    C.check("lora_merge", lambda W, A, B, alpha, r: W)
    C.check("lora_merge", merge)
    data = json.loads((tmp_path / "progress.json").read_text())
    assert list(data["passed"]) == ["lora_merge"] and data["attempts"]["lora_merge"] == 2
    p = C.progress()
    assert p.passed == ["lora_merge"]
    assert "1 of" in repr(p) and "✔ 01  lora_merge" in repr(p) and "<table>" in p._repr_html_()
    assert C.progress("01").passed == ["lora_merge"] and C.progress(3).passed == []
    assert {r[0] for r in C.progress("04").rows} == {"04"}


def test_progress_survives_a_corrupt_file(tmp_path, merge):
    path = tmp_path / "progress.json"
    path.write_text("{not json")
    p = C.progress()
    assert p.passed == [] and "could not be read" in p.note
    assert C.check("lora_merge", merge).passed
    assert json.loads(path.read_text())["passed"].keys() == {"lora_merge"}
    assert (tmp_path / "progress.json.corrupt").read_text() == "{not json"  # kept, not lost
    path.write_text('["a list"]')
    assert "not in labkit's format" in C.progress().note


def test_progress_file_is_replaced_atomically(tmp_path, monkeypatch, merge):
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


def test_progress_in_a_missing_folder_and_an_unwritable_place(tmp_path, monkeypatch, merge):
    monkeypatch.setenv("LABKIT_PROGRESS", str(tmp_path / "new" / "dir" / "p.json"))
    assert C.check("lora_merge", merge).passed
    assert (tmp_path / "new" / "dir" / "p.json").is_file()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LABKIT_PROGRESS", str(blocker / "p.json"))  # a folder that cannot exist
    assert C.check("lora_merge", merge).passed  # still a result, no exception
    p = C.progress()  # says why nothing was kept
    assert p.passed == [] and "p.json could not be read (NotADirectoryError)" in p.note


def test_default_progress_path_is_under_home(monkeypatch):
    monkeypatch.delenv("LABKIT_PROGRESS")
    assert C.progress_path() == Path.home() / ".labkit" / "progress.json"

import os
import subprocess
import sys

import pytest

from labkit import models
from labkit.course import cli


def test_doctor_passes_here_and_reports_everything():
    lines = []
    assert cli.doctor(out=lines.append) == 0, "\n".join(lines)
    text = "\n".join(lines)
    for word in ("python", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "device",
                 "offline", "bundled model loads"):
        assert word in text


def test_doctor_fails_with_a_one_line_fix_when_the_model_is_broken(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "BASE_MODEL_DIR", tmp_path / "gone")
    lines = []
    assert cli.doctor(out=lines.append) == 1
    problem = [ln for ln in lines if ln.startswith("PROBLEM:")]
    assert len(problem) == 1 and str(tmp_path / "gone") in problem[0]


def test_doctor_flags_a_missing_package(monkeypatch):
    from labkit import env

    real = env.describe

    def fake():
        info = real()
        info["trl"] = None
        return info

    monkeypatch.setattr(env, "describe", fake)
    lines = []
    assert cli.doctor(out=lines.append) == 1
    assert any(ln.startswith("PROBLEM: trl is not installed") and "make install" in ln for ln in lines)


def test_doctor_flags_a_version_mismatch(monkeypatch):
    monkeypatch.delenv("LABKIT_UNPINNED", raising=False)
    monkeypatch.setattr(cli, "read_pins", lambda: {"peft": "0.0.1"})
    lines = []
    assert cli.doctor(out=lines.append) == 1
    assert any("peft" in ln and "0.0.1" in ln for ln in lines if ln.startswith("PROBLEM"))


def test_doctor_reports_an_unpinned_version_as_a_note(monkeypatch):
    """make test-latest and Colab run other versions on purpose: a difference is shown, not a problem."""
    monkeypatch.setenv("LABKIT_UNPINNED", "1")
    monkeypatch.setattr(cli, "read_pins", lambda: {"peft": "0.0.1"})
    lines = []
    assert cli.doctor(out=lines.append) == 0, "\n".join(lines)
    assert any(ln.startswith("peft") and "tested with 0.0.1" in ln for ln in lines)
    assert not any(ln.startswith("PROBLEM") for ln in lines)


def test_pins_file_pins_the_course_packages():
    if os.environ.get("LABKIT_UNPINNED", "") not in ("", "0"):
        pytest.skip("LABKIT_UNPINNED is set: make test-latest runs the newest releases on purpose")
    pins = cli.read_pins()
    for pkg in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "jupyterlab",
                "ipywidgets", "matplotlib", "nbval", "papermill", "lm-eval"):
        assert pkg in pins, pkg


def test_installed_versions_are_the_pinned_ones():
    """The environment the tests run in is the one constraints.txt describes."""
    import importlib.metadata as md

    if os.environ.get("LABKIT_UNPINNED", "") not in ("", "0"):
        pytest.skip("LABKIT_UNPINNED is set: make test-latest runs the newest releases on purpose")
    pins = cli.read_pins()
    for pkg in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "lm-eval"):
        assert md.version(pkg).split("+")[0] == pins[pkg], pkg


def test_labkit_command_is_installed():
    out = subprocess.run([sys.executable, "-m", "labkit.course.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "doctor" in out.stdout


def test_python_dash_m_labkit_is_the_labkit_command():
    out = subprocess.run([sys.executable, "-m", "labkit", "exercises", "list"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "reward_loss" in out.stdout and "top_k_retrieval" in out.stdout

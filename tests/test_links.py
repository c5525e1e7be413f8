"""Launching the course elsewhere: Binder's configuration and badge, and Binder's 2 GB memory limit
checked against the benchmark (bench/notebooks.json, written by scripts/bench_notebooks.py)."""

import json
import os
import re
from pathlib import Path

import pytest

from labkit.course import links
from labkit.course.links import BRANCH, binder_badge, binder_url, repo

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def test_binder_url_opens_a_notebook_in_jupyterlab():
    assert binder_url("notebooks/00_welcome.ipynb") == (
        f"https://mybinder.org/v2/gh/{repo()}/{BRANCH}?urlpath=lab/tree/notebooks/00_welcome.ipynb")
    assert binder_badge("notebooks/00_welcome.ipynb").startswith("[![Binder](https://mybinder.org/badge_logo.svg)](")


NOTEBOOKS = [p for d in links.NOTEBOOK_DIRS for p in sorted((ROOT / d).glob("*.ipynb"))]


def _src(cell):
    return "".join(cell["source"])


def test_the_repository_address_is_written_once_in_pyproject():
    import tomllib

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert links.repository_url() == urls["Repository"].rstrip("/")
    assert repo() == urls["Repository"].rstrip("/").removeprefix("https://github.com/")
    written = [p.relative_to(ROOT).as_posix() for p in (ROOT / "labkit").rglob("*.py")
               if repo() in p.read_text()]
    assert written == [], f"the address is written by hand in {written}: take it from labkit.course.links"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_notebook_has_its_own_colab_badge_and_the_generated_install_cell(path):
    """One badge test for lessons, solutions and exercises: the badge opens this very notebook, the
    first code cell installs labkit from the repository and never touches Colab's torch."""
    cells = json.loads(path.read_text())["cells"]
    rel = path.relative_to(ROOT).as_posix()
    assert links.colab_badge(rel) in _src(cells[0]), f"the badge must open this very notebook ({rel})"
    first_code = next(c for c in cells if c["cell_type"] == "code")
    assert _src(first_code) == links.install_cell(path.stem), "run `labkit links --write`"
    args = _src(first_code).split("pip install", 1)[1]
    assert "torch" not in args, "never reinstall Colab's torch"
    assert not re.search(r"(^|\s)(-U|--upgrade|--force-reinstall)(\s|$)", args), "never upgrade Colab's packages"


def test_links_check_passes_and_a_new_address_regenerates_every_link(tmp_path, monkeypatch):
    import shutil

    assert links.sync() == [], "run `labkit links --write`"
    for d in links.NOTEBOOK_DIRS:
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("runs"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    text = (ROOT / "pyproject.toml").read_text().replace(links.repository_url(), "https://github.com/a-fork/course")
    (tmp_path / "pyproject.toml").write_text(text)
    monkeypatch.setattr(links, "ROOT", tmp_path)
    assert repo() == "a-fork/course"
    stale = links.sync(tmp_path)
    assert len(stale) == len(NOTEBOOKS) + 1  # every notebook and the README
    assert set(links.sync(tmp_path, write=True)) == set(stale) and links.sync(tmp_path) == []
    nb = json.loads((tmp_path / "exercises" / NOTEBOOKS[-1].name).read_text())
    assert "https://colab.research.google.com/github/a-fork/course/blob/main/exercises/" in _src(nb["cells"][0])
    assert "git+https://github.com/a-fork/course" in "".join(_src(c) for c in nb["cells"])
    assert "a-fork/course" in (tmp_path / "README.md").read_text()


def test_readme_has_the_binder_badge_on_the_welcome_notebook():
    readme = (ROOT / "README.md").read_text()
    assert binder_url("notebooks/00_welcome.ipynb") in readme
    assert (ROOT / "notebooks" / "00_welcome.ipynb").is_file()


def test_binder_installs_a_cpu_torch_then_the_pinned_course():
    req = (BINDER / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in req
    assert re.search(r"^-c \.\./constraints\.txt$", req, re.M), "pins: a nested -c path is relative to this file"
    assert re.search(r"^torch$", req, re.M)
    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK), "repo2docker runs postBuild only when it is executable"
    text = post.read_text()
    assert "-c constraints.txt" in text and "-e ." in text and "download.pytorch.org/whl/cpu" in text
    # the widgets' front end comes pinned with the course (prebuilt JupyterLab extension, no build step)
    pins = (ROOT / "constraints.txt").read_text()
    for pkg in ("ipywidgets", "jupyterlab_widgets", "jupyterlab"):
        assert re.search(rf"^{pkg}==", pins, re.M | re.I), f"{pkg} is not pinned"
    start = BINDER / "start"
    assert os.access(start, os.X_OK) and "HF_HUB_OFFLINE=1" in start.read_text() and 'exec "$@"' in start.read_text()
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.1\d", runtime)


# The bench's rows against the lesson contract (time, memory, freshness): tests/test_contract.py.


def test_make_test_prepares_the_browser_and_test_latest_runs_unpinned():
    """`make test` (the README's command, .ci/run) installs Chromium from apt, never Playwright's own
    download; `make test-latest` upgrades the libraries without constraints in its own venv."""
    import subprocess

    def dry(target):
        return subprocess.run(["make", "-n", target, "STAMP=/dev/null"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.replace("\\\n", " ")

    test = dry("test")
    assert "apt-get install -y -q chromium" in test and "playwright install" not in test
    latest = dry("test-latest")
    assert ".venv-latest" in latest and "--upgrade" in latest
    upgrade = [line for line in latest.splitlines() if "--upgrade" in line][0]
    assert "-c constraints.txt" not in upgrade and all(p in upgrade for p in ("transformers", "peft", "trl", "bitsandbytes"))
    deps = (ROOT / "pyproject.toml").read_text()
    assert '"playwright>=' in deps and re.search(r"^playwright==", (ROOT / "constraints.txt").read_text(), re.M)


def test_ci_runs_the_readme_test_commands_and_nothing_else():
    """.ci/run calls the README's test commands (make test, make test-models), and only commands the README shows."""
    readme = (ROOT / "README.md").read_text()
    shown = set(re.findall(r"^(make [\w-]+)", readme, flags=re.M))
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith("#") and not ln.startswith(("set ", "cd "))]
    assert ci == ["make test", "make test-models"], ci
    assert set(ci) <= shown, set(ci) - shown

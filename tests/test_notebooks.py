"""Every lesson notebook: its structure, and one papermill run at its fast parameters (`make test`).

The defaults are what `make bench` (time and memory) and `make test-defaults` (nbval, as a learner runs
them) execute; `make test-models` runs each lesson with every Hub-style fixture model.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))



def _nb(path):
    return json.loads(path.read_text())


def fast_parameters(path) -> dict:
    """Parameters papermill injects in CI (smaller runs, same code paths), kept in the notebook's own
    metadata under labkit.fast_parameters so each lesson owns its values."""
    return _nb(path).get("metadata", {}).get("labkit", {}).get("fast_parameters", {})


def _assert_quiet(nb):
    """Quiet notebooks: no error, no warning wall and no progress bar in what the learner sees."""
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue", "") if errors else ""
    stderr = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", [])
                     if o.get("name") == "stderr")
    assert "Warning" not in stderr and "it/s]" not in stderr, stderr[:500]


def _src(cell):
    return "".join(cell["source"])


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_parameters_cell(path):
    cells = [c for c in _nb(path)["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged `parameters`"
    src = _src(cells[0])
    for name in ("MODEL", "DEVICE", "SEED"):
        assert re.search(rf"^{name}\s*=", src, re.M), f"the parameters cell lacks {name}"
    # papermill must understand every line, or it cannot inject new values
    from papermill.translators import PythonTranslator

    assigned = re.findall(r"^(\w+)\s*=", src, re.M)
    parsed = [p.name for p in PythonTranslator.inspect({"source": src})]
    assert parsed == assigned, f"papermill could not parse: {set(assigned) - set(parsed)}"


def test_labkit_keeps_colabs_torch():
    """The install cell installs labkit's dependencies; torch must be a lower bound only, so that pip
    keeps the CUDA torch Colab ships instead of replacing it."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [d for d in deps if re.match(r"torch\b", d)]
    assert re.fullmatch(r"torch>=[\d.]+", torch.replace(" ", "")), torch


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_fast_parameters_exist_in_the_parameters_cell(path):
    cell = next(c for c in _nb(path)["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assigned = set(re.findall(r"^(\w+)\s*=", _src(cell), re.M))
    assert fast_parameters(path), "set metadata.labkit.fast_parameters (what CI injects with papermill)"
    assert set(fast_parameters(path)) <= assigned, "a fast parameter is not in the parameters cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    for cell in _nb(path)["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, "clear outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_the_lesson_shape(path):
    text = "\n".join(_src(c) for c in _nb(path)["cells"] if c["cell_type"] == "markdown").lower()
    assert "what you will learn" in text and "recap" in text


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_with_papermill(path, tmp_path):
    import papermill as pm

    out = tmp_path / path.name
    # a cell that runs 10 minutes is a hang (a lost kernel reply was seen once): fail instead of waiting forever
    pm.execute_notebook(str(path), str(out), parameters=fast_parameters(path), kernel_name="python3",
                        progress_bar=False, cwd=str(path.parent), execution_timeout=600)
    nb = _nb(out)
    injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected or not fast_parameters(path)
    _assert_quiet(nb)
    from labkit.course.render import unbacked_figures

    # at the fast parameters every figure differs from a default run: prose that copied one fails here
    assert not unbacked_figures(nb), (f"the prose states {unbacked_figures(nb)}, which no output of this run "
                                      "prints: let the prose read the outputs, or list a figure that is not the "
                                      "run's (a paper's, a version) in metadata.labkit.prose_constants")
    from labkit.course import seeds
    from labkit.course.render import recorded

    spread = seeds.load(path.stem)  # the shipped seed spread must hold every figure the lesson records now
    if spread is not None:
        assert set(spread["runs"][0]["figures"]) == set(recorded(nb)), (
            f"the lesson records {sorted(set(recorded(nb)) ^ set(spread['runs'][0]['figures']))} differently from "
            f"{seeds.results_file(path.stem).name}: rerun scripts/seed_spread.py {path}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_hub_model_needs_nothing_but_model(path):
    """MODEL alone moves a lesson to another model: no lesson-specific parameters for Hub models. A knob
    whose 0 means "the shipped artefact" trains live for another model (labkit.models.shipped_or_live)."""
    assert "hub_parameters" not in _nb(path).get("metadata", {}).get("labkit", {})


@pytest.mark.models
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_notebook_runs_with_a_hub_style_model(path, hub_model, tmp_path):
    """Every lesson, at its fast parameters, with MODEL pointing at a locally built Hub-style model
    (tests/hub_models.py): it must run to the end without an error or a warning wall. `make test-models`."""
    import papermill as pm

    kind, folder = hub_model
    out = tmp_path / path.name
    params = {**fast_parameters(path), "MODEL": str(folder)}
    pm.execute_notebook(str(path), str(out), parameters=params, kernel_name="python3", progress_bar=False,
                        cwd=str(path.parent), execution_timeout=600)
    nb = _nb(out)
    _assert_quiet(nb)

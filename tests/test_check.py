"""labkit.check, the package: it exports every name that notebooks, exercises, solutions and labkit
import from it (so none of them changes when a module inside moves), and the solution markers its
docstring shares with nbgrader are the ones labkit.course.exercise_notebooks strips."""

import ast
import json
import pkgutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

from labkit import check as C
from labkit.course import exercise_notebooks as nbs

ROOT = Path(__file__).resolve().parents[1]


def _sources():
    """(where, Python source) of every labkit module and every code cell of the course's notebooks."""
    for path in sorted((ROOT / "labkit").rglob("*.py")):
        yield path.name, path.read_text()
    for folder in ("notebooks", "solutions", "exercises"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            for cell in json.loads(path.read_text())["cells"]:
                if cell["cell_type"] == "code":
                    src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                    lines = [ln[:len(ln) - len(ln.lstrip())] + "pass" if ln.lstrip().startswith(("%", "!")) else ln
                             for ln in src.split("\n")]  # IPython magics and shell lines are not Python
                    yield path.name, "\n".join(lines)


def _names_imported_from_labkit_check():
    names = set()
    for where, src in _sources():
        for node in ast.walk(ast.parse(src, where)):
            if isinstance(node, ast.ImportFrom) and (node.module == "labkit.check" or
                                                     (node.level and node.module == "check")):
                names |= {a.name for a in node.names}
    return names


def test_every_name_imported_from_labkit_check_is_exported():
    names = _names_imported_from_labkit_check()
    assert {"check", "quiz", "progress", "Case", "exercise", "question", "tensor", "randn"} <= names
    submodules = {m.name for m in pkgutil.iter_modules(C.__path__)}  # labkit's own modules may import these
    assert names - submodules <= set(C.__all__), names - submodules - set(C.__all__)
    for name in C.__all__:  # a function or class, never a submodule of the same name
        assert not isinstance(getattr(C, name), types.ModuleType), name


def test_the_markers_shared_with_nbgrader_are_the_ones_exercise_notebooks_strips():
    doc = C.__doc__
    assert "nbgrader" in doc and "### BEGIN SOLUTION" in doc and "### END SOLUTION" in doc
    assert nbs.BEGIN.match("### BEGIN SOLUTION") and nbs.END.match("### END SOLUTION")
    body = nbs.stub_source("def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION")
    assert body == 'def f(x):\n    raise NotImplementedError("replace this line with your code")'
    top = nbs.stub_source("### BEGIN SOLUTION\nanswer = 'b'\n### END SOLUTION")
    assert top == "answer = ...  # YOUR ANSWER HERE" and "`NAME = ...  # YOUR ANSWER HERE`" in doc
    assert nbs.stub_source("### BEGIN SOLUTION\nsecret\n### END SOLUTION", markdown=True) in doc


def test_the_suite_and_what_it_starts_record_progress_in_a_scratch_file():
    """conftest points LABKIT_PROGRESS at a temporary file for the session: check() and quiz() in the suite,
    and in every kernel or script it starts (they inherit the environment), record there, never in the
    learner's own ~/.labkit/progress.json."""
    path = C.progress_path()
    assert path != Path.home() / ".labkit" / "progress.json"
    assert Path(tempfile.gettempdir()).resolve() in path.resolve().parents
    child = subprocess.run([sys.executable, "-c", "from labkit import check; print(check.progress_path())"],
                           capture_output=True, text=True, timeout=120)
    assert Path(child.stdout.strip()) == path, child.stderr[-2000:]

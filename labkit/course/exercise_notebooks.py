"""Exercise notebooks from solution notebooks: solutions/ is the single source, exercises/ is generated.

In a solutions notebook, the answer to each exercise sits between two marker lines:

    def lora_forward(x, W, b, A, B, alpha, r):
        "docstring stays"
        ### BEGIN SOLUTION
        return x @ W.T + ...
        ### END SOLUTION

`stub_source` turns an indented region (a function body) into
`raise NotImplementedError("...")` at the same indentation, so the signature and docstring stay; a
region at the top level of a cell becomes `NAME = ...  # YOUR ANSWER HERE` for each name it assigns
(a quiz answer), so the notebook still runs to the end; in a markdown cell it becomes
"_Your answer here._". Outputs and execution counts are cleared.

Sections, for building a workshop subset: the markdown cell that opens an exercise is tagged
`exercise:<id>` (the id that check() or quiz() uses); the section runs to the next such cell or to a
cell tagged `exercises-end`. Cells before the first section (title, imports) and from `exercises-end`
on (progress, recap) belong to every subset.

    labkit exercises build                     # solutions/*.ipynb -> exercises/*.ipynb
    labkit exercises check                     # exit 1 if exercises/ is stale
    labkit exercises workshop --only lora_forward,nf4_quantize --out workshop/
"""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

from .links import colab_url

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = ROOT / "solutions"
EXERCISES = ROOT / "exercises"

BEGIN = re.compile(r"^([ \t]*)### BEGIN SOLUTION[ \t]*$")
END = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")
TAG_PREFIX = "exercise:"
END_TAG = "exercises-end"
STUB_MESSAGE = "replace this line with your code"


class MarkerError(ValueError):
    """Unbalanced or nested solution markers."""


def _regions(lines: list[str], where: str) -> list[tuple[int, int, str]]:
    """(begin line, end line, indentation) of each solution region in LINES."""
    regions, start = [], None
    for i, line in enumerate(lines):
        if BEGIN.match(line):
            if start is not None:
                raise MarkerError(f"{where}: '### BEGIN SOLUTION' on line {i + 1} inside another region")
            start = i
        elif END.match(line):
            if start is None:
                raise MarkerError(f"{where}: '### END SOLUTION' on line {i + 1} without a BEGIN")
            regions.append((start, i, BEGIN.match(lines[start]).group(1)))
            start = None
    if start is not None:
        raise MarkerError(f"{where}: '### BEGIN SOLUTION' on line {start + 1} is never closed")
    return regions


def _assigned_names(code: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name) and n.id not in names:
                    names.append(n.id)
    return names


def stub_source(source: str, markdown: bool = False, where: str = "cell") -> str:
    """SOURCE with every solution region replaced by its stub (see the module docstring)."""
    lines = source.split("\n")
    regions = _regions(lines, where)
    for start, end, indent in reversed(regions):
        body = lines[start + 1:end]
        if markdown:
            stub = ["_Your answer here._"]
        elif indent:
            stub = [f'{indent}raise NotImplementedError("{STUB_MESSAGE}")']
        else:
            names = _assigned_names("\n".join(body))
            stub = [f"{name} = ...  # YOUR ANSWER HERE" for name in names] or ["# YOUR CODE HERE"]
        lines[start:end + 1] = stub
    return "\n".join(lines)


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_notebook(nb: dict, name: str = "notebook") -> dict:
    """A copy of the solutions notebook NB as an exercise notebook: stubs, no outputs."""

    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb["cells"]):
        src = _source(cell)
        if cell["cell_type"] in ("code", "markdown"):
            src = stub_source(src, markdown=cell["cell_type"] == "markdown", where=f"{name}, cell {i}")
        if cell["cell_type"] == "markdown":  # the Colab badge opens the exercise, not the solution
            src = src.replace(colab_url(f"solutions/{name}"), colab_url(f"exercises/{name}"))
        cell["source"] = src
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("execution", "collapsed", "scrolled"):
            cell.get("metadata", {}).pop(key, None)
    nb.setdefault("metadata", {}).setdefault("labkit", {})["generated_from"] = f"solutions/{name}"
    return nb


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _dumps(nb: dict) -> str:
    import nbformat

    return nbformat.writes(nbformat.from_dict(nb), version=4) + "\n"


def section_ids(nb: dict) -> list[str]:
    """The exercise ids of NB's sections, in order (from the `exercise:<id>` tags)."""
    return [t[len(TAG_PREFIX):] for c in nb["cells"] for t in c.get("metadata", {}).get("tags", [])
            if t.startswith(TAG_PREFIX)]


def _section_of(cell) -> str | None:
    tags = cell.get("metadata", {}).get("tags", [])
    if END_TAG in tags:
        return END_TAG
    return next((t[len(TAG_PREFIX):] for t in tags if t.startswith(TAG_PREFIX)), None)


def select(nb: dict, ids: set[str]) -> dict:
    """NB with only the preamble, the sections of IDS and the closing cells."""
    nb = copy.deepcopy(nb)
    kept, current = [], None
    for cell in nb["cells"]:
        current = _section_of(cell) or current
        if current is None or current == END_TAG or current in ids:
            kept.append(cell)
    nb["cells"] = kept
    return nb


def expected_exercises(solutions: Path = SOLUTIONS) -> dict[str, str]:
    """{file name: notebook text} that `build` writes for the notebooks in SOLUTIONS."""
    return {p.name: _dumps(strip_notebook(_read(p), p.name)) for p in sorted(solutions.glob("*.ipynb"))}


def build(solutions: Path = SOLUTIONS, out: Path = EXERCISES) -> list[Path]:
    """Write OUT/<name>.ipynb for every SOLUTIONS/<name>.ipynb; remove notebooks in OUT with no source."""
    texts = expected_exercises(Path(solutions))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.ipynb"):
        if stale.name not in texts:
            stale.unlink()
    written = []
    for name, text in texts.items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


def stale(solutions: Path = SOLUTIONS, out: Path = EXERCISES) -> list[str]:
    """What differs between OUT and what `build` would write: [] when exercises/ is up to date."""
    texts = expected_exercises(Path(solutions))
    out = Path(out)
    problems = [f"{name}: missing" for name in texts if not (out / name).is_file()]
    problems += [f"{name}: differs from solutions/{name} (run `labkit exercises build`)" for name, text in texts.items()
                 if (out / name).is_file() and (out / name).read_text() != text]
    problems += [f"{p.name}: has no solutions notebook" for p in sorted(out.glob("*.ipynb")) if p.name not in texts]
    return problems


def workshop(ids, out: Path, solutions: Path = SOLUTIONS, with_solutions: bool = False) -> list[Path]:
    """Exercise notebooks holding only the exercises IDS (one per solutions notebook that has any).

    Unknown ids raise a ValueError that lists the known ones. WITH_SOLUTIONS also writes the
    matching solutions notebooks into OUT/solutions/ for the instructor.
    """
    ids = [i.strip() for i in ids if i.strip()]
    notebooks = {p: _read(p) for p in sorted(Path(solutions).glob("*.ipynb"))}
    known = {i: p for p, nb in notebooks.items() for i in section_ids(nb)}
    unknown = [i for i in ids if i not in known]
    if not ids or unknown:
        raise ValueError(f"unknown exercise id(s) {unknown}; known: {', '.join(known)}" if unknown
                         else "no exercise ids given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb in notebooks.items():
        chosen = set(ids) & set(section_ids(nb))
        if not chosen:
            continue
        subset = select(nb, chosen)
        (out / path.name).write_text(_dumps(strip_notebook(subset, path.name)))
        written.append(out / path.name)
        if with_solutions:
            (out / "solutions").mkdir(exist_ok=True)
            (out / "solutions" / path.name).write_text(_dumps(subset))
            written.append(out / "solutions" / path.name)
    return written

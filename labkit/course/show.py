"""Show labkit's own code in a notebook, so a lesson never pastes a copy that can drift, and
record(name, value) for the metrics `labkit render` collects. (Launch links: labkit.course.links.)"""

from __future__ import annotations

import inspect


def source(obj) -> str:
    """The source code of a labkit function, class or module."""
    return inspect.getsource(obj)


def show_source(obj) -> None:
    """Render OBJ's source as a highlighted code block (plain text outside Jupyter)."""
    code = source(obj)
    try:
        from IPython.display import Markdown, display

        display(Markdown(f"```python\n{code}\n```"))
    except ImportError:  # pragma: no cover
        print(code)


# The MIME type of a recorded metric in a notebook's outputs. JupyterLab does not know it and shows
# the text/plain line next to it; `labkit render` reads it back from the executed notebook.
RECORD_MIME = "application/vnd.labkit.record+json"
_RECORDED: dict = {}


def recorded() -> dict:
    """{name: value} of what record() stored in this kernel so far (a later record of a name wins)."""
    return dict(_RECORDED)


def name_of(label: str) -> str:
    """A label as a record name: "RAG, tuned reader" -> "rag_tuned_reader"."""
    import re

    name = re.sub(r"\W+", "_", str(label).lower()).strip("_")
    return name if name.isidentifier() else f"_{name}"


def _checked(name: str, value):
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"record's name must be a short identifier such as 'exact_match'; got {name!r}.")
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if not isinstance(value, (bool, int, float, str)):
        raise TypeError(f"record stores a number, a bool or a string; got {type(value).__name__} for {name!r}.")
    return value


def _stored(value):
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)  # JSON has no NaN or infinity
    return value


def record(name: str, value) -> None:
    """Record a metric of this run, e.g. record("exact_match_after_sft", 0.42).

    Stores it, invisibly, in the cell's output, so that `labkit render` (and labkit.course.render.recorded)
    can list it in the summary page. VALUE: a number, a bool or a short
    string; 0-d tensors and numpy scalars are converted with .item().
    """
    record_many({name: value})


def record_many(figures: dict) -> None:
    """record() each of FIGURES {name: value} in one output that the learner does not see.

    The output carries the figures under RECORD_MIME with an empty text/plain, so JupyterLab shows
    nothing, while `labkit render`, scripts/seed_spread.py and the tests read them back
    (labkit.course.render.recorded). Recorded figures are maintainer machinery: what the learner reads is
    what the lesson prints."""
    checked = {name: _checked(name, value) for name, value in figures.items()}
    if not checked:
        raise ValueError("record_many needs at least one {name: value}.")
    stored = {n: _stored(v) for n, v in checked.items()}
    _RECORDED.update(stored)
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover
        return
    # a list of [name, value], not a dict: nbformat sorts a dict's keys when it saves the notebook
    display({RECORD_MIME: {"figures": [[n, v] for n, v in stored.items()]}, "text/plain": ""}, raw=True)

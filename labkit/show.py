"""Show labkit's own code in a notebook, so a lesson never pastes a copy that can drift, and
record(name, value) for the metrics `labkit render` collects. (Launch links: labkit.launch.)"""

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


def record(name: str, value) -> None:
    """Record a metric of this run, e.g. record("exact_match_after_sft", 0.42).

    Shows `name = value` and stores {"name", "value"} in the cell's output, so that `labkit render`
    (and labkit.render.recorded) can list it in the summary page. VALUE: a number, a bool or a short
    string; 0-d tensors and numpy scalars are converted with .item().
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"record's name must be a short identifier such as 'exact_match'; got {name!r}.")
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if not isinstance(value, (bool, int, float, str)):
        raise TypeError(f"record stores a number, a bool or a string; got {type(value).__name__} for {name!r}.")
    text = f"{name} = {value:.6g}" if isinstance(value, float) else f"{name} = {value!r}"
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        value = str(value)  # JSON has no NaN or infinity
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover
        print(text)
        return
    display({RECORD_MIME: {"name": name, "value": value}, "text/plain": text}, raw=True)

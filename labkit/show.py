"""Show labkit's own code in a notebook, so a lesson never pastes a copy that can drift."""

from __future__ import annotations

import inspect

from . import BRANCH, REPO


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


def colab_url(notebook_path: str) -> str:
    """The Colab address that opens NOTEBOOK_PATH (relative to the repository root) from GitHub."""
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/{notebook_path}"


def colab_badge(notebook_path: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook_path)})")

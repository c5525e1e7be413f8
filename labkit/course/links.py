"""Where the course lives, and every link that launches it, from one address.

The repository address is written once, in pyproject.toml's ``[project.urls] Repository``. The Colab
and Binder badges of every notebook and of the README, and the Colab install cell, are generated
from it (``labkit links --write``; the tests run ``labkit links --check``), so a fork changes one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BRANCH = "main"
NOTEBOOK_DIRS = ("notebooks", "solutions", "exercises")


def repository_url() -> str:
    """The repository's https address: pyproject.toml's [project.urls] Repository in a source checkout,
    else the installed package's metadata (a pip install from git, as on Colab)."""
    pyproject = ROOT / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        urls = tomllib.loads(pyproject.read_text()).get("project", {}).get("urls", {})
        if "Repository" in urls:
            return urls["Repository"].rstrip("/")
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        for entry in metadata("labkit").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip() == "Repository":
                return url.strip().rstrip("/")
    except PackageNotFoundError:
        pass
    raise RuntimeError("labkit's repository address is unknown: set [project.urls] Repository in pyproject.toml.")


def repo() -> str:
    """owner/name of the repository on GitHub."""
    m = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(\.git)?", repository_url())
    if not m:
        raise RuntimeError(f"the repository address {repository_url()!r} is not a GitHub https address.")
    return m.group(1)


def colab_url(notebook_path: str) -> str:
    """The Colab address that opens NOTEBOOK_PATH (relative to the repository root) from GitHub."""
    return f"https://colab.research.google.com/github/{repo()}/blob/{BRANCH}/{notebook_path}"


def colab_badge(notebook_path: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook_path)})"


def binder_url(notebook_path: str) -> str:
    """The mybinder.org address that builds the repository (binder/) and opens NOTEBOOK_PATH in JupyterLab."""
    return f"https://mybinder.org/v2/gh/{repo()}/{BRANCH}?urlpath=lab/tree/{notebook_path}"


def binder_badge(notebook_path: str) -> str:
    return f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder_url(notebook_path)})"


def install_requirement() -> str:
    """What the Colab cell asks pip for: labkit from the repository, with its dependencies."""
    return f"labkit @ git+{repository_url()}"


# what a notebook needs on Colab beyond labkit itself: {notebook stem: one more line of its install cell}
COLAB_EXTRAS = {
    "17_ship_it": "    !command -v npm >/dev/null && python -m labkit.llamacpp   # llama.cpp, prebuilt (section 5)",
}


def install_cell(stem: str | None = None) -> str:
    """The Colab install cell: first code cell of every notebook (STEM's, with its COLAB_EXTRAS line). Colab's
    CUDA torch satisfies labkit's torch>=... and is kept (no --upgrade, torch not named)."""
    extra = COLAB_EXTRAS.get(stem)
    return ("# Colab only: install the course. Colab's own torch satisfies labkit's requirement and is kept.\n"
            "import sys\n"
            "if \"google.colab\" in sys.modules:\n"
            f"    !pip install -q \"{install_requirement()}\"" + (f"\n{extra}" if extra else ""))


_COLAB_BADGE = re.compile(r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]\([^)]*\)")
_BINDER_BADGE = re.compile(r"\[!\[Binder\]\(https://mybinder\.org/badge_logo\.svg\)\]\([^)]*\)")


def _sync_notebook(path: Path, rel: str) -> bool:
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    changed = False
    first = "".join(cells[0]["source"])
    new = _COLAB_BADGE.sub(colab_badge(rel), first)
    if new != first:
        cells[0]["source"], changed = new.splitlines(keepends=True), True
    for cell in cells:
        if cell["cell_type"] == "code" and "google.colab" in "".join(cell["source"]):
            if "".join(cell["source"]) != install_cell(path.stem):
                cell["source"], changed = install_cell(path.stem).splitlines(keepends=True), True
            break
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


def sync(root: Path = ROOT, write: bool = False) -> list[str]:
    """Files whose badges or install cell differ from what the repository address gives; with
    WRITE, rewrite them. Notebooks keep their JSON layout (indent 1, as Jupyter writes it)."""
    out = []
    for folder in NOTEBOOK_DIRS:
        for path in sorted((root / folder).glob("*.ipynb")):
            rel = path.relative_to(root).as_posix()
            if write:
                if _sync_notebook(path, rel):
                    out.append(rel)
            else:
                tmp = json.loads(path.read_text())
                first = "".join(tmp["cells"][0]["source"])
                install = next(("".join(c["source"]) for c in tmp["cells"]
                                if c["cell_type"] == "code" and "google.colab" in "".join(c["source"])), None)
                if _COLAB_BADGE.sub(colab_badge(rel), first) != first or colab_badge(rel) not in first \
                        or install != install_cell(path.stem):
                    out.append(rel)
    readme = root / "README.md"
    text = readme.read_text()
    new = _BINDER_BADGE.sub(binder_badge("notebooks/00_welcome.ipynb"), text)
    new = _COLAB_BADGE.sub(colab_badge("notebooks/00_welcome.ipynb"), new)
    if new != text or binder_badge("notebooks/00_welcome.ipynb") not in text:
        out.append("README.md")
        if write:
            readme.write_text(new)
    return out

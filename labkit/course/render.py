"""Run every notebook with given parameters into a folder, with a summary page: `labkit render`.

    labkit render --out out/render                          # every lesson at its defaults
    labkit render --fast --out out/render                   # each lesson's CI parameters (quick)
    labkit render -p DEVICE=cuda -p MODEL=HuggingFaceTB/SmolLM2-135M-Instruct --out out/gpu --html

A parameter is injected (by papermill, after the cell tagged `parameters`) only into the notebooks whose
parameters cell assigns it, so `-p FT_STEPS=10` changes the lessons that have FT_STEPS and no other.
OUT gets the executed notebooks, optionally their HTML, summary.md (one row per notebook: status,
wall time, what was injected, the metrics it recorded with labkit.course.show.record) and summary.json.
"""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

from .show import RECORD_MIME

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def parse_params(pairs: list[str]) -> dict:
    """["R=16", "DEVICE=cuda"] -> {"R": 16, "DEVICE": "cuda"}: Python literals where they parse, else strings."""
    params = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ValueError(f"a parameter is NAME=VALUE, e.g. FT_STEPS=10; got {pair!r}.")
        try:
            params[name.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            params[name.strip()] = text
    return params


def _parameters_cell(nb: dict) -> dict | None:
    return next((c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])), None)


def parameter_names(nb: dict) -> set[str]:
    """The names assigned in the notebook's cell tagged `parameters` (empty if it has none)."""
    cell = _parameters_cell(nb)
    if cell is None:
        return set()
    src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    return set(re.findall(r"^(\w+)\s*=", src, re.M))


def fast_parameters(nb: dict) -> dict:
    """The lesson's own quick parameters (metadata.labkit.fast_parameters), used by CI and --fast."""
    return dict(nb.get("metadata", {}).get("labkit", {}).get("fast_parameters", {}))


def recorded(nb: dict) -> dict:
    """{name: value} of every labkit.course.show.record(...) in an executed notebook (a later record of a name wins)."""
    out = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            rec = o.get("data", {}).get(RECORD_MIME)
            if isinstance(rec, dict) and "name" in rec:
                out[rec["name"]] = rec.get("value")
            elif isinstance(rec, dict) and isinstance(rec.get("figures"), list):  # show.record_many, in order
                out.update((name, value) for name, value in rec["figures"])
    return out


# A figure as prose states one: 93%, x1.07, 0.145 (integers alone are counts and step numbers, left out).
_START, _END = r"(?<![\w.])", r"(?![\w]|\.\d)"  # a whole figure: not part of a word, a longer number or a version (0.50.2)
FIGURE = re.compile(_START + r"(?:x\d+(?:\.\d+)?|\d+(?:\.\d+)?%|\d+\.\d+)" + _END)


def prose_figures(markdown: str) -> list[str]:
    """The figures MARKDOWN states in its prose: percentages, "x" ratios and decimals, outside maths ($...$)
    and code (`...` and fenced blocks), which show formulas and names rather than results."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    return FIGURE.findall(text)


def unbacked_figures(nb: dict) -> list[str]:
    """Figures stated in NB's markdown cells that no output of the executed notebook NB contains and that its
    metadata does not list under labkit.prose_constants (figures that are not this run's: a paper's, a
    library version, a default written in the parameters). Empty when every stated figure is backed.

    Run on a lesson executed at other parameters than its defaults (`make test` runs the fast ones), a figure
    copied into the prose from an earlier run shows up here: prose must read the outputs, not repeat them.
    """
    allowed = set(nb.get("metadata", {}).get("labkit", {}).get("prose_constants", []))
    printed = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            printed.append("".join(out.get("text", "")))
            for kind in ("text/plain", "text/markdown", "text/html"):
                printed.append("".join(out.get("data", {}).get(kind, "")))
    printed = "\n".join(printed)
    unbacked = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for figure in prose_figures("".join(cell["source"])):
            if figure not in allowed and not re.search(_START + re.escape(figure) + _END, printed):
                unbacked.append(figure)
    return unbacked


def render(notebooks: list[Path], params: dict, out: Path, fast: bool = False, html: bool = False,
           kernel_name: str = "python3", log=print) -> list[dict]:
    """Execute each notebook into OUT; returns one row per notebook and writes summary.md/.json."""
    import papermill as pm

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in notebooks:
        path = Path(path).resolve()
        nb = json.loads(path.read_text())
        names = parameter_names(nb)
        injected = {**(fast_parameters(nb) if fast else {}), **{k: v for k, v in params.items() if k in names}}
        target = out / path.name
        log(f"{path.name}: running with {injected or 'its defaults'}")
        t0 = time.perf_counter()
        error = None
        try:
            pm.execute_notebook(str(path), str(target), parameters=injected, kernel_name=kernel_name,
                                progress_bar=False, cwd=str(path.parent))
        except Exception as exc:  # record and go on with the other notebooks
            first = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {first[0] if first else ''}"[:300]
        row = {"notebook": path.name, "status": "ok" if error is None else "failed", "wall_s": round(time.perf_counter() - t0, 1),
               "params": injected, "metrics": {}, "error": error, "html": None}
        if target.is_file():
            executed = json.loads(target.read_text())
            row["metrics"] = recorded(executed)
            if html:
                row["html"] = _to_html(target)
        log(f"{path.name}: {row['status']} in {row['wall_s']} s" + (f" ({error})" if error else ""))
        rows.append(row)
    (out / "summary.json").write_text(json.dumps({"params": params, "fast": fast, "rows": rows}, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(rows, params, fast))
    return rows


def _to_html(path: Path) -> str:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(path))
    html_path = path.with_suffix(".html")
    html_path.write_text(body)
    return html_path.name


def summary_markdown(rows: list[dict], params: dict, fast: bool) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    given = ", ".join(f"`{k}={v!r}`" for k, v in params.items()) or "none"
    lines = ["# Rendered notebooks", "",
             f"Parameters given: {given}{'; each lesson also got its fast parameters' if fast else ''}.",
             f"{sum(r['status'] == 'ok' for r in rows)} of {len(rows)} notebooks ran without error; "
             f"{sum(r['wall_s'] for r in rows):.0f} s in all.", "",
             "| notebook | status | wall time (s) | injected | metrics |", "|---|---|---|---|---|"]
    for r in rows:
        name = f"[{r['notebook']}]({r['notebook']})" + (f" ([html]({r['html']}))" if r.get("html") else "")
        status = "ok" if r["status"] == "ok" else f"FAILED: {r['error']}".replace("|", "\\|")
        injected = ", ".join(f"{k}={v!r}" for k, v in r["params"].items()) or "defaults"
        metrics = "<br>".join(f"{k} = {fmt(v)}" for k, v in r["metrics"].items()) or "-"
        lines.append(f"| {name} | {status} | {r['wall_s']} | {injected} | {metrics} |")
    return "\n".join(lines) + "\n"


def default_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))

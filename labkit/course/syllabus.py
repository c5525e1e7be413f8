"""The course map: the lessons that exist, in order, grouped in parts, each with its run time from the bench.

One source for the map that README.md and lesson 00 show: labkit/assets/syllabus.json (inside the package,
so lesson 00 can show it on Colab too), written from the notebooks' titles and bench/notebooks.json by

    python -m labkit.course.syllabus --write      # also rewrites the map in README.md (between its map markers)

scripts/bench_notebooks.py runs it after a bench; tests/test_syllabus.py fails when either is stale.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .contract import title_and_idea

PARTS = (("start", "00", "00"), ("adapters", "01", "05"), ("training objectives", "06", "12"),
         ("measuring and deciding", "13", "15"), ("production", "16", "17"), ("capstone", "18", "19"))
ROOT = Path(__file__).resolve().parents[2]
FILE = Path(__file__).resolve().parents[1] / "assets" / "syllabus.json"
README_START, README_END = "<!-- map: labkit.course.syllabus -->", "<!-- /map -->"


def part_of(number: str) -> str:
    """The part a lesson number ("07") belongs to."""
    for name, first, last in PARTS:
        if first <= number <= last:
            return name
    raise ValueError(f"lesson {number!r} is in no part of {PARTS}.")


def build(root: Path = ROOT) -> list[dict]:
    """One row per notebook under ROOT/notebooks: number, stem, title, idea, part, and the bench's wall
    time and peak memory at the defaults (None where the bench has no row)."""

    bench_file = root / "bench" / "notebooks.json"
    bench = {r["notebook"]: r for r in json.loads(bench_file.read_text())["rows"]} if bench_file.exists() else {}
    rows = []
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        title, idea = title_and_idea(json.loads(path.read_text()))
        b = bench.get(path.name, {})
        rows.append({"number": path.name[:2], "stem": path.stem,
                     "title": re.sub(r"^#\s*\d\d\s*·\s*", "", title).strip(), "idea": idea,
                     "part": part_of(path.name[:2]), "wall_s": b.get("wall_s"), "peak_rss_mb": b.get("peak_rss_mb")})
    return rows


def load() -> list[dict]:
    """The shipped map (labkit/assets/syllabus.json)."""
    return json.loads(FILE.read_text())["lessons"]


def markdown(rows: list[dict] | None = None) -> str:
    """The map as a Markdown table: part, lesson, its one idea, minutes at the defaults on a 2-core CPU."""
    rows = load() if rows is None else rows
    lines = ["| part | lesson | the idea | run time |", "|---|---|---|---|"]
    last = None
    for r in rows:
        part = r["part"] if r["part"] != last else ""
        last = r["part"]
        took = f"{r['wall_s']:.0f} s" if r.get("wall_s") is not None else "not benched"
        lines.append(f"| {part} | `{r['stem']}`: {r['title']} | {r['idea']} | {took} |")
    return "\n".join(lines)


def show(rows: list[dict] | None = None) -> None:
    """Display the map in a notebook (plain text outside Jupyter)."""
    try:
        from IPython.display import Markdown, display

        display(Markdown(markdown(rows)))
    except ImportError:  # pragma: no cover
        print(markdown(rows))


def readme_with_map(text: str, rows: list[dict]) -> str:
    """README TEXT with the map between its markers replaced by markdown(ROWS)."""
    if README_START not in text or README_END not in text:
        raise ValueError(f"README.md has no {README_START} ... {README_END} markers for the map.")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{markdown(rows)}\n{README_END}{tail}"


def write(root: Path = ROOT) -> list[dict]:
    """Rewrite labkit/assets/syllabus.json and README.md's map from the notebooks and the bench."""
    rows = build(root)
    FILE.write_text(json.dumps({"made_by": "python -m labkit.course.syllabus --write", "lessons": rows}, indent=1) + "\n")
    readme = root / "README.md"
    readme.write_text(readme_with_map(readme.read_text(), rows))
    return rows


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv[1:]:
        print(markdown(write()))
    else:
        print(markdown(build()))

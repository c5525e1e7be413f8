"""The lesson contract, its countable parts: what tests/test_contract.py checks on every notebook.

    python -m labkit.course.contract                      # every lesson: words, knobs, listings, problems
    python -m labkit.course.contract notebooks/09_dpo.ipynb

Every lesson has one idea, named in its title ("# NN · Title") and stated in one sentence under it; the
sections "What you will learn", "Recap" and "Exercises", in that order; at most 1,500 words of prose
(the capstones 2,000); at most 12 knobs in its parameters cell; `show_source` only on a labkit function
named directly, at most 40 lines a listing; no seed table or verdict rules in the learner's view (the
one-line `seeds.claims` only); and, in `make bench` at its defaults, at most 60 s and 1.5 GB.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import re
from pathlib import Path

MAX_WORDS = 1500
CAPSTONE_WORDS = 2000
CAPSTONES = ("18", "19")
MAX_KNOBS = 12
MAX_LISTING_LINES = 40
MAX_SECONDS = 60
MAX_RSS_MB = 1536
SECTIONS = ("what you will learn", "recap", "exercises")
# seed machinery that stays out of the learner's view: the lesson prints seeds.claims(...) only
MACHINERY = ("seeds.report(", "seeds.table(", "seeds.verdict(", "seeds.compare_live(", "seeds.load(")

ROOT = Path(__file__).resolve().parents[2]


def _nb(path) -> dict:
    return json.loads(Path(path).read_text())


def _src(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _markdown(nb) -> list[str]:
    return [_src(c) for c in nb["cells"] if c["cell_type"] == "markdown"]


def _code(nb) -> list[str]:
    return [_src(c) for c in nb["cells"] if c["cell_type"] == "code"]


def prose(markdown: str) -> str:
    """MARKDOWN without fenced code, badges, images and link targets: the words a learner reads."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"\[!\[[^\]]*\]\([^)]*\)\]\([^)]*\)", " ", text)   # a badge: [![alt](img)](link)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)                  # an image
    text = re.sub(r"\]\([^)]*\)", "]", text)                            # [text](link) -> [text]
    return text


def words(nb) -> int:
    """Words of prose in the notebook's markdown cells (tables included, code blocks and links not)."""
    return sum(len(re.findall(r"[\w'’.,%$+-]*\w[\w'’.,%$+-]*", prose(m))) for m in _markdown(nb))


def word_limit(path) -> int:
    return CAPSTONE_WORDS if Path(path).name[:2] in CAPSTONES else MAX_WORDS


def knobs(nb) -> list[str]:
    """The names assigned in the cell tagged `parameters`."""
    cell = next((c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    return re.findall(r"^(\w+)\s*=", _src(cell), re.M) if cell else []


def title_and_idea(nb) -> tuple[str, str]:
    """(title, the idea's sentence) from the first cell: '# NN · Title', then its first paragraph."""
    first = _src(nb["cells"][0]) if nb["cells"] else ""
    lines = first.splitlines()
    title = lines[0] if lines else ""
    rest = prose("\n".join(lines[1:])).strip().split("\n\n")
    idea = next((p.strip() for p in rest if p.strip()), "")
    return title, " ".join(idea.split())


def sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z(*_])", text.strip()) if s])


def section_order(nb) -> list[str]:
    """The contract's sections in the order the notebook has them (each counted once, where it first appears)."""
    found = []
    for m in _markdown(nb):
        for line in m.splitlines():
            head = line.strip().lstrip("#").strip().strip("*").strip().rstrip(":").lower()
            if (line.startswith("#") or line.strip().startswith("**")) and head in SECTIONS and head not in found:
                found.append(head)
    return found


def _labkit_namespace(nb) -> dict:
    """What the notebook's labkit imports bind: {name: module or object}."""
    ns: dict = {}
    for src in _code(nb):
        code = "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith(("!", "%")))
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("labkit") \
                    or isinstance(node, ast.Import) and any(a.name.startswith("labkit") for a in node.names):
                try:
                    exec(compile(ast.Module([node], []), "<imports>", "exec"), ns)
                except Exception:  # an optional import: the listing that needs it fails below
                    pass
    return ns


def listings(nb) -> list[tuple[str, int | None]]:
    """(expression, lines) of every show_source(...) call; lines is None when the expression is not a
    labkit object named directly (module.function), which the contract cannot measure."""
    ns = _labkit_namespace(nb)
    out = []
    for src in _code(nb):
        for m in re.finditer(r"show_source\(([^()]*(?:\([^()]*\))?[^()]*)\)", src):
            expr = m.group(1).strip()
            if not expr or expr.startswith(("obj", "*")):
                continue
            try:
                obj = eval(expr, dict(ns))  # noqa: S307  (names the notebook imported from labkit)
                out.append((expr, len(inspect.getsource(obj).rstrip("\n").splitlines())))
            except Exception:
                out.append((expr, None))
    return out


def code_hash(path) -> str:
    """A hash of the notebook's code cells: the bench row of a lesson whose code changed is stale."""
    return hashlib.sha256("\n\x00".join(_code(_nb(path))).encode()).hexdigest()[:16]


def problems(path) -> list[str]:
    """What breaks the contract in the notebook at PATH, one line each (empty: it keeps the contract)."""
    nb, path = _nb(path), Path(path)
    out = []
    title, idea = title_and_idea(nb)
    if not re.match(rf"# {re.escape(path.name[:2])} · \S", title):
        out.append(f"the first line must be the title '# {path.name[:2]} · <one idea>', not {title[:60]!r}")
    if not idea or sentences(idea) != 1 or not idea.endswith(".") or len(idea.split()) > 60:
        out.append(f"the paragraph under the title must state the idea in one sentence (of at most 60 words); got {idea[:100]!r}")
    order = section_order(nb)
    if order != list(SECTIONS):
        out.append(f"the sections must be {', '.join(SECTIONS)} in this order (a heading or a bold line each); found {order}")
    n = words(nb)
    if n > word_limit(path):
        out.append(f"{n} words of prose, more than {word_limit(path)}")
    k = knobs(nb)
    if len(k) > MAX_KNOBS:
        out.append(f"{len(k)} knobs in the parameters cell, more than {MAX_KNOBS}: {', '.join(k)}")
    for expr, lines in listings(nb):
        if lines is None:
            out.append(f"show_source({expr}): name a labkit function directly (module.function) so its length can be checked")
        elif lines > MAX_LISTING_LINES:
            out.append(f"show_source({expr}) prints {lines} lines, more than {MAX_LISTING_LINES}")
    code = "\n".join(_code(nb))
    for call in MACHINERY:
        if call in code:
            out.append(f"{call}...) shows seed machinery to the learner; print seeds.claims(lesson, MODEL) instead")
    if "lambda f:" in code:
        out.append("a verdict rule (lambda f: ...) in the notebook: claims and their rules live in labkit/seed_claims.py")
    return out


def bench_problems(path, bench_file=None) -> list[str]:
    """What the committed bench (bench/notebooks.json) says against the contract for the notebook at PATH."""
    bench_file = Path(bench_file or ROOT / "bench" / "notebooks.json")
    path = Path(path)
    rows = {r["notebook"]: r for r in json.loads(bench_file.read_text())["rows"]} if bench_file.exists() else {}
    row = rows.get(path.name)
    if row is None:
        return [f"no row in {bench_file.name}: run `python scripts/bench_notebooks.py {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`"]
    out = []
    if row.get("code_sha") != code_hash(path):
        out.append(f"its code changed since it was benched: rerun `python scripts/bench_notebooks.py notebooks/{path.name}`")
    if row.get("error"):
        out.append(f"it failed in the bench: {row['error']}")
    if row["wall_s"] > MAX_SECONDS:
        out.append(f"{row['wall_s']} s at its defaults, more than {MAX_SECONDS} s")
    if row["peak_rss_mb"] > MAX_RSS_MB:
        out.append(f"{row['peak_rss_mb']} MB at its defaults, more than {MAX_RSS_MB} MB")
    return out


def main(argv=None) -> int:
    import sys

    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])] or \
        sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    bad = 0
    for p in paths:
        nb = _nb(p)
        found = problems(p) + bench_problems(p)
        bad += bool(found)
        longest = max((n for _, n in listings(nb) if n), default=0)
        print(f"{p.name:<34} {words(nb):>5} words  {len(knobs(nb)):>2} knobs  longest listing {longest:>3} lines  "
              f"{'ok' if not found else str(len(found)) + ' problem(s)'}")
        for f in found:
            print(f"    - {f}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

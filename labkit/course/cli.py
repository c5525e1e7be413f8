"""The `labkit` command: `labkit doctor` checks that the course can run here.

    labkit doctor        versions, device, offline state, and whether the bundled model loads
    labkit data          rewrite the course's JSONL datasets (deterministic)
    labkit exercises     build exercises/ from solutions/, check it is up to date, build a workshop
                         subset, list the exercises, hash a quiz answer (labkit exercises --help)
    labkit render        run every notebook with given parameters into a folder, with a summary page
                         of status, time and recorded metrics (labkit render --help)
    labkit links         check (--write: regenerate) the Colab/Binder badges and install cells from the
                         repository address in pyproject.toml
    labkit train         the SFT + LoRA training script of lesson 16 (labkit.launcher): labkit train --config
                         FILE.yaml [--steps 20 --lr 1e-3 ...]; under torchrun: torchrun --no-python ... labkit train ...
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

REQUIRED = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "lm-eval")
CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def read_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """{package: version} from a constraints file of `name==version` lines (comments allowed)."""
    pins = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
            if m:
                pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def _same_version(installed: str, pinned: str) -> bool:
    return installed.split("+")[0] == pinned.split("+")[0]


def doctor(out=print) -> int:
    """Print the environment report; return 0 when the course can run, 1 otherwise."""
    from .. import env

    env.quiet()
    problems: list[str] = []
    info = env.describe()
    out(f"python        {info['python']}")
    pins = read_pins()
    # Colab keeps its own CUDA torch and make test-latest installs the newest releases: there a version that
    # differs from constraints.txt is expected, and reported as a note instead of a problem.
    unpinned = bool(info.get("colab")) or os.environ.get("LABKIT_UNPINNED", "") not in ("", "0")
    if unpinned:
        out("versions      unpinned (Colab or LABKIT_UNPINNED=1): differences from constraints.txt are notes")
    for pkg in REQUIRED:
        version = info.get(pkg)
        pinned = pins.get(pkg)
        note = ""
        if version is None:
            problems.append(f"{pkg} is not installed: run `make install` (or pip install -c constraints.txt -e '.[test]').")
            note = "  MISSING"
        elif pinned and not _same_version(version, pinned):
            note = f"  (course tested with {pinned})"
            if not unpinned:
                problems.append(f"{pkg} {version} differs from the tested {pinned}: run `make install` to get the "
                                "pinned versions (on Colab, or on purpose, set LABKIT_UNPINNED=1).")
        out(f"{pkg:<13} {version or '-'}{note}")
    if sys.version_info < (3, 10):
        problems.append("Python 3.10 or newer is needed: create the venv with a newer python3.")
    out(f"device        {info['device']}")
    out(f"offline       {'yes (HF_HUB_OFFLINE=1)' if info['offline'] else 'no'}")
    out(f"colab         {'yes' if info['colab'] else 'no'}")
    from .. import llamacpp

    why = llamacpp.unavailable()  # optional: lesson 17 runs its GGUF files in llama.cpp when it is there
    out(f"llama.cpp     {llamacpp.LLAMA_CPP_RELEASE if why is None else f'not available ({why}): make llamacpp'}")
    if info.get("torch") and info.get("transformers"):
        try:
            from ..models import BASE_MODEL_DIR, load_base

            t0 = time.perf_counter()
            model, tok = load_base(device="cpu")
            seconds = time.perf_counter() - t0
            n = sum(p.numel() for p in model.parameters())
            out(f"bundled model loads: {n:,} parameters in {seconds:.1f} s from {BASE_MODEL_DIR}")
        except Exception as exc:  # the doctor reports, it does not crash
            out(f"bundled model: FAILED ({exc})")
            problems.append(f"The bundled model does not load: {exc}")
    if problems:
        out("")
        out("PROBLEM: " + problems[0])
        for p in problems[1:]:
            out("also:    " + p)
        return 1
    out("")
    out("All good: run `make lab` and open notebooks/00_welcome.ipynb.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # the training script's own options (labkit.launcher.main)
        from ..launcher import main as train_main

        return train_main(argv[1:])
    parser = argparse.ArgumentParser(prog="labkit", description="The labkit course helper.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check versions, device, offline state and the bundled model")
    sub.add_parser("data", help="rewrite the course's JSONL datasets")
    _add_exercises_parser(sub)
    _add_render_parser(sub)
    sub.add_parser("train", help="SFT + LoRA on one process or many (labkit train --help)")
    links = sub.add_parser("links", help="check (or --write) every notebook's Colab badge and install cell and the "
                                         "README's badges against pyproject's repository address")
    links.add_argument("--write", action="store_true", help="rewrite the files that differ")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return doctor()
    if args.command == "data":
        from ..data import write_all

        for p in write_all():
            print(p)
        return 0
    if args.command == "exercises":
        return exercises_command(args)
    if args.command == "render":
        return render_command(args)
    if args.command == "links":
        from .links import repository_url, sync

        changed = sync(write=args.write)
        for rel in changed:
            print(("rewrote " if args.write else "differs: ") + rel)
        if changed and not args.write:
            print(f"run `labkit links --write` to regenerate them from {repository_url()}")
        return 0 if args.write or not changed else 1
    return 2


def _add_render_parser(sub) -> None:
    r = sub.add_parser("render", help="run every notebook with given parameters into a folder, with a summary page",
                       description="Run notebooks (default: every lesson in notebooks/) with papermill into OUT; "
                                   "write OUT/summary.md and OUT/summary.json. A -p parameter goes only to the "
                                   "notebooks whose parameters cell assigns it.")
    r.add_argument("notebooks", nargs="*", help="notebooks to run (default: notebooks/NN_*.ipynb)")
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter to inject, e.g. -p DEVICE=cuda -p FT_STEPS=100 (Python literal or string)")
    r.add_argument("--fast", action="store_true", help="also inject each lesson's own quick CI parameters")
    r.add_argument("--html", action="store_true", help="also write each executed notebook as HTML")
    r.add_argument("--out", required=True, help="output folder")


def render_command(args) -> int:
    import os

    from . import render

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(key, "1")
    try:
        params = render.parse_params(args.param)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = [Path(p) for p in args.notebooks] or render.default_notebooks()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    rows = render.render(paths, params, out, fast=args.fast, html=args.html)
    print(f"summary: {out / 'summary.md'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _add_exercises_parser(sub) -> None:
    ex = sub.add_parser("exercises", help="exercise notebooks: build, check, workshop, list, hash")
    ex_sub = ex.add_subparsers(dest="action", required=True)
    b = ex_sub.add_parser("build", help="write exercises/ from solutions/ (solution regions become stubs)")
    c = ex_sub.add_parser("check", help="exit 1 if exercises/ differs from what build would write")
    for p in (b, c):
        p.add_argument("--solutions", default=None, help="folder of solution notebooks (default: solutions/)")
        p.add_argument("--out", default=None, help="folder of exercise notebooks (default: exercises/)")
    w = ex_sub.add_parser("workshop", help="build exercise notebooks with only the chosen exercises")
    w.add_argument("--only", required=True, help="comma-separated exercise ids, e.g. lora_forward,nf4_quantize")
    w.add_argument("--out", required=True, help="folder to write the notebooks to")
    w.add_argument("--solutions", default=None, help="folder of solution notebooks (default: solutions/)")
    w.add_argument("--with-solutions", action="store_true", help="also write the matching solutions (for the instructor)")
    ex_sub.add_parser("list", help="list the exercises and quiz questions")
    h = ex_sub.add_parser("hash", help="print the answer_hash of a quiz answer (for authors)")
    h.add_argument("question_id")
    h.add_argument("answer")
    h.add_argument("--kind", default="choice", choices=("choice", "number", "text"))
    h.add_argument("--rtol", type=float, default=None)
    h.add_argument("--atol", type=float, default=None)


def exercises_command(args) -> int:
    from . import exercise_notebooks as nbs

    kw = {}
    if getattr(args, "solutions", None):
        kw["solutions"] = Path(args.solutions)
    try:
        if args.action == "build":
            for p in nbs.build(out=Path(args.out) if args.out else nbs.EXERCISES, **kw):
                print(p)
            return 0
        if args.action == "check":
            problems = nbs.stale(out=Path(args.out) if args.out else nbs.EXERCISES, **kw)
            for p in problems:
                print(p)
            return 1 if problems else 0
        if args.action == "workshop":
            for p in nbs.workshop(args.only.split(","), Path(args.out), with_solutions=args.with_solutions, **kw):
                print(p)
            return 0
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from .. import check

    if args.action == "list":
        for i in check.exercises() + check.quizzes():
            item = check.get(i)
            print(f"{item.lesson}  {i:<28} {getattr(item, 'title', 'quiz')}")
        return 0
    if args.action == "hash":
        print(check.answer_hash(args.question_id, args.answer, args.kind, rtol=args.rtol, atol=args.atol))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Lesson 07's data sweep on the bundled model: the learning curve per task family (at a fixed compute
budget and at a fixed number of passes), label noise, duplicates, a leak, a random vs an entity split,
and students of a teacher's labels (labkit.lessons.data.plan lists the cells).

    python scripts/data_curve.py --jobs 3         # -> labkit/assets/results/data_curve.json
    python scripts/data_curve.py --only epochs_25 --n-heldout 40 --out /tmp/x.json   # one cell, fewer rows
    python scripts/data_curve.py --model HuggingFaceTB/SmolLM2-135M-Instruct --device auto --out mine.json

Every cell is labkit.lessons.data.run_cell, which lesson 07 also runs live (for another MODEL, or a cell
of its own); cells are independent and seeded, so running them in several processes (--jobs, one torch
thread each: the fastest on a shared CPU) gives the same numbers as one after another. Finished cells
are kept in --work and reused when the settings match, so an interrupted sweep resumes. The JSON holds
the settings, the per-row verdicts and losses, and the wall time and load average of the machine (timings
on a shared CPU vary several-fold; the figures do not); no git state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "labkit" / "assets" / "results" / "data_curve.json"
WORK = ROOT / "notebooks" / "runs" / "data_curve_cells"

_WORKER: dict = {}


def _init(model: str, device: str, seed: int, threads: int, n_heldout: int | None) -> None:
    from labkit import env, models
    from labkit.lessons import data as lesson

    device = env.setup(device, seed=seed, threads=threads)
    base, tok = models.load_base(model, device=device)
    _WORKER.update(base=base, tok=tok, device=device, held=lesson.heldout(n_heldout), model=model, seed=seed)


def _run(cell: dict, teacher: dict | None, lr: float, work: str, key: dict) -> dict:
    from labkit.lessons import data as lesson

    w = _WORKER
    res = lesson.run_cell(w["base"], w["tok"], cell, w["held"], teacher, lr, w["seed"], w["device"], w["model"])
    Path(work, f"{cell['name']}.json").write_text(json.dumps({"key": key, "result": res}))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated cell names (default: every cell of the plan)")
    p.add_argument("--n-heldout", type=int, default=None, help="score on the first N held-out rows (default all 400)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--model", default="bundled")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)

    from labkit.lessons import data as lesson

    lr = lesson.LR if a.lr is None else a.lr
    cells = lesson.plan()
    if a.only:
        wanted = a.only.split(",")
        names = {c["name"] for c in cells}
        if set(wanted) - names:
            raise SystemExit(f"unknown cells {sorted(set(wanted) - names)}; the plan has {sorted(names)}")
        same = {c["same_as"] for c in cells if c["name"] in wanted and "same_as" in c}
        needs_teacher = any(c["kind"] == "distill" for c in cells if c["name"] in wanted)
        cells = [c for c in cells if c["name"] in wanted or c["name"] in same or (needs_teacher and c["name"] == "teacher")]
    held = lesson.heldout(a.n_heldout)
    about = lesson.settings(cells, len(held), lr, a.seed)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    t0, load0 = time.time(), os.getloadavg()[0]
    done: dict[str, dict] = {}

    def key(cell):
        return {"cell": cell, "n_heldout": len(held), "lr": lr, "seed": a.seed, "model": a.model}

    for cell in cells:
        path = Path(a.work, f"{cell['name']}.json")
        if "same_as" not in cell and path.is_file() and json.loads(path.read_text())["key"] == key(cell):
            done[cell["name"]] = json.loads(path.read_text())["result"]
            print("cached", lesson.describe_cell(done[cell["name"]]), flush=True)
    init = (a.model, a.device, a.seed, a.threads, a.n_heldout)
    for phase in (lambda c: c["kind"] != "distill", lambda c: c["kind"] == "distill"):
        todo = [c for c in cells if phase(c) and "same_as" not in c and c["name"] not in done]
        todo.sort(key=lambda c: (c["kind"] != "teacher", -c.get("steps", 0)))  # the longest first
        if a.jobs > 1 and len(todo) > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(min(a.jobs, len(todo)), initializer=_init, initargs=init) as pool:
                jobs = {c["name"]: pool.apply_async(_run, (c, done.get("teacher"), lr, a.work, key(c))) for c in todo}
                for name, job in jobs.items():
                    done[name] = job.get()
                    print(lesson.describe_cell(done[name]), flush=True)
        elif todo:
            if not _WORKER:
                _init(*init)
            for c in todo:
                done[c["name"]] = _run(c, done.get("teacher"), lr, a.work, key(c))
                print(lesson.describe_cell(done[c["name"]]), flush=True)
    for cell in cells:
        if "same_as" in cell:
            done[cell["name"]] = {**done[cell["same_as"]], **cell}
    out = lesson.assemble(done, cells, held, about)
    out["made_by"] = lesson.SCRIPT
    out["context"] = {"model": a.model, "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "jobs": a.jobs,
                      "threads": a.threads, "platform": platform.platform(), "wall_seconds": round(time.time() - t0),
                      "load_average_at_start": round(load0, 1), "load_average_at_end": round(os.getloadavg()[0], 1)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

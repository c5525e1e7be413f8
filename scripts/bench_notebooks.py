"""Run every notebook at its defaults and record wall time and peak kernel memory.

    python scripts/bench_notebooks.py                   # all notebooks -> bench/notebooks.{md,json}, docs/instructor.md's table
    python scripts/bench_notebooks.py notebooks/00_welcome.ipynb -p N_PROBE=10

Given notebooks replace their rows in bench/notebooks.json and keep the others (rows of notebooks
that no longer exist are dropped), so one lesson can be benched after a change. Each row keeps the
hash of the notebook's code (labkit.course.contract.code_hash): tests/test_contract.py fails on a row whose
notebook's code changed since it was benched.

Peak memory is the largest resident set size (RSS) of the kernel process and its children, sampled
every 50 ms while the notebook runs, and is checked against the lesson contract (60 s, 1.5 GB at the
defaults; --memory-limit-mb, --time-limit-s): a notebook over either fails the run (exit 1), as does
a notebook that raises. The load average is
recorded too: on a shared machine wall times grow with it. The kernel's CPU time (user + system of
the kernel and its children) grows much less, but not nothing: oversubscribed OpenMP threads spin. Executed copies go to bench/executed/
(not committed); tests/test_links.py reads bench/notebooks.json.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


class PeakRSS(threading.Thread):
    """Samples the RSS of this process's children (the kernel) until stopped; also their CPU time
    (user + system, the last value seen per process), which depends much less than wall time on how
    busy a shared machine is."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.peak, self._halt = interval, 0, threading.Event()
        self._cpu: dict[int, float] = {}

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    def run(self):
        me = psutil.Process()
        while not self._halt.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                    t = child.cpu_times()
                    self._cpu[child.pid] = t.user + t.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def bench(path: Path, params: dict, out_dir: Path) -> dict:
    import papermill as pm

    sampler = PeakRSS()
    sampler.start()
    t0 = time.perf_counter()
    error = None
    try:
        pm.execute_notebook(str(path), str(out_dir / path.name), parameters=params, kernel_name="python3",
                            progress_bar=False, cwd=str(path.parent), execution_timeout=900)
    except Exception as exc:  # record and go on with the other notebooks
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    wall = time.perf_counter() - t0
    sampler.stop()
    from labkit.course.contract import code_hash

    return {"notebook": path.name, "code_sha": code_hash(path), "date": datetime.date.today().isoformat(),
            "load_avg_1m": round(os.getloadavg()[0], 1), "wall_s": round(wall, 1), "kernel_cpu_s": round(sampler.cpu_s, 1),
            "peak_rss_mb": round(sampler.peak / 2**20),
            "params": params, "error": error}


LOAD_SNIPPET = """
import time, json
t0 = time.perf_counter()
from labkit import env, models
env.quiet()
t1 = time.perf_counter()
model, tok = models.load_base(device="cpu")
t2 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 2), "load_s": round(t2 - t1, 2)}))
"""


def bench_model_load() -> dict:
    """Load the bundled model in a fresh process: import time, from_pretrained time, whole process."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LOAD_SNIPPET], capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["process_s"] = round(time.perf_counter() - t0, 2)
    return row


INSTRUCTOR_DOC = ROOT / "docs" / "instructor.md"
BENCH_START, BENCH_END = "<!-- bench: scripts/bench_notebooks.py -->", "<!-- /bench -->"


def instructor_bench_block(data: dict) -> str:
    """The timing table of docs/instructor.md, from DATA (bench/notebooks.json as a dict): when and on
    what the bench ran, one row per benched notebook with its own date and load, and the totals."""
    meta, rows = data.get("meta", {}), data.get("rows", [])
    cpus, load = meta.get("cpus"), meta.get("load_avg_1m") or [None, None]
    limit_s, limit_mb = meta.get("time_limit_s"), meta.get("memory_limit_mb")
    lines = [f"Written by `scripts/bench_notebooks.py` from `bench/notebooks.json` (last bench {meta.get('date', '?')}, "
             f"{cpus} CPUs, {meta.get('machine', '?')}, Python {meta.get('python', '?')}; load average {load[0]} at "
             f"its start, {load[-1]} at its end). Each row keeps the date and the load of its own run.", ""]
    busy = [r for r in rows if cpus and (r.get("load_avg_1m") or 0) > cpus]
    if busy:
        lines += [f"{len(busy)} of the {len(rows)} rows ran while the machine was busy (load above its {cpus} CPUs): "
                  "their wall times are inflated, so plan with the kernel CPU column and rerun `make bench` on a "
                  "quiet machine.", ""]
    within = f"within {limit_s:g} s and {limit_mb} MB" if limit_s and limit_mb else "within the contract"
    lines += [f"| notebook | benched | load (1 min) | wall time (s) | kernel CPU (s) | peak memory (MB) | {within} | status |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = r.get("within_memory_limit") and r.get("within_time_limit")
        lines.append(f"| {r['notebook']} | {r.get('date', '?')} | {r.get('load_avg_1m', '?')} | {r['wall_s']:.1f} "
                     f"| {r['kernel_cpu_s']:.1f} | {r['peak_rss_mb']:,} | {'yes' if ok else 'NO'} | {r.get('error') or 'ok'} |")
    if rows:
        wall, cpu = sum(r["wall_s"] for r in rows), sum(r["kernel_cpu_s"] for r in rows)
        lines += ["", f"Together the {len(rows)} benched notebooks took {wall:.0f} s of wall time ({wall / 60:.1f} min) "
                      f"and {cpu:.0f} s of kernel CPU. A lesson with no row has no bench result yet: run `make bench`."]
    return "\n".join(lines)


def instructor_with_bench(text: str, data: dict) -> str:
    """TEXT (docs/instructor.md) with its bench block replaced by instructor_bench_block(DATA)."""
    if BENCH_START not in text or BENCH_END not in text:
        raise ValueError(f"docs/instructor.md has no {BENCH_START} ... {BENCH_END} markers for the timing table.")
    head, rest = text.split(BENCH_START, 1)
    _, tail = rest.split(BENCH_END, 1)
    return f"{head}{BENCH_START}\n{instructor_bench_block(data)}\n{BENCH_END}{tail}"


def write_instructor(bench_file: Path = ROOT / "bench" / "notebooks.json", doc: Path = INSTRUCTOR_DOC) -> None:
    """Rewrite the timing table in docs/instructor.md from BENCH_FILE."""
    doc.write_text(instructor_with_bench(doc.read_text(), json.loads(bench_file.read_text())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("-p", "--param", action="append", default=[], help="NAME=VALUE, injected by papermill")
    ap.add_argument("--out", type=Path, default=ROOT / "bench")
    ap.add_argument("--memory-limit-mb", type=int, default=None, help="peak RSS allowed per notebook (the contract's 1536)")
    ap.add_argument("--time-limit-s", type=float, default=None, help="wall time allowed per notebook (the contract's 60)")
    args = ap.parse_args()
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        os.environ.setdefault(key, value)
    # The executed copies show a learner's first run: progress() cells start from an empty progress file,
    # not from the answers saved on the machine that benches.
    import tempfile

    os.environ["LABKIT_PROGRESS"] = os.path.join(tempfile.mkdtemp(prefix="labkit-bench-progress-"), "progress.json")
    params = {}
    for p in args.param:
        k, v = p.split("=", 1)
        try:
            params[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            params[k] = v
    from labkit.course import contract

    every = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    paths = args.notebooks or every
    limit = args.memory_limit_mb or contract.MAX_RSS_MB
    time_limit = args.time_limit_s or contract.MAX_SECONDS
    executed = args.out / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    load_before = round(os.getloadavg()[0], 1)
    load = bench_model_load()
    print(json.dumps({"bundled_model": load}), flush=True)
    rows = []
    for path in paths:
        row = bench(path.resolve(), params, executed)
        row["within_memory_limit"] = row["peak_rss_mb"] <= limit
        row["within_time_limit"] = row["wall_s"] <= time_limit
        print(json.dumps(row), flush=True)
        rows.append(row)
    new = [r["notebook"] for r in rows]
    old_file = args.out / "notebooks.json"
    if args.notebooks and old_file.exists():  # a subset: keep the other lessons' rows
        kept = [r for r in json.loads(old_file.read_text())["rows"] if r["notebook"] not in new]
        rows = sorted(kept + rows, key=lambda r: r["notebook"])
    names = {p.name for p in every}
    rows = [r for r in rows if r["notebook"] in names]
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_1m": [load_before, round(os.getloadavg()[0], 1)], "memory_limit_mb": limit,
            "time_limit_s": time_limit}
    (args.out / "notebooks.json").write_text(json.dumps({"meta": meta, "model_load": load, "rows": rows}, indent=2) + "\n")
    lines = [f"# Notebook benchmark ({meta['date']}, {meta['cpus']} CPUs, Python {meta['python']})", "",
             f"Load average (1 min) {meta['load_avg_1m'][0]} at the start, {meta['load_avg_1m'][1]} at the end: "
             f"on a shared machine wall times grow with it.", "",
             f"Bundled model: `load_base()` {load['load_s']} s after imports of {load['import_s']} s; "
             f"a whole fresh process {load['process_s']} s.", "",
             f"| notebook | wall time (s) | kernel CPU time (s) | peak kernel RSS (MB) | within {time_limit:g} s and {limit} MB | status |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['notebook']} | {r['wall_s']} | {r['kernel_cpu_s']} | {r['peak_rss_mb']} "
              f"| {'yes' if r.get('within_memory_limit') and r.get('within_time_limit') else 'NO'} | {r['error'] or 'ok'} |"
              for r in rows]
    (args.out / "notebooks.md").write_text("\n".join(lines) + "\n")
    if args.out.resolve() == (ROOT / "bench").resolve():  # the course map shows each lesson's run time
        from labkit.course import syllabus

        syllabus.write()
        write_instructor(args.out / "notebooks.json")  # and the workshop guide's timing table
    print("\n".join(lines))
    over = [r["notebook"] for r in rows if r["notebook"] in new and not (r["within_memory_limit"] and r["within_time_limit"])]
    if over:
        print(f"over the contract's {time_limit:g} s or {limit} MB: {', '.join(over)}")
    if over or any(r["error"] for r in rows if r["notebook"] in new):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

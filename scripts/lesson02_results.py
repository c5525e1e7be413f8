"""Compute what lesson 02 ships as data: the LR x rank sweep.

    python scripts/lesson02_results.py               # (--only sweep: the same, kept for old command lines)

LoRA (alpha = 2r) on the bundled model, every learning rate x rank below, 20 steps each, written to
labkit/assets/results/lr_rank_sweep.json. Deterministic (seed 0); the JSON records the machine, versions,
threads, load average and date next to the numbers. Lesson 03's MiniLM table: scripts/lesson03_results.py.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

from labkit import atomic, data, env, models, tuning

TASK = "classify"
SWEEP = {"lrs": [3e-4, 1e-3, 3e-3, 1e-2], "ranks": [2, 8, 32], "steps": 20}
N_EVAL, N_GENERAL = 40, 20


def context() -> dict:
    import peft
    import torch
    import transformers

    return {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()[0],
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}}


def write(name: str, payload: dict) -> Path:
    path = atomic.write_json(tuning.RESULTS_DIR / f"{name}.json", payload)
    print("wrote", path)
    return path


def lm_inputs():
    base, tok = models.load_base(device="cpu")
    pairs = [data.to_prompt_completion(e, tok) for e in data.load("instructions", "train", task=TASK)]
    general = [r["text"] for r in data.load("general", "eval", n=N_GENERAL)]
    evals = list(data.load("instructions", "eval", task=TASK, n=N_EVAL))
    return base, tok, pairs, general, evals


def run_sweep():
    ctx, t0 = context(), time.time()
    base, tok, pairs, general, evals = lm_inputs()
    rows = tuning.sweep(base, tok, pairs, general, SWEEP["lrs"], SWEEP["ranks"], SWEEP["steps"], eval_examples=evals)
    write("lr_rank_sweep", {"task": TASK, **SWEEP, "script": "scripts/lesson02_results.py --only sweep", "alpha": "2r",
                            "batch_size": 8, "n_eval": N_EVAL, "n_general": N_GENERAL, "rows": rows, "context": ctx, "seconds": time.time() - t0})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["sweep"])
    ap.parse_args()
    env.setup("cpu", seed=0)
    run_sweep()

"""Lesson 07's forgetting grid: LoRA-SFT at a high and a low learning rate, rank 4 and 64, with 0% and
10% general text mixed in; general-text perplexity before/after and held-out task exact match.

    python scripts/forgetting_grid.py                 # -> labkit/assets/results/forgetting_grid.json
    python scripts/forgetting_grid.py --steps 20      # a quick smoke run (writes to --out)

Deterministic (fixed seeds, one thread of data order per run); the JSON records the wall time and the
machine's load average, since timings on a shared CPU vary several-fold while the metrics do not.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "labkit" / "assets" / "results" / "forgetting_grid.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lrs", default="2e-3,2e-4")
    p.add_argument("--ranks", default="4,64")
    p.add_argument("--mixes", default="0,0.1")
    p.add_argument("--task", default="classify")
    p.add_argument("--n-general-eval", type=int, default=40)
    p.add_argument("--n-eval", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared, busy CPU)")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)

    from labkit import data, env, forgetting, models

    env.setup("cpu", seed=a.seed, threads=a.threads)
    base, tok = models.load_base("bundled", device="cpu")
    task_pairs = [data.to_prompt_completion(r, tok) for r in data.read_jsonl("instructions_train.jsonl")
                  if r["task"] == a.task]
    general_train = [r["text"] for r in data.read_jsonl("general_train.jsonl")]
    general_eval = [r["text"] for r in data.read_jsonl("general_eval.jsonl")][: a.n_general_eval]
    eval_examples = [r for r in data.read_jsonl("instructions_eval.jsonl") if r["task"] == a.task][: a.n_eval]
    runs, t0 = [], time.time()
    grid = itertools.product([float(x) for x in a.lrs.split(",")], [int(x) for x in a.ranks.split(",")],
                             [float(x) for x in a.mixes.split(",")])
    for lr, r, mix in grid:
        res = forgetting.run_sft(base, tok, task_pairs, general_train, general_eval, eval_examples,
                                 lr=lr, r=r, mix=mix, steps=a.steps, seed=a.seed)
        res["final_loss"] = sum(res["losses"][-10:]) / len(res["losses"][-10:])
        del res["losses"]
        runs.append(res)
        print(f"lr={lr:g} r={r:>2} mix={mix:.0%}: ppl x{res['ppl_ratio']:.2f} exact {res['exact']:.0%} "
              f"({res['seconds']:.0f}s, load {os.getloadavg()[0]:.1f})", flush=True)
    out = {"what": "LoRA SFT on one task; general-text perplexity after/before and held-out exact match",
           "task": a.task, "steps": a.steps, "batch_size": 8, "alpha": "2r", "seed": a.seed,
           "n_task_pairs": len(task_pairs), "n_general_eval": len(general_eval), "n_eval": len(eval_examples),
           "made_by": "scripts/forgetting_grid.py", "wall_seconds": round(time.time() - t0, 1),
           "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "runs": runs}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Lesson 14's forgetting grid: LoRA-SFT at a high and a low learning rate, rank 4 and 64, with 0% and
10% general text mixed in; general-text perplexity before/after and held-out task exact match.

    python scripts/forgetting_grid.py                 # -> labkit/assets/results/forgetting_grid.json
    python scripts/forgetting_grid.py --seed 1 --out labkit/assets/results/forgetting_grid_seed1.json
                                                      # the same grid at another seed (lesson 14 reads seeds 0-2)
    python scripts/forgetting_grid.py --steps 20      # a quick smoke run (writes to --out)
    python scripts/forgetting_grid.py --model HuggingFaceTB/SmolLM2-135M-Instruct --device auto --out my_grid.json

The shipped JSON is the bundled model's (lesson 14 shows it for MODEL = "bundled" only); the runs are
labkit.forgetting.run_grid, which lesson 14 also calls to run the grid live for another model
(GRID_STEPS > 0, or any MODEL but the bundled one).

Deterministic (fixed seeds, one thread of data order per run); the JSON records the wall time and the
machine's load average, since timings on a shared CPU vary several-fold while the metrics do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    p.add_argument("--model", default="bundled", help="bundled, a local folder or a Hub id (the shipped grid: bundled)")
    p.add_argument("--device", default="cpu", help="cpu (the shipped grid), auto, cuda, mps")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared, busy CPU)")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)

    from labkit import env, forgetting, models

    device = env.setup(a.device, seed=a.seed, threads=a.threads)
    base, tok = models.load_base(a.model, device=device)
    out = forgetting.run_grid(base, tok, task=a.task, steps=a.steps, lrs=a.lrs.split(","), ranks=a.ranks.split(","),
                              mixes=a.mixes.split(","), n_general_eval=a.n_general_eval, n_eval=a.n_eval, seed=a.seed,
                              model=a.model, log=lambda line: print(line, flush=True))
    out.update({"made_by": "scripts/forgetting_grid.py", "cpu_count": os.cpu_count(), "platform": platform.platform()})
    out["runs"] = out.pop("runs")  # last, as before
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Compute what lesson 02 ships as data: the LR x rank sweep, the PEFT-methods table, the MiniLM table.

    python scripts/lesson02_results.py              # all three (about 10 min on an idle 2-core CPU)
    python scripts/lesson02_results.py --only sweep # or: methods, minilm

Writes labkit/assets/results/{lr_rank_sweep,peft_methods,minilm_compare}.json and the MiniLM LoRA
adapter (with its head) to labkit/assets/adapters/minilm_intents_lora/. Deterministic (seed 0); the
JSON records the machine, versions, load average and date next to the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

from labkit import adapters, atomic, data, encoder, env, models, tuning

TASK = "classify"
SWEEP = {"lrs": [3e-4, 1e-3, 3e-3, 1e-2], "ranks": [2, 8, 32], "steps": 20}
METHOD_STEPS = 40
MINILM_STEPS = 60
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
    write("lr_rank_sweep", {"task": TASK, **SWEEP, "alpha": "2r", "batch_size": 8, "n_eval": N_EVAL,
                            "n_general": N_GENERAL, "rows": rows, "context": ctx, "seconds": time.time() - t0})


def run_methods():
    ctx, t0 = context(), time.time()
    base, tok, pairs, general, evals = lm_inputs()
    rows = []
    for method in adapters.METHODS:
        row = tuning.method_run(base, tok, pairs, method, steps=METHOD_STEPS, eval_examples=evals)
        print(f"{method:6s} exact {row['exact']:.2f} format {row['format']:.2f} {row['line']} "
              f"{row['seconds_per_step'] * 1000:.0f} ms/step", flush=True)
        rows.append(row)
    write("peft_methods", {"task": TASK, "steps": METHOD_STEPS, "batch_size": 8, "n_eval": N_EVAL, "rows": rows,
                           "context": ctx, "seconds": time.time() - t0})


def run_minilm():
    ctx, t0 = context(), time.time()
    rows, lora_model = encoder.compare(data.INTENTS, data.read_jsonl("intents_train.jsonl"),
                                       data.read_jsonl("intents_eval.jsonl"), steps=MINILM_STEPS, keep="lora")
    adapters.save(lora_model, encoder.SHIPPED_ADAPTER)
    write("minilm_compare", {"labels": list(data.INTENTS), "steps": MINILM_STEPS, "batch_size": 16,
                             "train": "intents_train.jsonl", "eval": "intents_eval.jsonl", "rows": rows,
                             "context": ctx, "seconds": time.time() - t0})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["sweep", "methods", "minilm"])
    args = ap.parse_args()
    env.setup("cpu", seed=0)
    for name, fn in (("minilm", run_minilm), ("methods", run_methods), ("sweep", run_sweep)):
        if args.only in (None, name):
            fn()

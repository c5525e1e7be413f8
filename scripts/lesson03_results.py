"""Compute what lesson 03 ships as data: the MiniLM methods table and the LoRA adapter it trains.

    python scripts/lesson03_results.py            # one process
    python scripts/lesson03_results.py --jobs 3   # three worker processes, the same rows

Every method of labkit.encoder.METHODS (head, LoRA, DoRA, IA3, prompt tuning, full fine-tuning) trains on
MiniLM and the intent task, 60 steps each at encoder.DEFAULT_LR with encoder.peft_config, written to
labkit/assets/results/minilm_compare.json, and the LoRA adapter (with its head) to
labkit/assets/adapters/minilm_intents_lora/; and the head alone trained to convergence on the frozen
encoder (encoder.linear_probe), the best a head does without touching the encoder. Deterministic (seed 0); the JSON records the machine,
versions, threads, load average and date next to the numbers. tests/test_encoder.py checks the shipped
adapter against the table and recomputes the head's row.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

from labkit import atomic, data, encoder, env, tuning

MINILM_STEPS = 60
SCRIPT = "scripts/lesson03_results.py"


def context() -> dict:
    import peft
    import torch
    import transformers

    return {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()[0],
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}}


def _minilm_method(method: str) -> dict:
    """One method of the MiniLM table (a worker of run_minilm); the LoRA run also saves the shipped adapter."""
    env.setup("cpu", seed=0)
    rows, model = encoder.compare(data.INTENTS, data.read_jsonl("intents_train.jsonl"),
                                  data.read_jsonl("intents_eval.jsonl"), steps=MINILM_STEPS, methods=(method,),
                                  keep="lora")
    if model is not None:
        encoder.save_adapter(model, encoder.SHIPPED_ADAPTER)
    return rows[0]


def head_converged() -> dict:
    """encoder.linear_probe on the frozen MiniLM: a head fitted to convergence on the training messages."""
    env.setup("cpu", seed=0)
    labels = list(data.INTENTS)
    train_rows, eval_rows = data.read_jsonl("intents_train.jsonl"), data.read_jsonl("intents_eval.jsonl")
    model, tok = encoder.load_classifier(labels)
    return encoder.linear_probe(model, tok, [r["text"] for r in train_rows], [labels.index(r["label"]) for r in train_rows],
                                [r["text"] for r in eval_rows], [labels.index(r["label"]) for r in eval_rows])


def run_minilm(jobs: int = 1):
    """Every method trains on its own fresh copy with its own seed, so JOBS worker processes give the same rows."""
    ctx, t0 = context(), time.time()
    if jobs > 1:
        import multiprocessing

        slowest_first = ("dora", "full", "lora", "ia3", "prompt", "head")   # so the workers end together
        assert sorted(slowest_first) == sorted(encoder.METHODS)
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            done = dict(zip(slowest_first, pool.map(_minilm_method, slowest_first, chunksize=1)))
        rows = [done[m] for m in encoder.METHODS]
    else:
        rows = [_minilm_method(m) for m in encoder.METHODS]
    probe = head_converged()
    print(f"head to convergence: train accuracy {probe['train_accuracy']:.3f}, held-out {probe['accuracy']:.3f}")
    path = atomic.write_json(tuning.RESULTS_DIR / "minilm_compare.json",
                             {"labels": list(data.INTENTS), "steps": MINILM_STEPS, "batch_size": 16, "script": SCRIPT,
                              "train": "intents_train.jsonl", "eval": "intents_eval.jsonl", "rows": rows,
                              "head_converged": probe, "context": {**ctx, "jobs": jobs}, "seconds": time.time() - t0})
    print("wrote", path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (same results)")
    args = ap.parse_args()
    env.setup("cpu", seed=0)
    run_minilm(args.jobs)

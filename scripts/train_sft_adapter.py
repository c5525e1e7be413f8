"""Train the LoRA adapter that lesson 06 loads: trl's SFTTrainer + peft LoRA on the bundled model.

    python scripts/train_sft_adapter.py                 # -> labkit/assets/adapters/sft_lora/
    python scripts/train_sft_adapter.py --steps 50 --out /tmp/try   # a quick check

Completion-only loss on the course's instruction training split (every task family), then exact
match and answer format on the evaluation split, written beside the adapter (scores.json) so the
lesson can show what this longer run reached next to its own live run. The folder is written by
labkit.adapters.save (atomically: a crash never leaves half an adapter behind).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def describe(report: dict) -> str:
    """The adapter folder's README: a short model card instead of peft's empty template."""
    lines = ["# sft_lora: the LoRA adapter of lesson 06", "",
             "Trained by `python scripts/train_sft_adapter.py` on the bundled base model (labkit/assets/base_model)",
             "with trl's SFTTrainer, completion-only loss, on instructions_train.jsonl (every task family).", "",
             f"- LoRA r={report['r']}, alpha={report['alpha']}, on {', '.join(report['target_modules'])}",
             f"- {report['steps']} steps, batch {report['batch']}, lr {report['lr']} ({report['schedule']})",
             f"- {report['train_seconds'] / 60:.0f} min on {report['threads']} CPU thread(s) of a shared machine",
             f"- loss {report['loss_first']:.2f} -> {report['loss_last10']:.3f} (mean of the last 10 steps)", "",
             f"Held-out scores ({report['n_eval']} examples of {report['eval_split']}):", "",
             "| task | n | exact | format |", "|---|---|---|---|"]
    for task, t in report["by_task"].items():
        extra = f" (value {100 * t['value']:.1f}%)" if "value" in t else ""
        lines.append(f"| {task} | {t['n']} | {100 * t['exact']:.1f}%{extra} | {100 * t['format']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "labkit" / "assets" / "adapters" / "sft_lora"))
    args = ap.parse_args(argv)

    from labkit import adapters, data, env, evaluate, models, sft

    env.setup("cpu", seed=args.seed, threads=args.threads)
    import torch
    from peft import LoraConfig

    model, tok = models.load_base(device="cpu")
    pairs = [data.to_prompt_completion(r, tok) for r in data.read_jsonl("instructions_train.jsonl")]
    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    work = tempfile.mkdtemp(prefix="sft_adapter_")
    trainer = sft.sft_trainer(model, tok, pairs, peft_config=lora, output_dir=work, steps=args.steps, lr=args.lr,
                              batch_size=args.batch, seed=args.seed, lr_scheduler_type="cosine",
                              warmup_steps=min(20, args.steps // 10))
    t0 = time.time()
    trainer.train()
    train_s = time.time() - t0
    pm = trainer.model
    pm.eval()
    rows = data.read_jsonl("instructions_eval.jsonl")[:args.n_eval]
    s = evaluate.score(pm, tok, rows)
    losses = trainer.loss_recorder.losses
    report = {"steps": args.steps, "lr": args.lr, "schedule": "cosine, 10% warm-up (at most 20 steps)", "batch": args.batch, "r": args.r, "alpha": args.alpha,
              "target_modules": TARGETS, "seed": args.seed, "train_examples": len(pairs),
              "loss_first": losses[0], "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
              "train_seconds": round(train_s, 1), "threads": args.threads, "torch": torch.__version__,
              "eval_split": "instructions_eval.jsonl", "n_eval": len(rows),
              "exact": s["exact"], "format": s["format"], "by_task": s["by_task"]}

    pm.peft_config["default"].base_model_name_or_path = "labkit/assets/base_model"  # no local path in the config
    adapters.save(pm, args.out, extra_files={"scores.json": json.dumps(report, indent=1, sort_keys=True) + "\n",
                                             "README.md": describe(report)})
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in report.items() if k != "by_task"}))
    for task, t in s["by_task"].items():
        print(task, {k: round(v, 3) for k, v in t.items()})
    return report


if __name__ == "__main__":
    main()

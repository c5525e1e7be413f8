"""Train the adapters lesson 17 ships with: two task adapters (one per task family) and a
QLoRA SFT adapter (LoRA on the bundled model loaded in 4-bit NF4).

    python scripts/train_ship_adapters.py                          # all three -> labkit/assets/adapters/
    python scripts/train_ship_adapters.py --only classify --steps 20 --out /tmp/try   # a quick check

- task_classify, task_risk: LoRA r=8, alpha=16 on every linear layer, SFT (completion-only loss,
  labkit.sft.train, constant lr) on one task family of instructions_train.jsonl each, as lesson 17
  trains them live (ship.adapter_for) for another MODEL;
- qlora_sft: the same LoRA on the NF4 base (labkit.qlora.load_4bit), trained on every task family:
  the adapter a QLoRA run leaves you with, which lesson 17 merges into a 4-bit base.
Each folder gets scores.json (settings, time, held-out exact match / format on instructions_eval.jsonl)
and a README; each is written to a temporary folder and renamed into place (labkit.adapters.save).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WHICH = ("classify", "risk", "qlora")


def folder_name(which: str) -> str:
    return "qlora_sft" if which == "qlora" else f"task_{which}"


def train_one(which: str, args) -> dict:
    from labkit import adapters, data, env, evaluate, models, qlora, ship

    env.setup("cpu", seed=args.seed, threads=args.threads)
    if which == "qlora":
        base, tok = qlora.load_4bit(device="cpu")
        rows = data.read_jsonl("instructions_train.jsonl")
        steps, lr = args.qlora_steps, args.qlora_lr
    else:
        base, tok = models.load_base(device="cpu")
        rows = [r for r in data.read_jsonl("instructions_train.jsonl") if r["task"] == which]
        steps, lr = args.steps, args.lr
    t0 = time.time()
    pm, losses = ship.train_adapter(base, tok, rows, steps=steps, lr=lr, r=args.r, alpha=args.alpha,
                                    batch_size=args.batch, seed=args.seed)
    seconds = time.time() - t0
    held = [r for r in data.read_jsonl("instructions_eval.jsonl") if which == "qlora" or r["task"] == which]
    s = evaluate.score(pm, tok, held)
    report = {"adapter": folder_name(which), "task": "all" if which == "qlora" else which,
              "base": "bundled model in 4-bit NF4 (labkit.qlora.load_4bit)" if which == "qlora" else "bundled model",
              "steps": steps, "lr": lr, "batch": args.batch, "r": args.r, "alpha": args.alpha, "seed": args.seed,
              "target_modules": sorted(pm.peft_config["default"].target_modules), "train_examples": len(rows),
              "loss_first": losses[0], "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
              "train_seconds": round(seconds, 1), "threads": args.threads, "n_eval": len(held),
              "exact": s["exact"], "format": s["format"], "by_task": s["by_task"]}
    out = Path(args.out) / folder_name(which)
    adapters.save(pm, out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "labkit/assets/base_model"  # no local path in a shipped file
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "scores.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (out / "README.md").write_text(
        f"# {folder_name(which)}: an adapter of lesson 17\n\n"
        f"Trained by `python scripts/train_ship_adapters.py` on the {report['base']} with labkit.sft.train "
        f"(completion-only loss) on the {report['task']} task(s) of instructions_train.jsonl.\n\n"
        f"- LoRA r={args.r}, alpha={args.alpha}, on {', '.join(report['target_modules'])}\n"
        f"- {steps} steps, batch {args.batch}, lr {lr} (constant), seed {args.seed}\n"
        f"- {seconds / 60:.1f} min on {args.threads} CPU thread(s) of a shared machine\n"
        f"- loss {report['loss_first']:.2f} -> {report['loss_last10']:.3f} (mean of the last 10 steps)\n"
        f"- held-out ({len(held)} examples of instructions_eval.jsonl): exact {100 * s['exact']:.1f}%, "
        f"format {100 * s['format']:.1f}%\n")
    out.chmod(0o755)  # a temporary folder is private; shipped files are readable by everyone
    for f in out.iterdir():
        f.chmod(0o644)
    print(json.dumps({k: v for k, v in report.items() if k not in ("by_task", "target_modules")}))
    return report


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(WHICH), help=f"comma-separated, of {WHICH}")
    ap.add_argument("--steps", type=int, default=200, help="steps of each task adapter")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--qlora-steps", type=int, default=300)
    ap.add_argument("--qlora-lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "labkit" / "assets" / "adapters"))
    args = ap.parse_args(argv)
    chosen = [w.strip() for w in args.only.split(",") if w.strip()]
    bad = [w for w in chosen if w not in WHICH]
    if bad:
        ap.error(f"unknown adapter(s) {bad}; choose from {WHICH}")
    return [train_one(w, args) for w in chosen]


if __name__ == "__main__":
    main()

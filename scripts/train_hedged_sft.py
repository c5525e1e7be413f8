"""Train the SFT adapter lesson 09 loads as its model that hedges: labkit.preference.live_sft (the same
live LoRA SFT the lesson runs for a Hub model) on labkit.hedge.mixed_quality demonstrations.

    python scripts/train_hedged_sft.py                  # -> labkit/assets/adapters/sft_hedged/
    python scripts/train_hedged_sft.py --steps 10 --out /tmp/try   # a quick check

A share of instructions_train.jsonl's answers (default half) end with labkit.hedge.HEDGE, so the model
learns to hedge some of its answers. Written beside the adapter (scores.json): the settings, the time, and
the behaviour (share of clean answers, exact match of the value) on held-out preference prompts.
The folder is written by labkit.adapters.save (atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-eval", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "labkit" / "assets" / "adapters" / "sft_hedged"))
    args = ap.parse_args(argv)

    from labkit import adapters, data, env, evaluate, hedge, models, preference

    env.setup("cpu", seed=args.seed, threads=args.threads)
    import torch

    base, tok = models.load_base(device="cpu")
    rows = hedge.mixed_quality(data.read_jsonl("instructions_train.jsonl"), share=args.share, seed=args.seed)
    t0 = time.time()
    pm = preference.live_sft(base, tok, steps=args.steps, lr=args.lr, seed=args.seed, rows=rows)
    train_s = time.time() - t0
    pm.eval()
    ev = data.read_jsonl("preferences_eval.jsonl")[:args.n_eval]
    answers = evaluate.answer(pm, tok, [preference.pair_texts(r, tok)["prompt"] for r in ev], max_new_tokens=40)
    b = hedge.behaviour(answers, [r["chosen"] for r in ev])
    report = {"steps": args.steps, "lr": args.lr, "batch": 8, "r": 8, "alpha": 16, "seed": args.seed,
              "share_hedged": args.share, "hedge": hedge.HEDGE, "train_examples": len(rows),
              "hedged_examples": sum(r["hedged"] for r in rows), "train_seconds": round(train_s, 1),
              "threads": args.threads, "torch": torch.__version__, "eval_split": "preferences_eval.jsonl",
              "n_eval": len(ev), "clean": b["clean"], "exact": b["exact"], "exact_raw": b["exact_raw"]}
    pm.peft_config["default"].base_model_name_or_path = "labkit/assets/base_model"  # no local path in the config
    readme = "\n".join([
        "# sft_hedged: lesson 09's SFT model that hedges", "",
        "Trained by `python scripts/train_hedged_sft.py` on the bundled base model: labkit.preference.live_sft",
        f"(LoRA r=8, alpha 16, all seven projections, completion-only loss), {args.steps} steps at lr {args.lr:g},",
        f"on instructions_train.jsonl with {report['hedged_examples']} of {len(rows)} answers ending in the hedge",
        f"{hedge.HEDGE.strip()!r} (labkit.hedge.mixed_quality, share {args.share:g}, seed {args.seed}).", "",
        f"On {len(ev)} held-out preference prompts (greedy, 40 new tokens): clean answers {b['clean']:.1%},",
        f"exact match of the value {b['exact']:.1%} (as written {b['exact_raw']:.1%}).", ""])
    adapters.save(pm, args.out, extra_files={"scores.json": json.dumps(report, indent=1, sort_keys=True) + "\n",
                                             "README.md": readme})
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

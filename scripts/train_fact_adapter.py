"""Train the closed-book fine-tune lesson 15 loads: a LoRA adapter that memorises every fact of the
branch-note collection (labkit.rag.make_collection(seed=0)), each asked once in the "train" wording.

    python scripts/train_fact_adapter.py                       # -> labkit/assets/adapters/fact_lora/
    python scripts/train_fact_adapter.py --steps 20 --out /tmp/try   # a quick check

The training is labkit.rag.train_fact_adapter (the function the lesson runs live for another model or
FT_STEPS > 0) with labkit.rag.FACT_SETTINGS. Written beside the adapter (scores.json): the settings, the
time, and exact match on the trained wording and on the new wording (per fact kind), greedy, as the
lesson scores them. The folder is written by labkit.adapters.save
(atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def exact(model, tok, questions: list[dict]) -> dict:
    """{"all", "manager", "fee"}: the share of QUESTIONS answered with exactly their value (rag.score_answers),
    greedy, as lesson 15 scores them."""
    from labkit import evaluate, rag

    answers = evaluate.answer(model, tok, [rag.chat_prompt(tok, q["question"]) for q in questions], max_new_tokens=12)
    scores = rag.score_answers(answers, questions)
    return {"all": scores["share"], **{kind: scores[kind] for kind in rag.KINDS}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="default: labkit/assets/adapters/fact_lora")
    args = ap.parse_args(argv)

    from labkit import adapters, env, models, rag

    env.setup("cpu", seed=args.seed, threads=args.threads)
    import torch

    base, tok = models.load_base(device="cpu")
    docs = rag.make_collection(seed=rag.FACT_COLLECTION_SEED)
    t0 = time.time()
    pm, losses = rag.train_fact_adapter(base, tok, docs, args.steps, seed=args.seed)
    train_s = time.time() - t0
    report = {**rag.FACT_SETTINGS, "steps": args.steps, "seed": args.seed,
              "collection_seed": rag.FACT_COLLECTION_SEED, "notes": len(docs),
              "train_examples": len(rag.fact_training_pairs(tok, docs)), "loss_first": round(losses[0], 4),
              "loss_last": round(losses[-1], 4), "train_seconds": round(train_s, 1), "threads": args.threads,
              "torch": torch.__version__,
              "trained_wording": exact(pm, tok, rag.make_questions(docs, "train")),
              "new_wording": exact(pm, tok, rag.make_questions(docs, "test"))}
    pm.peft_config["default"].base_model_name_or_path = "labkit/assets/base_model"  # no local path in the config
    s = report
    readme = "\n".join([
        "# fact_lora: lesson 15's closed-book fine-tune", "",
        "Trained by `python scripts/train_fact_adapter.py` on the bundled base model: labkit.rag.train_fact_adapter",
        f"(LoRA r={s['r']}, alpha {s['alpha']}, every linear layer, completion-only loss), {s['steps']} steps at lr "
        f"{s['lr']:g}, batch {s['batch_size']},",
        f"on the {len(docs) * len(rag.KINDS)} facts of labkit.rag.make_collection(seed={s['collection_seed']}) "
        "asked in "
        f"the \"train\" wording.", "",
        f"Exact match: trained wording {s['trained_wording']['all']:.1%}, new wording {s['new_wording']['all']:.1%} "
        f"(manager {s['new_wording']['manager']:.1%}, fee {s['new_wording']['fee']:.1%}).", ""])
    out = Path(args.out) if args.out else rag.fact_adapter_dir()
    adapters.save(pm, out, extra_files={"scores.json": json.dumps(report, indent=1, sort_keys=True) + "\n",
                                        "README.md": readme})
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

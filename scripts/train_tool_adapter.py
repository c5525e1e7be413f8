"""Train the tool-calling LoRA adapter that lesson 12 loads: trl's SFTTrainer on tool conversations.

    python scripts/train_tool_adapter.py                 # -> labkit/assets/adapters/tool_lora/
    python scripts/train_tool_adapter.py --steps 20 --out /tmp/try   # a quick check

The start model is the bundled model with lesson 06's shipped SFT adapter merged (labkit.tools.start_model);
the data are the lesson's: the course's DTI training rows and generated loan-payment questions, each as a
conversation (question, call, tool result, final answer) with labels on the assistant's turns only
(labkit.tools.conversation_labels). The held-out value accuracy through the tool loop (labkit.tools.run) is
written beside the adapter (scores.json); tests/test_tools.py measures it again and compares.
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

N_EVAL = 40  # held-out questions per task (DTI eval rows, payment rows of seed 1000)


def eval_rows(n: int = N_EVAL) -> list[dict]:
    from labkit import data, tools

    return tools.dti_rows(data.read_jsonl("instructions_eval.jsonl"))[:n] + tools.payment_rows(n, seed=1000)


def scores(model, tok, rows: list[dict]) -> dict:
    """{task: {"n", "right", "value", "calls", "valid"}} of MODEL through the tool loop on ROWS."""
    from labkit import tools

    out = tools.run(model, tok, rows)
    right = tools.value_accuracy(out, rows)
    by = {}
    for task in ("dti", "payment"):
        idx = [i for i, r in enumerate(rows) if r["task"] == task]
        calls = [c for i in idx for c in out[i]["calls"]]
        by[task] = {"n": len(idx), "right": sum(right[i] for i in idx), "value": sum(right[i] for i in idx) / len(idx),
                    "calls": len(calls), "valid": sum(c["ok"] for c in calls)}
    return by


def control(args) -> dict:
    """The control: as many steps of plain SFT on the same questions' written answers (no tool), same start
    model, LoRA and settings, scored without tools: {task: {...}} as scores()."""
    from labkit import adapters, data, sft, tools
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTTrainer

    model, tok, _ = tools.start_model("bundled")
    rows = (tools.dti_rows(data.read_jsonl("instructions_train.jsonl"))[:args.n_train]
            + tools.payment_rows(args.n_train, seed=args.seed + 1))
    pairs = [data.to_prompt_completion(r, tok) for r in rows]
    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=adapters.targets(model),
                      task_type="CAUSAL_LM")
    work = tempfile.mkdtemp(prefix="tool_control_")
    config = sft.sft_config(work, steps=args.steps, lr=args.lr, batch_size=args.batch,
                            max_length=tools.context_length(model), seed=args.seed)
    trainer = SFTTrainer(model=model, args=config, processing_class=tok, peft_config=lora,
                         train_dataset=Dataset.from_list(pairs).shuffle(seed=args.seed))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    shutil.rmtree(work, ignore_errors=True)
    from labkit import tools as t

    rows = eval_rows()
    out = t.run(trainer.model.eval(), tok, rows, tools={})
    right = t.value_accuracy(out, rows)
    return {task: {"n": sum(r["task"] == task for r in rows),
                   "right": sum(ok for ok, r in zip(right, rows) if r["task"] == task)} for task in ("dti", "payment")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=200, help="conversations per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "labkit" / "assets" / "adapters" / "tool_lora"))
    ap.add_argument("--control-only", action="store_true",
                    help="train only the control (plain SFT, no tool) and add its scores to OUT/scores.json")
    args = ap.parse_args(argv)
    if args.control_only:
        from labkit import env

        env.setup("cpu", seed=args.seed, threads=args.threads)
        path = Path(args.out) / "scores.json"
        report = json.loads(path.read_text())
        report["control"] = {"what": f"{args.steps} steps of plain SFT on the written answers, no tool",
                             "by_task": control(args)}
        path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(json.dumps(report["control"], indent=1))
        return report

    from labkit import adapters, data, env, sft, tools

    env.setup("cpu", seed=args.seed, threads=args.threads)
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTTrainer

    model, tok, _ = tools.start_model("bundled")
    schemas = tools.schemas()
    rows = (tools.dti_rows(data.read_jsonl("instructions_train.jsonl"))[:args.n_train]
            + tools.payment_rows(args.n_train, seed=args.seed + 1))
    feats = [tools.conversation_labels(tok, tools.tool_conversation(r), schemas) for r in rows]
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(args.seed)).tolist()
    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=adapters.targets(model),
                      task_type="CAUSAL_LM")
    work = tempfile.mkdtemp(prefix="tool_adapter_")
    config = sft.sft_config(work, steps=args.steps, lr=args.lr, batch_size=args.batch,
                            max_length=tools.context_length(model), seed=args.seed, completion_only=None)
    trainer = SFTTrainer(model=model, args=config, processing_class=tok, peft_config=lora,
                         train_dataset=Dataset.from_list([feats[i] for i in order]))
    trainer.remove_callback(PrinterCallback)
    t0 = time.time()
    trainer.train()
    train_s = time.time() - t0
    pm = trainer.model.eval()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    by = scores(pm, tok, eval_rows())
    report = {"steps": args.steps, "lr": args.lr, "schedule": "constant", "batch": args.batch, "r": args.r,
              "alpha": args.alpha, "seed": args.seed, "train_conversations": len(feats), "n_train_per_task": args.n_train,
              "loss_first": losses[0], "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
              "train_seconds": round(train_s, 1), "threads": args.threads, "torch": torch.__version__,
              "n_eval_per_task": N_EVAL, "by_task": by}
    pm.peft_config["default"].base_model_name_or_path = "labkit/assets/base_model + adapters/sft_lora (merged)"
    readme = (f"# tool_lora: the tool-calling LoRA adapter of lesson 12\n\nTrained by `python scripts/train_tool_adapter.py` "
              f"on the bundled model with lesson 06's sft_lora merged into it, {args.steps} steps, batch {args.batch}, "
              f"lr {args.lr}, r={args.r}. Held-out value accuracy through the tool loop: "
              + ", ".join(f"{t} {b['right']}/{b['n']}" for t, b in by.items()) + ".\n")
    adapters.save(pm, args.out, extra_files={"scores.json": json.dumps(report, indent=1, sort_keys=True) + "\n",
                                             "README.md": readme})
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

"""Adapters to ship, and merging one into its base: merge, save (atomically), reload in a process without peft.

Merging is exact up to float rounding (about 1e-4 on logits of size ~20 in float32); a 16-bit save rounds each
weight to 8 (bfloat16) or 11 (float16) significant bits, which moves logits by 1e-2 to 1 (max_logit_difference)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import adapters, atomic, data, guard, sft
from ..lora import is_conv1d, select_layers
from ..models import ASSETS, shipped_or_live


# ----------------------------------------------------------------------------- adapters to ship

def train_adapter(base, tok, rows: list[dict], steps: int, lr: float = 3e-3, r: int = 8, alpha: float = 16,
                  batch_size: int = 8, seed: int = 0):
    """A LoRA adapter (r, alpha, on every linear layer of BASE's blocks) trained by SFT on ROWS.

    rows: instruction examples ({"task", "instruction", "input", "output"}); BASE is copied, never
    changed (a 4-bit BASE gives a QLoRA adapter). Returns (peft_model, losses per step).
    """

    pm = adapters.add(copy.deepcopy(base), "lora", seed=seed, r=r, alpha=alpha)
    losses = sft.train(pm, tok, [data.to_prompt_completion(x, tok) for x in rows], steps=steps, lr=lr,
                       batch_size=batch_size, seed=seed, progress=False)
    return pm.eval(), losses


def adapter_for(what: str, base, tok, steps: int, folder, model: str = "bundled", lr: float | None = None,
                seed: int = 0) -> tuple[Path, str]:
    """(adapter folder, description) of an adapter lesson 17 ships: "sft" (lesson 06's, every task),
    "qlora" (LoRA trained on the NF4 base: BASE must be 4-bit), or a task name such as "classify".

    steps == 0: the adapter shipped with the course (labkit/assets/adapters/) for the bundled model; for
    any other model one trained live for models.LIVE_STEPS steps (the description says so).
    steps > 0: trained here (train_adapter: r=8, alpha=16, every linear layer) on the instruction
    training split (that task's rows for a task adapter) and saved into FOLDER/WHAT.
    """

    guard.non_negative_int("steps", steps, about="0: the shipped adapter, else steps of live training")
    shipped = {"sft": sft.adapter_dir(), "qlora": ASSETS / "adapters" / "qlora_sft"}.get(what)
    if shipped is None:
        shipped = ASSETS / "adapters" / f"task_{what}"
        if what not in data.TASKS:
            raise ValueError(f"what must be 'sft', 'qlora' or a task of {data.TASKS}; got {what!r}.")

    knob = {"sft": "SFT_STEPS", "qlora": "QLORA_STEPS"}.get(what, "TASK_STEPS")
    steps, note = shipped_or_live(steps, model, f"{what} adapter", knob)
    if steps == 0:
        report = json.loads((shipped / "scores.json").read_text()) if (shipped / "scores.json").is_file() else {}
        return shipped, f"the shipped {what} adapter ({report.get('steps', '?')} steps, {shipped.name})"
    rows = data.read_jsonl("instructions_train.jsonl")
    if what not in ("sft", "qlora"):
        rows = [r for r in rows if r["task"] == what]
    lr = lr if lr is not None else (3e-3 if what not in ("sft", "qlora") else 2e-3)
    pm, losses = train_adapter(base, tok, rows, steps=steps, lr=lr, seed=seed)
    path = adapters.save(pm, Path(folder) / what)
    return path, (f"a {what} adapter trained here: {steps} steps, lr {lr:g}, loss {losses[0]:.2f} -> {losses[-1]:.2f}"
                  + (f"\n{note}" if note else ""))


def load_adapters(base, paths: dict):
    """One PeftModel: BASE (used in place) with each adapter of PATHS ({name: folder}) under its name.

    The first adapter is active; switch with set_adapter(name) or pick one per row (mixed_answers).
    A missing folder is a FileNotFoundError naming it.
    """
    from peft import PeftModel

    if not paths:
        raise ValueError("load_adapters needs at least one {name: adapter folder}.")
    for name, path in paths.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"No adapter {name!r} at {path} (adapter_config.json is missing). Save one "
                                    "with labkit.adapters.save(model, path), or rebuild the shipped ones with "
                                    "`python scripts/train_ship_adapters.py`.")
    configs = {name: lora_config_for(base, path) for name, path in paths.items()}  # before peft wraps BASE
    (first, path), *rest = paths.items()
    pm = PeftModel.from_pretrained(base, str(path), adapter_name=first, config=configs[first])
    for name, path in rest:
        pm.add_adapter(name, configs[name])  # with our config: load_adapter would read the file's own
        pm.load_adapter(str(path), adapter_name=name)
    pm.set_adapter(first)
    return pm.eval()


# ----------------------------------------------------------------------------- merge, save, reload

def merge(peft_model):
    """A plain transformers model with PEFT_MODEL's active adapter folded into its weights: W + (alpha/r)·B·A.

    A copy: PEFT_MODEL keeps its adapter (peft's merge_and_unload changes the model it is called on).
    """
    if not hasattr(peft_model, "merge_and_unload"):
        raise ValueError(f"{type(peft_model).__name__} is not a peft model: there is no adapter to merge.")
    return copy.deepcopy(peft_model).merge_and_unload().eval()


def has_adapter_layers(model) -> bool:
    """Does MODEL still hold peft layers (lora_A / lora_B)? A merged model must not."""
    return any(hasattr(m, "lora_A") for m in model.modules())


def save_merged(model, tok, path, dtype=None) -> Path:
    """Save a merged MODEL and its tokenizer TOK to PATH as a plain model folder; returns PATH.

    config.json, model.safetensors (in DTYPE, e.g. torch.bfloat16, when given: a copy is cast) and
    the tokenizer files: what AutoModelForCausalLM / AutoTokenizer load with no peft installed.
    Refuses a model that still has adapter layers. Written atomically (labkit.atomic.folder, as adapters.save).
    """
    if has_adapter_layers(model) or hasattr(model, "peft_config"):
        raise ValueError("this model still has peft adapter layers: merge it first (labkit.ship.merge), "
                         "or save the adapter alone with labkit.adapters.save.")
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)

    with atomic.folder(path) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if not list(tmp.glob("*.safetensors")):
            raise RuntimeError(f"save_pretrained wrote no safetensors file into {tmp}; nothing was saved.")
    return Path(path)


def folder_size(path) -> dict:
    """{"total": bytes of every file under PATH, "files": {relative name: bytes}}."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder.")
    files = {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
    return {"total": sum(files.values()), "files": files}


RELOAD_CHILD = Path(__file__).with_name("reload_child.py")  # run by path in a fresh process


def reload_without_peft(folder, batch: dict, prompts: list[str] = (), max_new_tokens: int = 24,
                        timeout: float = 300) -> dict:
    """Load FOLDER with AutoModelForCausalLM in a fresh Python process where importing peft fails.

    batch: {"input_ids", "attention_mask"} (batch, seq) tensors to run; prompts: chat-formatted
    prompts to answer greedily (labkit.evaluate.answer). Returns {"logits": (batch, seq, vocab) float32,
    "answers": [str], "load_seconds", "dtype", "class", "peft_modules": the peft modules the process
    had imported (always [] when it worked)}. The child's error is raised as a RuntimeError.
    """
    import torch
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: save a merged model there first (save_merged).")
    with tempfile.TemporaryDirectory(prefix="labkit_reload_") as work:
        save_file({k: v.detach().cpu().contiguous() for k, v in batch.items() if torch.is_tensor(v)},
                  f"{work}/batch.safetensors")
        Path(work, "prompts.json").write_text(json.dumps(list(prompts)))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
               "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": str(torch.get_num_threads())}
        run = subprocess.run([sys.executable, str(RELOAD_CHILD), str(folder), work, str(max_new_tokens)],
                             capture_output=True, text=True, timeout=timeout, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"reloading {folder} without peft failed:\n{run.stderr[-2000:]}")
        out = json.loads(Path(work, "result.json").read_text())
        out["logits"] = load_file(f"{work}/logits.safetensors")["logits"]
    return out


def max_logit_difference(model_a, model_b, batch: dict) -> float:
    """max |logits_a - logits_b| over BATCH ({"input_ids", "attention_mask"}: (batch, seq)), in float32."""
    import torch

    with torch.no_grad():
        a = model_a(**batch).logits.float().cpu()
        b = model_b(**batch).logits.float().cpu()
    return (a - b).abs().max().item()


def logit_agreement(model_a, model_b, batch: dict, rows_at_a_time: int = 16) -> dict:
    """How far MODEL_B's next-token logits are from MODEL_A's on BATCH, at its real (non-padding) positions.

    batch: {"input_ids", "attention_mask"} (batch, seq), e.g. prompts with their reference answers
    (teacher forcing: every position predicts the next token of the same text for both models), run
    ROWS_AT_A_TIME rows at a time (the logits of a long batch are large).
    Returns {"max_diff": max |logits_a - logits_b|, "changed": share of positions whose most likely next
    token (the greedy choice) differs, "positions": how many positions were compared}.
    MODEL_B may be a dict {name: model}: then each is compared with MODEL_A, whose logits are computed
    once per part, and the result is {name: the dict above}.
    """
    import torch

    guard.positive_int("rows_at_a_time", rows_at_a_time)
    many = isinstance(model_b, dict)
    others = model_b if many else {None: model_b}
    if not others:
        raise ValueError("logit_agreement needs a model to compare, or a non-empty {name: model} dict.")
    worst, changed, positions = dict.fromkeys(others, 0.0), dict.fromkeys(others, 0), 0
    with torch.no_grad():
        for i in range(0, batch["input_ids"].shape[0], rows_at_a_time):
            part = {k: v[i:i + rows_at_a_time] for k, v in batch.items()}
            real = part["attention_mask"].bool()
            a = model_a(**part).logits.float()[real]  # (real positions, vocab)
            top_a = a.argmax(-1)
            for name, m in others.items():
                b = m(**part).logits.float()[real]
                worst[name] = max(worst[name], (a - b).abs().max().item())
                changed[name] += int((top_a != b.argmax(-1)).sum())
            positions += int(real.sum())
    out = {name: {"max_diff": worst[name], "changed": changed[name] / positions, "positions": positions}
           for name in others}
    return out if many else out[None]


def lora_config_for(model, path):
    """The adapter's LoraConfig with fan_in_fan_out matching MODEL's target layers (Conv1D or not)."""
    from peft import LoraConfig

    cfg = LoraConfig.from_pretrained(str(path))
    if not isinstance(cfg.target_modules, str):  # a regular expression: peft's own matching decides
        cfg.fan_in_fan_out = any(is_conv1d(m) for _, m in select_layers(model, sorted(cfg.target_modules)))
    cfg.inference_mode = True
    return cfg

"""Shipping a fine-tuned model: merge, reload without peft, 4-bit bases, many adapters, combinations, GGUF.

    merged = ship.merge(peft_model)                         # a plain transformers model, adapter folded in
    ship.save_merged(merged, tok, "my_model")               # safetensors + tokenizer, written atomically
    ship.reload_without_peft("my_model", prompts)           # a fresh process that never imports peft
    ship.merge_4bit(base_4bit, "adapter", how="dequantize") # QLoRA: merge into 16/32-bit weights, not 4-bit
    ship.combine(pm, ["a", "b"], [1.0, 1.0], "ties", density=0.5)   # peft's add_weighted_adapter, checked
    ship.write_gguf(merged, tok, "model.gguf", "Q8_0")      # llama.cpp's format, with the gguf package

Every comparison here is between two models on the same input: `max_logit_difference` for the logits
(batch, seq, vocab), labkit.evaluate.answer for greedy answers. Merging is exact up to float rounding (about
1e-4 on logits of size ~20 in float32); a 16-bit save rounds each weight to 8 (bfloat16) or 11 (float16)
significant bits, which moves logits by 1e-2 to 1; re-quantising a merged weight to 4 bits rounds W + ΔW
to the NF4 grid again, whose steps are larger than most entries of a LoRA update (requantization_error).
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import guard

# peft 0.21's add_weighted_adapter combination types; the ones with "svd" re-factor the result to a rank
COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
NEEDS_DENSITY = tuple(c for c in COMBINATIONS if c.startswith(("ties", "dare", "magnitude")))
SIGN_METHODS = ("total", "frequency")  # TIES' majority sign: sum of values, or count of signs
GGUF_TYPES = ("F32", "F16", "Q8_0")
# the largest |GGUF - original| a tensor can have, relative to its largest |value|: F16 rounds to 11
# significant bits; Q8_0 rounds x / d to an integer code (d = block max / 127), half a step, and stores d
# in float16, which moves a code of up to 127 by 127·d·2^-11 more
GGUF_BOUNDS = {"F32": 0.0, "F16": 2 ** -11, "Q8_0": 1 / 254 + 2 ** -11}


# ----------------------------------------------------------------------------- adapters to ship

def train_adapter(base, tok, rows: list[dict], steps: int, lr: float = 3e-3, r: int = 8, alpha: float = 16,
                  batch_size: int = 8, seed: int = 0):
    """A LoRA adapter (r, alpha, on every linear layer of BASE's blocks) trained by SFT on ROWS.

    rows: instruction examples ({"task", "instruction", "input", "output"}); BASE is copied, never
    changed (a 4-bit BASE gives a QLoRA adapter). Returns (peft_model, losses per step).
    """
    from . import adapters, data, sft

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
    from . import adapters, data, sft
    from .models import ASSETS

    guard.non_negative_int("steps", steps, about="0: the shipped adapter, else steps of live training")
    shipped = {"sft": sft.adapter_dir(), "qlora": ASSETS / "adapters" / "qlora_sft"}.get(what)
    if shipped is None:
        shipped = ASSETS / "adapters" / f"task_{what}"
        if what not in data.TASKS:
            raise ValueError(f"what must be 'sft', 'qlora' or a task of {data.TASKS}; got {what!r}.")
    from .models import shipped_or_live

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
    configs = {name: _lora_config_for(base, path) for name, path in paths.items()}  # before peft wraps BASE
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

    from . import atomic

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


RELOAD_SCRIPT = r'''
import importlib.abc, importlib.util, json, sys, time

class Blocked(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError("peft is blocked in this process: the reload path must not need it")

class BlockPeft(importlib.abc.MetaPathFinder):
    """peft looks installed (transformers asks), but importing it, or any part of it, fails."""
    def find_spec(self, name, path=None, target=None):
        if name == "peft" or name.startswith("peft."):
            return importlib.util.spec_from_loader(name, Blocked())
        return None

sys.meta_path.insert(0, BlockPeft())
folder, work, max_new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, trust_remote_code=False).eval()
tok = AutoTokenizer.from_pretrained(folder)
seconds = time.perf_counter() - t0
from labkit.evaluate import answer  # plain generate(); labkit imports peft only where adapters are loaded
batch = load_file(work + "/batch.safetensors")
with torch.no_grad():
    logits = model(**batch).logits.float()
save_file({"logits": logits.contiguous()}, work + "/logits.safetensors")
prompts = json.load(open(work + "/prompts.json"))
answers = answer(model, tok, prompts, max_new_tokens=max_new_tokens) if prompts else []
json.dump({"answers": answers, "load_seconds": seconds, "dtype": str(next(model.parameters()).dtype),
           "class": type(model).__name__,
           "peft_modules": sorted(m for m in sys.modules if m == "peft" or m.startswith("peft."))},
          open(work + "/result.json", "w"))
'''


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
        run = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(folder), work, str(max_new_tokens)],
                             capture_output=True, text=True, timeout=timeout, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"reloading {folder} without peft failed:\n{run.stderr[-2000:]}")
        out = json.loads(Path(work, "result.json").read_text())
        out["logits"] = load_file(f"{work}/logits.safetensors")["logits"]
    return out


def encode_batch(tok, prompts: list[str], device="cpu") -> dict:
    """PROMPTS (chat-formatted) as one left-padded batch {"input_ids", "attention_mask"} (batch, seq),
    BOS as labkit.chat.encode adds it: what evaluate.answer feeds generate()."""
    from .chat import adds_bos

    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok(list(prompts), return_tensors="pt", padding=True,
                  add_special_tokens=all(adds_bos(tok, p) for p in prompts))
    finally:
        tok.padding_side = side
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


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


# ----------------------------------------------------------------------------- a 4-bit base (QLoRA)

def dequantize(model_4bit, dtype=None):
    """A plain copy of MODEL_4BIT: each bitsandbytes Linear4bit becomes the layer it replaced again.

    Weights are bitsandbytes' own dequantisation (exactly the W the 4-bit model computes with), in
    DTYPE (default float32). A layer that was a Conv1D (GPT-2) becomes a Conv1D again, with its (in,
    out) layout: transformers' model.dequantize() makes it an nn.Linear, which GPT-2 cannot reload.
    The quantization_config is dropped from the config, so save_pretrained writes a plain model.
    """
    import bitsandbytes as bnb
    import torch
    from transformers.pytorch_utils import Conv1D

    dtype = dtype or torch.float32
    layers = [(n, m) for n, m in model_4bit.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not layers:
        raise ValueError("the model has no bitsandbytes 4-bit layers (load it with labkit.qlora.load_4bit).")
    model = copy.deepcopy(model_4bit)
    for name, m in layers:
        w = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).to(dtype)  # (out, in)
        bias = m.bias.detach().to(dtype) if m.bias is not None else None
        if issubclass(getattr(m, "source_cls", torch.nn.Linear), Conv1D):
            layer = Conv1D(w.shape[0], w.shape[1]).to(device=w.device, dtype=dtype)
            layer.weight.data, layer.bias.data = w.T.contiguous(), bias if bias is not None else layer.bias.data * 0
        else:
            layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=dtype)
            layer.weight.data = w
            if bias is not None:
                layer.bias.data = bias
        model.set_submodule(name, layer)
    for attr in ("hf_quantizer", "quantization_method", "_weight_conversions"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    return model.to(dtype).eval()


def _lora_config_for(model, path):
    """The adapter's LoraConfig with fan_in_fan_out matching MODEL's target layers (Conv1D or not)."""
    from peft import LoraConfig

    from .lora import select_layers, is_conv1d

    cfg = LoraConfig.from_pretrained(str(path))
    if not isinstance(cfg.target_modules, str):  # a regular expression: peft's own matching decides
        cfg.fan_in_fan_out = any(is_conv1d(m) for _, m in select_layers(model, sorted(cfg.target_modules)))
    cfg.inference_mode = True
    return cfg


def merge_4bit(base_4bit, adapter_path, how: str = "dequantize", dtype=None):
    """Merge the (QLoRA) adapter at ADAPTER_PATH into the 4-bit BASE_4BIT; returns the merged model.

    how="dequantize" (the right way): dequantize(BASE_4BIT) to float32, merge the adapter there, and
    cast to DTYPE (e.g. torch.bfloat16 to save in 16 bits; default float32).
    how="requantize" (the wrong way): peft's merge_and_unload on the 4-bit model, which adds B·A to
    the dequantised weight and quantises the sum to NF4 again (peft warns "Merge lora module to 4-bit
    linear may get different generations due to rounding errors"; the warnings are returned in
    merged.ship_warnings instead of printed). BASE_4BIT itself is never changed.
    """
    import warnings

    from peft import PeftModel

    if how not in ("dequantize", "requantize"):
        raise ValueError(f"how must be 'dequantize' (the right way) or 'requantize' (the wrong way); got {how!r}.")
    if not (Path(adapter_path) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"No adapter at {adapter_path} (adapter_config.json is missing).")
    if has_adapter_layers(base_4bit):
        raise ValueError("base_4bit already holds adapter layers (load_adapters wraps the model it is given): "
                         "pass the plain 4-bit base, e.g. a copy made before loading adapters.")
    model = dequantize(base_4bit) if how == "dequantize" else copy.deepcopy(base_4bit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(model, str(adapter_path), config=_lora_config_for(model, adapter_path))
        merged = pm.merge_and_unload().eval()
    if dtype is not None:
        merged = merged.to(dtype)
    merged.ship_warnings = sorted({str(w.message) for w in caught if "erge" in str(w.message)})
    return merged


def requantization_error(peft_model_4bit, adapter_name: str = "default") -> dict:
    """How much of a LoRA update survives quantising W + ΔW to NF4 again, layer by layer.

    For each adapted Linear4bit: W = its dequantised weight, ΔW = (alpha/r)·B·A, Q = dequant(NF4(W + ΔW))
    with bitsandbytes' own quantize_4bit (same blocksize and type). Returns {"error": mean over layers of
    ||Q - (W + ΔW)|| / ||ΔW|| (0 = the update kept exactly, about 1 = as if it were dropped), "kept":
    mean of the share of ΔW in the direction of ΔW that Q keeps, <Q - W, ΔW> / ||ΔW||², "layers": n}.
    """
    import bitsandbytes as bnb

    errors, kept = [], []
    for m in peft_model_4bit.modules():
        base = getattr(m, "base_layer", None)
        if not isinstance(base, bnb.nn.Linear4bit) or adapter_name not in getattr(m, "lora_A", {}):
            continue
        state = base.weight.quant_state
        w = bnb.functional.dequantize_4bit(base.weight.data, state).float()
        delta = m.get_delta_weight(adapter_name).float()
        q_data, q_state = bnb.functional.quantize_4bit((w + delta).to(state.dtype), blocksize=state.blocksize,
                                                       quant_type=state.quant_type)
        q = bnb.functional.dequantize_4bit(q_data, q_state).float()
        norm = delta.norm()
        errors.append(((q - w - delta).norm() / norm).item())
        kept.append(((q - w) * delta).sum().item() / norm.item() ** 2)
    if not errors:
        raise ValueError(f"no adapter {adapter_name!r} on a 4-bit layer: load the adapter on a 4-bit base first.")
    return {"error": sum(errors) / len(errors), "kept": sum(kept) / len(kept), "layers": len(errors)}


def weight_bytes(model) -> int:
    """Bytes of MODEL's parameters and buffers as stored (4-bit weights count their packed bytes),
    each shared tensor (tied embeddings) once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


# ----------------------------------------------------------------------------- many adapters on one base

def mixed_lora_linear(x, W, b, adapters: dict, adapter_names: list[str]):
    """One linear layer of a mixed batch, from scratch: what peft does inside every adapted layer.

    x: (batch, seq, in); W: (out, in); b: (out,) or None; adapters: {name: (A (r, in), B (out, r),
    scaling)}; adapter_names: one name per row of x, "__base__" for no adapter. Returns (batch, seq,
    out): x Wᵀ + b for every row, plus scaling · x Aᵀ Bᵀ of the row's own adapter, computed once per
    adapter on that adapter's rows only (the base matmul is shared by the whole batch).
    """
    if len(adapter_names) != x.shape[0]:
        raise ValueError(f"one adapter name per row: x has {x.shape[0]} rows, adapter_names {len(adapter_names)}.")
    unknown = sorted(set(adapter_names) - set(adapters) - {"__base__"})
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; known: {sorted(adapters)} and '__base__'.")
    y = x @ W.T + (b if b is not None else 0)
    for name in dict.fromkeys(adapter_names):
        if name == "__base__":
            continue
        rows = [i for i, n in enumerate(adapter_names) if n == name]
        A, B, scaling = adapters[name]
        y[rows] = y[rows] + scaling * (x[rows] @ A.T) @ B.T
    return y


def mixed_answers(peft_model, tok, prompts: list[str], adapter_names: list[str], max_new_tokens: int = 24,
                  batch_size: int = 16) -> list[str]:
    """Greedy answers to PROMPTS in shared batches, row i through adapter ADAPTER_NAMES[i].

    peft's mixed-batch inference: generate(..., adapter_names=[...]) routes each row through its own
    adapter ("__base__": no adapter). The adapters must be unmerged. len(adapter_names) == len(prompts).
    """
    from .evaluate import answer

    known = set(peft_model.peft_config) | {"__base__"}
    if len(adapter_names) != len(prompts):
        raise ValueError(f"one adapter name per prompt: {len(prompts)} prompts but {len(adapter_names)} names.")
    unknown = sorted(set(adapter_names) - known)
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; this model has {sorted(known)}.")
    return answer(peft_model, tok, prompts, max_new_tokens, batch_size, adapter_names=list(adapter_names))


def answers_one_adapter_at_a_time(peft_model, tok, prompts: list[str], adapter_names: list[str],
                                  max_new_tokens: int = 24, batch_size: int = 16) -> list[str]:
    """The same answers as mixed_answers, computed the slow way: each adapter alone (set_adapter) on
    its own rows, then put back in the original order. The active adapter is restored."""
    from .evaluate import answer

    active, out = peft_model.active_adapter, [None] * len(prompts)
    try:
        for name in dict.fromkeys(adapter_names):
            rows = [i for i, a in enumerate(adapter_names) if a == name]
            if name == "__base__":
                with peft_model.disable_adapter():
                    got = answer(peft_model, tok, [prompts[i] for i in rows], max_new_tokens, batch_size)
            else:
                peft_model.set_adapter(name)
                got = answer(peft_model, tok, [prompts[i] for i in rows], max_new_tokens, batch_size)
            for i, g in zip(rows, got):
                out[i] = g
    finally:
        peft_model.set_adapter(active)
    return out


def mixed_logits_difference(peft_model, batch: dict, adapter_names: list[str]) -> float:
    """max |logits of the mixed batch - logits of each row through its adapter alone| over BATCH
    ({"input_ids", "attention_mask"}: (batch, seq)); 0 up to float rounding when routing is right."""
    import torch

    active = peft_model.active_adapter
    with torch.no_grad():
        mixed = peft_model(**batch, adapter_names=list(adapter_names)).logits
        alone = torch.empty_like(mixed)
        for name in dict.fromkeys(adapter_names):
            rows = torch.tensor([i for i, a in enumerate(adapter_names) if a == name])
            if name == "__base__":
                with peft_model.disable_adapter():
                    alone[rows] = peft_model(**batch).logits[rows]
            else:
                peft_model.set_adapter(name)
                alone[rows] = peft_model(**batch).logits[rows]
    peft_model.set_adapter(active)
    return (mixed - alone).abs().max().item()


def timed(fn, repeats: int = 5, warmup: int = 1) -> dict:
    """Wall times of FN() over REPEATS runs after WARMUP: {"median", "min", "max", "runs"} in seconds."""
    guard.positive_int("repeats", repeats)
    runs = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            runs.append(time.perf_counter() - t0)
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def op_counts(fn, *args) -> dict:
    """{aten operator: how many times FN(*ARGS) called it}, without gradients, counted at PyTorch's
    dispatcher (a TorchDispatchMode): e.g. "mm" / "addmm" (matrix products: each nn.Linear is one),
    "index" (reading rows out of a tensor) and "index_put_" (writing rows back) in one forward pass."""
    import collections

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), _Count() as count:
        fn(*args)
    return dict(count.calls)


# ----------------------------------------------------------------------------- combining adapters

def combine(peft_model, adapters: list[str], weights: list[float], combination_type: str, name: str | None = None,
            density: float | None = None, majority_sign_method: str = "total", svd_rank: int | None = None,
            seed: int = 0) -> str:
    """Add to PEFT_MODEL one adapter combining ADAPTERS with WEIGHTS (peft's add_weighted_adapter).

    combination_type: one of COMBINATIONS. "cat" stacks the adapters (rank = sum of ranks) and is
    exactly sum_i w_i·ΔW_i; "svd" factors that exact sum back to rank SVD_RANK (default: the largest);
    "linear", "ties", "dare_*" and "magnitude_prune" combine the A's and the B's separately (all
    ranks equal), which is not the weighted sum of the updates (see combination_error). TIES
    (Yadav et al. 2023) keeps the top DENSITY share of each tensor, elects a sign per entry
    (MAJORITY_SIGN_METHOD) and averages the entries that agree; DARE (Yu et al. 2024) drops entries at
    random (keeping DENSITY, rescaled by 1/DENSITY; seeded with SEED). Returns the new adapter's
    name (default "<type>"); an existing name is an error (peft would silently keep the old one).
    """
    import torch

    if combination_type not in COMBINATIONS:
        raise ValueError(f"unknown combination_type {combination_type!r}; peft's are {COMBINATIONS}.")
    adapters, weights = list(adapters), list(weights)
    if not adapters or len(weights) != len(adapters):
        raise ValueError(f"one weight per adapter: {len(adapters)} adapters {adapters} but {len(weights)} weights.")
    missing = [a for a in adapters if a not in peft_model.peft_config]
    if missing:
        raise ValueError(f"unknown adapter(s) {missing}; this model has {sorted(peft_model.peft_config)}.")
    if combination_type in NEEDS_DENSITY:
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
            raise ValueError(f"{combination_type} needs density, the share of entries kept, in (0, 1]; got {density!r}.")
    if majority_sign_method not in SIGN_METHODS:
        raise ValueError(f"majority_sign_method must be one of {SIGN_METHODS}; got {majority_sign_method!r}.")
    name = name or combination_type
    if name in peft_model.peft_config:
        raise ValueError(f"an adapter named {name!r} exists already; pick another name (peft would keep the old one).")
    torch.manual_seed(seed)  # DARE's random drop
    peft_model.add_weighted_adapter(adapters, weights, name, combination_type=combination_type, density=density,
                                    majority_sign_method=majority_sign_method, svd_rank=svd_rank)
    return name


def combination_error(peft_model, name: str, adapters: list[str], weights: list[float]) -> float:
    """How far adapter NAME's update is from the exact weighted sum of the ADAPTERS' updates.

    Mean over adapted layers of ||ΔW_name - sum_i w_i·ΔW_i|| / ||sum_i w_i·ΔW_i|| (Frobenius norms;
    ΔW = (alpha/r)·B·A as peft's get_delta_weight gives it). 0 for "cat"; > 0 where A's and B's are
    mixed separately (cross terms B_i·A_j) or entries were pruned.
    """
    import torch

    errs = []
    with torch.no_grad():
        for m in peft_model.modules():
            if name not in getattr(m, "lora_A", {}):
                continue
            exact = sum(w * m.get_delta_weight(a) for a, w in zip(adapters, weights) if a in m.lora_A)
            errs.append(((m.get_delta_weight(name) - exact).norm() / exact.norm().clamp_min(1e-12)).item())
    if not errs:
        raise ValueError(f"no layer holds an adapter named {name!r}.")
    return sum(errs) / len(errs)


# ----------------------------------------------------------------------------- GGUF (llama.cpp's file format)

def _check_llama(model):
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise ValueError(f"labkit's GGUF exporter covers Llama-architecture models (model_type 'llama'); this one is "
                         f"{getattr(cfg, 'model_type', type(model).__name__)!r}. For other families use llama.cpp's own "
                         "converter: python convert_hf_to_gguf.py MODEL_FOLDER --outtype f16 (or q8_0).")
    if has_adapter_layers(model):
        raise ValueError("merge the adapter first (labkit.ship.merge): GGUF holds plain weights.")


def _permute_qk(w, n_head: int):
    """llama.cpp's row order for q_proj / k_proj (its convert_hf_to_gguf.py 'permute'): transformers
    rotates the two halves of each head's dimensions, llama.cpp rotates interleaved pairs.
    w: (n_head * head_dim, hidden) -> the same shape, rows reordered."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model) -> dict:
    """{gguf name: (transformers name, float32 numpy array as GGUF stores it)} for a Llama MODEL.

    Names come from llama.cpp's own table (gguf.get_tensor_name_map), e.g.
    model.layers.0.self_attn.q_proj.weight -> blk.0.attn_q.weight; q and k rows are permuted
    (_permute_qk); a tied lm_head is left out (llama.cpp then reuses token_embd).
    """
    import gguf

    _check_llama(model)
    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    out = {}
    for hf_name, t in model.state_dict().items():
        if tied and hf_name == "lm_head.weight" or "rotary_emb" in hf_name:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no llama.cpp name for tensor {hf_name!r}.")
        a = t.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            a = _permute_qk(a, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            a = _permute_qk(a, cfg.num_key_value_heads)
        out[name] = (hf_name, a)
    return out


def _vocab(writer, tok, vocab_size: int):
    """The tokenizer as llama.cpp's "gpt2" (byte-level BPE) vocabulary: tokens, types, merges, ids."""
    import gguf

    data = json.loads(tok.backend_tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise ValueError(f"the GGUF exporter writes byte-level BPE tokenizers; this one is {data['model']['type']}.")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    special = set(tok.all_special_ids) | {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.CONTROL if i in special else
                     gguf.TokenType.UNUSED if i not in by_id else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    from .chat import stop_token_ids, tokenizer_adds_bos

    if tok.bos_token_id is not None:
        writer.add_bos_token_id(tok.bos_token_id)
    writer.add_add_bos_token(tokenizer_adds_bos(tok))
    writer.add_eos_token_id(stop_token_ids(tok)[0])  # the template's turn end first: where llama.cpp stops
    if tok.pad_token_id is not None:
        writer.add_pad_token_id(tok.pad_token_id)
    if getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)


def write_gguf(model, tok, path, tensor_type: str = "F16") -> Path:
    """Write a merged Llama MODEL with its tokenizer TOK to the GGUF file PATH; returns PATH.

    tensor_type: "F16", "Q8_0" (8-bit blocks of 32 with one float16 scale each; a matrix whose rows
    are not whole blocks stays F16) or "F32". Norm weights (1-D) stay F32, as llama.cpp writes them.
    Hyperparameters come from MODEL.config; the file is written to PATH.tmp and renamed.
    """
    import gguf
    import numpy as np

    if tensor_type not in GGUF_TYPES:
        raise ValueError(f"tensor_type must be one of {GGUF_TYPES}; got {tensor_type!r}.")
    tensors = gguf_tensors(model)
    cfg = model.config
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(Path(getattr(cfg, "_name_or_path", "") or "model").name or "model")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = getattr(cfg, "rope_parameters", None) or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                     "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[tensor_type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _vocab(w, tok, cfg.vocab_size)
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    for name, (_, a) in tensors.items():
        if a.ndim == 1 or tensor_type == "F32":
            w.add_tensor(name, a.astype(np.float32))
        elif tensor_type == "Q8_0" and a.shape[-1] % block == 0:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a.astype(np.float16))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    os.replace(tmp, path)
    return path


def read_gguf(path) -> dict:
    """{"tensors": {name: (type name, float32 array in GGUF's shape)}, "metadata": {key: value}} of
    the GGUF file PATH, read back with gguf's GGUFReader (quantised tensors dequantised)."""
    import gguf
    import numpy as np

    r = gguf.GGUFReader(str(path))
    tensors = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape))  # GGUF lists dimensions fastest-first
        tensors[t.name] = (t.tensor_type.name, np.asarray(a, dtype=np.float32).reshape(shape))
    meta = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                              "tokenizer.ggml.token_type"):
            continue
        value = field.contents()
        meta[key] = value
    meta["tokenizer.ggml.tokens.count"] = len(r.fields["tokenizer.ggml.tokens"].data)
    return {"tensors": tensors, "metadata": meta}


def check_gguf(path, model) -> dict:
    """Compare every tensor of the GGUF file PATH with MODEL's own (the safetensors it was saved from).

    Returns {"tensors": n, "missing": names in one but not the other, "worst": (name, max |GGUF - model|
    relative to the tensor's max |value|), "by_type": {type: worst relative difference}}, each within
    GGUF_BOUNDS[type]: F16 keeps 11 significant bits (2^-11 = 4.9e-4), Q8_0 rounds each entry to a
    step of 1/127 of its block's max |value| with a float16 scale (1/254 + 2^-11 = 4.4e-3).
    """
    import numpy as np

    ours = gguf_tensors(model)
    back = read_gguf(path)["tensors"]
    missing = sorted(set(ours) ^ set(back))
    by_type, worst = {}, ("", 0.0)
    for name, (_, a) in ours.items():
        if name not in back:
            continue
        kind, b = back[name]
        if b.shape != a.shape:
            raise ValueError(f"{name}: GGUF holds shape {b.shape}, the model {a.shape}.")
        rel = float(np.abs(b - a).max() / max(float(np.abs(a).max()), 1e-12))
        by_type[kind] = max(by_type.get(kind, 0.0), rel)
        if rel > worst[1]:
            worst = (name, rel)
    return {"tensors": len(back), "missing": missing, "worst": worst, "by_type": by_type}


def llama_cpp_available() -> bool:
    """Is llama-cpp-python (llama.cpp's Python binding) importable here?"""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def llama_cpp_command(path, prompt: str, max_new_tokens: int) -> str:
    """The shell command that runs the GGUF file PATH on PROMPT (the chat-formatted text, special tokens
    included) with llama.cpp, greedily, for MAX_NEW_TOKENS tokens: llama.cpp's raw-prompt tool,
    `llama-completion` (older builds: `llama-cli ... -no-cnv`)."""
    import shlex

    return (f"llama-completion -m {shlex.quote(str(path))} -p {shlex.quote(prompt)} -n {int(max_new_tokens)} "
            "--temp 0 -no-cnv")


def llama_cpp_greedy(path, prompt_ids: list[list[int]], max_new_tokens: int, stop_ids: list[int],
                     repack: bool = False) -> list[list[int]]:
    """Greedy continuations by llama.cpp (llama-cpp-python) of each prompt, given as token ids.

    Token ids in and out, so both runtimes see exactly the same tokens (llama.cpp's own tokenizer has
    no equivalent of every transformers normalizer). Stops after a token of STOP_IDS (kept) or
    MAX_NEW_TOKENS tokens. repack=False switches off llama.cpp's CPU weight repacking (its
    "extra buffer types"): with it, llama-cpp-python 0.3.36 crashed (segmentation fault) on this
    course's Q8_0 files on an AVX512/AMX CPU, while F16 and F32 ran either way.
    """
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = repack
        return p

    lib.llama_model_default_params = params
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, seed=0)
    finally:
        lib.llama_model_default_params = default
    out = []
    for ids in prompt_ids:
        got = []
        for t in llm.generate(list(ids), top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            got.append(int(t))
            if t in stop_ids or len(got) >= max_new_tokens:
                break
        out.append(got)
    return out

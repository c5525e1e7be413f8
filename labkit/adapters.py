"""PEFT adapters with peft: checked configuration, several methods, and saving that cannot corrupt.

    model = adapters.add(base, "lora", r=8, alpha=16, target_modules=["q_proj", "v_proj"])
    adapters.save(model, "my_adapter")          # atomic: the old adapter or the new one, never half
    model = adapters.load(fresh_base, "my_adapter")

Methods (all from peft): "lora"; "dora" (LoRA with the weight split into magnitude and direction,
Liu et al. 2024); "ia3" (learned per-channel scaling vectors, Liu et al. 2022); "prompt" (prompt
tuning: trainable virtual-token embeddings in front of the input, Lester et al. 2021).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from . import atomic, guard
from .lora import adaptable_layers, check_hyperparameters, select_layers, needs_fan_in_fan_out

METHODS = ("lora", "dora", "ia3", "prompt")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The query and value projections the LoRA paper adapted, by the names model families give them.
ATTENTION_TARGETS = {"q_proj": "v_proj", "c_attn": None, "query_key_value": None, "Wqkv": None}
# Layers that are never LoRA targets by default: the output head (and a reward model's score head).
HEADS = ("lm_head", "score", "classifier", "embed_out")


def targets(model, which: str = "all") -> list[str]:
    """MODEL's own names for LoRA targets, so a lesson never assumes Llama's.

    which="all": every Linear / Conv1D layer inside the transformer blocks, by its last name (Llama's
    seven q_proj ... down_proj, GPT-2's c_attn, c_proj, c_fc), as peft's "all-linear" but listed;
    which="attention": the query and value projections (q_proj and v_proj), or the fused
    query-key-value layer where a family has one (GPT-2's c_attn).
    """
    names = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n, _ in adaptable_layers(model)
                               if n.rsplit(".", 1)[-1] not in HEADS))
    if which == "all":
        if not names:
            raise ValueError(f"{type(model).__name__} has no Linear or Conv1D layer to adapt.")
        return names
    if which == "attention":
        for q, v in ATTENTION_TARGETS.items():
            if q in names:
                return [q] + ([v] if v in names else [])
        raise ValueError(f"no known query projection in {type(model).__name__} (its layers: {', '.join(names)}); "
                         "name the targets yourself.")
    raise ValueError(f"which must be 'all' or 'attention'; got {which!r}.")


def check_targets(model, target_modules: Iterable[str]) -> list[str]:
    """The target names, after checking each matches a Linear layer of MODEL.

    peft only complains when no target matches at all; a typo next to a valid name ("v_prj" beside
    "q_proj") would silently adapt one projection instead of two. Raises ValueError naming the
    unknown names and the valid ones.
    """
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    select_layers(model, targets)
    return targets


# the MLP's output layer, whose input IA3 scales (the paper's rescaled FFN activation), by family:
# Llama's down_proj, OPT's fc2, GPT-NeoX's dense_4h_to_h, GPT-2's mlp.c_proj (its attn.c_proj is not one)
IA3_FEEDFORWARD = ("down_proj", "fc2", "dense_4h_to_h", "mlp.c_proj")


def ia3_feedforward(names: Iterable[str]):
    """peft's IA3 feedforward_modules for target NAMES: the MLP output layers among them, as a regex on
    the full module name (a list would match GPT-2's attn.c_proj too: peft matches list items as name
    endings), or [] when NAMES has none."""
    import re

    names = set(names)
    ff = [f for f in IA3_FEEDFORWARD if f.split(".")[-1] in names]
    return rf"(?:.*\.)?(?:{'|'.join(re.escape(f) for f in ff)})" if ff else []


def config(method: str, model=None, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
           target_modules: Iterable[str] | None = None, num_virtual_tokens: int = 8):
    """A peft config for METHOD with its knobs checked (against MODEL's layers when given).

    target_modules: None means every linear layer of MODEL (``targets(model)``; without a model,
    Llama's DEFAULT_TARGETS).
    """
    if target_modules is None:
        target_modules = targets(model) if model is not None else DEFAULT_TARGETS
    from peft import IA3Config, LoraConfig, PromptTuningConfig, TaskType

    if method not in METHODS:
        raise ValueError(f"Unknown PEFT method {method!r}; choose one of {METHODS}.")
    if method in ("lora", "dora", "ia3"):
        names = check_targets(model, target_modules) if model is not None else list(target_modules)
        # GPT-2's Conv1D stores W as (in, out): peft must transpose the update (it warns, then does it)
        conv = model is not None and needs_fan_in_fan_out(model, names)
    if method in ("lora", "dora"):
        check_hyperparameters(r, alpha, dropout)
        return LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                          use_dora=method == "dora", task_type=TaskType.CAUSAL_LM, fan_in_fan_out=conv)
    if method == "ia3":
        return IA3Config(target_modules=names, feedforward_modules=ia3_feedforward(names),
                         task_type=TaskType.CAUSAL_LM, fan_in_fan_out=conv)
    guard.positive_int("num_virtual_tokens", num_virtual_tokens, "8")
    return PromptTuningConfig(num_virtual_tokens=num_virtual_tokens, task_type=TaskType.CAUSAL_LM)


def add(model, method: str = "lora", seed: int = 0, **kwargs):
    """MODEL wrapped by peft with a fresh METHOD adapter (only the adapter is trainable).

    The result is in MODEL's mode (eval for a model from labkit.models.load_base): peft's wrapper
    starts in training mode, and a training loop that restores the mode it found would then leave
    dropout on (GPT-2 has dropout 0.1), so the same input would give different logits.
    """
    import torch
    from peft import get_peft_model

    cfg = config(method, model, **kwargs)
    was_training = model.training
    torch.manual_seed(seed)
    return get_peft_model(model, cfg).train(was_training)


def generate(model, input_ids, attention_mask=None, **kwargs):
    """MODEL.generate(input_ids, attention_mask, **kwargs), right for a prompt-tuning adapter as well.

    input_ids, attention_mask: (batch, prompt_len), left-padded. Returns (batch, prompt_len + new) like
    ``model.generate``. peft 0.21's generate looks for the KV cache under ``past_key_values`` while
    transformers 5 passes it as ``cache``, so for prompt tuning it prepends the virtual tokens again at
    every decoding step (the model reads n_virtual + 1 positions per new token, so every continuation
    is conditioned wrongly; on GPT-2, whose positions are learned up to n_positions, an IndexError).
    Here the virtual tokens go in once, as input embeddings in front of the prompt's, and the base model
    generates from them, exactly as peft's forward reads them in training.
    """
    cfg = getattr(model, "active_peft_config", None)
    if cfg is None:  # a plain transformers model: peft is not needed (nor imported: lesson 17 reloads without it)
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    import torch
    from peft import PeftType

    if cfg.peft_type != PeftType.PROMPT_TUNING:
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    base = model.get_base_model()
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    embeds = base.get_input_embeddings()(input_ids)
    virtual = model.get_prompt(batch_size=input_ids.shape[0]).to(embeds.dtype)      # (batch, n_virtual, d)
    mask = torch.cat([attention_mask.new_ones(virtual.shape[:2]), attention_mask], dim=1)
    new = base.generate(inputs_embeds=torch.cat([virtual, embeds], dim=1), attention_mask=mask, **kwargs)
    return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


def trainable_line(model) -> str:
    """peft's own line, "trainable params: N || all params: M || trainable%: P", as a string."""
    trainable, total = model.get_nb_trainable_parameters()
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def save(model, path: str | os.PathLike, extra_files: dict[str, str] | None = None) -> Path:
    """Save MODEL's adapter to PATH atomically; returns PATH.

    peft writes into a fresh temporary folder beside PATH, which then replaces PATH in one rename
    (labkit.atomic.folder). If anything fails half-way (a full disk, an interrupted kernel), PATH still
    holds the previous adapter, or nothing if there was none. EXTRA_FILES ({name: text}, e.g. a
    scores.json or a README) are written into the same folder before the rename.
    """
    with atomic.folder(path) as tmp:
        model.save_pretrained(str(tmp))
        if not any(tmp.rglob("adapter_config.json")):
            raise RuntimeError(f"peft wrote no adapter_config.json into {tmp}; nothing was saved.")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(path)



def load(model, path: str | os.PathLike, adapter_name: str = "default", trainable: bool = False):
    """A PeftModel: MODEL with the adapter saved at PATH (clear error when PATH holds none)."""
    from peft import PeftModel

    path = atomic.recover(path)  # a save killed half-way leaves the old adapter aside: put it back
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"No adapter at {path} (adapter_config.json is missing). Save one with "
                                "labkit.adapters.save(model, path) or check the path.")
    return PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name, is_trainable=trainable)

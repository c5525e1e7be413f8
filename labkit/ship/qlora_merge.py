"""A 4-bit base (QLoRA): merge the adapter into dequantised 16/32-bit weights, not back into NF4.

Re-quantising a merged weight to 4 bits rounds W + dW to the NF4 grid again, whose steps are larger than most
entries of a LoRA update (requantization_error)."""

from __future__ import annotations

import copy
from pathlib import Path

from .merging import lora_config_for, has_adapter_layers


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
        pm = PeftModel.from_pretrained(model, str(adapter_path), config=lora_config_for(model, adapter_path))
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

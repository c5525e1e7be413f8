"""QLoRA in practice: a model loaded in 4-bit NF4 through transformers + bitsandbytes, LoRA on top.

labkit.quant holds NF4 from scratch and double quantisation, labkit.memory the memory arithmetic
(and `footprint`, the bytes a loaded 4-bit model stores); this module holds what lessons 04 and 05
do with real models and with bitsandbytes:

- importing it keeps 4-bit training safe on a CPU (`keep_cpu_training_safe`, see there);
- `load_4bit` loads a model with a BitsAndBytesConfig (`bnb_config`: NF4, double quantisation, a
  compute dtype); `prepare_qlora` is peft's recipe (prepare_model_for_kbit_training, then
  get_peft_model) on the model's own layers (labkit.adapters.targets);
- `linear_weights` and `block_layer` give the weights a lesson quantises, as bitsandbytes sees them
  ((out, in): GPT-2's Conv1D transposed, as transformers' bitsandbytes integration does);
- `check_against_bitsandbytes` and `double_quant_against_bitsandbytes` put labkit.quant next to
  bitsandbytes on a real weight; `compare_outputs` measures how far the 4-bit model's logits are from
  the original's, `lora_gradients` whether the adapters get gradients; `load_gpu_results` reads
  scripts/gpu_qlora.py's measurements.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import quant
from .adapters import config, targets
from .env import pick_device
from .lora import is_conv1d, select_layers
from .memory import stored_bits_per_weight
from .models import load_base

COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")


# -----------------------------------------------------------------------------
# Loading in 4 bits


def _torch_dtype(name: str, device: str):
    import torch

    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {name!r}.")
    if name == "auto":
        # bf16 is QLoRA's compute dtype on a GPU; on a CPU float32 is the safe, well-tested choice.
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, name)


def bnb_config(compute_dtype: str = "auto", double_quant: bool = True, quant_type: str = "nf4",
               device: str = "cpu"):
    """The BitsAndBytesConfig of QLoRA: 4-bit QUANT_TYPE weights ("nf4" or "fp4"), double
    quantisation of the constants, and the dtype the matmuls run in (weights are dequantised to
    it block by block, on the fly)."""
    from transformers import BitsAndBytesConfig

    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be one of ('nf4', 'fp4') (what bitsandbytes loads), got {quant_type!r}.")
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant must be True or False, got {double_quant!r}.")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=_torch_dtype(compute_dtype, device))


def linear4bit_modules(model) -> list:
    """[(name, bitsandbytes.nn.Linear4bit)] of MODEL, in order."""
    import bitsandbytes as bnb

    return [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def linear_weights(model, which: str = "all") -> dict:
    """{name: weight (out_features, in_features), float32 on the CPU} of every layer that
    labkit.adapters.targets(MODEL, WHICH) names, in model order: what 4-bit loading quantises.

    GPT-2's Conv1D stores its weight as (in, out); it is transposed here, as transformers' bitsandbytes
    integration transposes it before quantising (the Linear4bit that replaces a Conv1D holds (out, in)),
    so the blocks of 64 run along the same rows here as in bitsandbytes.
    """

    out = {}
    for name, m in select_layers(model, targets(model, which)):
        w = m.weight.detach().float().cpu()
        out[name] = w.T.contiguous() if is_conv1d(m) else w
    return out


def block_layer(names, block: int = 1, index: int = 0) -> str:
    """The INDEX-th of NAMES (layer names in model order, e.g. linear_weights' keys) inside transformer
    block BLOCK: index 0 is a block's first projection (Llama's q_proj, GPT-2's c_attn), -1 its last
    (Llama's mlp.down_proj, GPT-2's mlp.c_proj). The block is the first number in a name
    ("model.layers.1.mlp.down_proj", "transformer.h.1.mlp.c_proj")."""
    import re

    names = list(names)
    found = [n for n in names if (m := re.search(r"\.(\d+)\.", f".{n}.")) and int(m.group(1)) == block]
    if not found:
        blocks = sorted({int(m.group(1)) for n in names if (m := re.search(r"\.(\d+)\.", f".{n}."))})
        raise ValueError(f"no layer of block {block} among {len(names)} names; the blocks are {blocks}.")
    try:
        return found[index]
    except IndexError:
        raise ValueError(f"block {block} has {len(found)} layers; index {index} is out of range.") from None


def disable_cpu_repacking(model) -> int:
    """Switch off bitsandbytes' AVX512-BF16 CPU fast path on every Linear4bit; return how many.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight the first time it
    runs a no-grad forward in eval mode, and from then on computes it with a kernel that has no
    backward: LoRA adapters on top of it get no gradient. This sets `support_avx512bf16_for_cpu =
    False` and undoes a repacking that already happened. Harmless on other CPUs and on GPUs.
    """
    from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

    layers = linear4bit_modules(model)
    for _, m in layers:
        m.support_avx512bf16_for_cpu = False
        state = m.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu_inverse(m.weight.data, state)
    return len(layers)


def keep_cpu_training_safe() -> None:
    """Make every bitsandbytes Linear4bit created from now on start with its CPU fast path off.

    bitsandbytes 0.50 gives each Linear4bit `support_avx512bf16_for_cpu = has_avx512bf16()`. On a CPU
    with AVX512-BF16 the first no-grad forward in eval mode (an evaluation) then repacks the layer's
    weight for an inference kernel that has no backward pass, and LoRA adapters trained afterwards
    get no gradient, silently; on some layer sizes the evaluation itself fails. This runs when
    labkit.qlora is imported, so the plain `from_pretrained(..., quantization_config=...)` a lesson
    writes gives layers that train after an evaluation (tests/test_qlora.py checks it). Layers that
    already exist: disable_cpu_repacking. Harmless on other CPUs and on GPUs.
    """
    import logging

    # its import logs a "kernels-community" line on such CPUs (the `kernels` package reaches for the Hub)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes.nn.modules as modules
    except ImportError:  # bitsandbytes is not installed: no 4-bit layers to protect
        return
    modules.has_avx512bf16 = _no_cpu_fast_path


def _no_cpu_fast_path() -> bool:
    return False


def load_4bit(model=None, device: str = "auto", compute_dtype: str = "auto", double_quant: bool = True,
              quant_type: str = "nf4"):
    """Return (model, tokenizer): MODEL (bundled by default) with every Linear in 4 bits.

    device: "auto" (CUDA, else CPU: bitsandbytes has no 4-bit kernels for Apple MPS), "cpu" or
    "cuda". compute_dtype: one of COMPUTE_DTYPES ("auto": bfloat16 on CUDA, float32 on CPU).

    Embeddings, norms and the LM head stay in their dtype (float32 on CPU, as bitsandbytes leaves
    them). The model is ready to train: CPU repacking is off (see disable_cpu_repacking).
    """

    dev = pick_device(device)
    if dev == "mps":
        if str(device).lower() != "auto":
            raise ValueError("bitsandbytes has no 4-bit support on Apple MPS; use DEVICE='cpu' or a CUDA GPU.")
        dev = "cpu"  # 'auto' on a Mac: the 4-bit model runs on the CPU
    config = bnb_config(compute_dtype, double_quant, quant_type, device=dev)
    # dtype "auto": what stays unquantised is float32 on CPU, bf16 (or fp16) on a GPU
    lm, tok = load_base(model, device=dev, dtype="auto", quantization_config=config,
                        device_map={"": 0 if dev == "cuda" else dev})
    disable_cpu_repacking(lm)
    return lm, tok


def prepare_qlora(model, r: int = 8, alpha: float = 16, target_modules=None, dropout: float = 0.0,
                  gradient_checkpointing: bool = False):
    """peft's QLoRA recipe on a 4-bit MODEL: prepare_model_for_kbit_training, then LoRA adapters.

    target_modules: None means every linear layer of MODEL (labkit.adapters.targets: Llama's seven
    projections, GPT-2's c_attn, c_proj and c_fc), checked against its layers. In 4 bits every target
    is a bitsandbytes Linear4bit holding W as (out, in), GPT-2's former Conv1D included, so the LoRA
    config has fan_in_fan_out=False (peft's 4-bit LoRA layer forces it off in any case).
    prepare_model_for_kbit_training freezes every weight, casts the remaining 16-bit ones (norms,
    embeddings) to float32 for stable training and, with gradient checkpointing, makes the input
    embeddings require grad so that checkpointed layers still pass gradients back.
    Returns the peft model (only the adapters train).
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if not linear4bit_modules(model):
        raise ValueError("the model has no 4-bit layers; load it with labkit.qlora.load_4bit first.")
    disable_cpu_repacking(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return get_peft_model(model, config("lora", model, r=r, alpha=alpha, dropout=dropout,
                                        target_modules=target_modules))


# -----------------------------------------------------------------------------
# Measuring


def compare_outputs(model, reference, input_ids) -> dict:
    """How close MODEL's next-token distributions are to REFERENCE's on INPUT_IDS (batch, seq).

    Returns {"max_abs_logit_diff", "mean_abs_logit_diff", "kl" (mean KL(reference || model) per
    token, in nats), "top1_agreement" (share of positions where both pick the same next token)}.
    """
    import torch

    with torch.no_grad():
        a = model(input_ids.to(next(model.parameters()).device)).logits.float().cpu()
        b = reference(input_ids.to(next(reference.parameters()).device)).logits.float().cpu()
    if a.shape != b.shape:
        raise ValueError(f"the two models give logits of different shapes: {tuple(a.shape)} vs {tuple(b.shape)}.")
    kl = torch.nn.functional.kl_div(a.log_softmax(-1), b.log_softmax(-1), log_target=True,
                                    reduction="none").sum(-1)
    return {"max_abs_logit_diff": (a - b).abs().max().item(), "mean_abs_logit_diff": (a - b).abs().mean().item(),
            "kl": kl.mean().item(), "top1_agreement": (a.argmax(-1) == b.argmax(-1)).float().mean().item()}


def lora_gradients(model, batch: dict) -> dict:
    """One forward and backward pass on BATCH; {adapter parameter name: gradient norm, or None}.

    A quick check that gradients reach the adapters (B gets one from step 0; A only once B is
    non-zero, since the gradient of A is proportional to B). Gradients are cleared afterwards.
    """
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    out = {n: (None if p.grad is None else p.grad.norm().item())
           for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return out


def check_against_bitsandbytes(w, blocksize: int = 64, quant_type: str = "nf4") -> dict:
    """labkit.quant's 4-bit quantisation of W (out, in) next to bitsandbytes' quantize_4bit.

    Returns {"codes_equal", "absmax_equal" (bit for bit), "dequant_max_abs_diff" (ours vs
    bitsandbytes' dequantize_4bit), "rows_whole_blocks" (in_features % blocksize == 0: where
    bitsandbytes 0.50.2's CPU dequantize_4bit is right)}. FP4 codes are compared by the value they
    stand for, since bitsandbytes numbers FP4 by bit pattern.
    """
    import bitsandbytes.functional as bnbF
    import torch

    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be one of ('nf4', 'fp4') (what bitsandbytes has), got {quant_type!r}.")
    w = w.detach()
    codes, absmax = quant.quantize_4bit(w, quant_type, blocksize)
    packed, state = bnbF.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
    theirs = quant.unpack_4bit(packed, w.numel()).long()
    table = bnbF.get_4bit_type(quant_type, device=w.device)
    ours = quant.dequantize_4bit(codes, absmax, w.shape, quant_type, blocksize)
    return {"codes_equal": torch.equal(quant.CODES_4BIT[quant_type][codes.long()], table[theirs]),
            "absmax_equal": torch.equal(absmax, state.absmax),
            "dequant_max_abs_diff": (bnbF.dequantize_4bit(packed, state, quant_type=quant_type) - ours).abs().max().item(),
            "rows_whole_blocks": w.shape[-1] % blocksize == 0}


def double_quant_against_bitsandbytes(w, blocksize: int = 64) -> dict:
    """labkit.quant.double_quantize of W's NF4 absmax constants next to bitsandbytes'
    quantize_4bit(..., compress_statistics=True). w: (out, in) float.

    Returns {"constants": how many absmax constants (one per block), "offset": (ours, bitsandbytes'),
    "absmax2_equal": the second-level scales bit for bit, "codes_equal": how many 8-bit codes agree,
    "neighbours": how many of those that differ are the next code up or down, "ours_never_farther":
    whether our code is always at least as near the constant as bitsandbytes' (its CPU C kernel can
    round a constant within a hair of a midpoint the other way), "bits_stored": bits per weight of
    what bitsandbytes stores (memory.stored_bits_per_weight), "bits_stored_without": the same
    without double quantisation}.
    """
    import bitsandbytes.functional as bnbF
    import torch

    w = w.detach()
    _, absmax = quant.quantize_nf4(w, blocksize)
    q, absmax2, offset = quant.double_quantize(absmax)
    packed, state = bnbF.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
    theirs = state.absmax.long()
    per_value = absmax2.double().repeat_interleave(256)[: absmax.numel()]
    scaled = (absmax.double() - offset) / per_value
    code = quant.DYNAMIC_CODE.double()
    differ = q.long() != theirs
    plain_packed, plain_state = bnbF.quantize_4bit(w, blocksize=blocksize, quant_type="nf4")
    return {"constants": absmax.numel(), "offset": (offset, state.offset.item()),
            "absmax2_equal": torch.equal(absmax2, state.state2.absmax),
            "codes_equal": int((~differ).sum()),
            "neighbours": int(((q.long() - theirs).abs() == 1)[differ].sum()),
            "ours_never_farther": bool(((scaled - code[q.long()]).abs() <= (scaled - code[theirs]).abs() + 1e-12).all()),
            "bits_stored": stored_bits_per_weight(packed, state),
            "bits_stored_without": stored_bits_per_weight(plain_packed, plain_state)}


GPU_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "gpu_qlora.json"


def load_gpu_results(path=GPU_RESULTS) -> dict | None:
    """The JSON written by scripts/gpu_qlora.py (bench/gpu_qlora.json), or None when there is none (or
    only a smoke run, or a run that was not on a CUDA GPU): a GPU figure is shown only when measured."""
    path = Path(path)
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    if results.get("smoke") or results.get("device") != "cuda":
        return None
    return results


keep_cpu_training_safe()

"""The memory arithmetic of fine-tuning: what a model needs on one GPU, on many, and what it really stores.

1. A 4-bit weight: `bits_per_parameter` (NF4 codes plus their share of the quantisation constants;
   the format itself is labkit.quant).
2. One GPU: `estimate_memory` breaks full, LoRA and QLoRA fine-tuning down into weights, gradients,
   optimizer states, adapters, quantisation constants and activations (`activation_bytes`).
3. Many GPUs: `per_gpu_memory` divides that breakdown by what DDP, ZeRO-1/2/3 and FSDP shard
   (`memory_table`, `memory_markdown` for lesson 16's table).
4. Real shapes: `llama_sizes` counts the parameters of published Llama shapes on the meta device;
   `fit_table` says which (model, method) fits on which GPU (`GPU_SIZES_GB`).
5. Measured, not estimated: `footprint` (the bytes a loaded model stores, 4-bit constants included),
   `stored_bits_per_weight` (one weight as bitsandbytes stores it), `training_step_bytes`, and
   `optimizer_states` / `optimizer_state_bytes` (what an optimizer keeps, 8-bit and paged included).

Sizes are bytes (ints); GB means 1e9 bytes.
"""

from __future__ import annotations

import math
import numbers
import weakref

from . import guard
from .adapters import DEFAULT_TARGETS
from .lora import count_lora_params
from .quant import check_blocksize, DYNAMIC_BLOCKSIZES, NF4_BLOCKSIZES


# -----------------------------------------------------------------------------
# A 4-bit weight


def bits_per_parameter(blocksize: int = 64, double_quant: bool = False, blocksize2: int = 256) -> float:
    """Storage of an NF4 weight per parameter, in bits: 4 for the code plus its share of the constants.

    Without double quantisation: one fp32 absmax per block, 4 + 32/64 = 4.5 bits.
    With it: one 8-bit absmax per block and one fp32 absmax2 per BLOCKSIZE2 blocks,
    4 + 8/64 + 32/(64*256) = 4.127 bits. (The one offset per tensor and the shared codebooks are
    a few bytes per tensor and are left out.)
    """
    check_blocksize(blocksize, NF4_BLOCKSIZES)
    if not double_quant:
        return 4 + 32 / blocksize
    check_blocksize(blocksize2, DYNAMIC_BLOCKSIZES)
    return 4 + 8 / blocksize + 32 / (blocksize * blocksize2)


# -----------------------------------------------------------------------------
# One GPU

METHODS = ("full", "lora", "qlora")
# Optimizer state bytes per trained parameter: AdamW keeps m and v in fp32; bitsandbytes'
# 8-bit AdamW keeps them in 8 bits; plain SGD (no momentum) keeps nothing.
OPTIMIZER_BYTES = {"adamw": 8, "adamw_8bit": 2, "sgd": 0}
# Activation values per token and hidden unit saved by one transformer layer for backward:
# Korthikanti et al. 2022 (https://arxiv.org/abs/2205.05198) count 34 bytes in 16 bits, i.e. 17
# values, leaving out the attention-score term (flash / SDPA attention does not store the scores).
ACTIVATION_VALUES_PER_LAYER = 17


def activation_bytes(batch: int, seq_len: int, hidden: int, layers: int,
                     grad_checkpointing: bool = True, value_bytes: int = 2) -> int:
    """Bytes of activations kept for the backward pass (an estimate; see ACTIVATION_VALUES_PER_LAYER).

    Without checkpointing every layer keeps its 17 values per token and unit. With it, only each
    layer's input is kept (1 value) and one layer at a time is recomputed in full during backward.
    The logits (batch * seq_len * vocab) and the embedding are left out. LoRA and QLoRA need these
    activations too: gradients must flow through the frozen layers to reach earlier adapters.
    """
    tokens_x_hidden = batch * seq_len * hidden
    if grad_checkpointing:
        values = tokens_x_hidden * (layers + ACTIVATION_VALUES_PER_LAYER)
    else:
        values = tokens_x_hidden * layers * ACTIVATION_VALUES_PER_LAYER
    return int(values * value_bytes)


def _check_estimate(n_params, method, optimizer, weight_bytes, lora_params, hidden, layers, batch, seq_len):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if optimizer not in OPTIMIZER_BYTES:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZER_BYTES)}, got {optimizer!r}.")
    if not isinstance(n_params, numbers.Real) or isinstance(n_params, bool) or not n_params > 0:
        raise ValueError(f"n_params must be a positive number of parameters, got {n_params!r}.")
    if not weight_bytes > 0:
        raise ValueError(f"weight_bytes must be positive, got {weight_bytes!r}.")
    if method != "full" and (lora_params is None or not lora_params > 0):
        raise ValueError(f"method {method!r} needs lora_params > 0: the number of adapter "
                         f"parameters, e.g. r * (d_in + d_out) summed over the adapted matrices.")
    if (hidden is None) != (layers is None):
        raise ValueError("give both hidden and layers (to count activations) or neither.")
    if batch <= 0 or seq_len <= 0:
        raise ValueError(f"batch and seq_len must be positive, got {batch} and {seq_len}.")


def estimate_memory(n_params, method: str, *, batch: int = 1, seq_len: int = 512, hidden=None,
                    layers=None, lora_params=None, grad_checkpointing: bool = True,
                    weight_bytes: int = 2, optimizer: str = "adamw", master_weights: bool = True,
                    blocksize: int = 64, double_quant: bool = True) -> dict:
    """GPU memory, in bytes, to fine-tune N_PARAMS parameters: "full", "lora" or "qlora" (METHODS).

    full: 16-bit weights and gradients, fp32 AdamW m and v, an fp32 master copy (MASTER_WEIGHTS):
    16 bytes per parameter. lora: frozen 16-bit weights; LORA_PARAMS adapters in 16 bits with 16-bit
    gradients and fp32 AdamW states. qlora: the same adapters on NF4 weights (bits_per_parameter).
    hidden and layers add activations (activation_bytes). Not counted: the CUDA context, the logits,
    temporary buffers. Returns ints: weights, gradients, optimizer_states, adapters,
    quant_constants, activations, total.
    """
    _check_estimate(n_params, method, optimizer, weight_bytes, lora_params, hidden, layers, batch, seq_len)
    out = dict.fromkeys(("weights", "gradients", "optimizer_states", "adapters", "quant_constants",
                         "activations"), 0.0)
    if method == "full":
        out["weights"] = out["gradients"] = n_params * weight_bytes
        master = 4 if master_weights and weight_bytes < 4 else 0
        out["optimizer_states"] = n_params * (OPTIMIZER_BYTES[optimizer] + master)
    else:
        if method == "lora":
            out["weights"] = n_params * weight_bytes
        else:  # 4 bits a weight, plus its share of the quantisation constants
            out["weights"] = n_params * 4 / 8
            out["quant_constants"] = n_params * (bits_per_parameter(blocksize, double_quant) - 4) / 8
        out["adapters"] = out["gradients"] = lora_params * weight_bytes
        out["optimizer_states"] = lora_params * OPTIMIZER_BYTES[optimizer]
    if hidden is not None:
        out["activations"] = activation_bytes(batch, seq_len, hidden, layers, grad_checkpointing, weight_bytes)
    out = {k: int(math.ceil(v)) for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


# -----------------------------------------------------------------------------
# Many GPUs: DDP, ZeRO, FSDP

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
STRATEGY_NAMES = {"ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3 / FSDP"}
# What each strategy splits across the GPUs (ZeRO: Rajbhandari et al. 2020, https://arxiv.org/abs/1910.02054;
# FSDP's FULL_SHARD is ZeRO-3, SHARD_GRAD_OP is ZeRO-2).
SHARDED = {"ddp": (), "zero1": ("optimizer_states",), "zero2": ("optimizer_states", "gradients"),
           "zero3": ("optimizer_states", "gradients", "weights", "adapters", "quant_constants")}


def per_gpu_memory(n_params, method: str, strategy: str, n_gpus: int, *, prefetch_layers: int = 2,
                   **assumptions) -> dict:
    """Bytes on each of N_GPUS GPUs to fine-tune a model of N_PARAMS parameters with STRATEGY.

    method: "full", "lora" or "qlora" (as estimate_memory); strategy: one of STRATEGIES.
    estimate_memory gives the one-GPU breakdown (ASSUMPTIONS go to it: lora_params, hidden,
    layers, batch (per GPU), seq_len, grad_checkpointing, ...); each strategy divides some of its
    parts by N_GPUS (SHARDED): ZeRO-1 the optimizer states (AdamW's m and v and the fp32 master
    weights), ZeRO-2 also the gradients, ZeRO-3 / FSDP also the weights. Activations are never
    divided: each GPU runs its own micro-batch. Under ZeRO-3 each GPU gathers the full weights of
    the layer it computes (and of PREFETCH_LAYERS - 1 next ones, fetched ahead) for a moment: that
    is "gathered", PREFETCH_LAYERS x (weights / layers) (needs layers; 0 leaves it out, as the ZeRO
    paper's table does). Not counted: communication buckets, the CUDA context, fragmentation.

    Returns dict of ints (bytes): estimate_memory's keys (weights, gradients, optimizer_states,
    adapters, quant_constants, activations), "gathered", and "total".
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}.")
    guard.positive_int("n_gpus", n_gpus)
    guard.non_negative_int("prefetch_layers", prefetch_layers)
    one = estimate_memory(n_params, method, **assumptions)
    out = {k: v for k, v in one.items() if k != "total"}
    for part in SHARDED[strategy]:
        out[part] = math.ceil(one[part] / n_gpus)
    out["gathered"] = 0
    layers = assumptions.get("layers")
    if strategy == "zero3" and n_gpus > 1 and prefetch_layers and layers:
        per_layer = (one["weights"] + one["adapters"] + one["quant_constants"]) / layers
        out["gathered"] = math.ceil(min(prefetch_layers, layers) * per_layer * (1 - 1 / n_gpus))
    out["total"] = sum(out.values())
    return out


def memory_table(sizes: dict, methods=METHODS, strategies=STRATEGIES, gpus=(1, 2, 4, 8),
                 **assumptions) -> list[dict]:
    """per_gpu_memory for every model of SIZES (as llama_sizes returns), method, strategy and GPU
    count. Returns rows {"model", "method", "strategy", "gpus", "gb" (per GPU,
    1 GB = 1e9 bytes), "breakdown" (bytes)}."""
    rows = []
    for name, s in sizes.items():
        for method in methods:
            kw = dict(assumptions, hidden=s["hidden"], layers=s["layers"])
            if method != "full":
                kw["lora_params"] = s["lora_params"]
            for strategy in strategies:
                for g in gpus:
                    est = per_gpu_memory(s["n_params"], method, strategy, g, **kw)
                    rows.append({"model": name, "method": method, "strategy": strategy, "gpus": g,
                                 "gb": est["total"] / 1e9, "breakdown": est})
    return rows


def memory_markdown(rows: list[dict], model: str, gpu_gb: float = 80.0) -> str:
    """A Markdown table of MEMORY_TABLE rows for one MODEL: a row per (method, strategy), a column
    per GPU count, GB per GPU; cells over GPU_GB (with 1 GB kept for the CUDA context) are marked."""
    mine = [r for r in rows if r["model"] == model]
    if not mine:
        raise ValueError(f"no rows for model {model!r}.")
    gpus = sorted({r["gpus"] for r in mine})
    head = f"| {model}: GB per GPU | " + " | ".join(f"{g} GPU{'s' if g > 1 else ''}" for g in gpus) + " |"
    lines = [head, "|---|" + "---:|" * len(gpus)]
    keys = list(dict.fromkeys((r["method"], r["strategy"]) for r in mine))
    for method, strategy in keys:
        cells = []
        for g in gpus:
            gb = next(r["gb"] for r in mine if (r["method"], r["strategy"], r["gpus"]) == (method, strategy, g))
            cells.append(f"{gb:,.1f}" + ("" if gb + 1 <= gpu_gb else " ✗"))
        lines.append(f"| {method}, {STRATEGY_NAMES[strategy]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Real shapes: what fits where

# Published Llama shapes (config.json of each checkpoint); 34B is Code Llama 34B (Llama 2 had none
# released), 34B and 70B use grouped-query attention with 8 key/value heads.
LLAMA_SHAPES = {
    "7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000),
    "34B": dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=48, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=32000),
    "65B": dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=64, vocab_size=32000),
    "70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=32000),
}
# GPU memory sizes of common cards, in GB (fit_table)
GPU_SIZES_GB = (16, 24, 48, 80)


def llama_sizes(names=tuple(LLAMA_SHAPES), r: int = 64, target_modules=DEFAULT_TARGETS) -> dict:
    """Parameter counts of real Llama shapes, built on the meta device (no memory, no download).

    target_modules: Llama's seven linear layers per block by default (labkit.adapters.DEFAULT_TARGETS).
    Returns {name: {"n_params", "lora_params" (rank R on TARGET_MODULES), "hidden", "layers"}}.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    bad = [n for n in names if n not in LLAMA_SHAPES]
    if bad:
        raise ValueError(f"unknown model size {bad[0]!r}; choose from {tuple(LLAMA_SHAPES)}.")
    out = {}
    for name in names:
        shape = LLAMA_SHAPES[name]
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(**shape))
        out[name] = {"n_params": sum(p.numel() for p in model.parameters()),
                     "lora_params": count_lora_params(model, r, list(target_modules)),
                     "hidden": shape["hidden_size"], "layers": shape["num_hidden_layers"]}
    return out


def fit_table(sizes: dict, gpus_gb=GPU_SIZES_GB, methods=METHODS, reserve_gb: float = 1.0,
              **assumptions) -> list[dict]:
    """Which (model, method) fits on which GPU, by estimate_memory.

    sizes: as llama_sizes returns. gpus_gb: each card's memory at its nominal size in GB of 1e9
    bytes (the module's one convention; a card sold as "48 GB" holds a little more, so the table
    errs on the safe side). reserve_gb: left for the
    CUDA context and allocator (estimate_memory leaves it out). ASSUMPTIONS go to estimate_memory
    (batch, seq_len, grad_checkpointing, optimizer, ...).
    Returns rows {"model", "method", "total_gb" (estimate, without the reserve), "fits": {gpu: bool}}.
    """
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"method must be one of {METHODS}, got {bad[0]!r}.")
    rows = []
    for name, s in sizes.items():
        for method in methods:
            est = estimate_memory(s["n_params"], method, lora_params=s["lora_params"], hidden=s["hidden"],
                                  layers=s["layers"], **assumptions)
            total_gb = est["total"] / 1e9
            rows.append({"model": name, "method": method, "total_gb": total_gb,
                         "fits": {g: total_gb + reserve_gb <= g for g in gpus_gb}})
    return rows


# -----------------------------------------------------------------------------
# Measured


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def _quant_state_bytes(state) -> tuple[int, int]:
    """(constants, codebooks) in bytes of a bitsandbytes 4-bit QuantState: absmax, and with double
    quantisation the second-level absmax and the offset; the 16-entry (and 256-entry) code tables."""
    constants, codebooks = _nbytes(state.absmax), _nbytes(state.code)
    if state.nested:
        constants += _nbytes(state.state2.absmax) + _nbytes(state.offset)
        codebooks += _nbytes(state.state2.code)
    return constants, codebooks


def stored_bits_per_weight(packed, state) -> float:
    """Bits per weight that bitsandbytes stores for one 4-bit weight: its packed codes (PACKED, two per
    byte) and its QuantState's constants (STATE), from bitsandbytes.functional.quantize_4bit. The shared
    codebooks are left out, as bits_per_parameter leaves them out."""
    return 8 * (_nbytes(packed) + _quant_state_bytes(state)[0]) / state.shape.numel()


def footprint(model) -> dict:
    """The bytes MODEL really stores, by kind.

    Returns a dict of ints: weights_4bit (the packed codes, 2 per byte), quant_constants (absmax,
    double-quantised absmax, their absmax2 and offsets), codebooks (the 16-entry NF4 and 256-entry
    8-bit tables every layer keeps), other_params (embeddings, norms, LM head, adapters: numel x
    element size), buffers, total; and quantized_params, the number of weights held in 4 bits.
    transformers' model.get_memory_footprint() counts parameters and buffers only: the quantisation
    constants live in each weight's quant_state, which it leaves out.
    """
    import bitsandbytes as bnb

    out = dict.fromkeys(("weights_4bit", "quant_constants", "codebooks", "other_params", "buffers"), 0)
    quantized = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        if isinstance(p, bnb.nn.Params4bit) and p.quant_state is not None:
            out["weights_4bit"] += p.numel() * p.element_size()
            quantized += p.quant_state.shape.numel()
            constants, codebooks = _quant_state_bytes(p.quant_state)
            out["quant_constants"] += constants
            out["codebooks"] += codebooks
        else:
            out["other_params"] += p.numel() * p.element_size()
    out["buffers"] = sum(b.numel() * b.element_size() for b in model.buffers())
    out["total"] = sum(out.values())
    out["quantized_params"] = quantized
    return out


def training_step_bytes(model, loss_fn, optimizer=None) -> dict:
    """Bytes one training step of MODEL holds, counted tensor by tensor: {"weights", "gradients",
    "optimizer", "activations", "total"}.

    weights: every byte MODEL stores (footprint, without buffers: 4-bit codes and their constants where
    there are any); gradients: one per trainable parameter, in its dtype; optimizer: what OPTIMIZER holds
    (optimizer_state_bytes, after a step: 8-bit states included), or without one AdamW's two float32
    states per trainable parameter; activations: what autograd saves for the backward pass while
    LOSS_FN() (a no-argument function that runs MODEL's forward and returns the loss) runs, measured with
    torch.autograd.graph.saved_tensors_hooks, weights not counted twice. The memory the method needs,
    whatever the allocator or the process around it holds.
    """
    import torch

    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("training_step_bytes: MODEL has no trainable parameter (add an adapter first).")
    saved = {}  # storage address -> (bytes, the saved tensor, weakly): what the graph still holds at the end counts

    def pack(t):
        if isinstance(t, torch.Tensor):
            saved[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), weakref.ref(t))
        return t

    was = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_fn()
        # a tensor saved by a part of the graph that was already freed is not kept for backward, and its memory
        # may have been reused (its address overwritten in SAVED): count only the tensors the graph still holds
        held = {ptr: n for ptr, (n, ref) in saved.items() if ref() is not None}
        del loss
    finally:
        model.train(was)
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    stored = footprint(model)
    out = {"weights": stored["total"] - stored["buffers"],
           "gradients": sum(p.numel() * p.element_size() for p in trainable),
           "optimizer": (sum(2 * p.numel() * 4 for p in trainable) if optimizer is None
                         else optimizer_state_bytes(optimizer)),
           "activations": sum(n for ptr, n in held.items() if ptr not in param_ptrs)}
    out["total"] = sum(out.values())
    return out


def optimizer_states(optimizer) -> dict:
    """What OPTIMIZER (torch's or bitsandbytes', bare or wrapped by accelerate as a Trainer's is) keeps
    for its parameters, after at least one step.

    Returns {"name" (its class), "paged_requested" (bitsandbytes' is_paged, False for torch's),
    "parameters" (with state), "parameters_8bit" (whose states are 8-bit; bitsandbytes keeps tensors
    with fewer than min_8bit_size = 4,096 elements in float32), "state_tensors" (the per-element states,
    e.g. AdamW's m and v: one value per element of the parameter), "paged_tensors" (those in CUDA
    unified memory, bitsandbytes' is_paged mark), "bytes" (everything, block constants included)}.
    """
    import torch

    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one
    states = [st for st in opt.state.values() if st]
    tensors = [v for p, st in opt.state.items() for v in st.values()
               if isinstance(v, torch.Tensor) and v.numel() == p.numel()]
    return {"name": f"{type(opt).__module__.split('.')[0]}.{type(opt).__name__}",
            "paged_requested": bool(getattr(opt, "is_paged", False)),
            "parameters": len(states),
            "parameters_8bit": sum(any(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 for v in st.values())
                                   for st in states),
            "state_tensors": len(tensors),
            "paged_tensors": sum(bool(getattr(v, "is_paged", False)) for v in tensors),
            "bytes": optimizer_state_bytes(opt)}


def optimizer_state_bytes(optimizer) -> int:
    """Bytes held in OPTIMIZER's state (AdamW's m and v, or 8-bit states and their constants); a
    Trainer's optimizer (accelerate's wrapper) is unwrapped."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    return sum(v.numel() * v.element_size() for state in optimizer.state.values()
               for v in state.values() if hasattr(v, "element_size"))

"""LoRA from scratch: W' = W + (alpha/r) B A, with peft's shapes, init and scaling.

A frozen linear layer y = x W^T + b gets a trainable low-rank update:

    y = x W^T + b + scaling * dropout(x) A^T B^T,   A: (r, in_features), B: (out_features, r)

with scaling = alpha / r (or alpha / sqrt(r) with rsLoRA). Only A and B train: r * (in + out)
numbers instead of in * out. This module is meant to be read next to peft: the same parameter
shapes, the same initialisation, the same target-module matching and the same
"trainable params: ... || all params: ... || trainable%: ..." line, so a notebook can check
every number against peft and then use peft for real work.

    model = inject_lora(model, ["q_proj", "v_proj"], r=8, alpha=16)
    print(trainable_summary(model))
    merge_lora(model)      # W += scaling * B A: inference costs exactly what the base model costs
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import nn


def check_hyperparameters(r, alpha, dropout) -> None:
    """Raise a ValueError/TypeError that names the bad value and what would be valid."""
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"r must be a positive integer such as 4, 8 or 16; got r={r!r} ({type(r).__name__}).")
    if r <= 0:
        raise ValueError(f"r must be a positive integer such as 4, 8 or 16; got r={r!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a number > 0 (commonly alpha = r or 2*r); got alpha={alpha!r}.")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a number > 0 (commonly alpha = r or 2*r); got alpha={alpha!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), e.g. 0.0 or 0.05; got dropout={dropout!r}.")


def is_conv1d(module: nn.Module) -> bool:
    """Is MODULE transformers' Conv1D (GPT-2's linear layers: y = x W + b with W stored (in, out))?"""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update B A.

    base: the nn.Linear to adapt, weight (out_features, in_features); it is frozen in place. GPT-2's
    Conv1D layers work too: they compute the same y = x W^T + b but store W transposed, (in, out), so
    A and B keep their shapes and merge() adds (B A)^T. That is what peft's ``fan_in_fan_out=True`` says.
    r: the rank; alpha: the scale numerator; scaling = alpha / r, or alpha / sqrt(r) if rslora.
    Parameters: A (r, in_features), kaiming-uniform as nn.Linear's own init; B (out_features, r), zeros,
    so a freshly wrapped layer computes exactly what the base layer computed.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False):
        super().__init__()
        if not isinstance(base, nn.Linear) and not is_conv1d(base):
            raise TypeError(f"LoRALinear wraps an nn.Linear (or GPT-2's Conv1D); got {type(base).__name__}. "
                            f"Pick a Linear layer, e.g. model.model.layers[0].self_attn.q_proj.")
        self.fan_in_fan_out = is_conv1d(base)  # weight stored (in, out)
        check_hyperparameters(r, alpha, dropout)
        self.base = base
        self.r, self.alpha, self.rslora = int(r), float(alpha), bool(rslora)
        # rsLoRA (Kalajdzievski 2023): alpha/r shrinks the update as r grows, alpha/sqrt(r) keeps its
        # size stable, so larger ranks actually learn more.
        self.scaling = self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r
        for p in base.parameters():
            p.requires_grad_(False)

        w = base.weight
        # Like peft (autocast_adapter_dtype): half-precision or quantised bases get float32 adapters,
        # because tiny updates to A and B underflow in bf16/fp16.
        dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
        self.A = nn.Parameter(torch.empty(self.r, self.in_features, device=w.device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(self.out_features, self.r, device=w.device, dtype=dtype))
        # A random and B zero: the update B A starts at exactly 0 (training starts from the base
        # model), yet the gradient of B is nonzero, so learning can start. a=sqrt(5) is what
        # nn.Linear and peft use: uniform in +-1/sqrt(in_features).
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.weight.shape[0] if self.fan_in_fan_out else self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.weight.shape[1] if self.fan_in_fan_out else self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features)."""
        y = self.base(x)
        if self.merged:  # B A already lives inside base.weight; adding it again would count it twice
            return y
        # x A^T first: (..., r) is tiny, and the (out, in) matrix B A is never built.
        delta = (self.dropout(x.to(self.A.dtype)) @ self.A.T) @ self.B.T
        return y + (self.scaling * delta).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The update to W: scaling * B A, shape (out_features, in_features)."""
        return self.scaling * (self.B @ self.A)

    def _stored(self, delta: torch.Tensor) -> torch.Tensor:
        """DELTA (out, in) in the layout the base layer stores its weight: transposed for a Conv1D."""
        return (delta.T if self.fan_in_fan_out else delta).to(self.base.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + scaling * B A: afterwards the layer costs exactly what the base layer costs."""
        if self.merged:
            raise RuntimeError("This LoRALinear is already merged; call unmerge() before merging again.")
        self._check_mergeable()
        self.base.weight += self._stored(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - scaling * B A: undoes merge() (exactly up to float rounding), e.g. to swap adapters."""
        if not self.merged:
            raise RuntimeError("This LoRALinear is not merged; call merge() first (nothing to unmerge).")
        self.base.weight -= self._stored(self.delta_weight())
        self.merged = False

    def _check_mergeable(self) -> None:
        # A quantised weight (bitsandbytes' 4-bit codes) cannot take a float update in place.
        if not self.base.weight.is_floating_point():
            raise TypeError(f"Cannot merge into a {self.base.weight.dtype} (quantised) base weight; "
                            f"dequantise the base layer first, or keep the adapter unmerged.")

    def extra_repr(self) -> str:
        return (f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, rslora={self.rslora}, "
                f"merged={self.merged}")


def scaled_update_norm(d_out: int, d_in: int, r: int, alpha: float, rslora: bool = False, b_std: float = 0.02,
                       seed: int = 0) -> float:
    """||scaling * B A||_F of a (d_out, d_in) LoRALinear at rank R: how big an update the scaling lets through.

    A has peft's init (kaiming-uniform, as LoRALinear), B is drawn N(0, B_STD^2) instead of zeros, as if
    training had moved it without any structure. Each entry of B A then sums R independent products, so
    ||B A|| grows like sqrt(R): alpha/r shrinks the update like 1/sqrt(R), alpha/sqrt(r) (rsLoRA) keeps it
    about constant.
    """
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(d_in, d_out, bias=False), r, alpha, rslora=rslora)
    with torch.no_grad():
        layer.B.normal_(0.0, b_std)
        return float(layer.delta_weight().norm())


def dora_weight(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, magnitude: torch.Tensor,
                scaling: float) -> torch.Tensor:
    """DoRA's merged weight (Liu et al. 2024; peft's LoraConfig(use_dora=True)), shape (d_out, d_in).

    W: (d_out, d_in); A: (r, d_in); B: (d_out, r); magnitude: (d_out,), one length per output row.
    The LoRA-updated weight V = W + scaling * B A gives each row its direction V / ||V||_row; DoRA
    rescales every row to its learned length: magnitude[:, None] * V / ||V||_row. peft starts magnitude
    at ||W||_row (and B at zero), so an untrained DoRA layer is W itself.
    """
    V = W + scaling * (B @ A)
    return magnitude.unsqueeze(1) * V / V.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# Whole models


def _matches(name: str, target: str) -> bool:
    # peft's rule for a list of names: the full module name, or a dotted suffix of it, so "q_proj"
    # matches "model.layers.0.self_attn.q_proj" but not "model.layers.0.self_attn.q_proj_extra".
    return name == target or name.endswith("." + target)


def adaptable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every nn.Linear, Conv1D and LoRALinear, skipping the layer inside a LoRALinear."""
    found, wrapped = [], set()
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            found.append((name, module))
            wrapped.add(id(module.base))
        elif (isinstance(module, nn.Linear) or is_conv1d(module)) and id(module) not in wrapped and name:
            found.append((name, module))
    return found


def select_layers(model: nn.Module, target_modules: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """The layers named by target_modules; a target that matches nothing is an error."""
    # Unlike peft, a plain string is one module name here, not a regular expression.
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    layers = adaptable_layers(model)
    # Deduplicated last name components, in model order: "q_proj", "k_proj", ..., "lm_head".
    valid = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name, _ in layers))
    if not targets:
        raise ValueError(f"target_modules is empty; choose from the Linear layers of "
                         f"{type(model).__name__}: {', '.join(valid)}.")
    # Stricter than peft, which only complains when NO target matches: a typo such as "v_prj" next
    # to a valid "q_proj" would otherwise silently train one projection instead of two.
    unknown = [t for t in targets if not any(_matches(name, t) for name, _ in layers)]
    if unknown:
        raise ValueError(f"target_modules {unknown} match no Linear (or Conv1D) layer of {type(model).__name__}; "
                         f"valid names: {', '.join(valid)}.")
    return [(name, m) for name, m in layers if any(_matches(name, t) for t in targets)]


def matched_layers(names: Iterable[str], target_modules: Iterable[str]) -> dict:
    """peft's rule for a list of target names, applied to module NAMES (e.g. [n for n, _ in model.named_modules()]).

    A module is adapted when its full name equals a target or ends with "." + target. Returns
    {"adapted": the names adapted, in NAMES' order; "unmatched": the targets that match no name}. peft
    raises only when nothing is adapted; an unmatched target next to a matching one (a typo) is silent.
    """
    names = list(names)
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    return {"adapted": [n for n in names if any(_matches(n, t) for t in targets)],
            "unmatched": [t for t in targets if not any(_matches(n, t) for n in names)]}


def block_layer(model: nn.Module, target: str, block: int = 0) -> tuple[str, nn.Module]:
    """(name, layer) of the layer named TARGET inside decoder block BLOCK, e.g. ("model.layers.0.self_attn.q_proj",
    q_proj) for a Llama or ("transformer.h.0.attn.c_attn", c_attn) for GPT-2. The block is the first
    integer in the layer's dotted name. Raises ValueError naming the blocks that exist."""
    chosen = select_layers(model, [target])
    blocks = {}
    for name, m in chosen:
        index = next((int(part) for part in name.split(".") if part.isdigit()), None)
        blocks.setdefault(index, (name, m))
    if block not in blocks:
        have = sorted(b for b in blocks if b is not None)
        raise ValueError(f"no {target!r} layer in block {block!r} of {type(model).__name__}; "
                         f"blocks with one: {have[0]}..{have[-1]}." if have else f"{target!r} is in no numbered block.")
    return blocks[block]


def needs_fan_in_fan_out(model: nn.Module, target_modules: Iterable[str]) -> bool:
    """Are the layers TARGET_MODULES name GPT-2's Conv1D (weight stored (in, out))? Then peft's LoraConfig
    must say fan_in_fan_out=True, so that it merges (B A)^T, as LoRALinear does for a Conv1D."""
    return any(is_conv1d(m.base if isinstance(m, LoRALinear) else m) for _, m in select_layers(model, target_modules))


def layer_shapes(model: nn.Module, target_modules: Iterable[str]) -> list[tuple[int, int]]:
    """(out_features, in_features) of every layer target_modules names, as the notation's W (d_out, d_in):
    a Conv1D (stored (in, out)) is reported the same way as the nn.Linear it stands for."""
    return [tuple(reversed(_in_out(m))) for _, m in select_layers(model, target_modules)]


def inject_lora(model: nn.Module, target_modules: Iterable[str], r: int, alpha: float,
                dropout: float = 0.0, rslora: bool = False) -> nn.Module:
    """Replace each targeted nn.Linear by a LoRALinear and freeze everything else; returns MODEL.

    target_modules: names such as ["q_proj", "v_proj"], matched like peft (a module's full name or
    its last dotted components). The model is changed in place, as peft's inject_adapter_in_model.
    Works on a meta-device model too (A and B are then created on meta, allocating nothing).
    """
    check_hyperparameters(r, alpha, dropout)
    chosen = select_layers(model, target_modules)
    already = [name for name, m in chosen if isinstance(m, LoRALinear)]
    if already:
        raise ValueError(f"{already} already have LoRA; inject into a fresh copy of the model instead.")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(linear, r, alpha, dropout=dropout, rslora=rslora))
    return model


def count_lora_params(model: nn.Module, r: int, target_modules: Iterable[str]) -> int:
    """sum of r * (in_features + out_features) over the targeted Linear layers.

    Reads only layer sizes, so it works on a model built under `with torch.device("meta"):` (a 7B
    model then costs no memory) and on a model that already has LoRA.
    """
    check_hyperparameters(r, 1.0, 0.0)
    return sum(r * sum(_in_out(m)) for _, m in select_layers(model, target_modules))


def _in_out(m: nn.Module) -> tuple[int, int]:
    if is_conv1d(m):
        return m.weight.shape[0], m.weight.shape[1]
    return m.in_features, m.out_features


def summary_line(trainable: int, total: int) -> str:
    """peft's print_trainable_parameters line for TRAINABLE of TOTAL parameters (adapters included)."""
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def trainable_summary(model: nn.Module) -> str:
    """peft's print_trainable_parameters line, e.g.
    "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622".

    "all params" counts every parameter of the model as it is now, adapters included (as peft does),
    each tied weight once.
    """
    trainable, total = 0, 0
    for _, p in model.named_parameters():
        n = p.numel()
        # peft's rule for bitsandbytes 4-bit weights: two 4-bit values per stored byte.
        if p.__class__.__name__ == "Params4bit":
            n *= 2 * (p.element_size() if hasattr(p, "element_size") else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return summary_line(trainable, total)


def merge_lora(model: nn.Module) -> int:
    """merge() every unmerged LoRALinear of MODEL; returns how many were merged."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear) and not m.merged]
    for m in layers:
        m.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """unmerge() every merged LoRALinear of MODEL; returns how many were unmerged."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear) and m.merged]
    for m in layers:
        m.unmerge()
    return len(layers)


# ---------------------------------------------------------------------------------------------
# Checking against peft (duck-typed: labkit.lora itself does not import peft)


@torch.no_grad()
def copy_from_peft(lora_layer: LoRALinear, peft_layer: nn.Module, adapter_name: str = "default") -> None:
    """Copy peft's A and B (lora_A[adapter].weight (r, in), lora_B[adapter].weight (out, r)) into LORA_LAYER.

    Also copies the base weight and bias, so both layers compute the same function; raises if the
    shapes or the scaling differ, since equal weights would not then give equal outputs.
    """
    A = peft_layer.lora_A[adapter_name].weight
    B = peft_layer.lora_B[adapter_name].weight
    if A.shape != lora_layer.A.shape or B.shape != lora_layer.B.shape:
        raise ValueError(f"Shape mismatch: peft has A {tuple(A.shape)}, B {tuple(B.shape)}; this layer has "
                         f"A {tuple(lora_layer.A.shape)}, B {tuple(lora_layer.B.shape)} (check r).")
    if not math.isclose(peft_layer.scaling[adapter_name], lora_layer.scaling, rel_tol=1e-12):
        raise ValueError(f"Scaling mismatch: peft {peft_layer.scaling[adapter_name]} vs {lora_layer.scaling} "
                         f"(check alpha and rslora).")
    if lora_layer.merged or getattr(peft_layer, "merged", False):
        raise RuntimeError("Unmerge both layers before copying: a merged base weight already holds B A.")
    lora_layer.A.copy_(A)
    lora_layer.B.copy_(B)
    base = peft_layer.get_base_layer()
    lora_layer.base.weight.copy_(base.weight)
    if lora_layer.base.bias is not None:
        lora_layer.base.bias.copy_(base.bias)


def load_from_peft(model: nn.Module, peft_model: nn.Module, adapter_name: str = "default") -> int:
    """copy_from_peft for every LoRALinear of MODEL, matched by module name; returns how many.

    peft_model: a PeftModel (from get_peft_model) of the same architecture; its layers are looked up
    under peft_model.get_base_model(), whose module names equal the original model's.
    """
    inner = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    peft_layers = dict(inner.named_modules())
    ours = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    missing = [name for name, _ in ours if not hasattr(peft_layers.get(name), "lora_A")]
    if missing:
        raise ValueError(f"peft model has no LoRA layer named {missing[:3]}; use the same target_modules.")
    for name, m in ours:
        copy_from_peft(m, peft_layers[name], adapter_name)
    return len(ours)

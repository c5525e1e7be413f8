"""Combining adapters with peft's add_weighted_adapter (linear, cat, svd, TIES, DARE), checked against the
weighted sum of their updates."""

from __future__ import annotations


# peft 0.21's add_weighted_adapter combination types; the ones with "svd" re-factor the result to a rank
COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
NEEDS_DENSITY = tuple(c for c in COMBINATIONS if c.startswith(("ties", "dare", "magnitude")))
SIGN_METHODS = ("total", "frequency")  # TIES' majority sign: sum of values, or count of signs
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

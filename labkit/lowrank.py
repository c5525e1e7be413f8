"""How much does rank r lose? Singular values of a weight update and the best rank-r approximation.

LoRA restricts a weight update dW (out_features, in_features) to rank r: dW = (alpha/r) B A. The
best any rank-r matrix can do is the truncated SVD (Eckart-Young): keep the r largest singular values.
Its relative Frobenius error follows from the singular values s_1 >= s_2 >= ... alone:

    ||dW - dW_r||_F / ||dW||_F = sqrt(sum_{i > r} s_i^2) / sqrt(sum_i s_i^2)

so one SVD gives the whole error-versus-rank curve. rank_report() puts that error next to what rank r
costs (r * (d_in + d_out) trainable numbers per adapted layer, peft's trainable%); the sliders that
call it are labkit.course.widgets.rank_widget (this module imports no widget code).

    dW = W_finetuned - W_base
    print(error_curve(dW, [1, 4, 16, 64]))
    print(format_report(rank_report(dW, 16, 32, 6_738_415_616, [(4096, 4096)] * 64), 6_738_415_616))
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch

from . import guard
from .lora import summary_line


# ---------------------------------------------------------------------------------------------
# Validation: every error names the bad value and what would be valid


def _check_r(r) -> int:
    return guard.positive_int("r", r, "4, 8 or 16")


def _check_alpha(alpha) -> float:
    return guard.positive_float("alpha", alpha, "r or 2*r")


def _check_delta_w(delta_w) -> torch.Tensor:
    """DELTA_W as a float64 2-D tensor; raises if it is not a finite, non-empty 2-D float tensor."""
    if not isinstance(delta_w, torch.Tensor):
        raise TypeError(f"delta_w must be a torch.Tensor of shape (d_out, d_in); got {type(delta_w).__name__}.")
    if delta_w.ndim != 2 or delta_w.numel() == 0:
        raise ValueError(f"delta_w must be a non-empty 2-D weight update (d_out, d_in); "
                         f"got shape {tuple(delta_w.shape)}.")
    if not delta_w.is_floating_point():
        raise ValueError(f"delta_w must be a float tensor (float32 or float64); got {delta_w.dtype}.")
    x = delta_w.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("delta_w contains NaN or inf; the update of a diverged run has no meaningful rank.")
    return x


def _check_shapes(layer_shapes) -> list[tuple[int, int]]:
    shapes = list(layer_shapes) if isinstance(layer_shapes, Iterable) else None
    if not shapes:
        raise ValueError(f"layer_shapes must be a non-empty list of (d_out, d_in) pairs, one per adapted layer, "
                         f"e.g. [(4096, 4096)] * 64; got {layer_shapes!r}.")
    for s in shapes:
        ok = (isinstance(s, Sequence) and len(s) == 2
              and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in s))
        if not ok:
            raise ValueError(f"each entry of layer_shapes must be a (d_out, d_in) pair of positive integers; "
                             f"got {s!r}.")
    return [(int(a), int(b)) for a, b in shapes]


# ---------------------------------------------------------------------------------------------
# Singular values and the best rank-r approximation


def singular_values(delta_w: torch.Tensor) -> torch.Tensor:
    """The singular values of DELTA_W (d_out, d_in), descending, float64, length min(d_out, d_in)."""
    return torch.linalg.svdvals(_check_delta_w(delta_w))


def _error_from_singular_values(s: torch.Tensor, r: int) -> float:
    total = float((s * s).sum())
    if total == 0.0:  # dW = 0: every rank represents it exactly
        return 0.0
    # Sum the tail directly rather than total - head: no cancellation when the tail is tiny.
    return math.sqrt(float((s[r:] * s[r:]).sum()) / total)


def best_rank_r(delta_w: torch.Tensor, r: int) -> torch.Tensor:
    """The best rank-R approximation of DELTA_W in Frobenius (and spectral) norm: U_r diag(s_r) V_r^T.

    Same shape and dtype as DELTA_W; an R at or above min(d_out, d_in) returns DELTA_W itself (up to rounding).
    """
    r = _check_r(r)
    x = _check_delta_w(delta_w)
    U, S, Vh = torch.linalg.svd(x, full_matrices=False)
    r = min(r, S.numel())
    return ((U[:, :r] * S[:r]) @ Vh[:r]).to(device=delta_w.device, dtype=delta_w.dtype)


def rank_r_error(delta_w: torch.Tensor, r: int) -> float:
    """||dW - dW_r||_F / ||dW||_F for the best rank-R approximation dW_r; 0.0 for an all-zero dW."""
    r = _check_r(r)
    return _error_from_singular_values(singular_values(delta_w), r)


def error_curve(delta_w: torch.Tensor, ranks: Iterable[int], *, s: torch.Tensor | None = None) -> list[float]:
    """rank_r_error(DELTA_W, r) for each r in RANKS, from a single SVD (S: singular_values(delta_w), if
    already computed)."""
    ranks = [_check_r(r) for r in ranks]
    s = singular_values(delta_w) if s is None else s
    return [_error_from_singular_values(s, r) for r in ranks]


def smallest_rank(delta_w: torch.Tensor, max_error: float) -> int:
    """The smallest rank r >= 1 whose best rank-r approximation of DELTA_W has relative error <= MAX_ERROR.

    max_error in [0, 1], e.g. 0.5: the rank-r matrix may miss at most half of the update's Frobenius norm.
    One SVD gives every rank's error (Eckart-Young): the root of the share of squared singular values
    after the r-th. At most min(d_out, d_in), where the approximation is exact.
    """
    if isinstance(max_error, bool) or not isinstance(max_error, numbers.Real) or not 0 <= max_error <= 1:
        raise ValueError(f"max_error must be a relative error between 0 and 1, e.g. 0.5; got {max_error!r}.")
    s = singular_values(delta_w)
    for r in range(1, s.numel()):
        if _error_from_singular_values(s, r) <= max_error:
            return r
    return s.numel()


# ---------------------------------------------------------------------------------------------
# What rank r costs and loses: the whole logic of labkit.course.widgets.rank_widget


def rank_report(delta_w: torch.Tensor, r: int, alpha: float, n_model_params: int,
                layer_shapes: Sequence[tuple[int, int]], *, s: torch.Tensor | None = None) -> dict:
    """What rank R costs and what it loses.

    delta_w: a 2-D weight update (d_out, d_in), e.g. W_finetuned - W_base of one layer.
    n_model_params: parameters of the base model (without adapters), e.g. 6_738_415_616 for Llama-2-7B.
    layer_shapes: (d_out, d_in) of every adapted layer, e.g. [(4096, 4096)] * 64 for q_proj and v_proj
    of 32 blocks.
    s: singular_values(delta_w), if already computed (the widget computes them once, not per slider move).

    Returns {"r", "alpha", "scaling": alpha/r, "trainable": sum of r*(d_in+d_out),
    "share": trainable / (n_model_params + trainable) (peft's trainable%, as a fraction: all params
    include the adapters), "rel_error": rank_r_error(delta_w, min(r, min(delta_w.shape)))}.
    """
    r = _check_r(r)
    alpha = _check_alpha(alpha)
    shapes = _check_shapes(layer_shapes)
    guard.non_negative_int("n_model_params", n_model_params, about="the base model's parameter count")
    if s is None:
        s = singular_values(delta_w)
    else:
        x = _check_delta_w(delta_w)
        if s.ndim != 1 or s.numel() != min(x.shape):
            raise ValueError(f"s must be singular_values(delta_w), of length {min(x.shape)}; "
                             f"got shape {tuple(s.shape)}.")
    trainable = sum(r * (d_in + d_out) for d_out, d_in in shapes)
    return {
        "r": r,
        "alpha": alpha,
        "scaling": alpha / r,
        "trainable": trainable,
        "share": trainable / (int(n_model_params) + trainable),
        "rel_error": _error_from_singular_values(s, min(r, s.numel())),
    }


def format_report(rep: dict, n_model_params: int) -> str:
    """The report as the lines the widget prints (peft's trainable line included)."""

    return (f"r = {rep['r']}, alpha = {rep['alpha']:g}, scaling = alpha/r = {rep['scaling']:g}\n"
            f"{summary_line(rep['trainable'], n_model_params + rep['trainable'])}\n"
            f"relative error of the best rank-{rep['r']} approximation: {rep['rel_error']:.4f}\n")

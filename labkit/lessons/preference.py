"""Preference lessons' readings (08, 09): DPO's loss and push as functions of the margin for each beta (and the
plot), where a reward model reads its score, and trl's DPO log and metrics beside labkit's."""

from __future__ import annotations

from ..preference_losses import check_beta
from ..preference import TRL_METRICS, score_position, tokenize_pairs


def dpo_loss_curve(margins, betas) -> dict:
    """DPO's loss, and how hard a pair still pushes, as functions of the log-ratio margin, for each beta.

    margin m = [log pi_theta(y_w|x) - log pi_ref(y_w|x)] - [log pi_theta(y_l|x) - log pi_ref(y_l|x)] (nats).
    For each beta: loss = -log sigma(beta * m); its gradient with respect to m is -beta * sigma(-beta * m),
    "weight"; "push" = sigma(-beta * m) is that gradient relative to the start (1/2 at m = 0, about 0 once
    beta * m >> 1: the pair is satisfied and stops pulling the policy away from pi_ref).
    Returns {"margin": [...], "loss": {beta: [...]}, "weight": {beta: [...]}, "push": {beta: [...]}}.
    """
    import torch
    import torch.nn.functional as F

    betas = [check_beta(b) for b in betas]
    if not betas:
        raise ValueError("betas is empty: give at least one beta, e.g. [0.1].")
    m = torch.as_tensor(list(margins), dtype=torch.float64)
    if m.numel() == 0:
        raise ValueError("margins is empty: give the margins at which to evaluate the loss.")
    return {"margin": m.tolist(),
            "loss": {b: (-F.logsigmoid(b * m)).tolist() for b in betas},
            "weight": {b: (b * torch.sigmoid(-b * m)).tolist() for b in betas},
            "push": {b: torch.sigmoid(-b * m).tolist() for b in betas}}


def plot_dpo_loss_curve(curve: dict, reached: dict | None = None, axes=None):
    """``dpo_loss_curve``'s output in two panels, one line per beta: the loss and the push against the margin.

    The loss axis stops at 1.5 (the loss is log 2 = 0.69 at m = 0), so the curves differ where margins
    actually are. REACHED {beta: margin}: the mean margin a run at that beta reached, marked on both."""
    import math

    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    m = curve["margin"]
    for b, loss in curve["loss"].items():
        line, = axes[0].plot(m, loss, label=f"beta = {b:g}")
        axes[1].plot(m, curve["push"][b], color=line.get_color())
        if reached and b in reached:
            x = reached[b]
            axes[0].plot([x], [-math.log(1 / (1 + math.exp(-b * x)))], "o", color=line.get_color())
            axes[1].plot([x], [1 / (1 + math.exp(b * x))], "o", color=line.get_color())
    axes[0].set_ylim(0, 1.5)
    axes[0].set_ylabel("DPO loss  -log sigma(beta m)")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_ylabel("push  sigma(-beta m)")
    for ax in axes:
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlim(min(m), max(m))
        ax.set_xlabel("log-ratio margin m (nats)")
    axes[0].legend(fontsize=8, loc="upper right")
    return axes


def describe_scored_sequence(rm, tok, row: dict) -> str:
    """One line saying where the reward model reads the score of ROW's chosen answer: the last tokens of
    the sequence, the one read, and the pad token (true for whichever model is loaded)."""
    import torch

    ids = tokenize_pairs(tok, [row])[0]["chosen"]["input_ids"]
    pos = int(score_position(rm, torch.tensor([ids]))[0])
    tail = tok.convert_ids_to_tokens(ids[max(0, pos - 3):pos + 1])
    return (f"a scored sequence ends with {tail}: the head reads token {pos} of {len(ids)}, "
            f"{tail[-1]!r} (the pad token is {tok.pad_token!r})")


def describe_trl_log(log_history: list[dict], names=TRL_METRICS, rows: int = 4) -> str:
    """A trl trainer's per-step log (``trainer.state.log_history``, logging_steps=1) as a table of NAMES: the first
    step, the last, and evenly spaced steps between (ROWS in all)."""
    logged = [r for r in log_history if "loss" in r and "step" in r]
    if not logged:
        raise ValueError("the log holds no training step: train with logging_steps=1.")
    picks = sorted({round(i * (len(logged) - 1) / max(rows - 1, 1)) for i in range(rows)})
    lines = [f"{'step':>5}" + "".join(f"{n:>20}" for n in names)]
    for i in picks:
        lines.append(f"{logged[i]['step']:>5}" + "".join(f"{logged[i][n]:>20.3f}" for n in names))
    return "\n".join(lines)


def describe_side_by_side(trl_metrics: dict, ours: dict, names=TRL_METRICS, prefix: str = "eval_") -> str:
    """trl's metrics (as ``Trainer.evaluate`` returns them: PREFIX + name) beside labkit's (``dpo_metrics``), one
    line each, with the absolute difference."""
    lines = [f"{'':<22}{'trl':>12}{'labkit':>12}{'|difference|':>14}"]
    for n in names:
        a, b = trl_metrics[prefix + n], ours[n]
        lines.append(f"{n:<22}{a:>12.6f}{b:>12.6f}{abs(a - b):>14.1e}")
    return "\n".join(lines)

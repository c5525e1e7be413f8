"""Learning rate and rank: short LoRA runs, a shipped sweep, and the learning-rate widget (lesson 02).

One run = a fresh LoRA adapter (alpha = 2r, so the scaling alpha/r stays 2 and only the rank
changes) trained with labkit.sft on an instruction task, then measured twice: the training loss it
reached (what was learned) and the held-out general-text perplexity relative to the base model
(what was forgotten). A too-high learning rate shows up in the second number first.

    row = short_run(base, tok, pairs, general, lr=2e-3, r=8, steps=30)
    rows = sweep(base, tok, pairs, general, lrs=[1e-4, ...], ranks=[2, 8, 32])   # scripts/lesson02_results.py
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
from pathlib import Path

from . import adapters, evaluate, sft
from .evaluate import perplexity
from .models import is_bundled
from .train import check_lr

RESULTS_DIR = Path(__file__).resolve().parent / "assets" / "results"


def short_run(base, tok, pairs: list[dict], general: list[str], lr: float, r: int, steps: int = 30,
              batch_size: int = 8, seed: int = 0, eval_examples=None, base_ppl: float | None = None) -> dict:
    """Train a fresh LoRA(r, alpha=2r) copy of BASE on PAIRS for STEPS steps at LR; measure it.

    Returns {"lr", "r", "steps", "losses", "final_loss" (mean of the last 5), "general_ppl",
    "base_ppl", "ppl_ratio", "exact" (on EVAL_EXAMPLES, if given), "seconds"}. BASE is not changed.
    """

    lr = check_lr(lr)
    if base_ppl is None:
        base_ppl = perplexity(base, tok, general)
    t0 = time.perf_counter()
    model = adapters.add(copy.deepcopy(base), "lora", r=r, alpha=2 * r, seed=seed)
    losses = sft.train(model, tok, pairs, steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    ppl = perplexity(model, tok, general)
    row = {"lr": lr, "r": int(r), "steps": steps, "losses": [round(x, 5) for x in losses],
           "final_loss": sum(losses[-5:]) / len(losses[-5:]), "general_ppl": ppl, "base_ppl": base_ppl,
           "ppl_ratio": ppl / base_ppl, "seconds": seconds}
    if eval_examples is not None:
        row["exact"] = evaluate.score(model, tok, eval_examples)["exact"]
    return row


def sweep(base, tok, pairs, general, lrs, ranks, steps: int = 30, seed: int = 0, eval_examples=None,
          log=print) -> list[dict]:
    """short_run for every (lr, r) pair; the base perplexity is computed once."""

    base_ppl = perplexity(base, tok, general)
    rows = []
    for r in ranks:
        for lr in lrs:
            row = short_run(base, tok, pairs, general, lr, r, steps, seed=seed, eval_examples=eval_examples,
                            base_ppl=base_ppl)
            rows.append(row)
            if log:
                log(f"r={r:<3d} lr={lr:.0e}  loss {row['final_loss']:.3f}  general ppl x{row['ppl_ratio']:.2f}"
                    + (f"  exact {row['exact']:.2f}" if "exact" in row else "") + f"  ({row['seconds']:.1f} s)")
    return rows


def load_results(name: str) -> dict:
    """A JSON of results computed by a script in scripts/ and shipped under labkit/assets/results/."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the script named inside the lesson recomputes it.")
    return json.loads(path.read_text())


def landscape(base, tok, pairs, general, model="bundled", lr: float = 3e-3, r: int = 8, steps: int = 20,
              seed: int = 0, task: str | None = None, lrs=None, ranks=None, base_ppl: float | None = None,
              eval_examples=None) -> dict:
    """The learning-rate x rank grid lesson 02 draws, and a sentence saying where it comes from.

    MODEL the bundled model: the shipped sweep (``load_results("lr_rank_sweep")``, scripts/lesson02_results.py
    ran it on the bundled model). Any other MODEL: that sweep says nothing about it, so a small grid trains
    live on BASE: LRS (default LR/10 and LR) x RANKS (default R/4 and R), STEPS steps each (``short_run``,
    scored on EVAL_EXAMPLES when given).
    Returns {"rows", "lrs", "ranks", "steps", "shipped": bool, "about": the sentence}.
    """

    if is_bundled(model):
        sweep = load_results("lr_rank_sweep")
        ctx = sweep["context"]
        about = (f"the sweep: {len(sweep['rows'])} runs of {sweep['steps']} steps on {sweep['task']!r}, {ctx['date']}, "
                 f"{ctx['cpus']} CPUs, load average {ctx['load_average_at_start']:.1f} at the start")
        return {"rows": sweep["rows"], "lrs": sweep["lrs"], "ranks": sweep["ranks"], "steps": sweep["steps"],
                "shipped": True, "about": about}
    lrs = sorted({float(f"{lr / 10:.3g}"), lr}) if lrs is None else sorted(lrs)
    ranks = sorted({max(1, r // 4), r}) if ranks is None else sorted(ranks)
    t0 = time.perf_counter()
    rows = []
    for rank in ranks:
        for x in lrs:
            rows.append(short_run(base, tok, pairs, general, x, rank, steps, seed=seed, base_ppl=base_ppl,
                                  eval_examples=eval_examples))
            base_ppl = rows[-1]["base_ppl"]
    about = (f"the shipped sweep was run on the bundled model (scripts/lesson02_results.py --only sweep), so for "
             f"{str(model)!r} a {len(lrs)} x {len(ranks)} grid trained live here: {len(rows)} runs of {steps} steps"
             + (f" on {task!r}" if task else "") + f", {time.perf_counter() - t0:.0f} s")
    return {"rows": rows, "lrs": lrs, "ranks": ranks, "steps": steps, "shipped": False, "about": about}


def grid(rows: list[dict], key: str):
    """(lrs, ranks, matrix[rank_index][lr_index]) of KEY from sweep rows, sorted."""
    lrs = sorted({row["lr"] for row in rows})
    ranks = sorted({row["r"] for row in rows})
    table = {(row["r"], row["lr"]): row[key] for row in rows}
    return lrs, ranks, [[table.get((r, lr), math.nan) for lr in lrs] for r in ranks]


# the three measurements of a run the landscape can draw: (key, title, colour map, how a cell is written)
PANELS = (("final_loss", "training loss (lower: learned)", "viridis", "{:.2f}"),
          ("exact", "held-out exact match (higher: learned)", "Greens", "{:.0%}"),
          ("ppl_ratio", "general-text perplexity / base (higher: forgot)", "magma_r", None))
FORGETTING_CLIP = 10.0   # the forgetting colours stop at x10: one diverged run would wash out the rest


def _forgetting(v: float) -> str:
    return f"x{v:.2f}" if v < 10 else f"x{v:,.0f}"


def landscape_figure(rows: list[dict], mark: tuple[float, int] | None = None):
    """Heatmaps over (learning rate, rank), one per measurement the rows carry: training loss, held-out
    exact match (when rows have "exact") and general-text perplexity / base. Forgetting is coloured on a
    log scale from x1 to x10 (FORGETTING_CLIP, larger values get the darkest colour) and every cell is
    written out, so x1.03 and x1.39 look different and x18,123 still reads as what it is."""
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    panels = [p for p in PANELS if all(p[0] in row for row in rows)]
    fig = Figure(figsize=(4.6 * len(panels), 3.6), dpi=80)
    for i, (key, title, cmap, fmt) in enumerate(panels):
        lrs, ranks, m = grid(rows, key)
        if key == "ppl_ratio":
            norm = LogNorm(vmin=1.0, vmax=FORGETTING_CLIP, clip=True)
            m = [[max(v, 1.0) if v == v else v for v in row] for row in m]  # below x1 (a little better) is x1's colour
        else:
            values = [v for row in m for v in row if v == v]
            norm = Normalize(0.0, 1.0) if key == "exact" else Normalize(min(values), max(values))
        ax = fig.add_subplot(1, len(panels), i + 1)
        im = ax.imshow(m, aspect="auto", origin="lower", cmap=cmap, norm=norm)
        ax.set_xticks(range(len(lrs)), [f"{lr:.0e}" for lr in lrs], fontsize=10)
        ax.set_yticks(range(len(ranks)), [str(r) for r in ranks], fontsize=10)
        ax.set_xlabel("learning rate", fontsize=10)
        ax.set_ylabel("rank r", fontsize=10)
        ax.set_title(title, fontsize=10)
        raw = grid(rows, key)[2]
        for y, row in enumerate(m):
            for x, v in enumerate(row):
                if v != v:
                    continue
                red, green, blue, _ = im.cmap(im.norm(v))  # dark text on pale cells, white on dark ones
                text = _forgetting(raw[y][x]) if fmt is None else fmt.format(raw[y][x])
                ax.text(x, y, text, ha="center", va="center", fontsize=10,
                        color="k" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "w")
        if mark is not None:
            lr, r = mark
            xi = min(range(len(lrs)), key=lambda j: abs(math.log(lrs[j]) - math.log(lr)))
            yi = min(range(len(ranks)), key=lambda j: abs(ranks[j] - r))
            ax.add_patch(Rectangle((xi - 0.5, yi - 0.5), 1, 1, fill=False, ec="tab:cyan", lw=2.5))
        bar = fig.colorbar(im, ax=ax, shrink=0.85)
        if key == "ppl_ratio":
            bar.set_ticks([1, 2, 5, 10], labels=["x1", "x2", "x5", "x10+"])
    fig.tight_layout()
    return fig


def read_sweep(rows: list[dict]) -> list[str]:
    """One line per rank, read off the sweep ROWS: the learning rate with the lowest loss, its exact match
    and forgetting, and every step up in learning rate after which the loss ROSE (the run got worse, not
    better: the learning rate is past what this rank tolerates)."""
    lines = []
    for r in sorted({row["r"] for row in rows}):
        mine = sorted((row for row in rows if row["r"] == r), key=lambda row: row["lr"])
        best = min(mine, key=lambda row: row["final_loss"])
        exact = f", exact match {best['exact']:.0%}" if "exact" in best else ""
        line = (f"r={r:<3d} lowest loss at lr {best['lr']:.0e}: loss {best['final_loss']:.2f}{exact}, "
                f"forgetting {_forgetting(best['ppl_ratio'])}")
        for low, high in zip(mine, mine[1:]):
            if high["final_loss"] > low["final_loss"]:
                line += (f"; from lr {low['lr']:.0e} to {high['lr']:.0e} the loss ROSE {low['final_loss']:.2f} -> "
                         f"{high['final_loss']:.2f}, forgetting {_forgetting(high['ppl_ratio'])}")
        lines.append(line)
    return lines


def run_figure(row: dict):
    """Training loss per step, next to the general-text perplexity before and after the run (one run).

    The perplexities are two points on an axis that spans just them, with the ratio written on top, so a
    3% change is visible (a bar chart from zero would hide it)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(10, 3.2), dpi=80)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(range(1, len(row["losses"]) + 1), row["losses"], color="tab:blue")
    ax.set(xlabel="step", ylabel="training loss", yscale="log",
           title=f"lr {row['lr']:.0e}, r {row['r']}: loss {row['final_loss']:.3f}")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    ax.plot([0, 1], [row["base_ppl"], row["general_ppl"]], "o-", color="tab:red", ms=9)
    ax.set_xticks([0, 1], ["base", "after LoRA"])
    ax.set_xlim(-0.5, 1.5)
    low, high = sorted((row["base_ppl"], row["general_ppl"]))
    pad = max(0.05 * high, high - low)
    ax.set_ylim(low - pad, high + pad)
    ax.set(ylabel="held-out general-text perplexity", title=f"forgetting: {_forgetting(row['ppl_ratio'])}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def lr_widget(base, tok, pairs, general, rows: list[dict], steps: int = 30, ranks=(2, 8, 32), lr: float = 3e-3,
              r: int = 8):
    """A log-scale learning-rate slider, a rank choice and a Train button, starting at LR and R (give the
    lesson's own, so the widget opens on the run the lesson made).

    The landscape from ROWS (the shipped sweep) is drawn at once and follows the controls; Train runs
    short_run for the chosen point (about STEPS x 0.25 s on a 2-core CPU) and plots that run.
    Displays the widget and returns the VBox.
    """
    import base64

    import ipywidgets as w
    from IPython.display import display

    start_lr = check_lr(lr)
    lr = w.FloatLogSlider(value=start_lr, base=10, min=-5, max=-1, step=0.25, description="learning rate",
                          readout_format=".0e", continuous_update=False, style={"description_width": "initial"})
    rank = w.Dropdown(options=list(ranks), value=r if r in ranks else ranks[0], description="rank r")
    button = w.Button(description="Train", button_style="primary", icon="play")
    landscape, run_out = w.Output(), w.Output()

    def image(fig, text):
        return {"output_type": "display_data", "metadata": {},
                "data": {"image/png": base64.b64encode(_png(fig)).decode("ascii"), "text/plain": text}}

    def redraw(*_):
        landscape.outputs = (image(landscape_figure(rows, (lr.value, rank.value)), "<lr x rank landscape>"),)

    def train(*_):
        button.disabled, button.description = True, "Training..."
        try:
            row = short_run(base, tok, pairs, general, lr.value, rank.value, steps)
            run_out.outputs = (
                {"output_type": "stream", "name": "stdout",
                 "text": f"lr {row['lr']:.1e}, r {row['r']}: loss {row['final_loss']:.3f}, general-text perplexity "
                         f"x{row['ppl_ratio']:.2f} of the base, {row['seconds']:.1f} s\n"},
                image(run_figure(row), "<run plot>"))
        except ValueError as exc:
            run_out.outputs = ({"output_type": "stream", "name": "stdout", "text": f"{exc}\n"},)
        finally:
            button.disabled, button.description = False, "Train"

    lr.observe(redraw, names="value")
    rank.observe(redraw, names="value")
    button.on_click(train)
    redraw()
    box = w.VBox([w.HBox([lr, rank, button]), landscape, run_out])
    display(box)
    box.train = train  # lets a test (or a notebook cell) press the button without a browser
    return box

"""Learning rate and rank: short LoRA runs, a shipped sweep, and the learning-rate widget (lesson 02).

One run = a fresh LoRA adapter (alpha = 2r, so the scaling alpha/r stays 2 and only the rank
changes) trained with labkit.sft on an instruction task, then measured twice: the training loss it
reached (what was learned) and the held-out general-text perplexity relative to the base model
(what was forgotten). A too-high learning rate shows up in the second number first.

    row = short_run(base, tok, pairs, general, lr=2e-3, r=8, steps=30)
    rows = sweep(base, tok, pairs, general, lrs=[1e-4, ...], ranks=[2, 8, 32])   # scripts/sweep_lr_rank.py
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
import warnings
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "assets" / "results"


def short_run(base, tok, pairs: list[dict], general: list[str], lr: float, r: int, steps: int = 30,
              batch_size: int = 8, seed: int = 0, eval_examples=None, base_ppl: float | None = None) -> dict:
    """Train a fresh LoRA(r, alpha=2r) copy of BASE on PAIRS for STEPS steps at LR; measure it.

    Returns {"lr", "r", "steps", "losses", "final_loss" (mean of the last 5), "general_ppl",
    "base_ppl", "ppl_ratio", "exact" (on EVAL_EXAMPLES, if given), "seconds"}. BASE is not changed.
    """
    from . import adapters, evaluate, sft
    from .evaluate import perplexity
    from .train import check_lr

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
    from .evaluate import perplexity

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
              seed: int = 0, task: str | None = None, lrs=None, ranks=None, base_ppl: float | None = None) -> dict:
    """The learning-rate x rank grid lesson 02 draws, and a sentence saying where it comes from.

    MODEL the bundled model: the shipped sweep (``load_results("lr_rank_sweep")``, scripts/lesson02_results.py
    ran it on the bundled model). Any other MODEL: that sweep says nothing about it, so a small grid trains
    live on BASE: LRS (default LR/10 and LR) x RANKS (default R/4 and R), STEPS steps each (``sweep``).
    Returns {"rows", "lrs", "ranks", "steps", "shipped": bool, "about": the sentence}.
    """
    from .models import is_bundled

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
            rows.append(short_run(base, tok, pairs, general, x, rank, steps, seed=seed, base_ppl=base_ppl))
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


def landscape_figure(rows: list[dict], mark: tuple[float, int] | None = None):
    """Two heatmaps over (learning rate, rank): final training loss and general-text perplexity ratio."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4), dpi=80)
    for i, (key, title, norm) in enumerate((("final_loss", "training loss after the run (lower: learned)", None),
                                            ("ppl_ratio", "general-text perplexity / base (higher: forgot)",
                                             LogNorm(vmin=1.0, vmax=max(2.0, max(r["ppl_ratio"] for r in rows)))))):
        lrs, ranks, m = grid(rows, key)
        ax = fig.add_subplot(1, 2, i + 1)
        im = ax.imshow(m, aspect="auto", origin="lower", cmap="viridis" if i == 0 else "magma_r", norm=norm)
        ax.set_xticks(range(len(lrs)), [f"{lr:.0e}" for lr in lrs], fontsize=8)
        ax.set_yticks(range(len(ranks)), [str(r) for r in ranks])
        ax.set(xlabel="learning rate", ylabel="rank r", title=title)
        for y, row in enumerate(m):
            for x, v in enumerate(row):
                red, green, blue, _ = im.cmap(im.norm(v))  # dark text on pale cells, white on dark ones
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="k" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "w")
        if mark is not None:
            lr, r = mark
            xi = min(range(len(lrs)), key=lambda j: abs(math.log(lrs[j]) - math.log(lr)))
            yi = min(range(len(ranks)), key=lambda j: abs(ranks[j] - r))
            ax.add_patch(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
                (xi - 0.5, yi - 0.5), 1, 1, fill=False, ec="tab:cyan", lw=2.5))
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.tight_layout()
    return fig


def run_figure(row: dict):
    """Training loss per step next to the general-text perplexity before and after, for one run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), dpi=80)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(range(1, len(row["losses"]) + 1), row["losses"], color="tab:blue")
    ax.set(xlabel="step", ylabel="training loss", yscale="log",
           title=f"lr {row['lr']:.0e}, r {row['r']}: loss {row['final_loss']:.3f}")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    ax.bar(["base", "after LoRA"], [row["base_ppl"], row["general_ppl"]], color=["tab:gray", "tab:red"])
    ax.set(ylabel="held-out general-text perplexity", title=f"forgetting: x{row['ppl_ratio']:.2f}")
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

    from .train import check_lr

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


# Learning rates for each PEFT method in the comparison: the usual starting points (LoRA and DoRA
# 2e-3 at this model size; IA3's scaling vectors and prompt tuning's embeddings take larger steps).
METHOD_LR = {"lora": 2e-3, "dora": 2e-3, "ia3": 1e-2, "prompt": 3e-2}


def method_run(base, tok, pairs, method: str, steps: int = 60, lr: float | None = None, seed: int = 0,
               eval_examples=None, r: int = 8) -> dict:
    """Train one peft METHOD (lora, dora, ia3, prompt) on PAIRS; trainable params, score, time per step."""
    import statistics

    from . import adapters, evaluate, sft

    lr = METHOD_LR[method] if lr is None and method in METHOD_LR else lr
    model = adapters.add(copy.deepcopy(base), method, r=r, alpha=2 * r, seed=seed)
    trainable, total = model.get_nb_trainable_parameters()
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(step, loss):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    with warnings.catch_warnings():
        # prompt tuning: peft drops the position ids the collator does not even pass; nothing to act on
        warnings.filterwarnings("ignore", message="Position ids are not supported")
        losses = sft.train(model, tok, pairs, steps=steps, lr=lr, seed=seed, progress=False, callback=tick)
    row = {"method": method, "lr": lr, "steps": steps, "trainable": trainable, "total": total,
           "trainable_pct": 100 * trainable / total, "final_loss": sum(losses[-5:]) / len(losses[-5:]),
           "seconds_per_step": statistics.median(times), "line": adapters.trainable_line(model)}
    if eval_examples is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Position ids are not supported")
            s = evaluate.score(model, tok, eval_examples)
        row["exact"], row["format"] = s["exact"], s["format"]
    return row


def methods_table(base, tok, pairs, model="bundled", steps: int = 3, seed: int = 0, r: int = 8,
                  eval_examples=None) -> dict:
    """Every PEFT method on BASE: trainable parameters and time per step measured now (``method_run``),
    next to held-out exact match and answer format.

    MODEL the bundled model: the scores are the shipped table's (``load_results("peft_methods")``: each
    method trained for its 40 steps by scripts/lesson02_results.py), at the table's learning rates. Any
    other MODEL: the shipped scores are the bundled model's, so each method trains STEPS steps here and is
    scored on EVAL_EXAMPLES. Returns {"rows": [{"method", "lr", "trainable", "trainable_pct", "exact",
    "format", "seconds_per_step"}], "steps", "n_eval", "task", "shipped": bool, "fan_in_fan_out": whether
    the adapted layers are Conv1D (peft's fan_in_fan_out=True)}.
    """
    from . import adapters
    from .lora import needs_fan_in_fan_out
    from .models import is_bundled

    shipped = load_results("peft_methods") if is_bundled(model) else None
    eval_examples = None if eval_examples is None else list(eval_examples)
    if shipped is None and not eval_examples:
        raise ValueError(f"{str(model)!r} is not the bundled model, whose scores ship with the course: "
                         "pass eval_examples to score each method here.")
    plan = [(row["method"], row["lr"], row) for row in shipped["rows"]] if shipped else \
        [(m, METHOD_LR[m], None) for m in adapters.METHODS]
    rows = []
    for method, lr, old in plan:
        now = method_run(base, tok, pairs, method, steps=steps, lr=lr, seed=seed, r=r,
                         eval_examples=None if old else eval_examples)
        scores = old if old else now
        rows.append({"method": method, "lr": lr, "trainable": now["trainable"], "trainable_pct": now["trainable_pct"],
                     "exact": scores["exact"], "format": scores["format"], "seconds_per_step": now["seconds_per_step"]})
    conv = needs_fan_in_fan_out(base, adapters.targets(base))
    if shipped:
        return {"rows": rows, "steps": shipped["steps"], "n_eval": shipped["n_eval"], "task": shipped["task"],
                "shipped": True, "fan_in_fan_out": conv}
    task = "/".join(sorted({e["task"] for e in eval_examples}))
    return {"rows": rows, "steps": steps, "n_eval": len(eval_examples), "task": task, "shipped": False,
            "fan_in_fan_out": conv}

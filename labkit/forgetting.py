"""Catastrophic forgetting, measured: general-text perplexity before and after SFT, and its remedies.

Fine-tuning on a narrow task moves weights that general language also uses, so the model gets worse
at text it used to predict well. The usual advice (a low learning rate, a small LoRA rank, ~10%
general data mixed into the SFT set) is tested here rather than assumed:

    result = forgetting.run_sft(base, tok, task_pairs, general_train, general_eval, eval_examples,
                                lr=2e-3, r=8, mix=0.1, steps=60)
    result["ppl_ratio"]        # general-text perplexity after / before (1.0 = nothing forgotten)

Evaluation during training (not only at the end) is a callback of labkit.sft.train:

    log = forgetting.EvalEvery(every=10, metrics={"general_ppl": lambda m: evaluate.perplexity(m, tok, texts)})
    sft.train(model, tok, pairs, steps=60, callback=log.bind(model))
    log.history                # [{"step": 0, "general_ppl": ...}, {"step": 10, ...}, ...]
"""

from __future__ import annotations

import copy
import math
import time

from . import adapters, data, evaluate, guard, sft
from .models import ASSETS, BASE_MODEL_DIR, BUNDLED, shipped_or_live


def check_fraction(mix) -> float:
    return guard.fraction("mix", mix, "0.1", about="the share of general text in the SFT set")


class EvalEvery:
    """A callback for labkit.sft.train that evaluates the model every EVERY steps.

    metrics: {name: fn(model) -> float}. bind(model) returns the callback(step, loss) to pass as
    sft.train(..., callback=...). history holds one dict per evaluation: {"step", "loss", name: value};
    step 0 is evaluated before any update when bind(model, at_start=True) (the default).
    """

    def __init__(self, every: int, metrics: dict):
        every = guard.positive_int("every", every, about="steps between evaluations")
        if not metrics:
            raise ValueError("EvalEvery needs at least one metric {name: fn(model) -> float}.")
        self.every, self.metrics, self.history, self.seconds = every, dict(metrics), [], 0.0

    def evaluate(self, model, step: int, loss: float | None = None) -> dict:
        t0 = time.perf_counter()
        row = {"step": step, "loss": loss}
        row.update({name: float(fn(model)) for name, fn in self.metrics.items()})
        self.seconds += time.perf_counter() - t0
        self.history.append(row)
        return row

    def bind(self, model, at_start: bool = True):
        if at_start:
            self.evaluate(model, 0)

        def callback(step: int, loss: float) -> None:
            if (step + 1) % self.every == 0:
                self.evaluate(model, step + 1, loss)

        return callback

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, for plotting."""
        if self.history and name not in self.history[0]:
            raise ValueError(f"no metric {name!r}; known: {sorted(k for k in self.history[0] if k != 'step')}.")
        return [r["step"] for r in self.history], [r[name] for r in self.history]


def run_sft(base, tok, task_pairs: list[dict], general_train: list[str], general_eval: list[str],
            eval_examples: list[dict] | None = None, lr: float = 2e-3, r: int = 8, alpha: float | None = None,
            mix: float = 0.0, steps: int = 60, batch_size: int = 8, seed: int = 0, max_length: int = 256) -> dict:
    """LoRA-SFT a copy of BASE on TASK_PAIRS (with the share MIX of general text) and measure forgetting.

    alpha defaults to 2r, so the update's scale alpha/r is the same at every rank and only the rank
    (the update's capacity) changes. Returns {"lr", "r", "alpha", "mix", "steps", "ppl_before",
    "ppl_after", "ppl_ratio", "exact", "format", "seconds", "losses"}; exact/format are
    labkit.evaluate.score on EVAL_EXAMPLES (None when none are given). BASE is not modified.
    """

    alpha = 2 * r if alpha is None else alpha
    pairs = sft.mix_general(task_pairs, sft.general_rows(tok, general_train), check_fraction(mix), seed)
    ppl_before = evaluate.perplexity(base, tok, general_eval)
    model = adapters.add(copy.deepcopy(base), "lora", seed=seed, r=r, alpha=alpha)
    t0 = time.perf_counter()
    losses = sft.train(model, tok, pairs, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                       max_length=max_length, progress=False)
    seconds = time.perf_counter() - t0
    ppl_after = evaluate.perplexity(model, tok, general_eval)
    scores = evaluate.score(model, tok, eval_examples, max_new_tokens=12) if eval_examples else None
    return {"lr": lr, "r": r, "alpha": alpha, "mix": mix, "steps": steps, "ppl_before": ppl_before,
            "ppl_after": ppl_after, "ppl_ratio": ppl_after / ppl_before,
            "exact": scores["exact"] if scores else None, "format": scores["format"] if scores else None,
            "seconds": seconds, "losses": losses}


# ---------------------------------------------------------------------------------------------
# The forgetting grid: 2 learning rates x 2 ranks x 2 shares of general text, one run_sft each

GRID_FILE = "forgetting_grid.json"  # in labkit/assets/results/: scripts/forgetting_grid.py on the bundled model
SHIPPED_BY = "scripts/forgetting_grid.py"


def is_bundled(model) -> bool:
    """Is MODEL (a lesson's MODEL parameter) the course's bundled model ("bundled", None, or its folder)?"""
    from pathlib import Path

    if model is None or str(model) == BUNDLED:
        return True
    p = Path(str(model)).expanduser()
    return p.exists() and p.resolve() == BASE_MODEL_DIR.resolve()


def load_grid(file: str = GRID_FILE) -> dict:
    """The shipped grid (labkit/assets/results/forgetting_grid.json, or FILE there): the bundled model's,
    measured by scripts/forgetting_grid.py. Its "model" is "bundled" (the script wrote none before it took --model)."""
    import json

    grid = json.loads((ASSETS / "results" / file).read_text())
    grid.setdefault("model", "bundled")
    return grid


def run_grid(base, tok, task: str = "classify", steps: int = 120, lrs=(2e-3, 2e-4), ranks=(4, 64),
             mixes=(0.0, 0.1), n_general_eval: int = 40, n_eval: int = 40, seed: int = 0, model: str = "",
             log=None) -> dict:
    """Every combination of LRS x RANKS x MIXES as one run_sft of STEPS steps on TASK, measured.

    Data: the task's training pairs (labkit.data.to_prompt_completion with TOK's template), general_train
    for the mix, the first N_GENERAL_EVAL general_eval texts for perplexity and the first N_EVAL held-out
    task examples for exact match. LOG(line), if given, gets one line per run. Returns the grid as
    scripts/forgetting_grid.py saves it: {"task", "steps", "batch_size", "alpha", "seed", "model",
    "n_task_pairs", "n_general_eval", "n_eval", "made_by", "wall_seconds", "load_average_at_end",
    "runs": [run_sft's result without "losses", plus "final_loss" (mean of the last 10 losses)]}.
    """
    import itertools
    import os

    steps = guard.positive_int("steps", steps, about="SFT steps per run")
    task_pairs = [data.to_prompt_completion(r, tok) for r in data.read_jsonl("instructions_train.jsonl")
                  if r["task"] == task]
    if not task_pairs:
        raise ValueError(f"no training examples of task {task!r}; choose one of {data.TASKS}.")
    general_train = [r["text"] for r in data.read_jsonl("general_train.jsonl")]
    general_eval = [r["text"] for r in data.read_jsonl("general_eval.jsonl")][:n_general_eval]
    eval_examples = [r for r in data.read_jsonl("instructions_eval.jsonl") if r["task"] == task][:n_eval]
    runs, t0 = [], time.time()
    for lr, r, mix in itertools.product([float(x) for x in lrs], [int(x) for x in ranks], [float(x) for x in mixes]):
        res = run_sft(base, tok, task_pairs, general_train, general_eval, eval_examples,
                      lr=lr, r=r, mix=mix, steps=steps, seed=seed)
        res["final_loss"] = sum(res["losses"][-10:]) / len(res["losses"][-10:])
        del res["losses"]
        runs.append(res)
        if log:
            log(f"lr={lr:g} r={r:>2} mix={mix:.0%}: ppl x{res['ppl_ratio']:.2f} exact {res['exact']:.0%} "
                f"({res['seconds']:.0f}s, load {os.getloadavg()[0]:.1f})")
    return {"what": "LoRA SFT on one task; general-text perplexity after/before and held-out exact match",
            "task": task, "steps": steps, "batch_size": 8, "alpha": "2r", "seed": seed, "model": model,
            "n_task_pairs": len(task_pairs), "n_general_eval": len(general_eval), "n_eval": len(eval_examples),
            "made_by": "labkit.forgetting.run_grid", "wall_seconds": round(time.time() - t0, 1),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "runs": runs}


def grid_for(model, base, tok, task: str, steps: int = 0, seed: int = 0, **kwargs) -> tuple[dict, str]:
    """Lesson 14's grid for MODEL, and a line for the lesson to print ("" when there is nothing to say).

    STEPS == 0 and the bundled model: the shipped grid at SEED (scripts/forgetting_grid.py --seed N; seed 0's,
    said in the line, when SEED has none; the line also says when its task is not TASK). STEPS == 0 and any
    other model: no shipped grid fits it, so the grid is trained live at models.LIVE_STEPS steps a run, and
    the line (models.shipped_or_live) says so. STEPS > 0: trained live at STEPS steps a run on BASE and TOK
    (run_grid, with TASK, SEED and KWARGS).
    """

    live_steps, line = shipped_or_live(steps, model, "forgetting grid", "GRID_STEPS")
    if live_steps == 0:
        shipped = {g["seed"]: g for g in load_seed_grids()}
        grid = shipped.get(seed, shipped[0])
        notes = [] if seed in shipped else [f"No grid is shipped for SEED={seed}: this is SEED={grid['seed']}'s."]
        if grid["task"] != task:
            notes.append(f"The shipped grid fine-tunes on {grid['task']!r}, not TASK={task!r}; set GRID_STEPS to run "
                         f"one on {task!r}.")
        return grid, " ".join(notes)
    grid = run_grid(base, tok, task=task, steps=live_steps, model=str(model), seed=seed, **kwargs)
    return grid, line + (" Each of the grid's eight runs trains that many steps." if line else "")


def grid_figures(grid: dict) -> dict:
    """The figures lesson 14 records from GRID (labkit.course.show.record_many; its claims over seeds read them):
    the run that forgot most and whether it is the all-risky one (the highest lr and rank, no general data),
    the largest ratio among the other runs, the exact match of the low-lr small-rank runs against the others,
    and each remedy's g_safe / g_risky without the worst run."""
    runs = grid["runs"]
    worst, others = without_worst(runs)
    lo_lr, lo_r = min(r["lr"] for r in runs), min(r["r"] for r in runs)
    slow = [r for r in runs if r["lr"] == lo_lr and r["r"] == lo_r]
    rest = [r for r in runs if not (r["lr"] == lo_lr and r["r"] == lo_r)]
    out = {"grid_worst_ppl_ratio": worst["ppl_ratio"],
           "grid_worst_is_all_risky": (worst["lr"], worst["r"], worst["mix"]) == (max(r["lr"] for r in runs),
                                                                             max(r["r"] for r in runs), min(r["mix"] for r in runs)),
           "grid_others_max_ppl_ratio": max(r["ppl_ratio"] for r in others),
           "grid_low_lr_small_rank_max_exact": max(r["exact"] for r in slow) if slow else None,
           "grid_others_min_exact": min(r["exact"] for r in rest) if rest else None}
    for v in remedies(others):
        out[f"grid_{v['key']}_remedy_ratio_without_worst"] = v["g_safe"] / v["g_risky"]
    return out


def grid_source(grid: dict) -> str:
    """"precomputed by scripts/forgetting_grid.py" or "measured live here"."""
    return f"precomputed by {SHIPPED_BY}" if grid.get("made_by") == SHIPPED_BY else "measured live here"


def describe_grid(grid: dict) -> str:
    """One line: where GRID comes from (precomputed or live, on which model) and its settings."""
    settings = f"task {grid['task']}, {grid['steps']} steps, batch {grid['batch_size']}, alpha {grid['alpha']}"
    if grid.get("made_by") == SHIPPED_BY:
        return (f"{grid_source(grid)} at SEED={grid['seed']}: {settings}; the eight runs took "
                f"{grid['wall_seconds'] / 60:.0f} min on a shared 2-core CPU (load average {grid['load_average_at_end'][0]})")
    return f"{grid_source(grid)} on {grid.get('model') or 'this model'}: {settings}, {grid['wall_seconds']:.0f} s"


def _geomean(xs) -> float:
    """exp(mean(log x)): the mean of ratios, so that x2 and x0.5 average to x1."""
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def paired_effect(runs: list[dict], key: str, safe, risky) -> dict:
    """One knob's effect on forgetting, read off a grid's RUNS: pair each run whose KEY ("lr", "r" or "mix") is
    SAFE with the run that differs from it only in KEY (set to RISKY).

    Returns {"g_safe", "g_risky": geometric means of the pairs' ppl_ratio on each side (a ratio of x4 and one of
    x0.25 average to x1), "better": pairs where the safe run forgot less, "n": pairs, "e_safe", "e_risky": mean
    exact match on each side (what the remedy costs in task score)}.
    """
    def others(r):
        return tuple(r[k] for k in ("lr", "r", "mix") if k != key)

    pairs = [(a, b) for a in runs for b in runs if a[key] == safe and b[key] == risky and others(a) == others(b)]
    if not pairs:
        raise ValueError(f"no two runs differ only in {key} ({safe} vs {risky}).")
    return {"g_safe": _geomean([a["ppl_ratio"] for a, _ in pairs]), "g_risky": _geomean([b["ppl_ratio"] for _, b in pairs]),
            "better": sum(a["ppl_ratio"] < b["ppl_ratio"] for a, b in pairs), "n": len(pairs),
            "e_safe": sum(a["exact"] for a, _ in pairs) / len(pairs), "e_risky": sum(b["exact"] for _, b in pairs) / len(pairs)}


def remedies(runs: list[dict]) -> list[dict]:
    """Each usual remedy for forgetting, read off a grid's RUNS by pairing runs that differ only in its knob.

    One row per remedy (a low learning rate, a small rank, ~10% general data): {"advice", "key", "safe",
    "risky" (the knob's two values), paired_effect's "g_safe", "g_risky", "better", "n", "e_safe", "e_risky",
    and "verdict"}: "holds here" when the remedy's geometric mean is below 0.9 x the other's and it forgot less
    in most pairs; else "makes no clear difference here (under 10%, or not in most pairs)" when it is below
    1.1 x the other's; else "does NOT hold here". A geometric mean damps one huge ratio but does not remove
    it: read a verdict again without the worst run (without_worst).
    """
    if not runs:
        raise ValueError("remedies needs the runs of a grid.")
    lrs, ranks, mixes = sorted({r["lr"] for r in runs}), sorted({r["r"] for r in runs}), sorted({r["mix"] for r in runs})
    rows = []
    for advice, key, safe, risky in (("a low learning rate", "lr", lrs[0], lrs[-1]),
                                     ("a small rank", "r", ranks[0], ranks[-1]),
                                     ("~10% general data", "mix", mixes[-1], mixes[0])):
        if safe == risky:
            continue  # the grid does not vary this knob
        e = paired_effect(runs, key, safe, risky)
        verdict = ("holds here" if e["g_safe"] < e["g_risky"] * 0.9 and e["better"] > e["n"] / 2 else
                   "makes no clear difference here (under 10%, or not in most pairs)" if e["g_safe"] < e["g_risky"] * 1.1 else
                   "does NOT hold here")
        rows.append({"advice": advice, "key": key, "safe": safe, "risky": risky, **e, "verdict": verdict})
    return rows


def without_worst(runs: list[dict]) -> tuple[dict, list[dict]]:
    """(the run of RUNS that forgot most (largest ppl_ratio), the other runs): does a verdict rest on that one run?"""
    worst = max(runs, key=lambda r: r["ppl_ratio"])
    return worst, [r for r in runs if r is not worst]


SEED_GRID_FILE = "forgetting_grid_seed{seed}.json"  # the same grid at other seeds (scripts/forgetting_grid.py --seed N)


def load_seed_grids() -> list[dict]:
    """The shipped grid (seed 0, load_grid) and the same grid at every other seed shipped next to it
    (forgetting_grid_seed1.json, ...: scripts/forgetting_grid.py --seed N --out ...), ordered by seed.
    Only grids with the shipped grid's settings (task, steps, knobs, evaluation sizes) count: a file
    made with other settings is a ValueError that names it, never silently mixed in."""

    def knobs(grid):
        return sorted((r["lr"], r["r"], r["mix"]) for r in grid["runs"])

    first = load_grid()
    grids = [first]
    keys = ("task", "steps", "batch_size", "alpha", "n_general_eval", "n_eval")
    for path in sorted((ASSETS / "results").glob(SEED_GRID_FILE.format(seed="*"))):
        grid = load_grid(path.name)
        differ = [k for k in keys if grid.get(k) != first.get(k)]
        if differ or knobs(grid) != knobs(first):
            raise ValueError(f"{path.name} was made with other settings than {GRID_FILE} ({differ or 'the knobs'}): "
                             f"rerun scripts/forgetting_grid.py --seed {grid.get('seed')} --out {path}")
        grids.append(grid)
    seeds = [g["seed"] for g in grids]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"two shipped grids have the same seed: {seeds}")
    return sorted(grids, key=lambda g: g["seed"])


def remedies_across_seeds(grids: list[dict], drop_worst: bool = False) -> list[dict]:
    """remedies() of each grid in GRIDS (the same grid at several seeds), side by side: one row per remedy,
    {"advice", "key", "safe", "risky", "seeds", "ratios" (g_safe / g_risky at each seed: below 1, the
    remedy forgot less), "verdicts" (remedies()' verdict at each seed), "holds" (seeds where it is
    "holds here"), "n" (seeds)}. DROP_WORST: each grid without its one run that forgot most (lesson 14
    asks whether a verdict rests on that one run)."""
    if not grids:
        raise ValueError("remedies_across_seeds needs at least one grid.")
    per_seed = [{row["advice"]: row for row in remedies(without_worst(g["runs"])[1] if drop_worst else g["runs"])}
                for g in grids]
    rows = []
    for advice, first in per_seed[0].items():
        if any(advice not in s for s in per_seed):
            raise ValueError(f"the grids do not all vary {first['key']}: compare grids with the same knobs.")
        cells = [s[advice] for s in per_seed]
        verdicts = [c["verdict"] for c in cells]
        rows.append({"advice": advice, "key": first["key"], "safe": first["safe"], "risky": first["risky"],
                     "seeds": [g["seed"] for g in grids], "ratios": [c["g_safe"] / c["g_risky"] for c in cells],
                     "verdicts": verdicts, "holds": sum(v == "holds here" for v in verdicts), "n": len(grids)})
    return rows

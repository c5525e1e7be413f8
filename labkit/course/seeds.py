"""Verdicts over seeds: a lesson's key figures (labkit.course.show.record) from the same run at several seeds.

One run at one seed can say "PPO without the KL penalty hacks the reward" by luck. scripts/seed_spread.py
runs a lesson with papermill at SEED = 0, 1 and 2 (every other parameter at its default), collects what
the lesson recorded with ``labkit.course.show.record`` and saves it to labkit/assets/results/seeds_<lesson>.json.
The lesson then prints the spread next to its own live run, and whether a verdict held at each seed:

    spread = seeds.load("08_reward_model_rlhf")
    print(seeds.table(spread))                          # one row per figure: each seed, then min-max
    print(seeds.verdict(spread, "no KL: more words than SFT", lambda f: f["words_nokl"] > f["words_sft"]))
    print(seeds.compare_live(spread, show.recorded(), globals()))   # is this run seed 0's row?

The shipped file is a fact about the bundled model at the lesson's defaults; tests/test_seeds.py fails
when a lesson changes a default the file did not run at, and tests/test_notebooks.py when the lesson
records other figures than the file holds (rerun the script).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .render import recorded
from .seed_claims import CLAIMS

SEEDS = (0, 1, 2)
MADE_BY = "scripts/seed_spread.py"


def results_file(lesson: str) -> Path:
    """labkit/assets/results/seeds_<LESSON>.json (LESSON: the notebook's stem, e.g. "08_reward_model_rlhf")."""
    return Path(__file__).resolve().parents[1] / "assets" / "results" / f"seeds_{lesson}.json"


def literal(text: str):
    """TEXT as a Python literal ("0.1" -> 0.1, "'bundled'" -> 'bundled'), else TEXT itself, as papermill's -p."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def defaults(notebook: str | Path) -> dict:
    """The parameters cell's names and default values, as papermill reads them (literals only)."""
    import papermill as pm

    return {name: literal(p["default"]) for name, p in pm.inspect_notebook(str(notebook)).items()}


def run(notebook: str | Path, seeds=SEEDS, parameters: dict | None = None, out_dir: str | Path | None = None,
        log=print) -> dict:
    """Execute NOTEBOOK once per seed (papermill, SEED injected, other parameters at their defaults or as
    PARAMETERS overrides them) and return {"lesson", "seeds", "parameters" (what ran, SEED left out),
    "runs": [{"seed", "figures"}], "made_by"}. OUT_DIR, if given, keeps the executed notebooks."""
    import tempfile
    import time

    import nbformat
    import papermill as pm

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"no notebook {notebook}; give a path such as notebooks/08_reward_model_rlhf.ipynb.")
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"give at least two different seeds; got {seeds}.")
    params = {k: v for k, v in defaults(notebook).items() if k != "SEED"}
    unknown = sorted(set(parameters or {}) - set(params))
    if unknown:
        raise ValueError(f"{notebook.name} has no parameter {', '.join(unknown)}; it has {', '.join(sorted(params))}.")
    params.update(parameters or {})
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(out_dir) if out_dir else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            t0 = time.perf_counter()
            out = where / f"{notebook.stem}_seed{seed}.ipynb"
            pm.execute_notebook(str(notebook), str(out), parameters={**(parameters or {}), "SEED": seed}, cwd=str(notebook.parent),
                                progress_bar=False, log_output=False)
            figures = recorded(nbformat.read(out, as_version=4))
            if not figures:
                raise ValueError(f"{notebook.name} recorded no figure (labkit.course.show.record); nothing to compare.")
            runs.append({"seed": seed, "figures": figures})
            log(f"{notebook.stem} SEED={seed}: {len(figures)} figures in {time.perf_counter() - t0:.0f} s")
    return {"lesson": notebook.stem, "seeds": seeds, "parameters": params, "runs": runs, "made_by": MADE_BY}


def load(lesson: str) -> dict | None:
    """The shipped spread of LESSON (see run), or None when there is none."""
    path = results_file(lesson)
    return json.loads(path.read_text()) if path.exists() else None


def _cell(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.3g}"


def table(spread: dict, names: list[str] | None = None) -> str:
    """One line per figure: its value at each seed, then the range (min-max) of the numeric ones."""
    runs = spread["runs"]
    names = names or list(runs[0]["figures"])
    width = max(len(n) for n in names)
    lines = [f"{'figure':<{width}} " + " ".join(f"{'seed ' + str(r['seed']):>9}" for r in runs) + f" {'min-max':>15}"]
    for n in names:
        values = [r["figures"].get(n) for r in runs]
        nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        span = f"{_cell(min(nums))}-{_cell(max(nums))}" if len(nums) == len(values) else ""
        lines.append(f"{n:<{width}} " + " ".join(f"{_cell(v):>9}" for v in values) + f" {span:>15}")
    return "\n".join(lines)


def holds(spread: dict, rule) -> list[bool]:
    """RULE(figures) -> bool at each seed of SPREAD, in order."""
    return [bool(rule(r["figures"])) for r in spread["runs"]]


def verdict(spread: dict, claim: str, rule) -> str:
    """'holds at 3 of 3 seeds: CLAIM', or 'NOT at every seed: holds at 2 of 3 seeds, fails at SEED=1: CLAIM', or which figure the spread lacks."""
    try:
        ok = holds(spread, rule)
    except KeyError as e:
        return f"cannot be judged, the spread has no figure {e} (rerun {MADE_BY}): {claim}"
    seeds = [r["seed"] for r in spread["runs"]]
    text = f"{'holds' if all(ok) else 'NOT at every seed: holds'} at {sum(ok)} of {len(ok)} seeds"
    if not all(ok):
        text += f", fails at SEED={', '.join(str(s) for s, o in zip(seeds, ok) if not o)}"
    return f"{text}: {claim}"


def _same(a, b, digits: int) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=10 ** -digits, abs_tol=10 ** -digits)
    return a == b


def compare_live(spread: dict | None, live: dict, namespace: dict, digits: int = 3) -> str:
    """Is this run (LIVE: show.recorded(); NAMESPACE: the notebook's globals(), for its parameters) one row of
    SPREAD? Says so, or why it cannot be: other parameters than the defaults the seeds ran at, a seed that
    was not run, or figures that differ (another machine's arithmetic, or a change since the file was made)."""
    if spread is None:
        return "no seed spread is shipped for this lesson."
    changed = [k for k, v in spread["parameters"].items() if k in namespace and namespace[k] != v]
    if changed:
        return ("this run is not at the defaults the seeds ran at (" + ", ".join(f"{k}={namespace[k]!r}" for k in changed[:4])
                + (", ..." if len(changed) > 4 else "") + "), so its figures are not a row of the table.")
    seed = namespace.get("SEED")
    row = next((r["figures"] for r in spread["runs"] if r["seed"] == seed), None)
    if row is None:
        return f"SEED={seed!r} is not one of the seeds run ({spread['seeds']}); the table shows the others."
    differ = [n for n, v in row.items() if n in live and not _same(live[n], v, digits)]
    if differ:
        return (f"this run (SEED={seed}) differs from its row in {len(differ)} of {len(row)} figures ("
                + ", ".join(f"{n}: {_cell(live[n])} here vs {_cell(row[n])}" for n in differ[:3])
                + "): another machine's arithmetic, or the lesson changed since scripts/seed_spread.py ran.")
    return f"this run (SEED={seed}) repeats its row: the same {len(row)} figures to {digits} significant digits."


def report(spread: dict | None, live: dict, namespace: dict, claims: dict) -> str:
    """What a lesson prints under its seed spread: the table, each of CLAIMS {claim: rule(figures) -> bool}
    as a verdict over the seeds, and compare_live. With another MODEL than the one the seeds ran on, only
    says so (the spread is a fact about that model) and how to measure it."""
    if spread is None:
        return "no seed spread is shipped for this lesson (scripts/seed_spread.py makes one)."
    model = spread["parameters"].get("MODEL")
    if "MODEL" in namespace and model is not None and namespace["MODEL"] != model:
        return (f"the seed spread was measured with MODEL={model!r}; for MODEL={namespace['MODEL']!r} run "
                f"`python {MADE_BY} notebooks/{spread['lesson']}.ipynb -p MODEL {namespace['MODEL']}`.")
    lines = [f"{spread['lesson']} at its defaults, SEED = {', '.join(str(s) for s in spread['seeds'])} ({MADE_BY}):",
             table(spread), ""]
    lines += [verdict(spread, claim, rule) for claim, rule in claims.items()]
    lines += ["", compare_live(spread, live, namespace)]
    return "\n".join(lines)


def claims(lesson: str, model: str = "bundled") -> str:
    """What a lesson prints about its seed spread: one line per claim of labkit.course.seed_claims.CLAIMS[LESSON],
    "holds at 3 of 3 seeds: <claim>" (the spread itself and its rules stay out of the learner's view). With
    another MODEL than the one the seeds ran on, one line saying the claims are the bundled model's."""

    spread = load(lesson)
    if spread is None or lesson not in CLAIMS:
        raise ValueError(f"no seed spread or no claims for {lesson!r} (labkit/seed_claims.py, {MADE_BY}).")
    ran_on = spread["parameters"].get("MODEL", "bundled")
    if model != ran_on:
        return (f"(over SEED {', '.join(str(s) for s in spread['seeds'])} these claims were checked with "
                f"MODEL={ran_on!r}, not {model!r}; {MADE_BY} checks them for yours)")
    return "\n".join(verdict(spread, claim, rule) for claim, rule in CLAIMS[lesson].items())

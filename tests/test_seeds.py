"""labkit.course.seeds: the spread of a lesson's recorded figures over seeds, its verdicts, whether a live run is
one of its rows; scripts/seed_spread.py end to end on a tiny notebook; the shipped spreads match their
lessons (the defaults they ran at, at least three seeds)."""

import json
from pathlib import Path

import nbformat
import pytest

from labkit.course import seeds

ROOT = Path(__file__).resolve().parents[1]

SPREAD = {"lesson": "99_demo", "seeds": [0, 1, 2], "parameters": {"MODEL": "bundled", "STEPS": 20},
          "runs": [{"seed": 0, "figures": {"sft": 0.5, "dpo": 0.75, "ok": True}},
                   {"seed": 1, "figures": {"sft": 0.5, "dpo": 0.4, "ok": True}},
                   {"seed": 2, "figures": {"sft": 0.55, "dpo": 0.8, "ok": False}}],
          "made_by": seeds.MADE_BY}


def test_table_lists_every_seed_and_the_range():
    lines = seeds.table(SPREAD).splitlines()
    assert lines[0].split() == ["figure", "seed", "0", "seed", "1", "seed", "2", "min-max"]
    assert lines[2].split() == ["dpo", "0.75", "0.4", "0.8", "0.4-0.8"]
    assert lines[3].split() == ["ok", "True", "True", "False"], "booleans have no range"


def test_verdict_counts_the_seeds_where_a_claim_holds():
    assert seeds.holds(SPREAD, lambda f: f["dpo"] > f["sft"]) == [True, False, True]
    assert seeds.verdict(SPREAD, "DPO beats SFT", lambda f: f["dpo"] > f["sft"]) == \
        "NOT at every seed: holds at 2 of 3 seeds, fails at SEED=1: DPO beats SFT"
    assert seeds.verdict(SPREAD, "SFT is half right or more", lambda f: f["sft"] >= 0.5) == \
        "holds at 3 of 3 seeds: SFT is half right or more"
    assert seeds.verdict(SPREAD, "PPO beats SFT", lambda f: f["ppo"] > f["sft"]) == \
        f"cannot be judged, the spread has no figure 'ppo' (rerun {seeds.MADE_BY}): PPO beats SFT"


def test_compare_live_says_whether_this_run_is_a_row():
    live = {"sft": 0.5, "dpo": 0.75, "ok": True}
    ns = {"MODEL": "bundled", "STEPS": 20, "SEED": 0}
    assert "repeats its row: the same 3 figures" in seeds.compare_live(SPREAD, live, ns)
    assert "differs from its row in 1 of 3 figures (dpo: 0.7 here vs 0.75)" in \
        seeds.compare_live(SPREAD, {**live, "dpo": 0.7}, ns)
    assert "repeats" in seeds.compare_live(SPREAD, {**live, "dpo": 0.75 + 1e-6}, ns), "3 significant digits"
    assert "not at the defaults the seeds ran at (STEPS=3)" in seeds.compare_live(SPREAD, live, {**ns, "STEPS": 3})
    assert "SEED=7 is not one of the seeds run" in seeds.compare_live(SPREAD, live, {**ns, "SEED": 7})
    assert "no seed spread" in seeds.compare_live(None, live, ns)


def test_report_prints_the_table_the_verdicts_and_the_live_check():
    ns = {"MODEL": "bundled", "STEPS": 20, "SEED": 1}
    text = seeds.report(SPREAD, SPREAD["runs"][1]["figures"], ns, {"DPO beats SFT": lambda f: f["dpo"] > f["sft"]})
    assert text.splitlines()[0] == f"99_demo at its defaults, SEED = 0, 1, 2 ({seeds.MADE_BY}):"
    assert "NOT at every seed: holds at 2 of 3 seeds, fails at SEED=1: DPO beats SFT" in text
    assert text.splitlines()[-1].startswith("this run (SEED=1) repeats its row")
    other = seeds.report(SPREAD, {}, {**ns, "MODEL": "/models/qwen"}, {})
    assert "measured with MODEL='bundled'" in other and "-p MODEL /models/qwen" in other and "seed 0" not in other


def _tiny_notebook(path: Path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("SEED = 0\nSTEPS = 4\nNAME = 'demo'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import random\nfrom labkit.course import show\nrng = random.Random(SEED)\n"
        "show.record_many({'score': round(rng.random(), 4), 'steps': STEPS, 'name': NAME})")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_defaults_read_the_parameters_cell(tmp_path):
    _tiny_notebook(tmp_path / "99_demo.ipynb")
    assert seeds.defaults(tmp_path / "99_demo.ipynb") == {"SEED": 0, "STEPS": 4, "NAME": "demo"}


@pytest.mark.slow
def test_the_script_runs_a_notebook_at_each_seed_and_writes_the_spread(tmp_path, load_script):
    nb = tmp_path / "99_demo.ipynb"
    _tiny_notebook(nb)
    out = tmp_path / "spread.json"
    load_script("seed_spread").main([str(nb), "--seeds", "0,1", "-p", "STEPS", "8", "--out", str(out)])
    spread = json.loads(out.read_text())
    assert spread["lesson"] == "99_demo" and spread["seeds"] == [0, 1]
    assert spread["parameters"] == {"STEPS": 8, "NAME": "demo"}, "SEED left out, overrides kept"
    a, b = (r["figures"] for r in spread["runs"])
    assert a["steps"] == b["steps"] == 8 and a["name"] == "demo"
    import random

    assert [a["score"], b["score"]] == [round(random.Random(s).random(), 4) for s in (0, 1)], "each run at its seed"
    with pytest.raises(ValueError, match="has no parameter LR"):
        seeds.run(nb, parameters={"LR": 1})
    with pytest.raises(ValueError, match="at least two different seeds"):
        seeds.run(nb, seeds=[0])
    with pytest.raises(FileNotFoundError, match="no notebook"):
        seeds.run(tmp_path / "missing.ipynb")


SHIPPED = sorted((ROOT / "labkit" / "assets" / "results").glob("seeds_*.json"))


def test_lessons_with_seed_verdicts_ship_their_spread():
    assert {p.stem for p in SHIPPED} >= {"seeds_08_reward_model_rlhf", "seeds_09_dpo", "seeds_11_rl_verifiable_rewards"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_shipped_spread_ran_at_the_lessons_current_defaults(path):
    spread = json.loads(path.read_text())
    notebook = ROOT / "notebooks" / f"{spread['lesson']}.ipynb"
    assert path.name == seeds.results_file(spread["lesson"]).name and notebook.is_file()
    assert len(spread["seeds"]) >= 3 and [r["seed"] for r in spread["runs"]] == spread["seeds"]
    now = {k: v for k, v in seeds.defaults(notebook).items() if k != "SEED"}
    assert spread["parameters"] == now, f"the lesson's defaults changed: rerun scripts/seed_spread.py {notebook}"
    names = [set(r["figures"]) for r in spread["runs"]]
    assert all(n == names[0] for n in names) and names[0]
    assert seeds.load(spread["lesson"]) == spread


def _claimed_lessons():
    from labkit.course.seed_claims import CLAIMS

    return sorted(CLAIMS)


@pytest.mark.parametrize("lesson", _claimed_lessons())
def test_every_claim_a_lesson_prints_holds_at_every_shipped_seed(lesson):
    """labkit/course/seed_claims.py's promise: a claim that does not hold at every seed of the shipped spread is not made."""
    from labkit.course.seed_claims import CLAIMS

    spread = seeds.load(lesson)
    assert spread is not None, f"{lesson} makes claims over seeds but ships no spread: run {seeds.MADE_BY}"
    for claim, rule in CLAIMS[lesson].items():
        assert all(seeds.holds(spread, rule)), seeds.verdict(spread, claim, rule)

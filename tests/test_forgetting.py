"""labkit.forgetting: the evaluation callback, run_sft (general-text perplexity before/after SFT with
sft.mix_general's general rows), and the precomputed grid that lesson 13 plots."""

import pytest

from labkit import data, forgetting


def test_eval_every_records_history_on_schedule():
    calls = []
    log = forgetting.EvalEvery(every=3, metrics={"m": lambda model: len(calls)})
    cb = log.bind(model="M")
    for step in range(7):
        calls.append(step)
        cb(step, 1.0 / (step + 1))
    steps, values = log.series("m")
    assert steps == [0, 3, 6] and values == [0, 3, 6]
    assert log.history[1]["loss"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no metric 'x'"):
        log.series("x")
    with pytest.raises(ValueError, match="every"):
        forgetting.EvalEvery(every=0, metrics={"m": len})


@pytest.mark.slow
def test_run_sft_measures_forgetting_and_learning(base):
    model, tok = base
    rows = [r for r in data.read_jsonl("instructions_train.jsonl") if r["task"] == "classify"][:40]
    pairs = [data.to_prompt_completion(r, tok) for r in rows]
    general = [r["text"] for r in data.read_jsonl("general_train.jsonl")][:20]
    held = [r["text"] for r in data.read_jsonl("general_eval.jsonl")][:4]
    before = [p.detach().clone() for p in model.parameters()]
    res = forgetting.run_sft(model, tok, pairs, general, held, lr=2e-3, r=4, mix=0.1, steps=4, batch_size=4)
    assert res["ppl_after"] != res["ppl_before"] and res["ppl_ratio"] == pytest.approx(res["ppl_after"] / res["ppl_before"])
    assert res["alpha"] == 8 and res["exact"] is None and len(res["losses"]) == 4
    assert all((a == b).all() for a, b in zip(before, model.parameters()))  # the base is untouched


# ---------------------------------------------------------------------------------------------
# the precomputed forgetting grid that lesson 13 plots


def test_forgetting_grid_result_holds_every_combination():
    import json
    from pathlib import Path

    import labkit

    grid = json.loads((Path(labkit.__file__).parent / "assets" / "results" / "forgetting_grid.json").read_text())
    combos = {(r["lr"], r["r"], r["mix"]) for r in grid["runs"]}
    assert len(combos) == len(grid["runs"]) == 8
    assert len({r["lr"] for r in grid["runs"]}) == 2 and {r["r"] for r in grid["runs"]} == {4, 64}
    assert {r["mix"] for r in grid["runs"]} == {0.0, 0.1}
    for r in grid["runs"]:
        assert r["ppl_ratio"] == pytest.approx(r["ppl_after"] / r["ppl_before"])
    assert grid["made_by"] == "scripts/forgetting_grid.py" and "load_average_at_end" in grid


@pytest.mark.slow
def test_forgetting_grid_script_runs_and_writes_json(tmp_path, load_script):
    import json

    mod = load_script("forgetting_grid")
    out = tmp_path / "g.json"
    assert mod.main(["--steps", "1", "--lrs", "2e-3", "--ranks", "4", "--mixes", "0", "--n-eval", "2",
                     "--n-general-eval", "2", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 1 and runs[0]["steps"] == 1 and "losses" not in runs[0]


def test_the_shipped_grid_is_the_bundled_models_only(hub_models):
    """MODEL = "bundled" (or its folder) with GRID_STEPS = 0 shows the shipped grid; another model gets
    None and a sentence saying why and how to run it (never the bundled model's numbers as its own)."""
    from labkit import models

    shipped = forgetting.load_grid()
    assert shipped["model"] == "bundled" and forgetting.grid_source(shipped) == "precomputed by scripts/forgetting_grid.py"
    for name in ("bundled", None, str(models.BASE_MODEL_DIR)):
        assert forgetting.is_bundled(name) and forgetting.grid_for(name, None, None, "classify", 0) == shipped
    other = str(hub_models["gpt2"])
    assert not forgetting.is_bundled(other) and not forgetting.is_bundled("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert forgetting.grid_for(other, None, None, "classify", 0) is None
    msg = forgetting.grid_skipped(other)
    assert "bundled model, not on" in msg and other in msg and "GRID_STEPS" in msg and "--model" in msg
    assert forgetting.describe_grid(shipped).startswith("precomputed by scripts/forgetting_grid.py: task classify, "
                                                         "120 steps, batch 8, alpha 2r, 42 min")
    with pytest.raises(ValueError, match="GRID_STEPS"):
        forgetting.grid_for("bundled", None, None, "classify", -1)


def test_remedies_give_lesson_07s_verdicts_on_the_shipped_grid():
    """The numbers lesson 13 printed from the shipped grid before remedies() moved into labkit."""
    rows = forgetting.remedies(forgetting.load_grid()["runs"])
    got = [(r["advice"], round(r["g_safe"], 2), round(r["g_risky"], 2), r["better"], r["n"], round(r["e_safe"], 6),
            round(r["e_risky"], 6), r["verdict"]) for r in rows]
    assert got == [("a low learning rate", 0.98, 4.21, 3, 4, 0.6, 1.0, "holds here"),
                   ("a small rank", 1.01, 4.09, 3, 4, 0.6, 1.0, "holds here"),
                   ("~10% general data", 0.97, 4.23, 4, 4, 0.8, 0.8, "holds here")]
    runs = [{"lr": 1e-3, "r": 4, "mix": m, "ppl_ratio": p, "exact": 0.5} for m, p in ((0.0, 2.0), (0.1, 1.95))]
    (only,) = forgetting.remedies(runs)  # a grid that varies one knob: one row, no difference within 10%
    assert only["key"] == "mix" and only["verdict"].startswith("makes no clear difference")
    with pytest.raises(ValueError):
        forgetting.remedies([])


def _grid(seed, factors):
    """A 2 x 2 x 2 grid: each risky knob value (high lr, rank 64, no general data) adds 1% of forgetting, and
    run (lr, r, mix) is multiplied by FACTORS[(lr, r, mix)] (default 1)."""
    runs = [{"lr": lr, "r": r, "mix": mix, "exact": 1.0,
             "ppl_ratio": (1 + 0.01 * ((lr == 2e-3) + (r == 64) + (mix == 0.0))) * factors.get((lr, r, mix), 1.0)}
            for lr in (2e-4, 2e-3) for r in (4, 64) for mix in (0.0, 0.1)]
    return {"seed": seed, "runs": runs}


def test_remedies_across_seeds_count_the_seeds_where_each_remedy_holds():
    # seed 0: only the all-risky run forgets (x5), so every remedy "holds" there, and only because of that run;
    # seed 1: nothing forgets; seed 2: a low lr helps in every pair (x2 at the high lr)
    grids = [_grid(0, {(2e-3, 64, 0.0): 5.0}), _grid(1, {}),
             _grid(2, {(2e-3, r, m): 2.0 for r in (4, 64) for m in (0.0, 0.1)})]
    rows = {r["key"]: r for r in forgetting.remedies_across_seeds(grids)}
    assert rows["lr"]["seeds"] == [0, 1, 2] and rows["lr"]["n"] == 3
    assert rows["lr"]["holds"] == 2 and rows["lr"]["verdicts"][1].startswith("makes no clear difference")
    assert rows["r"]["holds"] == 1 and rows["mix"]["holds"] == 1
    assert rows["lr"]["ratios"][2] == pytest.approx(0.5, rel=0.02) and rows["lr"]["ratios"][1] == pytest.approx(0.99, rel=0.005)
    dropped = {r["key"]: r for r in forgetting.remedies_across_seeds(grids, drop_worst=True)}
    assert dropped["r"]["holds"] == 0 and dropped["mix"]["holds"] == 0   # seed 0's verdicts were that one run
    assert dropped["lr"]["holds"] == 1                                    # seed 2's holds without it
    with pytest.raises(ValueError):
        forgetting.remedies_across_seeds([])


def test_the_shipped_seed_grids_repeat_the_shipped_grid_at_other_seeds():
    grids = forgetting.load_seed_grids()
    first = forgetting.load_grid()
    assert grids[0] == first and len(grids) >= 3, "lesson 13's verdicts are read over at least 3 seeds"
    assert [g["seed"] for g in grids] == sorted({g["seed"] for g in grids})
    for g in grids[1:]:
        assert (g["task"], g["steps"], g["n_eval"], g["made_by"]) == (first["task"], first["steps"], first["n_eval"],
                                                                    forgetting.SHIPPED_BY)
        assert [r["ppl_ratio"] for r in g["runs"]] != [r["ppl_ratio"] for r in first["runs"]]  # another seed, really


@pytest.mark.slow
def test_run_grid_live_on_each_hub_style_model(hub_model):
    """The live grid of lesson 13 for a non-bundled MODEL (GRID_STEPS > 0): every combination runs on the
    model's own template and targets, and the result says where it comes from."""
    from labkit import models

    kind, folder = hub_model
    base, tok = models.load_base(folder, device="cpu")
    grid = forgetting.grid_for(str(folder), base, tok, "risk", 1, lrs=[2e-3], ranks=[4], mixes=[0.0, 0.1],
                               n_general_eval=2, n_eval=2)
    assert grid["model"] == str(folder) and grid["steps"] == 1 and len(grid["runs"]) == 2
    assert {r["mix"] for r in grid["runs"]} == {0.0, 0.1} and all(r["ppl_ratio"] > 0 for r in grid["runs"])
    assert forgetting.describe_grid(grid).startswith(f"measured live here on {folder}: task risk, 1 steps")
    assert [r["key"] for r in forgetting.remedies(grid["runs"])] == ["mix"]

"""labkit.forgetting: the evaluation callback, run_sft (general-text perplexity before/after SFT with
sft.mix_general's general rows), the paired reading of each remedy, and the grid lesson 14 shows: shipped for
the bundled model at three seeds, trained live for any other."""

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


def _perplexity_by_hand(model, tok, texts):
    """exp(- total log-probability of each next token / tokens predicted), BOS first where the tokenizer has one:
    written here from log_softmax, not with labkit.evaluate."""
    import math

    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = ([tok.bos_token_id] if tok.bos_token is not None else []) + tok(t, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ids[:257]])
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            total += logp.gather(1, ids[0, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    return math.exp(-total / count)


@pytest.mark.slow
def test_run_sft_measures_forgetting_and_learning(base, monkeypatch):
    from labkit import evaluate

    model, tok = base
    scored = []  # the models run_sft measures, in order: the base, then the trained copy
    real = evaluate.perplexity
    monkeypatch.setattr(evaluate, "perplexity", lambda m, t, texts, *a, **k: scored.append(m) or real(m, t, texts, *a, **k))
    rows = [r for r in data.read_jsonl("instructions_train.jsonl") if r["task"] == "classify"][:40]
    pairs = [data.to_prompt_completion(r, tok) for r in rows]
    general = [r["text"] for r in data.read_jsonl("general_train.jsonl")][:20]
    held = [r["text"] for r in data.read_jsonl("general_eval.jsonl")][:4]
    before = [p.detach().clone() for p in model.parameters()]
    res = forgetting.run_sft(model, tok, pairs, general, held, lr=2e-3, r=4, mix=0.1, steps=4, batch_size=4)
    assert res["ppl_ratio"] == pytest.approx(res["ppl_after"] / res["ppl_before"])
    # before: the base model's; after: the trained copy's (an adapter, not the base again), both measured by hand
    assert scored[0] is model and scored[1] is not model and hasattr(scored[1], "peft_config")
    assert res["ppl_before"] == pytest.approx(_perplexity_by_hand(model, tok, held), rel=1e-5)
    assert res["ppl_after"] == pytest.approx(_perplexity_by_hand(scored[1], tok, held), rel=1e-5)
    assert abs(res["ppl_ratio"] - 1) > 1e-4, "4 steps at lr 2e-3 move the general-text perplexity (measured x0.99944)"
    assert res["alpha"] == 8 and res["exact"] is None and len(res["losses"]) == 4
    assert all((a == b).all() for a, b in zip(before, model.parameters()))  # the base is untouched


# ---------------------------------------------------------------------------------------------
# the precomputed forgetting grid that lesson 14 shows


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


def test_the_shipped_grid_is_the_bundled_models_only(hub_models, monkeypatch):
    """MODEL = "bundled" (or its folder) with GRID_STEPS = 0 shows the shipped grid at SEED; another model gets a
    live grid of models.LIVE_STEPS steps a run and a line saying so (never the bundled model's numbers as its own)."""
    from labkit import models

    shipped = forgetting.load_grid()
    assert shipped["model"] == "bundled" and forgetting.grid_source(shipped) == "precomputed by scripts/forgetting_grid.py"
    for name in ("bundled", None, str(models.BASE_MODEL_DIR)):
        assert forgetting.is_bundled(name) and forgetting.grid_for(name, None, None, "classify", 0) == (shipped, "")
    by_seed = {g["seed"]: g for g in forgetting.load_seed_grids()}
    assert forgetting.grid_for("bundled", None, None, "classify", 0, seed=2) == (by_seed[2], "")
    grid, line = forgetting.grid_for("bundled", None, None, "classify", 0, seed=7)
    assert grid == shipped and line == "No grid is shipped for SEED=7: this is SEED=0's."
    grid, line = forgetting.grid_for("bundled", None, None, "risk", 0)
    assert grid == shipped and "not TASK='risk'" in line and "GRID_STEPS" in line
    assert forgetting.describe_grid(shipped).startswith("precomputed by scripts/forgetting_grid.py at SEED=0: task "
                                                         "classify, 120 steps, batch 8, alpha 2r; the eight runs took 42 min")

    other = str(hub_models["gpt2"])
    assert not forgetting.is_bundled(other) and not forgetting.is_bundled("HuggingFaceTB/SmolLM2-135M-Instruct")
    calls = []
    monkeypatch.setattr(forgetting, "run_grid", lambda base, tok, **kw: calls.append(kw) or {"live": True})
    grid, line = forgetting.grid_for(other, "BASE", "TOK", "classify", 0, seed=3, n_eval=2)
    assert grid == {"live": True} and calls[-1] == {"task": "classify", "steps": models.LIVE_STEPS, "model": other,
                                                    "seed": 3, "n_eval": 2}
    assert other in line and "GRID_STEPS" in line and f"{models.LIVE_STEPS} steps" in line and "eight runs" in line
    grid, line = forgetting.grid_for("bundled", "BASE", "TOK", "classify", 5)
    assert line == "" and calls[-1]["steps"] == 5, "GRID_STEPS > 0 trains live for the bundled model too"
    with pytest.raises(ValueError, match="GRID_STEPS"):
        forgetting.grid_for("bundled", None, None, "classify", -1)


def test_paired_effect_and_remedies_read_the_shipped_grid_by_hand():
    """Each remedy pairs the runs that differ only in its knob; the geometric means computed here from the raw
    runs, not copied from an output."""
    import math

    runs = forgetting.load_grid()["runs"]
    at = {(r["lr"], r["r"], r["mix"]): r for r in runs}
    lr_pairs = [(at[(2e-4, r, m)], at[(2e-3, r, m)]) for r in (4, 64) for m in (0.0, 0.1)]
    geo = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs))  # noqa: E731
    e = forgetting.paired_effect(runs, "lr", 2e-4, 2e-3)
    assert e["n"] == 4 and e["g_safe"] == pytest.approx(geo([a["ppl_ratio"] for a, _ in lr_pairs]))
    assert e["g_risky"] == pytest.approx(geo([b["ppl_ratio"] for _, b in lr_pairs]))
    assert e["better"] == sum(a["ppl_ratio"] < b["ppl_ratio"] for a, b in lr_pairs)
    assert e["e_safe"] == pytest.approx(sum(a["exact"] for a, _ in lr_pairs) / 4)
    rows = forgetting.remedies(runs)
    assert [r["key"] for r in rows] == ["lr", "r", "mix"] and rows[0]["g_safe"] == e["g_safe"]
    assert rows[2]["safe"] == 0.1 and rows[2]["risky"] == 0.0, "the remedy's side of mixing is 10% general data"
    runs2 = [{"lr": 1e-3, "r": 4, "mix": m, "ppl_ratio": p, "exact": 0.5} for m, p in ((0.0, 2.0), (0.1, 1.95))]
    (only,) = forgetting.remedies(runs2)  # a grid that varies one knob: one row, no difference within 10%
    assert only["key"] == "mix" and only["verdict"].startswith("makes no clear difference")
    with pytest.raises(ValueError):
        forgetting.remedies([])
    with pytest.raises(ValueError, match="differ only in lr"):
        forgetting.paired_effect(runs2, "lr", 2e-4, 2e-3)


def test_grid_figures_name_the_all_risky_run_and_the_remedies_without_it():
    f = forgetting.grid_figures(_grid(0, {(2e-3, 64, 0.0): 50.0}))
    assert f["grid_worst_is_all_risky"] and f["grid_worst_ppl_ratio"] == pytest.approx(1.03 * 50)
    assert f["grid_others_max_ppl_ratio"] == pytest.approx(1.02)
    assert set(f) >= {"grid_lr_remedy_ratio_without_worst", "grid_r_remedy_ratio_without_worst",
                      "grid_mix_remedy_ratio_without_worst", "grid_low_lr_small_rank_max_exact", "grid_others_min_exact"}
    assert not forgetting.grid_figures(_grid(0, {(2e-4, 4, 0.1): 50.0}))["grid_worst_is_all_risky"]


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
    assert grids[0] == first and len(grids) >= 3, "lesson 14's verdicts are read over at least 3 seeds"
    assert [g["seed"] for g in grids] == sorted({g["seed"] for g in grids})
    for g in grids[1:]:
        assert (g["task"], g["steps"], g["n_eval"], g["made_by"]) == (first["task"], first["steps"], first["n_eval"],
                                                                    forgetting.SHIPPED_BY)
        assert [r["ppl_ratio"] for r in g["runs"]] != [r["ppl_ratio"] for r in first["runs"]]  # another seed, really


@pytest.mark.slow
def test_run_grid_live_on_each_hub_style_model(hub_model):
    """The live grid of lesson 14 for a non-bundled MODEL (GRID_STEPS > 0): every combination runs on the
    model's own template and targets, and the result says where it comes from."""
    from labkit import models

    kind, folder = hub_model
    base, tok = models.load_base(folder, device="cpu")
    grid, line = forgetting.grid_for(str(folder), base, tok, "risk", 1, lrs=[2e-3], ranks=[4], mixes=[0.0, 0.1],
                                     n_general_eval=2, n_eval=2)
    assert line == ""
    assert grid["model"] == str(folder) and grid["steps"] == 1 and len(grid["runs"]) == 2
    assert {r["mix"] for r in grid["runs"]} == {0.0, 0.1}
    # the "before" of every run is this model's own perplexity on the first 2 general_eval texts (by hand)
    held = [r["text"] for r in data.read_jsonl("general_eval.jsonl")][:2]
    for r in grid["runs"]:
        assert r["ppl_before"] == pytest.approx(_perplexity_by_hand(base, tok, held), rel=1e-5), kind
        assert r["ppl_ratio"] == pytest.approx(r["ppl_after"] / r["ppl_before"])
    assert forgetting.describe_grid(grid).startswith(f"measured live here on {folder}: task risk, 1 steps")
    assert [r["key"] for r in forgetting.remedies(grid["runs"])] == ["mix"]

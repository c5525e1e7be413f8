"""labkit.tuning: short LoRA runs, the sweep grid and figures, the learning-rate widget; the shipped results."""

import math

import pytest

from labkit import data, tuning


@pytest.fixture(scope="module")
def inputs(base):
    model, tok = base
    pairs = [data.to_prompt_completion(e, tok) for e in data.load("instructions", "train", task="risk", n=16)]
    general = [r["text"] for r in data.load("general", "eval", n=3)]
    return model, tok, pairs, general


def test_short_run_measures_learning_and_forgetting(inputs, monkeypatch):
    from labkit import evaluate

    model, tok, pairs, general = inputs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scored = []  # (model, its answers) of every evaluate.score call
    real = evaluate.score
    monkeypatch.setattr(evaluate, "score", lambda m, t, ex, *a, **k: scored.append((m, real(m, t, ex, *a, **k))) or scored[-1][1])
    evals = list(data.load("instructions", "eval", task="risk", n=2))
    row = tuning.short_run(model, tok, pairs, general, lr=3e-3, r=2, steps=6, eval_examples=evals)
    assert len(row["losses"]) == 6 and row["final_loss"] < row["losses"][0]
    assert row["ppl_ratio"] == pytest.approx(row["general_ppl"] / row["base_ppl"])
    # exact match is the trained adapter's (not the base's) share of answers equal to the reference, counted here
    (scored_model, got), = scored
    assert scored_model is not model and hasattr(scored_model, "peft_config")
    assert row["exact"] == sum(a == e["output"].strip() for a, e in zip(got["answers"], evals)) / len(evals)
    assert all((model.state_dict()[k] == v).all() for k, v in before.items()), "the base model must not change"


def test_short_run_rejects_bad_knobs(inputs):
    model, tok, pairs, general = inputs
    with pytest.raises(ValueError, match="learning rate"):
        tuning.short_run(model, tok, pairs, general, lr=0.0, r=2, steps=1)
    with pytest.raises(ValueError, match="r must be"):
        tuning.short_run(model, tok, pairs, general, lr=1e-3, r=0, steps=1)


def _rows():
    return [{"lr": lr, "r": r, "final_loss": 1.0 / (lr * 1e3 * r), "ppl_ratio": 1.0 + lr * 100, "losses": [1.0, 0.5],
             "general_ppl": 2.0, "base_ppl": 1.5} for lr in (1e-4, 1e-3, 1e-2) for r in (2, 8)]


def test_grid_orders_ranks_and_learning_rates():
    lrs, ranks, m = tuning.grid(_rows()[::-1], "ppl_ratio")
    assert lrs == [1e-4, 1e-3, 1e-2] and ranks == [2, 8]
    assert m[1][2] == pytest.approx(2.0) and m[0][0] == pytest.approx(1.01)
    lrs, ranks, m = tuning.grid(_rows()[:-1], "ppl_ratio")
    assert math.isnan(m[1][2]), "a missing cell is NaN, not a crash"


def test_figures_draw_without_a_display():
    fig = tuning.landscape_figure(_rows(), mark=(1e-3, 8))
    assert len(fig.axes) == 4  # two heatmaps (the rows carry no exact match) and their colour bars
    colours = {t.get_color() for ax in fig.axes[::2] for t in ax.texts}
    assert colours == {"k", "w"}, "cell numbers are dark on pale cells and white on dark ones"
    assert len(tuning.run_figure(_rows()[0]).axes) == 2


def test_the_forgetting_colours_are_not_washed_out_by_one_diverged_run():
    rows = [dict(row, exact=0.5, ppl_ratio=ratio) for row, ratio in zip(_rows(), (1.03, 1.39, 1.7, 1.0, 27.2, 18123.2))]
    fig = tuning.landscape_figure(rows)
    assert len(fig.axes) == 6, "loss, exact match and forgetting, each with its colour bar"
    heat = fig.axes[4]
    texts = {t.get_text() for t in heat.texts}
    assert {"x1.03", "x1.39", "x1.70", "x27", "x18,123"} <= texts, "every cell is written out, large ones whole"
    image = heat.images[0]
    shade = {t.get_text(): image.norm(image.get_array()[int(t.get_position()[1]), int(t.get_position()[0])])
             for t in heat.texts}
    assert shade["x1.39"] - shade["x1.03"] > 0.1, "x1.03 and x1.39 get visibly different colours"
    assert shade["x27"] == shade["x18,123"] == 1.0, "beyond the clip, the darkest colour"


def test_read_sweep_names_the_best_run_and_every_rise_in_loss():
    rows = [{"lr": lr, "r": r, "final_loss": loss, "exact": ex, "ppl_ratio": ppl}
            for r, runs in {2: [(3.0, 0.0, 1.0), (1.5, 0.5, 1.0), (1.0, 0.7, 1.7)],
                            32: [(1.2, 0.7, 0.99), (0.6, 0.85, 1.39), (4.1, 0.0, 18123.0)]}.items()
            for lr, (loss, ex, ppl) in zip((1e-3, 3e-3, 1e-2), runs)]
    lines = tuning.read_sweep(rows)
    assert len(lines) == 2
    assert lines[0].startswith("r=2   lowest loss at lr 1e-02") and "ROSE" not in lines[0]
    assert "lowest loss at lr 3e-03: loss 0.60, exact match 85%, forgetting x1.39" in lines[1]
    assert "from lr 3e-03 to 1e-02 the loss ROSE 0.60 -> 4.10, forgetting x18,123" in lines[1]


def test_the_widget_draws_the_landscape_and_trains_on_demand(inputs):
    model, tok, pairs, general = inputs
    box = tuning.lr_widget(model, tok, pairs, general, _rows(), steps=2, ranks=(2, 8), lr=1e-3, r=2)
    controls, landscape, run_out = box.children
    slider, rank, button = controls.children
    assert (slider.value, rank.value) == (1e-3, 2), "the widget opens on the lesson's own LR and R"
    assert landscape.outputs and "image/png" in landscape.outputs[0]["data"]
    first = landscape.outputs[0]["data"]["image/png"]
    slider.value = 1e-2
    assert landscape.outputs[0]["data"]["image/png"] != first, "moving the slider moves the mark"
    rank.value = 2
    box.train()
    text = run_out.outputs[0]["text"]
    assert text.startswith("lr 1.0e-02, r 2: loss") and "general-text perplexity" in text
    assert "image/png" in run_out.outputs[1]["data"] and not button.disabled


def test_the_shipped_sweep_covers_its_grid():
    sweep = tuning.load_results("lr_rank_sweep")
    lrs, ranks, m = tuning.grid(sweep["rows"], "final_loss")
    assert lrs == sorted(sweep["lrs"]) and ranks == sorted(sweep["ranks"])
    assert not any(math.isnan(v) for row in m for v in row)
    assert all(len(r["losses"]) == sweep["steps"] for r in sweep["rows"])


@pytest.mark.slow
def test_the_shipped_sweep_reproduces_from_its_script(base, load_script):
    """Measured, not read: scripts/lesson02_results.py's inputs and one of its cells (lr 3e-3, r 8) for 2 steps
    give the shipped row's first two losses and base perplexity (reproduced exactly: 8.07125, 7.73224; 1.59628)."""
    script = load_script("lesson02_results")
    model, tok = base
    pairs = [data.to_prompt_completion(e, tok) for e in data.load("instructions", "train", task=script.TASK)]
    general = [r["text"] for r in data.load("general", "eval", n=script.N_GENERAL)]
    sweep = tuning.load_results("lr_rank_sweep")
    assert (sweep["task"], sweep["n_general"], sweep["steps"]) == (script.TASK, script.N_GENERAL, script.SWEEP["steps"])
    shipped = next(r for r in sweep["rows"] if (r["lr"], r["r"]) == (3e-3, 8))
    row = tuning.short_run(model, tok, pairs, general, 3e-3, 8, steps=2)
    assert row["base_ppl"] == pytest.approx(shipped["base_ppl"], rel=1e-6)
    assert row["losses"] == pytest.approx(shipped["losses"][:2], abs=1e-4)


def test_a_missing_result_says_which_script_makes_it():
    with pytest.raises(FileNotFoundError, match="script"):
        tuning.load_results("no_such_result")


# what lesson 02 draws and tabulates: the bundled model's shipped results, or live runs for another model


def test_the_landscape_is_the_shipped_sweep_only_for_the_bundled_model(inputs, hub_models):
    from labkit import models

    model, tok, pairs, general = inputs
    shipped = tuning.landscape(model, tok, pairs, general, model="bundled")
    assert shipped["shipped"] and shipped["rows"] == tuning.load_results("lr_rank_sweep")["rows"]
    assert shipped["about"].startswith(f"the sweep: {len(shipped['rows'])} runs of 20 steps on 'classify'")
    other, otok = models.load_base(hub_models["gpt2"], device="cpu")
    opairs = [data.to_prompt_completion(e, otok) for e in data.load("instructions", "train", task="risk", n=16)]
    evals = list(data.load("instructions", "eval", task="risk", n=2))
    live = tuning.landscape(other, otok, opairs, general, model=hub_models["gpt2"], lr=3e-3, r=8, steps=2, task="risk",
                            eval_examples=evals)
    assert not live["shipped"] and live["lrs"] == [3e-4, 3e-3] and live["ranks"] == [2, 8]
    assert {(row["lr"], row["r"], row["steps"]) for row in live["rows"]} == {(a, b, 2) for a in (3e-4, 3e-3) for b in (2, 8)}
    assert len({row["base_ppl"] for row in live["rows"]}) == 1
    assert all("exact" in row for row in live["rows"]), "a live grid is scored on the examples it is given"
    assert "bundled model" in live["about"] and "2 x 2 grid trained live" in live["about"] and "'risk'" in live["about"]
    lrs, ranks, m = tuning.grid(live["rows"], "final_loss")
    assert not any(math.isnan(v) for row in m for v in row)

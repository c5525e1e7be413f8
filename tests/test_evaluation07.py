"""Lesson 07's metrics and tools: token F1, ROUGE-L (against the rouge-score package), format validity,
win rates from any judge, the rule judge and the MiniLM judge, mixing general text, eval callbacks."""

import random

import pytest

from labkit import data, evaluate, forgetting, judge


# ---------------------------------------------------------------------------------------------
# token F1 and ROUGE-L


def test_token_f1_by_hand():
    assert evaluate.token_f1("Risk: high", "risk: HIGH") == 1.0
    # prediction "the ratio is 30" vs reference "ratio 30 percent": common {ratio, 30}; P = 2/4, R = 2/3
    assert evaluate.token_f1("the ratio is 30", "ratio 30 percent") == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert evaluate.token_f1("low", "high") == 0.0
    assert evaluate.token_f1("", "") == 1.0 and evaluate.token_f1("", "x") == 0.0
    assert evaluate.token_f1("a a a", "a") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))  # counts, not sets


def test_lcs_length():
    assert evaluate.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert evaluate.lcs_length([], [1]) == 0


def _random_sentence(rng):
    words = ["the", "loan", "risk", "is", "high", "low", "ratio", "30%", "Linda", "Garcia", "$1,500", "paid", "a"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))


def test_rouge_l_matches_the_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(0)
    pairs = [(_random_sentence(rng), _random_sentence(rng)) for _ in range(300)]
    pairs += [("The debt-to-income ratio is $1,500 / $5,000 = 30%.", "The ratio is 30%."), ("Risk: high", "risk: HIGH")]
    for pred, ref in pairs:
        theirs = scorer.score(ref, pred)["rougeL"]  # rouge-score takes (target, prediction)
        ours = evaluate.rouge_l(pred, ref)
        assert ours["precision"] == pytest.approx(theirs.precision)
        assert ours["recall"] == pytest.approx(theirs.recall)
        assert ours["f1"] == pytest.approx(theirs.fmeasure), (pred, ref)


def test_rouge_l_rewards_order_token_f1_does_not():
    assert evaluate.token_f1("high risk", "risk high") == 1.0
    assert evaluate.rouge_l("high risk", "risk high")["f1"] == 0.5


def test_mean_score_and_errors():
    assert evaluate.mean_score(evaluate.rouge_l, ["a b", "c"], ["a b", "d"]) == 0.5
    assert evaluate.mean_score(evaluate.token_f1, ["a"], ["a"]) == 1.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        evaluate.mean_score(evaluate.token_f1, ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="expected a string"):
        evaluate.token_f1(None, "a")


def test_format_validity():
    assert evaluate.format_validity("risk", ["Risk: low", "Risk: hi", "risk: low"]) == pytest.approx(1 / 3)
    assert evaluate.format_validity(["classify", "extract"], ["memo", '{"a": 1}']) == 1.0
    with pytest.raises(ValueError, match="Unknown task 'nope'"):
        evaluate.format_validity("nope", ["x"])
    with pytest.raises(ValueError, match="2 tasks but 1 answers"):
        evaluate.format_validity(["risk", "risk"], ["Risk: low"])


# ---------------------------------------------------------------------------------------------
# win rates


def test_win_rate_counts_wins_ties_losses():
    score = lambda prompt, answer: len(answer)  # noqa: E731 - a judge that likes long answers
    res = evaluate.win_rate(score, ["p"] * 4, ["aaa", "a", "aa", "aaaa"], ["a", "aaa", "aa", "aaa"])
    assert (res["wins"], res["ties"], res["losses"], res["n"]) == (2, 1, 1, 4)
    assert res["win_rate"] == pytest.approx(2.5 / 4)
    assert evaluate.win_rate(score, ["p"], ["ab"], ["a"], tie_margin=1.0)["ties"] == 1
    with pytest.raises(ValueError, match="one answer of each system per prompt"):
        evaluate.win_rate(score, ["p"], ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="NaN"):
        evaluate.win_rate(lambda p, a: float("nan"), ["p"], ["a"], ["b"])


def test_pairwise_win_rate_cancels_position_bias():
    # a judge that always prefers the first answer shown: pure position bias, no opinion
    biased = lambda prompt, first, second: 0.9  # noqa: E731
    res = evaluate.pairwise_win_rate(biased, ["p"] * 3, ["a"] * 3, ["b"] * 3)
    assert res["win_rate"] == pytest.approx(0.5) and res["first_position_rate"] == pytest.approx(0.9)
    assert res["consistent"] == 0.0
    fair = lambda prompt, first, second: 1.0 if len(first) > len(second) else 0.0  # noqa: E731
    res = evaluate.pairwise_win_rate(fair, ["p"] * 2, ["long", "long"], ["s", "s"])
    assert res["win_rate"] == 1.0 and res["first_position_rate"] == 0.5 and res["consistent"] == 1.0


# ---------------------------------------------------------------------------------------------
# judges


def test_rule_judge_prefers_the_chosen_answer_on_most_preference_pairs():
    pairs = list(data.load("preferences", "eval"))
    acc = sum(judge.rule_score(p["prompt"], p["chosen"]) > judge.rule_score(p["prompt"], p["rejected"])
              for p in pairs) / len(pairs)
    assert acc > 0.8


def test_rule_judge_parts():
    prompt = "Rate the risk of this loan as low, medium or high.\n\nBorrower: Ana Silva\nMonthly income: $4,000"
    assert judge.task_of(prompt) == "risk" and judge.task_of("Who is the account holder?\n\nx") == "qa"
    assert judge.rule_score(prompt, "Risk: low") == 2.0
    assert judge.rule_score(prompt, "risk is low") == 1.0
    assert judge.grounded_share(prompt, "Ana Silva earns $4,000") == 1.0
    assert judge.grounded_share(prompt, "Bob Silva earns $9,999") == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="two strings"):
        judge.rule_score(prompt, None)


@pytest.mark.slow
def test_embedding_judge_learns_from_preference_pairs():
    pairs = list(data.load("preferences", "train", n=80))
    held = list(data.load("preferences", "eval", n=60))
    j = judge.EmbeddingJudge(max_length=96)
    assert j.accuracy(held) == 0.0  # an untrained head scores every answer 0: no pair is ranked right
    losses = j.fit(pairs, steps=150)
    assert losses[-1] < losses[0]
    assert j.accuracy(held) > 0.7
    with pytest.raises(ValueError, match="learning rate"):
        j.fit(pairs, lr=0)


# ---------------------------------------------------------------------------------------------
# forgetting: mixing general text, the evaluation callback


def test_mix_in_general_shares():
    task = [{"prompt": f"q{i}", "completion": "a"} for i in range(90)]
    general = [{"prompt": "<s>", "completion": f"g{i}"} for i in range(5)]
    mixed = forgetting.mix_in_general(task, general, 0.1, seed=0)
    assert len(mixed) == 100 and sum(m["prompt"] == "<s>" for m in mixed) == 10
    assert sorted(forgetting.mix_in_general(task, [], 0.0), key=lambda p: int(p["prompt"][1:])) == task  # mix 0: the task, shuffled
    assert mixed == forgetting.mix_in_general(task, general, 0.1, seed=0)  # deterministic
    for bad in (1.0, -0.1, "10%", float("nan"), True):
        with pytest.raises(ValueError, match="mix"):
            forgetting.mix_in_general(task, general, bad)
    with pytest.raises(ValueError, match="none were given"):
        forgetting.mix_in_general(task, [], 0.5)


def test_general_pairs_train_every_text_token(base):
    from labkit import sft

    _, tok = base
    pair = forgetting.general_pairs(["The duck was happy."], tok)[0]
    f = sft.tokenize_example(tok, pair["prompt"], pair["completion"])
    assert f["prompt_length"] == 1 and all(x != -100 for x in f["labels"][1:])


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
# the precomputed forgetting grid that lesson 07 plots


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
    """The numbers lesson 07 printed from the shipped grid before remedies() moved into labkit."""
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


@pytest.mark.slow
def test_run_grid_live_on_each_hub_style_model(hub_model):
    """The live grid of lesson 07 for a non-bundled MODEL (GRID_STEPS > 0): every combination runs on the
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

"""labkit.lessons.data (lesson 07's runs): the data it builds, the teacher-forced score against generation,
the reading of a curve, and the shipped sweep against its script (scripts/data_curve.py)."""

import json

import pytest

from labkit import data, dataprep, models
from labkit.lessons import data as lesson
from labkit.lessons import data_report as report


# ----------------------------------------------------------------------------- the data the cells train on

def test_the_plan_runs_every_kind_and_the_teacher_before_its_students():
    cells = lesson.plan()
    names = [c["name"] for c in cells]
    assert len(names) == len(set(names))
    assert [c["n"] for c in cells if c["name"].startswith("budget_")] == list(lesson.SIZES)
    assert all(c["steps"] == lesson.BUDGET for c in cells if c["kind"] not in ("teacher",) and not c["name"].startswith("epochs_"))
    assert {c["name"]: c["steps"] for c in cells if c["name"].startswith("epochs_")}["epochs_25"] == 4
    assert next(c for c in cells if c["name"] == "epochs_800")["same_as"] == "budget_800", \
        "one pass over 800 rows is the budget: the two curves share that run"
    assert "budget_{}".format(lesson.SMALL_CLEAN) in names, "the noisy runs are compared with a small clean one"
    assert names.index("teacher") < min(names.index(f"distill_{x}") for x in ("gold", "teacher", "verified"))
    leak = next(c for c in lesson.live_plan(1, n_heldout=10) if c["kind"] == "leak")
    assert leak["leaked"] == 5, "a live leak copies at most half the held-out rows"


def test_training_rows_of_each_kind():
    pool, held = lesson.pool(), lesson.heldout()
    cells = {c["name"]: c for c in lesson.plan()}
    assert lesson.training_rows(cells["budget_50"]) == pool[:50]
    assert [r["task"] for r in pool[:5]] == list(data.TASKS), "the first N rows hold every family in turn"
    noisy = lesson.training_rows(cells["noise30_800"])
    assert sum(a["output"] != b["output"] for a, b in zip(noisy, pool[:800])) == 240
    dup = lesson.training_rows(cells["duplicates"])
    texts = [dataprep.question(r) for r in dup]
    assert len(dup) == 400 and len(set(texts)) == 200
    assert sorted(texts.count(t) for t in set(texts))[-50:] == [5] * 50
    leak = lesson.training_rows(cells["leak"], held=held)
    assert leak[:200] == pool[:200] and leak[200:] == held[:100]
    assert len(held) == 400 and all(data.split_key(r) not in {data.split_key(p) for p in pool} for r in held)


def test_new_inputs_are_in_no_split_and_the_first_n_are_the_same():
    taken = {data.split_key(r) for s in ("train", "eval", "test") for r in data.read_jsonl(f"instructions_{s}.jsonl")}
    rows = lesson.new_inputs(30)
    assert not {data.split_key(r) for r in rows} & taken
    assert lesson.new_inputs(10) == rows[:10], "the lesson labels the first N_LABEL of the sweep's inputs"


def test_scraped_plants_the_copies_it_reports():
    rows = lesson.pool()[:100]
    out, truth = lesson.scraped(rows, exact=7, near=5, seed=1)
    assert len(out) == 112 and len(truth["exact"]) == 7 and len(truth["near"]) == 5
    for i, j in truth["exact"]:
        assert out[i] != out[j] and dataprep.normalise(dataprep.question(out[i])) == dataprep.normalise(dataprep.question(out[j]))
    for i, j in truth["near"]:
        assert out[j]["input"].startswith(out[i]["input"]) and out[j]["input"] != out[i]["input"]
    originals = [r for k, r in enumerate(out) if k not in {j for _, j in truth["exact"] + truth["near"]}]
    assert sorted(map(json.dumps, originals)) == sorted(map(json.dumps, rows))


def test_an_entity_split_keeps_each_applicant_on_one_side_and_a_random_split_does_not():
    rows = lesson.entity_rows(30, 3)
    assert len(rows) == 90 and {r["task"] for r in rows} == {"risk", "dti"}
    assert all(dataprep.verify(r, r["output"]) for r in rows), "the answers follow the course's rules"
    assert len({dataprep.question(r) for r in rows}) == 90, "three different rows per applicant"
    for by in ("row", "entity"):
        train, test = lesson.split_rows(rows, by)
        assert len(test) == 30 and len(train) == 60
        both = {r["entity"] for r in train} & {r["entity"] for r in test}
        assert (len(both) == 0) == (by == "entity"), by
    with pytest.raises(ValueError, match="by must be"):
        lesson.split_rows(rows, "applicant")


def test_with_duplicates():
    rows = [{"task": "qa", "instruction": str(i), "input": "", "output": "x"} for i in range(10)]
    out = lesson.with_duplicates(rows, copied=3, times=4, seed=0)
    counts = sorted([r["instruction"] for r in out].count(str(i)) for i in range(10))
    assert counts == [1] * 7 + [4] * 3


# ----------------------------------------------------------------------------- scoring and reading

def test_bend_is_the_first_size_whose_interval_holds_every_larger_score():
    assert report.bend([(25, 8, 80), (50, 21, 80), (100, 44, 80), (200, 60, 80), (400, 66, 80), (800, 69, 80)]) == 400
    assert report.bend([(25, 0, 80), (50, 0, 80), (100, 0, 80)]) == 25, "flat at zero is flat"
    assert report.bend([(25, 10, 80), (50, 40, 80), (100, 79, 80)]) == 100, "still rising: the last size"


def _fake_result():
    tasks = "ecrdq" * 2
    cells = {"budget_25": {"kind": "curve", "name": "budget_25", "n": 25, "right": "1100000000"},
             "budget_50": {"kind": "curve", "name": "budget_50", "n": 50, "right": "1111100000"},
             "epochs_25": {"kind": "curve", "name": "epochs_25", "n": 25, "right": "0000000000"},
             "epochs_50": {"kind": "curve", "name": "epochs_50", "n": 50, "right": "1000010000"}}
    return {"heldout_tasks": tasks, "cells": cells, "settings": {"budget": 150, "epochs": 1}}


def test_curve_counts_each_family_on_its_own_rows():
    c = report.curve(_fake_result(), "budget")
    assert c["extract"] == [(25, 1, 2), (50, 1, 2)] and c["dti"] == [(25, 0, 2), (50, 1, 2)]
    assert c["all"] == [(25, 2, 10), (50, 5, 10)]
    assert report.curve(_fake_result(), "epochs")["extract"] == [(25, 0, 2), (50, 2, 2)]
    assert report.describe_curve(_fake_result(), "budget")[0].split() == ["examples", "25", "50"]
    both = report.describe_curve(_fake_result())
    assert both[0].startswith("fixed budget, 150 steps") and both[1].split() == ["examples", "25", "50"]
    assert "1 pass over the data (dashed):" in both and len(both) == 2 * len(report.describe_curve(_fake_result(), "epochs")) + 2


@pytest.mark.slow
def test_greedy_exact_gives_the_verdicts_of_generation():
    from labkit import evaluate, preference

    base, tok = models.load_base(device="cpu")
    teacher, _ = preference.reference_model(base, tok)
    rows = data.read_jsonl("instructions_eval.jsonl")[:30]
    forced = lesson.greedy_exact(teacher, tok, rows)
    assert forced == evaluate.score(teacher, tok, rows)["right"]
    assert 0 < sum(forced) < len(rows), "right and wrong answers both occur, so the comparison means something"
    answers = evaluate.score(teacher, tok, rows)["answers"]
    assert all(lesson.greedy_exact(teacher, tok, rows, targets=answers)), "the model's own answers are its greedy ones"


# ----------------------------------------------------------------------------- the shipped sweep and its script

@pytest.fixture(scope="module")
def shipped():
    return lesson.load_result()


def test_the_shipped_sweep_is_the_plan(shipped):
    held = lesson.heldout()
    assert shipped["made_by"] == lesson.SCRIPT == "scripts/data_curve.py"
    assert shipped["settings"] == lesson.settings(lesson.plan(), len(held))
    assert list(shipped["cells"]) == [c["name"] for c in lesson.plan()]
    assert shipped["heldout_tasks"] == "".join(r["task"][0] for r in held)
    assert {"date", "cpus", "wall_seconds", "load_average_at_start"} <= set(shipped["context"])
    assert "commit" not in json.dumps(shipped["context"]) and shipped["context"]["model"] == "bundled"
    for name, cell in shipped["cells"].items():
        if cell["kind"] == "teacher":
            assert len(cell["answers"]) == lesson.N_DISTILL and len(cell["heldout_answers"]) == len(held)
            continue
        size = len(cell["tasks"]) if cell["kind"] == "entity" else len(held)
        assert len(cell["right"]) == size and set(cell["right"]) <= {"0", "1"}, name
        assert cell["loss_last"] < cell["loss_first"], f"{name} learned nothing"
    assert shipped["cells"]["epochs_800"]["right"] == shipped["cells"]["budget_800"]["right"]
    assert shipped["cells"]["duplicates"]["rows"] == 400 and shipped["cells"]["leak"]["rows"] == 300


def test_the_shipped_teacher_is_the_shipped_sft_model_and_its_wrong_rows_are_recorded(shipped):
    teacher = shipped["cells"]["teacher"]
    held = lesson.heldout()
    wrong = [i for i, (r, a) in enumerate(zip(held, teacher["heldout_answers"])) if a != r["output"] and a.strip()]
    for labels in ("gold", "teacher", "verified"):
        cell = shipped["cells"][f"distill_{labels}"]
        assert cell["teacher_wrong"] == wrong and len(cell["copies_teacher"]) == len(wrong)
    kept = [r for r, a in zip(lesson.new_inputs(), teacher["answers"]) if a.strip() and dataprep.verify(r, a)]
    assert shipped["cells"]["distill_verified"]["rows"] == len(kept)


def test_every_reading_of_the_shipped_sweep_runs(shipped):
    for describe in (report.describe_noise, report.describe_duplicates, report.describe_entity, report.describe_distill):
        assert describe(shipped)
    check = report.leak_check(shipped, n=13, threshold=0.5)
    assert check["flagged"] == check["leaked"], "on the shipped leak, the 13-gram check at 0.5 finds exactly the leak"
    assert report.describe_leak(shipped, check)
    report.curve_figure(shipped)


def test_the_shipped_sweep_is_the_bundled_models_only(hub_models, monkeypatch):
    res, line = lesson.result_for("bundled", None, None, 0)
    assert res == lesson.load_result() and line.startswith("shipped: ")
    calls = []
    monkeypatch.setattr(lesson, "sweep", lambda base, tok, cells, n, **kw: calls.append((cells, n, kw)) or {"live": 1, "cells": {}})
    res, line = lesson.result_for(str(hub_models["gpt2"]), "BASE", "TOK", 0, n_heldout=6)
    assert res["live"] == 1 and "not the bundled model" in line and "CURVE_STEPS" in line and "LIVE" in line
    cells, n, _ = calls[-1]
    assert n == 6 and {c["steps"] for c in cells if c["kind"] not in ("teacher",) and not c["name"].startswith("epochs")} \
        == {models.LIVE_STEPS}
    res, line = lesson.result_for("bundled", "BASE", "TOK", 3)
    assert res["live"] == 1 and line.startswith("LIVE"), "CURVE_STEPS > 0 trains live for the bundled model too"


@pytest.mark.slow
def test_the_script_regenerates_a_shipped_cell(tmp_path, load_script, shipped):
    """The same computation: the cheapest cell of the shipped sweep, recomputed by the script on the first
    40 held-out rows, gives the shipped losses and per-row verdicts."""
    mod = load_script("data_curve")
    out = tmp_path / "curve.json"
    assert mod.main(["--only", "epochs_25", "--n-heldout", "40", "--work", str(tmp_path / "cells"),
                     "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    cell, ref = again["cells"]["epochs_25"], shipped["cells"]["epochs_25"]
    assert cell["steps"] == ref["steps"] == 4 and cell["rows"] == ref["rows"] == 25
    assert cell["loss_first"] == pytest.approx(ref["loss_first"], rel=1e-4)
    assert cell["loss_last"] == pytest.approx(ref["loss_last"], rel=1e-3)
    assert cell["right"] == ref["right"][:40]
    assert again["settings"]["n_heldout"] == 40 and again["settings"]["cells"] == ["epochs_25"]

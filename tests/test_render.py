"""`labkit render` and labkit.course.show.record: parameters in, executed notebooks and a summary page out."""

import json

import nbformat
import pytest

from labkit.course import render
from labkit.course.cli import main
from labkit.course.show import RECORD_MIME, name_of, record, record_many, recorded


def _notebook(path, params_src, body_src, fast=None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if fast:
        nb.metadata["labkit"] = {"fast_parameters": fast}
    cell = nbformat.v4.new_code_cell(params_src)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body_src)]
    nbformat.write(nb, str(path))
    return path


def test_parse_params_reads_literals_and_strings():
    assert render.parse_params(["R=16", "LR=3e-4", "DEVICE=cuda", "M=HuggingFaceTB/SmolLM2-135M", "F=False"]) == {
        "R": 16, "LR": 3e-4, "DEVICE": "cuda", "M": "HuggingFaceTB/SmolLM2-135M", "F": False}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        render.parse_params(["R16"])


def test_parameter_names_and_recorded_read_a_notebook():
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "A = 1\nB_2 = 'x'  # c\n",
                     "outputs": []},
                    {"cell_type": "code", "metadata": {}, "source": "",
                     "outputs": [{"output_type": "display_data", "data": {RECORD_MIME: {"name": "acc", "value": 0.5},
                                                                           "text/plain": "acc = 0.5"}}]}]}
    assert render.parameter_names(nb) == {"A", "B_2"}
    assert render.recorded(nb) == {"acc": 0.5}
    assert render.parameter_names({"cells": []}) == set()


def test_record_stores_the_value_and_shows_the_learner_nothing(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append((obj, raw)))
    import torch

    record("loss", torch.tensor(0.25))
    record("steps", 10)
    assert shown[0] == ({RECORD_MIME: {"figures": [["loss", 0.25]]}, "text/plain": ""}, True)
    assert shown[1][0][RECORD_MIME] == {"figures": [["steps", 10]]}
    record("bad", float("nan"))
    assert shown[2][0][RECORD_MIME]["figures"] == [["bad", "nan"]]  # JSON has no NaN
    with pytest.raises(ValueError):
        record("not a name", 1)
    with pytest.raises(TypeError):
        record("vec", [1, 2])
    assert recorded()["loss"] == 0.25 and recorded()["bad"] == "nan"


def test_record_many_is_one_output_that_recorded_reads_back(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append(obj))
    record_many({"exact_sft": 0.5, "exact_dpo": 0.75, "ok": True})
    assert len(shown) == 1 and shown[0]["text/plain"] == "", "maintainer machinery: the learner sees no 'recorded:' line"
    nb = {"cells": [{"cell_type": "code", "source": "", "outputs": [
        {"output_type": "display_data", "data": shown[0]},
        {"output_type": "display_data", "data": {RECORD_MIME: {"name": "exact_dpo", "value": 0.8}}}]}]}
    assert render.recorded(nb) == {"exact_sft": 0.5, "exact_dpo": 0.8, "ok": True}, "a later record wins"
    real = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[
        nbformat.v4.new_output("display_data", data=shown[0])])])
    saved = nbformat.reads(nbformat.writes(real), as_version=4)
    assert list(render.recorded(saved)) == ["exact_sft", "exact_dpo", "ok"], "the order survives a save"
    assert {k: recorded()[k] for k in ("exact_sft", "ok")} == {"exact_sft": 0.5, "ok": True}
    with pytest.raises(ValueError, match="at least one"):
        record_many({})
    with pytest.raises(TypeError):
        record_many({"a": 1, "b": None})


def test_summary_markdown_lists_status_time_params_and_metrics():
    rows = [{"notebook": "a.ipynb", "status": "ok", "wall_s": 1.5, "params": {"R": 4}, "metrics": {"acc": 0.123456},
             "error": None, "html": "a.html"},
            {"notebook": "b.ipynb", "status": "failed", "wall_s": 0.3, "params": {}, "metrics": {},
             "error": "PapermillExecutionError: x | y", "html": None}]
    md = render.summary_markdown(rows, {"R": 4}, fast=False)
    assert "1 of 2 notebooks ran without error" in md
    assert "| [a.ipynb](a.ipynb) ([html](a.html)) | ok | 1.5 | R=4 | acc = 0.1235 |" in md
    assert "FAILED: PapermillExecutionError: x \\| y" in md


@pytest.mark.slow
def test_labkit_render_runs_notebooks_with_parameters(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    a = _notebook(src / "01_a.ipynb", "R = 8\nSTEPS = 100\n",
                  "from labkit.course.show import record\nrecord('r_times_steps', R * STEPS)", fast={"STEPS": 2})
    b = _notebook(src / "02_b.ipynb", "SEED = 0\n", "raise RuntimeError('boom')")
    out = tmp_path / "out"
    code = main(["render", str(a), str(b), "-p", "R=4", "--fast", "--out", str(out)])
    assert code == 1  # one notebook failed
    summary = json.loads((out / "summary.json").read_text())
    ok, failed = summary["rows"]
    assert ok["params"] == {"STEPS": 2, "R": 4}          # R only where the parameters cell has it
    assert ok["metrics"] == {"r_times_steps": 8} and ok["status"] == "ok"
    assert failed["params"] == {} and failed["status"] == "failed" and "boom" in (failed["error"] or "") + \
        (out / "02_b.ipynb").read_text()
    md = (out / "summary.md").read_text()
    assert "r_times_steps = 8" in md and "FAILED" in md
    assert (out / "01_a.ipynb").is_file()
    assert "summary:" in capsys.readouterr().out


def test_render_rejects_a_missing_notebook_and_a_bad_param(tmp_path, capsys):
    assert main(["render", str(tmp_path / "nope.ipynb"), "--out", str(tmp_path / "o")]) == 2
    assert main(["render", "-p", "oops", "--out", str(tmp_path / "o")]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_prose_figures_skip_maths_code_and_plain_counts():
    text = ("Accuracy 93% after 20 steps, x1.07 slower, loss 0.145. $p = 0.5$ and `lr=3e-3`, bitsandbytes "
            "0.50.2.\n```\nx = 0.25\n```")
    assert render.prose_figures(text) == ["93%", "x1.07", "0.145"]


def test_unbacked_figures_are_the_stated_ones_no_output_prints():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("The judge agreed with 87% of pairs; the paper reports 31.4 GB; "
                                              "merged is x1.00 of the base."),
                nbformat.v4.new_code_cell("print(...)")]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="merged x1.00 of the base; 91%\n")]
    nb = json.loads(nbformat.writes(nb))
    assert render.unbacked_figures(nb) == ["87%", "31.4"]
    nb["metadata"]["labkit"] = {"prose_constants": ["31.4"]}
    assert render.unbacked_figures(nb) == ["87%"]
    nb["cells"][1]["outputs"][0]["text"] = "agreement 187%, merged x1.005\n"
    assert render.unbacked_figures(nb) == ["87%", "x1.00"], "a figure must appear whole, not inside another"
    nb["cells"][1]["outputs"][0]["text"] = "87% with bitsandbytes 31.4.2, merged x1.00\n"
    assert render.unbacked_figures(nb) == [], "31.4 is listed as a constant"
    nb["metadata"]["labkit"] = {}
    assert render.unbacked_figures(nb) == ["31.4"], "a version 31.4.2 does not back the figure 31.4"


def test_name_of_turns_a_label_into_a_record_name():
    assert name_of("RAG, tuned reader") == "rag_tuned_reader"
    assert name_of("shipped adapter") == "shipped_adapter" and name_of("4-bit (NF4)") == "_4_bit_nf4"
    assert all(name_of(x).isidentifier() for x in ("PPO, KL coef 0.2", "a  b", "2e-4"))

"""The lesson contract (labkit.course.contract) on every notebook, and its rules on small made-up notebooks so
that each rule is seen to fail."""

import json
from pathlib import Path

import nbformat
import pytest

from labkit.course import contract

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_lesson_keeps_the_contract(path):
    found = contract.problems(path)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_lesson_is_benched_within_the_contract(path):
    found = contract.bench_problems(path)
    assert not found, "\n".join(found)


# ----------------------------------------------------------------------------- the rules, seen to fail

GOOD_TITLE = ("# 42 · The answer\n\nOne idea, stated in one sentence.\n\n**What you will learn**\n- a thing")


def _write(tmp_path, cells, name="42_demo.ipynb"):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def _lesson(tmp_path, title=GOOD_TITLE, params="MODEL = 'bundled'\nDEVICE = 'auto'\nSEED = 0", code="", extra_md="",
            name="42_demo.ipynb"):
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    cells = [nbformat.v4.new_markdown_cell(title), p, nbformat.v4.new_code_cell(code),
             nbformat.v4.new_markdown_cell("## 1. The idea\n" + extra_md),
             nbformat.v4.new_markdown_cell("## Recap\n- done"), nbformat.v4.new_markdown_cell("## Exercises\nDo it.")]
    return _write(tmp_path, cells, name)


def test_a_lesson_that_keeps_the_contract_has_no_problem(tmp_path):
    assert contract.problems(_lesson(tmp_path, code="from labkit import guard\nshow_source(guard.positive_int)")) == []


def test_the_title_and_the_one_sentence_idea(tmp_path):
    assert "the title" in contract.problems(_lesson(tmp_path, title="# The answer\n\nOne idea.\n\n**What you will learn**"))[0]
    found = contract.problems(_lesson(tmp_path, title="# 42 · The answer\n\nTwo ideas. Here is the second.\n\n**What you will learn**"))
    assert any("one sentence" in f for f in found)


def test_the_sections_in_order(tmp_path):
    path = _lesson(tmp_path)
    nb = json.loads(path.read_text())
    nb["cells"] = [c for c in nb["cells"] if "Exercises" not in "".join(c["source"])]
    path.write_text(json.dumps(nb))
    assert any("sections" in f for f in contract.problems(path))


def test_words_knobs_listings_and_machinery(tmp_path, monkeypatch):
    assert any("words of prose" in f for f in contract.problems(_lesson(tmp_path, extra_md="word " * 1501)))
    assert not any("words" in f for f in contract.problems(_lesson(tmp_path, extra_md="word " * 1501, name="18_clinic.ipynb"))), \
        "a capstone has 2,000 words"
    many = "\n".join(f"K{i} = {i}" for i in range(10))
    assert any("13 knobs" in f for f in contract.problems(_lesson(tmp_path, params="MODEL = 1\nDEVICE = 2\nSEED = 3\n" + many)))
    monkeypatch.setattr(contract, "MAX_LISTING_LINES", 10)
    long_listing = contract.problems(_lesson(tmp_path, code="from labkit.course import seeds\nshow_source(seeds.run)"))
    assert any("more than 10" in f for f in long_listing)
    assert any("name a labkit function" in f for f in contract.problems(_lesson(tmp_path, code="f = print\nshow_source(f)")))
    seeds = contract.problems(_lesson(tmp_path, code="print(seeds.report(seeds.load('x'), {}, {}, {'c': lambda f: 1}))"))
    assert any("seeds.report" in f for f in seeds) and any("lambda" in f for f in seeds)


def test_the_bench_row_must_be_fresh_and_within_limits(tmp_path):
    path = _lesson(tmp_path)
    bench = tmp_path / "notebooks.json"
    row = {"notebook": path.name, "code_sha": contract.code_hash(path), "wall_s": 12.0, "peak_rss_mb": 900, "error": None}
    bench.write_text(json.dumps({"rows": [row]}))
    assert contract.bench_problems(path, bench) == []
    bench.write_text(json.dumps({"rows": [{**row, "wall_s": 61.0, "peak_rss_mb": 1600}]}))
    assert len(contract.bench_problems(path, bench)) == 2
    bench.write_text(json.dumps({"rows": [{**row, "code_sha": "stale"}]}))
    assert "changed since it was benched" in contract.bench_problems(path, bench)[0]
    bench.write_text(json.dumps({"rows": []}))
    assert "no row" in contract.bench_problems(path, bench)[0]

"""docs/instructor.md (the workshop guide) names only what exists, and its timing table is the bench's.

Every exercise and quiz id it names must be registered (labkit.check.registry), every lesson it names must be a
notebook under notebooks/ (and every exercises/ path a file), no run time may be written by hand outside the block
that scripts/bench_notebooks.py writes, and that block must be what the script writes from bench/notebooks.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "instructor.md"

# backticked snake_case words in the guide that are not exercise ids (library names, knobs); keep it short
NOT_IDS = {"get_peft_model"}

QUIZ = re.compile(r"\bq\d\d_[A-Za-z0-9_*]*")
BACKTICKED = re.compile(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)`")
ONLY = re.compile(r"--only\s+([a-z][A-Za-z0-9_,*]*)")  # not the placeholder ID,ID,...
STEM = re.compile(r"\b(\d\d_[a-z][a-z0-9_]*)")
EXERCISE_PATH = re.compile(r"\bexercises/([^\s`),]+)")
SECONDS = re.compile(r"\b\d+(?:\.\d+)?\s?(?:s|secs?|seconds?)\b|\brun(?:s in| time)\s+\d")


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_notebooks")


@pytest.fixture(scope="module")
def known_ids() -> set[str]:
    from labkit.check import registry

    registry.load()
    return set(registry.EXERCISES) | set(registry.QUESTIONS)


def outside_bench(text: str, bench) -> str:
    """TEXT without the block between the bench markers (the only place a run time may appear)."""
    head, rest = text.split(bench.BENCH_START, 1)
    return head + rest.split(bench.BENCH_END, 1)[1]


def named_ids(text: str) -> set[str]:
    """The exercise and quiz ids TEXT names: every qNN_ word (wildcards included), the --only lists, and every
    backticked snake_case word that is not in NOT_IDS."""
    ids = set(QUIZ.findall(text)) | {w for w in BACKTICKED.findall(text) if w not in NOT_IDS}
    for only in ONLY.findall(text):
        ids |= {i for i in only.split(",") if i}
    return ids


def unknown_ids(text: str, known: set[str]) -> list[str]:
    return sorted(i for i in named_ids(text) if i not in known)


def missing_files(text: str, root: Path = ROOT) -> list[str]:
    """Lessons (NN_stem, NN_stem.ipynb, NN_stem_exercises.ipynb) and exercises/ paths TEXT names that do not exist."""
    missing = set()
    for token in STEM.findall(text):
        stem = token.removesuffix("_exercises")
        if not (root / "notebooks" / f"{stem}.ipynb").is_file():
            missing.add(token)
    for path in EXERCISE_PATH.findall(text):
        if not (root / "exercises" / path).is_file():
            missing.add(f"exercises/{path}")
    return sorted(missing)


def test_the_guide_names_only_registered_exercises_and_quizzes(known_ids):
    text = DOC.read_text()
    named = named_ids(text)
    assert len(named) >= 30, f"the checker found only {sorted(named)}: has the guide's way of naming ids changed?"
    assert unknown_ids(text, known_ids) == [], "docs/instructor.md names ids that `labkit exercises list` does not show"


def test_the_guide_names_only_lessons_and_exercise_notebooks_that_exist():
    text = DOC.read_text()
    assert len(set(STEM.findall(text))) >= 15
    assert missing_files(text) == []


def test_the_checkers_catch_old_and_invented_names(known_ids):
    planted = ("quiz `q04_weights_7b_gb`, quizzes `q07_*`, exercise `nf4_bits`, "
               "`--only lora_forward,lora_fwd`, `20_agents`, `18_broken_runs`, exercises/07_evaluation_exercises.ipynb")
    assert set(unknown_ids(planted, known_ids)) == {"q04_weights_7b_gb", "q07_*", "nf4_bits", "lora_fwd"}
    assert set(missing_files(planted)) >= {"20_agents", "18_broken_runs", "exercises/07_evaluation_exercises.ipynb"}


def test_no_run_time_is_written_by_hand(bench):
    prose = outside_bench(DOC.read_text(), bench)
    assert SECONDS.findall(prose) == [], "run times belong in the bench block (scripts/bench_notebooks.py writes it)"
    assert SECONDS.findall("`00_welcome` (run time 7 s); its notebook runs in 23 s")  # the checker sees them


def test_the_timing_table_is_what_the_bench_script_writes(bench):
    text = DOC.read_text()
    data = json.loads((ROOT / "bench" / "notebooks.json").read_text())
    assert text.count(bench.BENCH_START) == 1 and text.count(bench.BENCH_END) == 1
    assert bench.instructor_with_bench(text, data) == text, (
        "docs/instructor.md's timing table differs from bench/notebooks.json: "
        "python -c 'import runpy; runpy.run_path(\"scripts/bench_notebooks.py\")[\"write_instructor\"]()'")
    block = bench.instructor_bench_block(data)
    assert all(r["notebook"] in block for r in data["rows"])


def test_the_timing_table_follows_the_bench(bench):
    data = {"meta": {"date": "2030-01-01", "cpus": 2, "machine": "x", "python": "3.11", "load_avg_1m": [0.5, 0.7],
                     "memory_limit_mb": 1536, "time_limit_s": 60},
            "rows": [{"notebook": "01_lora_from_scratch.ipynb", "date": "2030-01-01", "load_avg_1m": 0.6, "wall_s": 41.2,
                      "kernel_cpu_s": 70.0, "peak_rss_mb": 1065, "error": None, "within_memory_limit": True,
                      "within_time_limit": True}]}
    text = bench.instructor_with_bench(f"a\n{bench.BENCH_START}\nold\n{bench.BENCH_END}\nb\n", data)
    assert "| 01_lora_from_scratch.ipynb | 2030-01-01 | 0.6 | 41.2 | 70.0 | 1,065 | yes | ok |" in text
    assert "old" not in text and "busy" not in text and text.startswith("a\n") and text.endswith("\nb\n")
    data["rows"][0]["load_avg_1m"] = 9.0
    assert "busy" in bench.instructor_with_bench(text, data)
    with pytest.raises(ValueError):
        bench.instructor_with_bench("no markers", data)

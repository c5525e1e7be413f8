"""labkit.course.syllabus: the course map shipped in the package and shown in README.md is the notebooks' and the
bench's, and its parts follow the course's order."""

from pathlib import Path

import pytest

from labkit.course import syllabus

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_map_is_the_notebooks_and_the_bench():
    assert syllabus.load() == syllabus.build(), "stale map: run `python -m labkit.course.syllabus --write`"


def test_the_readme_shows_the_map():
    text = (ROOT / "README.md").read_text()
    assert syllabus.readme_with_map(text, syllabus.load()) == text, "run `python -m labkit.course.syllabus --write`"


def test_parts_cover_every_lesson_number_in_order():
    assert [syllabus.part_of(f"{n:02d}") for n in (0, 1, 5, 6, 12, 13, 15, 16, 17, 18, 19)] == [
        "start", "adapters", "adapters", "training objectives", "training objectives", "measuring and deciding",
        "measuring and deciding", "production", "production", "capstone", "capstone"]
    with pytest.raises(ValueError, match="in no part"):
        syllabus.part_of("20")


def test_the_markdown_names_each_part_once_and_each_lesson():
    rows = [{"number": "01", "stem": "01_a", "title": "A", "idea": "One.", "part": "adapters", "wall_s": 12.3},
            {"number": "02", "stem": "02_b", "title": "B", "idea": "Two.", "part": "adapters", "wall_s": None}]
    table = syllabus.markdown(rows).splitlines()
    assert table[2] == "| adapters | `01_a`: A | One. | 12 s |"
    assert table[3] == "|  | `02_b`: B | Two. | not benched |"
    with pytest.raises(ValueError, match="markers"):
        syllabus.readme_with_map("no markers", rows)

"""labkit.dataprep: normalised-hash dedup, n-gram contamination, label noise and the verifier, each on
cases where a wrong implementation gives a different answer."""

import random

import pytest

from labkit import data, dataprep


@pytest.fixture(scope="module")
def rows():
    return data.read_jsonl("instructions_train.jsonl")


# ----------------------------------------------------------------------------- exact duplicates

def test_normalise_removes_case_spacing_and_unicode_forms_only():
    assert dataprep.normalise("  Risk:\u00a0 HIGH\n") == "risk: high"
    assert dataprep.normalise("ﬁle") == "file", "NFKC folds the ligature"
    assert dataprep.normalise("$1,500") != dataprep.normalise("$1500"), "punctuation is content"


def test_exact_dedup_keeps_the_first_of_each_group_in_order():
    texts = ["b", "A  x", "a x", "c", "B", "a\tx\n"]
    assert dataprep.exact_dedup(texts) == [0, 1, 3]
    assert dataprep.exact_dedup([]) == []
    assert dataprep.text_hash("Hello  World") == dataprep.text_hash("hello world")
    assert dataprep.text_hash("hello world") != dataprep.text_hash("hello worlds")


def test_exact_dedup_finds_the_planted_copies_and_nothing_else(rows):
    from labkit.lessons.data import scraped

    texts, truth = scraped(rows[:300], exact=20, near=15, seed=3)
    kept = dataprep.exact_dedup([dataprep.question(r) + "\n" + r["output"] for r in texts])
    dropped = set(range(len(texts))) - set(kept)
    exact = {j if i < j else i for i, j in truth["exact"]}  # the later of each planted pair goes
    assert dropped == exact, "every exact copy found, no near copy and no distinct row dropped"


# ----------------------------------------------------------------------------- n-gram overlap

def test_ngrams_and_words():
    assert dataprep.words("Income: $5,000!") == ["income", "5", "000"]
    assert dataprep.ngrams("a b c d", 2) == {("a", "b"), ("b", "c"), ("c", "d")}
    assert dataprep.ngrams("a b", 3) == {("a", "b")}, "a text shorter than n is one n-gram"
    assert dataprep.ngrams("", 3) == set()


def test_ngram_overlap_is_the_share_of_a_texts_ngrams_seen_in_the_reference():
    ref = ["the cat sat on the mat", "a dog ran"]
    assert dataprep.ngram_overlap(["the cat sat on the mat"], ref, n=3) == [1.0]
    # 4 trigrams: "the cat sat", "cat sat on" are in ref; "sat on a", "on a log" are not
    assert dataprep.ngram_overlap(["the cat sat on a log"], ref, n=3) == [0.5]
    assert dataprep.ngram_overlap(["nothing here at all"], ref, n=3) == [0.0]
    assert dataprep.ngram_overlap([""], ref, n=3) == [0.0]
    assert dataprep.ngram_overlap(["x y z"], [], n=3) == [0.0]
    with pytest.raises(ValueError, match="n must be"):
        dataprep.ngram_overlap(["x"], ref, n=0)


def test_contamination_flags_copied_rows_not_rows_of_the_same_template(rows):
    heldout = data.read_jsonl("instructions_eval.jsonl")
    train = [dataprep.question(r) + "\n" + r["output"] for r in rows]
    leaked = heldout[:40]
    clean = heldout[40:]
    reference = train + [dataprep.question(r) + "\n" + r["output"] for r in leaked]
    texts = [dataprep.question(r) + "\n" + r["output"] for r in heldout]
    flags = dataprep.contaminated(texts, reference, n=13, threshold=0.5)
    assert flags == [True] * len(leaked) + [False] * len(clean)
    shares = dataprep.ngram_overlap(texts[40:], reference, n=13)
    assert sum(s > 0 for s in shares) > len(clean) // 2, "templates share 13-grams: 'any overlap' flags clean rows"


# ----------------------------------------------------------------------------- label noise

def test_add_noise_changes_exactly_the_chosen_answers_and_keeps_their_format(rows):
    subset = rows[:200]
    noisy, flipped = dataprep.add_noise(subset, 0.3, seed=5)
    assert len(flipped) == 60 and flipped == sorted(set(flipped))
    for i, (a, b) in enumerate(zip(subset, noisy)):
        if i in flipped:
            assert b["output"] != a["output"] and data.answer_format_ok(a["task"], b["output"]), (a, b)
            assert {k: v for k, v in b.items() if k != "output"} == {k: v for k, v in a.items() if k != "output"}
        else:
            assert b == a
    assert subset == rows[:200], "the input rows are not changed"
    assert dataprep.add_noise(subset, 0.3, seed=5) == (noisy, flipped)
    assert dataprep.add_noise(subset, 0.3, seed=6)[1] != flipped
    assert dataprep.add_noise(subset, 0.0)[1] == []
    with pytest.raises(ValueError, match="rate"):
        dataprep.add_noise(subset, 1.2)


def test_wrong_answer_swaps_labels_and_moves_values():
    rng = random.Random(0)
    risk = {"task": "risk", "instruction": "r", "input": "", "output": "Risk: low"}
    assert {dataprep.wrong_answer(risk, rng, []) for _ in range(50)} == {"Risk: medium", "Risk: high"}
    dti = {"task": "dti", "instruction": "d", "input": "",
           "output": "The debt-to-income ratio is $1,500 / $5,000 = 30%."}
    for _ in range(50):
        w = dataprep.wrong_answer(dti, rng, [])
        assert w != dti["output"] and data.answer_format_ok("dti", w), w
    name = {"task": "qa", "instruction": "Who?", "input": "", "output": "Ann Lee"}
    pool = [name, {"task": "qa", "instruction": "Who?", "input": "", "output": "Bo Kim"},
            {"task": "qa", "instruction": "Other?", "input": "", "output": "Cy Ray"}]
    assert dataprep.wrong_answer(name, rng, pool) == "Bo Kim", "a name comes from a row of the same question"
    with pytest.raises(ValueError, match="no other answer"):
        dataprep.wrong_answer(name, rng, [name])


# ----------------------------------------------------------------------------- the verifier

def test_verify_accepts_every_right_answer_and_rejects_checkable_wrong_ones(rows):
    assert all(dataprep.verify(r, r["output"]) for r in rows)
    noisy, flipped = dataprep.add_noise(rows, 0.5, seed=1)
    caught = {r["task"]: 0 for r in rows}
    total = dict(caught)
    for i in flipped:
        total[rows[i]["task"]] += 1
        caught[rows[i]["task"]] += not dataprep.verify(rows[i], noisy[i]["output"])
    assert caught["dti"] == total["dti"] and caught["risk"] == total["risk"], "recomputed values catch every change"
    assert caught["classify"] == 0, "a label in the right format cannot be checked by a program"
    assert caught["extract"] >= 0.9 * total["extract"] and caught["qa"] >= 0.5 * total["qa"]
    dti = next(r for r in rows if r["task"] == "dti")
    assert not dataprep.verify(dti, "The debt-to-income ratio is 30%.")
    extract = next(r for r in rows if r["task"] == "extract")
    assert not dataprep.verify(extract, "not json") and not dataprep.verify(extract, "{}")

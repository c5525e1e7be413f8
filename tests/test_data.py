import json
import random

import pytest

from labkit import corpus, data


def test_generators_are_deterministic():
    assert data.make_instructions(20, 7) == data.make_instructions(20, 7)
    assert data.make_instructions(20, 7) != data.make_instructions(20, 8)
    a = [corpus.pretraining_document(random.Random(3)) for _ in range(5)]
    b = [corpus.pretraining_document(random.Random(3)) for _ in range(5)]
    assert a == b


def test_shipped_jsonl_files_are_in_sync_with_the_generators(tmp_path):
    written = data.write_all(tmp_path)
    for path in written:
        shipped = data.DATA_DIR / path.name
        assert shipped.read_text() == path.read_text(), f"{path.name} is stale: run `make data`"


def split_key(row):
    return json.dumps({k: row[k] for k in sorted(row) if k != "output"}, sort_keys=True)


@pytest.mark.parametrize("kind", ["instructions", "preferences", "general"])
def test_train_eval_and_test_splits_are_disjoint(kind):
    splits = {s: {split_key(r) for r in data.read_jsonl(f"{kind}_{s}.jsonl")} for s in ("train", "eval", "test")}
    assert not splits["train"] & splits["eval"]
    assert not splits["train"] & splits["test"]
    assert not splits["eval"] & splits["test"]


def test_every_task_family_is_present_and_well_formed():
    ds = data.load("instructions", "train")
    assert set(ds["task"]) == set(data.TASKS)
    for row in ds:
        assert row["instruction"] and row["output"]
        assert data.answer_format_ok(row["task"], row["output"]), row


def test_extraction_answers_are_copies_from_the_input():
    for row in data.load("instructions", "eval", task="extract"):
        for value in json.loads(row["output"]).values():
            assert value in row["input"]
        assert "Record:" not in row["input"]


def test_dti_example_is_the_seed_example_first():
    assert data.DTI_EXAMPLE["task"] == "dti"
    assert data.answer_format_ok("dti", data.DTI_EXAMPLE["output"])
    assert not data.answer_format_ok("dti", "About 30 percent.")


def test_preferences_chosen_differs_from_rejected():
    ds = data.load("preferences", "train")
    assert len(ds) > 100
    assert all(r["chosen"] != r["rejected"] for r in ds)


def test_load_rejects_bad_names():
    with pytest.raises(ValueError, match="kind"):
        data.load("nope")
    with pytest.raises(ValueError, match="split"):
        data.load("instructions", "validation")
    with pytest.raises(ValueError, match="task"):
        data.load("instructions", "train", task="poetry")


def test_copy_probe_answers_appear_earlier_in_the_prompt():
    probe = corpus.copy_probe(50, seed=5)
    assert {p["kind"] for p in probe} == {"name", "amount"}
    for p in probe:
        assert p["answer"] in p["prompt"]
        assert not p["prompt"].endswith(" ")


def test_probe_documents_are_not_in_the_pretraining_stream():
    """The probe's seeds differ from the training stream's: no probe prompt occurs in training text."""
    rng = random.Random(0)
    train = "\n".join(corpus.pretraining_document(rng) for _ in range(5000))
    probe = corpus.copy_probe(100, seed=999_002)
    assert sum(p["prompt"] in train for p in probe) == 0


def test_plain_text_is_the_prompt_plus_the_answer():
    ex = data.DTI_EXAMPLE
    prompt = data.plain_text(ex, with_answer=False)
    assert prompt == ex["instruction"] + "\n" + ex["input"] + "\nAnswer:"
    assert data.plain_text(ex) == prompt + " " + ex["output"]


def test_pay_slip_arithmetic_reads_a_slip_and_checks_it():
    import random

    from labkit import corpus

    text, _ = corpus.pay_slip(random.Random(3))
    real = corpus.pay_slip_arithmetic(text)
    assert real is not None and real["adds_up"], "the generator's slips add up"
    wrong = "Gross pay: $11,050\nTax withheld: $2,041\nNet pay: $9,069"
    assert corpus.pay_slip_arithmetic(wrong) == {"gross": 11050, "tax": 2041, "net": 9069,
                                                 "gross_minus_tax": 9009, "adds_up": False}
    assert corpus.pay_slip_arithmetic("Gross pay: $100\nNet pay: $90") is None

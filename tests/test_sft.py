"""labkit.sft: completion-only labels, the padding collator, their guards, and a short SFT run."""

import copy

import pytest
import torch

from labkit import data, evaluate, preference, sft


@pytest.fixture(scope="module")
def tok(base):
    return base[1]


def test_completion_labels_mask_the_prompt_for_lists_and_tensors():
    assert sft.completion_labels([5, 6, 7, 8], 2) == [-100, -100, 7, 8]
    t = torch.tensor([5, 6, 7, 8])
    out = sft.completion_labels(t, 3)
    assert out.tolist() == [-100, -100, -100, 8] and t.tolist() == [5, 6, 7, 8], "input must not change"
    assert sft.completion_labels([1, 2], 0) == [1, 2]


@pytest.mark.parametrize("bad", [-1, 5, 1.5, True, None])
def test_completion_labels_reject_a_bad_prompt_length(bad):
    with pytest.raises(ValueError, match="prompt_length"):
        sft.completion_labels([1, 2, 3, 4], bad)


def test_tokenize_example_trains_only_on_the_answer(tok):
    ex = data.load("instructions", "eval", task="classify")[0]
    pc = data.to_prompt_completion(ex, tok)
    f = sft.tokenize_example(tok, pc["prompt"], pc["completion"])
    n = f["prompt_length"]
    assert f["input_ids"][:n] == tok(pc["prompt"])["input_ids"]
    assert all(x == -100 for x in f["labels"][:n])
    trained = [t for t in f["labels"] if t != -100]
    assert tok.decode(trained) == " " + ex["output"] + "<|end|>" + tok.eos_token


def test_tokenize_example_names_an_empty_completion_and_a_prompt_too_long(tok):
    with pytest.raises(ValueError, match="example 7: the completion is empty"):
        sft.tokenize_example(tok, "<|user|>\nhi<|end|>\n<|assistant|>", "  ", name="example 7")
    with pytest.raises(ValueError, match="max_length is 8"):
        sft.tokenize_example(tok, "word " * 20, " answer", max_length=8)


def test_collator_pads_inputs_masks_and_labels(tok):
    feats = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    b = sft.PadCollator(pad_token_id=9)(feats)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


def test_collator_refuses_an_example_with_nothing_to_learn():
    feats = [{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3, 4], "labels": [-100, -100]}]
    with pytest.raises(ValueError, match="example 1 .* no supervised token"):
        sft.PadCollator(0)(feats)


def test_completion_only_flag_trains_on_every_token(tok):
    pairs = [data.to_prompt_completion(data.load("instructions", "eval", task="risk")[0], tok)]
    full = sft.tokenize_all(tok, pairs, completion_only=False)[0]
    assert full["labels"] == full["input_ids"]


def test_short_lora_sft_lowers_the_loss_and_keeps_the_base_frozen(base):
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base[0])
    tok = base[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    pairs = [data.to_prompt_completion(e, tok) for e in data.load("instructions", "train", task="risk", n=16)]
    losses = sft.train(pm, tok, pairs, steps=12, lr=3e-3, batch_size=4, progress=False)
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    base_after = pm.get_base_model().state_dict()
    for k, v in before.items():
        key = k.replace(".weight", ".base_layer.weight") if k.replace(".weight", ".base_layer.weight") in base_after else k
        assert torch.equal(base_after[key], v), k


def test_train_rejects_bad_knobs(base):
    model, tok = base
    pairs = [{"prompt": "<|user|>\nx<|end|>\n<|assistant|>", "completion": " y<|end|>"}]
    with pytest.raises(ValueError, match="learning rate"):
        sft.train(model, tok, pairs, steps=1, lr=-1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        next(sft.batches(sft.tokenize_all(tok, pairs), 0, tok.pad_token_id))


def test_score_counts_exact_and_format_per_task(base):
    model, tok = base
    rows = list(data.load("instructions", "eval", n=10))
    s = evaluate.score(model, tok, rows, max_new_tokens=8)
    assert set(s["by_task"]) == set(data.TASKS) and len(s["answers"]) == 10
    assert s["exact"] == 0.0, "the base model was never taught the chat format"


def test_score_of_perfect_and_misformatted_answers(base, monkeypatch):
    model, tok = base
    rows = list(data.load("instructions", "eval", n=10))
    answers = [r["output"] for r in rows]
    answers[0] = "nonsense"  # row 0 is an extraction: not JSON, so neither exact nor well-formed
    monkeypatch.setattr(evaluate, "answer", lambda *a, **k: answers)
    s = evaluate.score(model, tok, rows)
    assert s["exact"] == pytest.approx(0.9) and s["format"] == pytest.approx(0.9)
    assert s["by_task"]["extract"] == {"exact": 0.5, "format": 0.5, "n": 2}
    assert s["by_task"]["risk"] == {"exact": 1.0, "format": 1.0, "n": 2}
    assert s["right"] == [False] + [True] * 9  # per example, in order: what labkit.stats.mcnemar pairs up


def test_score_passes_its_batch_size_to_answer(base, monkeypatch):
    model, tok = base
    rows = list(data.load("instructions", "eval", n=4))
    seen = []
    monkeypatch.setattr(evaluate, "answer", lambda *a, **k: seen.append(k.get("batch_size")) or [""] * len(rows))
    evaluate.score(model, tok, rows)
    evaluate.score(model, tok, rows, batch_size=4)
    assert seen == [16, 4]


def test_reference_model_merges_the_shipped_adapter_frozen_and_leaves_the_base_alone(base):
    model, tok = base
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged, how = preference.reference_model(model, tok, steps=0)
    assert "shipped" in how and not any(p.requires_grad for p in merged.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the base must not change"
    peft_model, _ = sft.load_shipped_adapter(copy.deepcopy(model))
    ids = tok("Risk of a loan with a ratio of 0.9?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-3)


def test_reference_model_trains_live_and_refuses_bad_steps(base):
    model, tok = base
    rows = data.read_jsonl("instructions_train.jsonl")[:8]
    merged, how = preference.reference_model(model, tok, steps=2, rows=rows)
    assert "2 steps" in how and not any(p.requires_grad for p in merged.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), model.state_dict().values()))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            preference.reference_model(model, tok, steps=bad)
    with pytest.raises(ValueError, match="SFT_STEPS"):
        preference.reference_model(model, tok, steps=0, model="someone/llama-7b")

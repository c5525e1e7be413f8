"""labkit.sft: completion-only labels (equal to trl's), where the completion starts, the padding collator and its
guards, what the loss makes of an example with no label, response markers and the mask viewer, general-text
mixing, packing and its position_ids, the SFTTrainer builder and its settings, and a short SFT run."""

import copy
import warnings

import pytest
import torch

from labkit import data, evaluate, preference, sft
from labkit.course import widgets
from labkit.lessons import sft as lesson


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


def test_reference_model_trains_live_and_refuses_bad_steps(base, monkeypatch):
    model, tok = base
    rows = data.read_jsonl("instructions_train.jsonl")[:8]
    merged, how = preference.reference_model(model, tok, steps=2, rows=rows)
    assert "2 steps" in how and not any(p.requires_grad for p in merged.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), model.state_dict().values()))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            preference.reference_model(model, tok, steps=bad)
    from labkit import models

    monkeypatch.setattr(models, "LIVE_STEPS", 2)  # SFT_STEPS = 0 with another model: a live SFT, said so
    live, how = preference.reference_model(model, tok, steps=0, model="someone/llama-7b", rows=rows)
    assert "live LoRA SFT of 2 steps" in how and "'someone/llama-7b' is not the bundled model" in how and "SFT_STEPS" in how
    assert all(torch.equal(a, b) for a, b in zip(live.state_dict().values(), merged.state_dict().values())), \
        "the fallback is the same live SFT as steps=2"


@pytest.fixture(scope="module")
def pairs(tok):
    rows = data.read_jsonl("instructions_eval.jsonl")[:10]  # two of each task family
    return [data.to_prompt_completion(r, tok) for r in rows]


# ----------------------------------------------------------------------------- the same labels as trl

@pytest.mark.parametrize("completion_only", [True, False])
def test_labels_equal_trl_sft_trainer_token_for_token(base, pairs, completion_only):
    model, tok = base
    trainer = sft.sft_trainer(copy.deepcopy(model), tok, pairs, steps=1, batch_size=4, completion_only=completion_only)
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    ours = sft.PadCollator(tok.pad_token_id)(sft.tokenize_all(tok, pairs, completion_only=completion_only))
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(theirs[key], ours[key]), key
    n_trained = (ours["labels"] != -100).sum().item()
    if completion_only:
        assert 0 < n_trained < ours["attention_mask"].sum().item(), "the prompt must be masked"
    else:
        assert n_trained == ours["attention_mask"].sum().item()


def test_sft_trainer_is_quiet_and_records_losses(base, pairs):
    from transformers import PrinterCallback

    model, tok = base
    trainer = sft.sft_trainer(copy.deepcopy(model), tok, pairs, steps=2, batch_size=2)
    assert not any(isinstance(c, PrinterCallback) for c in trainer.callback_handler.callbacks)
    assert trainer.args.bf16 is False and trainer.args.report_to == [] and trainer.args.disable_tqdm
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.loss_recorder.losses == pytest.approx(logged) and len(logged) == 2


def test_sft_config_spells_out_the_lessons_settings():
    """Lesson 06 writes these settings out by hand; sft_config (the scripts' shortcut) must keep them."""
    cfg = sft.sft_config("/tmp/labkit_cfg_test", steps=7, lr=1e-3, batch_size=4, max_length=128)
    assert (cfg.max_steps, cfg.learning_rate, cfg.per_device_train_batch_size, cfg.max_length) == (7, 1e-3, 4, 128)
    assert cfg.lr_scheduler_type == "constant" and cfg.warmup_steps == 0 and cfg.weight_decay == 0.0
    assert cfg.max_grad_norm == 1.0 and cfg.completion_only_loss is True and cfg.packing is False
    assert cfg.bf16 is False and cfg.use_cpu is True and cfg.save_strategy == "no" and cfg.logging_steps == 1


def test_sft_trainer_names_a_bad_example_before_trl_sees_it(base, pairs):
    model, tok = base
    bad = pairs[:3] + [{"prompt": pairs[3]["prompt"], "completion": " "}]
    with pytest.raises(ValueError, match="example 3: the completion is empty"):
        sft.sft_trainer(model, tok, bad, steps=1)


# ----------------------------------------------------------------------------- markers, the guard, the viewer

def test_marker_labels_train_after_the_marker(tok):
    text = "<|user|>\nhi<|end|>\n<|assistant|> yes<|end|>"
    f = sft.marker_labels(tok, text, "<|assistant|>")
    trained = [t for t in f["labels"] if t != -100]
    assert tok.decode(trained) == " yes<|end|>"


def test_a_template_mismatch_masks_every_label_and_the_collator_names_it(tok):
    ex = data.read_jsonl("instructions_eval.jsonl")[0]
    f = lesson.mask_example(tok, ex, "marker '### Response:'", name="row 12")
    assert all(t == -100 for t in f["labels"]) and len(f["labels"]) > 10
    good = lesson.mask_example(tok, ex)
    with pytest.raises(ValueError, match="row 12 has no supervised token"):
        sft.PadCollator(tok.pad_token_id)([good, f])


def test_a_marker_tokenised_alone_differs_in_context(tok):
    """'Answer:' after a newline is ' Answer:' to this tokenizer: searching for it alone finds nothing."""
    ex = data.read_jsonl("instructions_eval.jsonl")[1]
    assert all(t == -100 for t in lesson.mask_example(tok, ex, "plain text, marker 'Answer:'")["labels"])
    fixed = sft.marker_labels(tok, data.plain_text(ex), " Answer:")
    assert tok.decode([t for t in fixed["labels"] if t != -100]).strip() == ex["output"]


def test_mask_html_colours_counts_and_warns(tok):
    ids = tok("<|assistant|> yes<|end|>")["input_ids"]
    html = lesson.mask_html(tok, ids, sft.completion_labels(ids, 1))
    assert html.count("#b7e4b0") == len(ids) - 1 and html.count("#e6e6e6") == 1
    assert "&lt;|assistant|&gt;" in html and "<|assistant|>" not in html, "tokens must be escaped"
    assert f"<b>{len(ids) - 1}</b> of {len(ids)}" in html and "teaches nothing" not in html
    assert "teaches nothing" in lesson.mask_html(tok, ids, [-100] * len(ids))
    with pytest.raises(ValueError, match="differ in length"):
        lesson.mask_rows(tok, ids, ids[:-1])


def test_mask_view_callback_and_widget(tok):
    rows = data.read_jsonl("instructions_eval.jsonl")[:5]
    views = {t: lesson.mask_view(tok, rows[0], t) for t in lesson.MASK_TEMPLATES}
    assert "teaches nothing" in views["marker '### Response:'"]
    assert "teaches nothing" not in views["chat template, completion only"]
    assert "example: the completion is empty" in lesson.mask_view(tok, {**rows[0], "output": ""})
    with pytest.raises(ValueError, match="unknown template"):
        lesson.mask_example(tok, rows[0], "alpaca")
    box = widgets.token_mask_viewer(tok, rows)
    pick, template, out = box.children
    first = out.value
    template.value = "marker '### Response:'"
    assert out.value != first and "teaches nothing" in out.value
    pick.value = 3
    assert out.value == lesson.mask_view(tok, rows[3], "marker '### Response:'")


# ----------------------------------------------------------------------------- bad input

def test_check_pairs_warns_naming_cut_completions(tok, pairs):
    lengths = [len(sft.tokenize_example(tok, p["prompt"], p["completion"])["input_ids"]) for p in pairs]
    longest = max(range(len(pairs)), key=lengths.__getitem__)
    limit = sorted(lengths)[-2]
    assert limit < lengths[longest], "pick a limit that cuts only the longest example"
    with pytest.warns(UserWarning, match=rf"1 completion\(s\) run past max_length={limit} .*\(examples {longest}\)"):
        sft.check_pairs(tok, pairs, max_length=limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(sft.check_pairs(tok, pairs)) == len(pairs)
    with pytest.raises(ValueError, match="example 1: the prompt is .* max_length is 20"):
        sft.check_pairs(tok, [{"prompt": "a", "completion": " b"}, pairs[0]], max_length=20)


def test_generation_markers_are_checked(tok):
    sft.check_generation_markers(tok, [data.to_messages(data.DTI_EXAMPLE)])
    plain = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert sft.has_generation_markers(tok.chat_template) and not sft.has_generation_markers(plain)
    with pytest.raises(ValueError, match="generation"):
        sft.check_generation_markers(tok, chat_template=plain)
    with pytest.raises(ValueError, match="conversation 1: .* no assistant token"):
        sft.check_generation_markers(tok, [data.to_messages(data.DTI_EXAMPLE),
                                           [{"role": "user", "content": "hello"}]])


# ----------------------------------------------------------------------------- general text

def test_mix_general_share_shuffle_and_determinism():
    task = [{"prompt": f"q{i}", "completion": "a"} for i in range(90)]
    general = [{"prompt": "<s>", "completion": f"g{i}"} for i in range(50)]
    mixed = sft.mix_general(task, general, 0.1, seed=0)
    extra = [m for m in mixed if m["prompt"] == "<s>"]
    assert len(mixed) == 100 and len(extra) == 10 and len({m["completion"] for m in extra}) == 10  # no repeats
    assert [m for m in mixed if m["prompt"] != "<s>"] != task  # shuffled in, not appended
    assert sorted(sft.mix_general(task, [], 0.0), key=lambda p: int(p["prompt"][1:])) == task  # share 0: the task, shuffled
    assert mixed == sft.mix_general(task, general, 0.1, seed=0)
    assert mixed != sft.mix_general(task, general, 0.1, seed=1)
    for bad in (1.0, -0.1, "10%", float("nan"), True):
        with pytest.raises(ValueError, match="share"):
            sft.mix_general(task, general, bad)
    with pytest.raises(ValueError, match="needs 90 general rows but only 50"):
        sft.mix_general(task, general, 0.5)
    with pytest.raises(ValueError, match="at least one task pair"):
        sft.mix_general([], general, 0.1)


def test_general_rows_start_at_the_document_start_and_train_every_token(tok):
    rows = sft.general_rows(tok)
    assert len(rows) == len(data.read_jsonl("general_train.jsonl"))
    row = sft.general_rows(tok, ["The duck was happy."])[0]
    assert row == {"prompt": tok.bos_token or "", "completion": "The duck was happy."}
    f = sft.tokenize_example(tok, row["prompt"], row["completion"])
    assert f["prompt_length"] == (1 if tok.bos_token else 0)
    assert all(x != -100 for x in f["labels"][f["prompt_length"]:])


class _NoBos:
    bos_token = None


def test_general_rows_without_a_bos_have_an_empty_prompt():
    assert sft.general_rows(_NoBos(), ["x"]) == [{"prompt": "", "completion": "x"}]


# ----------------------------------------------------------------------------- packing

def test_trl_packing_keeps_sequences_apart_with_position_ids(base, pairs):
    model, tok = base
    trainer = sft.sft_trainer(copy.deepcopy(model), tok, pairs[:4], steps=1, batch_size=1, packing=True,
                              max_length=512)
    row = trainer.train_dataset[0]
    assert len(row["seq_lengths"]) >= 2, "the packed row should hold several examples"
    batch = trainer.data_collator([row])
    res = sft.packed_vs_alone(model, batch["input_ids"], batch["position_ids"])
    assert [b - a for a, b in res["segments"]] == list(row["seq_lengths"])
    assert res["with_position_ids"] < 1e-3 < 1.0 < res["without_position_ids"]
    assert res["with_position_ids_and_cache"] > 1.0, "transformers 5 ignores packing when a cache is used"
    assert torch.equal(batch["position_ids"][0], sft.packed_position_ids(list(row["seq_lengths"]))), \
        "packed_position_ids is what trl's padding-free collator builds"


def test_packed_position_ids_restart_at_each_sequence():
    assert sft.packed_position_ids([3, 2, 1]).tolist() == [0, 1, 2, 0, 1, 0]
    assert sft.segments(sft.packed_position_ids([2, 4])) == [(0, 2), (2, 6)]
    for bad in ([], [0], [2, -1], [1.5], [True]):
        with pytest.raises(ValueError, match="positive ints"):
            sft.packed_position_ids(bad)


def test_completion_start_is_where_the_token_lists_first_differ(tok, pairs):
    assert sft.completion_start([5, 6, 7], [5, 6, 7, 8, 9]) == 3
    assert sft.completion_start([5, 6, 7], [5, 6, 70, 9]) == 2, "a merged last prompt token belongs to the answer"
    assert sft.completion_start([], [1, 2]) == 0 and sft.completion_start([1, 2], [3]) == 0
    from labkit import chat

    for p in pairs:
        f = sft.tokenize_example(tok, p["prompt"], p["completion"])
        assert f["prompt_length"] == sft.completion_start(chat.encode(tok, p["prompt"]), f["input_ids"])


def test_an_example_with_no_label_gives_nan_alone_and_nothing_in_a_batch(base):
    """What lesson 06 shows: HF's loss is the mean over the batch's labels that are not -100."""
    import math

    model, tok = base
    good = lesson.mask_example(tok, data.read_jsonl("instructions_eval.jsonl")[0])
    empty = {**good, "labels": [-100] * len(good["labels"])}
    assert math.isnan(sft.batch_loss(model, [empty], tok.pad_token_id))
    alone = sft.batch_loss(model, [good], tok.pad_token_id)
    assert sft.batch_loss(model, [good, empty], tok.pad_token_id) == pytest.approx(alone, rel=1e-5)
    assert sft.batch_loss(model, [empty, good], tok.pad_token_id) == pytest.approx(alone, rel=1e-5)


def test_segments_and_padding_share():
    assert sft.segments([0, 1, 2, 0, 1, 0]) == [(0, 3), (3, 5), (5, 6)]
    with pytest.raises(ValueError, match="start at 0"):
        sft.segments([1, 2, 0])
    assert sft.padding_share([4, 4], 2) == 0.0
    assert sft.padding_share([1, 3], 2) == pytest.approx(1 / 3)
    assert sft.padding_share([1, 3], 1) == 0.0


# ----------------------------------------------------------------------------- scoring DTI's value

def test_dti_value_and_its_score(base, monkeypatch):
    model, tok = base
    assert evaluate.dti_value(data.DTI_EXAMPLE["output"]) == 30
    assert evaluate.dti_value("The ratio is 30") is None
    rows = [r for r in data.read_jsonl("instructions_eval.jsonl") if r["task"] == "dti"][:2]
    right_value = rows[0]["output"].replace("The debt-to-income ratio is", "DTI:")  # wrong wording, right value
    monkeypatch.setattr(evaluate, "answer", lambda *a, **k: [right_value, rows[1]["output"]])
    s = evaluate.score(model, tok, rows)["by_task"]["dti"]
    assert s == {"exact": 0.5, "format": 0.5, "value": 1.0, "n": 2}


# ----------------------------------------------------------------------------- the shipped adapter, the table, the script

def test_score_table_lists_every_task_and_dti_value(base, monkeypatch):
    model, tok = base
    rows = data.read_jsonl("instructions_eval.jsonl")[:10]
    monkeypatch.setattr(evaluate, "answer", lambda *a, **k: [r["output"] for r in rows])
    perfect = evaluate.score(model, tok, rows)
    monkeypatch.setattr(evaluate, "answer", lambda *a, **k: ["?"] * len(rows))
    table = evaluate.score_table({"before": evaluate.score(model, tok, rows), "after": perfect})
    lines = table.splitlines()
    assert lines[0].startswith("| task | n | before: exact") and "after: format" in lines[0]
    assert "| extract | 2 | 0% | 0% | 100% | 100% |" in lines
    assert "| dti: value only | | 0% |  | 100% |  |" in lines
    assert lines[-1].startswith("| **all** | 10 |")
    with pytest.raises(ValueError):
        evaluate.score_table({})


def test_the_shipped_adapter_loads_and_answers_in_format(base):
    model, tok = base
    if not (sft.adapter_dir() / "adapter_config.json").is_file():
        pytest.fail("the shipped adapter is missing: run python scripts/train_sft_adapter.py")
    pm, report = sft.load_shipped_adapter(copy.deepcopy(model))
    assert {"steps", "lr", "r", "by_task", "n_eval"} <= set(report)
    size = sum(p.stat().st_size for p in sft.adapter_dir().iterdir())
    assert size < 3_000_000, "an adapter of this model should be about a megabyte"
    rows = [r for r in data.read_jsonl("instructions_eval.jsonl") if r["task"] in ("classify", "risk")][:6]
    s = evaluate.score(pm, tok, rows, max_new_tokens=8)
    assert s["format"] >= 0.8, s["answers"]


def test_a_missing_adapter_is_a_clear_error(base, monkeypatch, tmp_path):
    monkeypatch.setattr(sft, "adapter_dir", lambda name="sft_lora": tmp_path / name)
    with pytest.raises(FileNotFoundError, match="train_sft_adapter.py"):
        sft.load_shipped_adapter(base[0])
    with pytest.raises(FileNotFoundError, match="train_hedged_sft.py"):
        sft.load_shipped_adapter(base[0], "sft_hedged")


@pytest.mark.slow
def test_adapter_script_writes_a_loadable_adapter_atomically(tmp_path, load_script):
    import json

    mod = load_script("train_sft_adapter")
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    report = mod.main(["--steps", "2", "--n-eval", "5", "--out", str(out), "--threads", "1"])
    assert report["steps"] == 2 and report["n_eval"] == 5
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "scores.json"]
    assert json.loads((out / "scores.json").read_text())["steps"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"], "no temporary or old folder may be left"


# ----------------------------------------------------------------------------- any model's template (Hub-style fixtures)

@pytest.fixture(scope="module", params=["bundled", "llama-chatml", "gpt2", "gemma-style"])
def any_tok(request, hub_models):
    from labkit import models

    kind = request.param
    return kind, models.load_tokenizer(None if kind == "bundled" else hub_models[kind])


# what lesson 06 prints about each template: (generation prompt, before the answer, turn end, BOS token,
# template writes BOS, tokenizer adds BOS)
TEMPLATES = {
    "bundled": ("<|assistant|>", " ", "<|end|>", "<|endoftext|>", False, False),
    "llama-chatml": ("<|im_start|>assistant\n", "", "<|im_end|>", None, False, False),
    "gpt2": ("Assistant:", " ", "<|endoftext|>", "<|endoftext|>", False, False),
    "gemma-style": ("<start_of_turn>model\n", "", "<end_of_turn>", "<bos>", True, True),
}


def test_describe_reads_each_template(any_tok):
    from labkit import chat

    kind, tok = any_tok
    d = chat.describe(tok, "Q?", "yes")
    got = (d["generation_prompt"], d["answer_prefix"], d["turn_end"], d["bos_token"], d["template_writes_bos"],
           d["tokenizer_adds_bos"])
    assert got == TEMPLATES[kind]
    assert d["prompt"].endswith(d["generation_prompt"]) and d["completion"] == d["answer_prefix"] + "yes" + d["turn_end"]
    assert d["double_bos"] == d["for_trl_strips_bos"] == (kind == "gemma-style")
    assert d["turn_end_is_eos"] == (kind in ("llama-chatml", "gpt2"))  # SmolLM2: eos is <|im_end|>
    if d["double_bos"]:  # the trap, and what chat.encode and chat.for_trl do about it
        assert tok(d["prompt"])["input_ids"][:2] == [tok.bos_token_id] * 2
        assert chat.encode(tok, d["prompt"])[:2] == [tok.bos_token_id, tok("<start_of_turn>", add_special_tokens=False)["input_ids"][0]]
        assert chat.for_trl(tok, d)["prompt"] == d["prompt"][len(tok.bos_token):]


def test_marker_recipes_mask_everything_on_every_model_and_say_why(any_tok):
    """Both marker recipes make their point whatever the tokenizer: the Alpaca marker is not in the chat
    text; the plain-text recipe searches a spelling of 'Answer:' that is in the text but tokenises
    differently alone. The completion-only recipe trains the answer and the turn end."""
    from labkit import chat

    kind, tok = any_tok
    ex = data.read_jsonl("instructions_eval.jsonl")[1]
    for recipe in ("marker '### Response:'", "plain text, marker 'Answer:'"):
        f = lesson.mask_example(tok, ex, recipe)
        assert f["marker_found"] is False and all(t == -100 for t in f["labels"]), (kind, recipe)
        view = lesson.mask_view(tok, ex, recipe)
        assert "teaches nothing" in view and "not in the text&#x27;s tokens" in view
    plain = data.plain_text(ex)
    marker = sft.plain_marker(tok, plain)
    assert marker in plain and marker == ("Answer:" if kind == "bundled" else "Answer: ")
    good = lesson.mask_example(tok, ex)
    trained = tok.decode([i for i, lab in zip(good["input_ids"], good["labels"]) if lab != -100])
    assert chat.clean(tok, trained) == ex["output"] and chat.turn_end(tok) in trained


def test_plain_marker_falls_back_when_no_spelling_fails(any_tok):
    kind, tok = any_tok
    prompt = data.plain_text(data.DTI_EXAMPLE, with_answer=False)  # ends with "Answer:", no space after it
    marker = sft.plain_marker(tok, prompt)
    assert marker == "Answer:"
    assert sft.marker_labels(tok, prompt, marker)["marker_found"] is (kind != "bundled")


def test_the_viewer_is_truthful_when_the_template_contains_the_marker(any_tok):
    """An Alpaca-style template writes '### Response:': the marker recipe then finds it and trains the
    answer, and the viewer says so instead of claiming the marker is missing."""
    kind, tok = any_tok
    tok = copy.deepcopy(tok)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
                         "{% else %}### Response:\n{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}### Response:\n{% endif %}")
    ex = data.read_jsonl("instructions_eval.jsonl")[2]
    f = lesson.mask_example(tok, ex, "marker '### Response:'")
    assert f["marker_found"] is True
    assert tok.decode([t for t in f["labels"] if t != -100]).strip().startswith(ex["output"])
    view = lesson.mask_view(tok, ex, "marker '### Response:'")
    assert "found: trained on what follows" in view and "teaches nothing" not in view


@pytest.mark.parametrize("completion_only", [True, False])
def test_labels_equal_trl_on_every_model(hub_model, completion_only):
    """Lesson 06's own check (both loss settings) on each Hub-style fixture, as the notebook runs it."""
    from labkit import models

    kind, folder = hub_model
    model, tok = models.load_base(str(folder), device="cpu")
    rows = data.read_jsonl("instructions_eval.jsonl")[:6]
    pairs = [data.to_prompt_completion(r, tok) for r in rows]
    trainer = sft.sft_trainer(copy.deepcopy(model), tok, pairs, steps=1, completion_only=completion_only)
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    ours = sft.PadCollator(tok.pad_token_id)(sft.tokenize_all(tok, pairs, completion_only=completion_only))
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(theirs[key], ours[key]), (kind, key)

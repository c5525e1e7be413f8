"""Lesson 04's labkit.sft: labels equal trl's, response markers and the mask viewer, bad-input guards,
general-text mixing, packing, and the SFTTrainer builder."""

import copy
import warnings

import pytest
import torch

from labkit import data, evaluate, sft, widgets


@pytest.fixture(scope="module")
def tok(base):
    return base[1]


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
    assert len(trainer.loss_recorder.losses) == 2 and all(x > 0 for x in trainer.loss_recorder.losses)


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
    f = sft.mask_example(tok, ex, "marker '### Response:'", name="row 12")
    assert all(t == -100 for t in f["labels"]) and len(f["labels"]) > 10
    good = sft.mask_example(tok, ex)
    with pytest.raises(ValueError, match="row 12 has no supervised token"):
        sft.PadCollator(tok.pad_token_id)([good, f])


def test_a_marker_tokenised_alone_differs_in_context(tok):
    """'Answer:' after a newline is ' Answer:' to this tokenizer: searching for it alone finds nothing."""
    ex = data.read_jsonl("instructions_eval.jsonl")[1]
    assert all(t == -100 for t in sft.mask_example(tok, ex, "plain text, marker 'Answer:'")["labels"])
    fixed = sft.marker_labels(tok, data.plain_text(ex), " Answer:")
    assert tok.decode([t for t in fixed["labels"] if t != -100]).strip() == ex["output"]


def test_mask_html_colours_counts_and_warns(tok):
    ids = tok("<|assistant|> yes<|end|>")["input_ids"]
    html = sft.mask_html(tok, ids, sft.completion_labels(ids, 1))
    assert html.count("#b7e4b0") == len(ids) - 1 and html.count("#e6e6e6") == 1
    assert "&lt;|assistant|&gt;" in html and "<|assistant|>" not in html, "tokens must be escaped"
    assert f"<b>{len(ids) - 1}</b> of {len(ids)}" in html and "teaches nothing" not in html
    assert "teaches nothing" in sft.mask_html(tok, ids, [-100] * len(ids))
    with pytest.raises(ValueError, match="differ in length"):
        sft.mask_rows(tok, ids, ids[:-1])


def test_mask_view_callback_and_widget(tok):
    rows = data.read_jsonl("instructions_eval.jsonl")[:5]
    views = {t: sft.mask_view(tok, rows[0], t) for t in sft.MASK_TEMPLATES}
    assert "teaches nothing" in views["marker '### Response:'"]
    assert "teaches nothing" not in views["chat template, completion only"]
    assert "example: the completion is empty" in sft.mask_view(tok, {**rows[0], "output": ""})
    with pytest.raises(ValueError, match="unknown template"):
        sft.mask_example(tok, rows[0], "alpaca")
    box = widgets.token_mask_viewer(tok, rows)
    pick, template, out = box.children
    first = out.value
    template.value = "marker '### Response:'"
    assert out.value != first and "teaches nothing" in out.value
    pick.value = 3
    assert out.value == sft.mask_view(tok, rows[3], "marker '### Response:'")


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

def test_mix_general_share_and_determinism(pairs):
    general = [f"general text {i}." for i in range(50)]
    assert sft.mix_general(pairs, 0.0, general=general) == pairs
    mixed = sft.mix_general(pairs * 9, 0.1, seed=1, general=general)
    extra = [r for r in mixed if r["prompt"] == ""]
    assert len(mixed) == 100 and len(extra) == 10 and all(r["completion"] in general for r in extra)
    assert mixed == sft.mix_general(pairs * 9, 0.1, seed=1, general=general)
    assert mixed != sft.mix_general(pairs * 9, 0.1, seed=2, general=general)
    for bad in (-0.1, 1.0, True, "0.1"):
        with pytest.raises(ValueError, match="share"):
            sft.mix_general(pairs, bad, general=general)
    with pytest.raises(ValueError, match="only 50 are available"):
        sft.mix_general(pairs * 100, 0.5, general=general)


def test_general_rows_train_on_every_token(tok):
    row = sft.mix_general([{"prompt": "p", "completion": " c"}] * 9, 0.1)
    text = next(r for r in row if r["prompt"] == "")
    f = sft.tokenize_example(tok, text["prompt"], text["completion"])
    assert f["prompt_length"] == 0 and f["labels"] == f["input_ids"]


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
    monkeypatch.setattr(sft, "adapter_dir", lambda: tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="train_sft_adapter.py"):
        sft.load_shipped_adapter(base[0])


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


# what lesson 04 prints about each template: (generation prompt, before the answer, turn end, BOS token,
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
        f = sft.mask_example(tok, ex, recipe)
        assert f["marker_found"] is False and all(t == -100 for t in f["labels"]), (kind, recipe)
        view = sft.mask_view(tok, ex, recipe)
        assert "teaches nothing" in view and "not in the text&#x27;s tokens" in view
    plain = data.plain_text(ex)
    marker = sft.plain_marker(tok, plain)
    assert marker in plain and marker == ("Answer:" if kind == "bundled" else "Answer: ")
    good = sft.mask_example(tok, ex)
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
    f = sft.mask_example(tok, ex, "marker '### Response:'")
    assert f["marker_found"] is True
    assert tok.decode([t for t in f["labels"] if t != -100]).strip().startswith(ex["output"])
    view = sft.mask_view(tok, ex, "marker '### Response:'")
    assert "found: trained on what follows" in view and "teaches nothing" not in view


@pytest.mark.parametrize("completion_only", [True, False])
def test_labels_equal_trl_on_every_model(hub_model, completion_only):
    """Lesson 04's own check (both loss settings) on each Hub-style fixture, as the notebook runs it."""
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

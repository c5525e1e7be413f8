"""labkit.encoder: MiniLM with a head, the six ways lesson 03 trains it, memory accounting, the shipped adapter."""

import copy

import pytest

from labkit import data, encoder

LABELS = list(data.INTENTS)


@pytest.fixture(scope="module")
def rows():
    r = data.read_jsonl("intents_train.jsonl")[:32]
    return [x["text"] for x in r], [LABELS.index(x["label"]) for x in r]


@pytest.fixture(scope="module")
def loaded():
    return encoder.load_classifier(LABELS, seed=0)


def _fresh(method, loaded):
    model, tok = loaded
    return encoder.prepare(copy.deepcopy(model), method), tok


def _counts(model):
    return encoder.counts(model)


def test_the_encoder_is_minilm_from_its_package(loaded):
    model, tok = loaded
    assert model.encoder.config.num_hidden_layers == 6 and model.encoder.config.hidden_size == 384
    assert sum(p.numel() for p in model.encoder.parameters()) == 22_565_376


def test_each_method_trains_what_it_says(loaded):
    head = 384 * len(LABELS) + len(LABELS)
    counts = {m: _counts(_fresh(m, loaded)[0]) for m in encoder.METHODS}
    assert counts["head"][0] == head
    # LoRA r=8 on q,k,v,attn-out (384x384), intermediate (384->1536) and output (1536->384), 6 layers, + head
    lora = 6 * 8 * (4 * (384 + 384) + 2 * (384 + 1536))
    assert counts["lora"][0] == lora + head and counts["lora"][0] / counts["lora"][1] < 0.05
    # DoRA adds one magnitude per output row of each adapted layer
    assert counts["dora"][0] == lora + 6 * (4 * 384 + 1536 + 384) + head
    # IA3: one scale per key and value channel, and per input of the MLP's output layer
    assert counts["ia3"][0] == 6 * (384 + 384 + 1536) + head
    # prompt tuning: 8 virtual tokens of 384 numbers
    assert counts["prompt"][0] == 8 * 384 + head
    assert counts["full"][0] == counts["full"][1] == 22_565_376 + head
    for m in encoder.PEFT_METHODS:
        assert counts[m][1] == 22_565_376 + counts[m][0], "peft adds the adapter and freezes the encoder"


def test_the_spelled_out_configs_are_what_prepare_uses(loaded):
    from peft import IA3Config, LoraConfig, PromptTuningConfig

    assert isinstance(encoder.peft_config("dora"), LoraConfig) and encoder.peft_config("dora").use_dora
    assert not encoder.peft_config("lora").use_dora and encoder.peft_config("lora").r == 8
    assert isinstance(encoder.peft_config("ia3"), IA3Config)
    assert isinstance(encoder.peft_config("prompt"), PromptTuningConfig)
    model = encoder.prepare(copy.deepcopy(loaded[0]), "lora", config=LoraConfig(r=2, target_modules=["query"]))
    assert _counts(model)[0] == 6 * 2 * (384 + 384) + 384 * len(LABELS) + len(LABELS)


def test_prompt_tuning_pools_the_real_tokens(loaded, rows):
    import torch

    model, tok = _fresh("prompt", loaded)
    enc = encoder.encode(tok, rows[0][:4])
    model.eval()
    with torch.no_grad():
        h = model.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        assert h.shape[1] == enc["input_ids"].shape[1] + 8, "the 8 virtual tokens sit in front"
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (h[:, 8:] * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(model(enc["input_ids"], enc["attention_mask"]), model.head(pooled))


def test_memory_accounting_orders_the_methods(loaded, rows):
    texts, labels = rows
    mem = {m: encoder.training_memory(*_fresh(m, loaded), texts[:8], labels[:8]) for m in encoder.METHODS}
    # no gradient flows into a frozen encoder: only the pooled features the head needs are kept
    assert mem["head"]["activations"] < 0.01 * mem["lora"]["activations"]
    assert mem["lora"]["activations"] > 0 and mem["full"]["activations"] > 0
    for m, (model, _) in ((m, _fresh(m, loaded)) for m in encoder.METHODS):
        assert mem[m]["optimizer"] == 8 * _counts(model)[0]
    assert mem["head"]["total"] < mem["lora"]["total"] < mem["full"]["total"]
    assert mem["lora"]["gradients"] < 0.02 * mem["full"]["gradients"], "LoRA saves gradient memory"


def test_training_the_head_lowers_the_loss(loaded, rows):
    model, tok = _fresh("head", loaded)
    res = encoder.train(model, tok, *rows, steps=15, lr=1e-2, batch_size=16)
    assert sum(res["losses"][-3:]) < sum(res["losses"][:3])


def test_bad_inputs_are_named(loaded, rows):
    model, tok = _fresh("head", loaded)
    with pytest.raises(ValueError, match="Unknown method 'adapter'"):
        encoder.prepare(model, "adapter")
    with pytest.raises(ValueError, match="learning rate"):
        encoder.train(model, tok, *rows, steps=1, lr=-0.1)
    with pytest.raises(ValueError, match="as many labels as texts"):
        encoder.accuracy(model, tok, rows[0], rows[1][:3])
    with pytest.raises(ValueError, match="r must be"):
        encoder.prepare(model, "lora", r=0)


def test_pooled_vectors_are_what_the_head_sees_and_the_adapter_changes_them(loaded, rows):
    import torch

    model, tok = _fresh("lora", loaded)
    texts = rows[0][:5]
    v = encoder.pooled(model, tok, texts, batch_size=2)
    enc = encoder.encode(tok, texts)
    with torch.no_grad():
        torch.testing.assert_close(model.head(v), model.eval()(enc["input_ids"], enc["attention_mask"]))
    frozen = encoder.cosine_matrix(loaded[0], tok, texts)
    torch.testing.assert_close(frozen, frozen.T)
    torch.testing.assert_close(torch.diagonal(frozen), torch.ones(5))
    torch.testing.assert_close(encoder.cosine_matrix(model, tok, texts), frozen, msg="B = 0: LoRA starts at the base")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert (encoder.cosine_matrix(model, tok, texts) - frozen).abs().max() > 0.05
    with model.encoder.disable_adapter():
        torch.testing.assert_close(encoder.cosine_matrix(model, tok, texts), frozen)


def test_the_linear_probe_fits_separable_features_and_scores_held_out_ones(loaded, rows):
    model, tok = loaded
    texts, y = rows
    res = encoder.linear_probe(model, tok, texts, y, texts[:8], y[:8], max_iter=200)
    # 32 messages in 384 dimensions are linearly separable: L-BFGS fits them all
    assert res["train_accuracy"] == 1.0 and res["train_loss"] < 0.05 and res["accuracy"] == 1.0
    with pytest.raises(ValueError, match="as many labels"):
        encoder.linear_probe(model, tok, texts, y[:3], texts, y)


@pytest.mark.slow
def test_the_shipped_adapter_reproduces_the_shipped_table():
    from labkit import tuning

    cmp = tuning.load_results("minilm_compare")
    by = {row["method"]: row for row in cmp["rows"]}
    model, tok = encoder.load_adapter(LABELS)
    ev = data.read_jsonl("intents_eval.jsonl")
    acc = encoder.accuracy(model, tok, [r["text"] for r in ev], [LABELS.index(r["label"]) for r in ev])
    assert acc == pytest.approx(by["lora"]["accuracy"], abs=1e-9)
    assert by["lora"]["trainable_pct"] < 5
    assert [row["method"] for row in cmp["rows"]] == list(encoder.METHODS)
    assert {row["method"]: row["lr"] for row in cmp["rows"]} == encoder.DEFAULT_LR


def test_an_adapter_saves_and_reloads_with_its_head(loaded, rows, tmp_path):
    import torch

    model, tok = _fresh("lora", loaded)
    encoder.train(model, tok, *rows, steps=2, lr=1e-2)
    path = encoder.save_adapter(model, tmp_path / "ad")
    again, _ = encoder.load_adapter(LABELS, path)
    enc = encoder.encode(tok, rows[0][:4])
    with torch.no_grad():
        torch.testing.assert_close(again(enc["input_ids"], enc["attention_mask"]),
                                   model.eval()(enc["input_ids"], enc["attention_mask"]))
    with pytest.raises(FileNotFoundError, match="head.safetensors"):
        encoder.load_adapter(LABELS, tmp_path)
    assert "site-packages" not in (path / "adapter_config.json").read_text()
    text = (encoder.SHIPPED_ADAPTER / "adapter_config.json").read_text()
    assert "site-packages" not in text and encoder.HUB_ID in text, "the shipped adapter names a local path"


def test_lesson_03_spells_out_the_configs_and_learning_rates_the_script_used():
    """Lesson 03 writes peft's configs and the learning rates out in full; the shipped runs come from
    encoder.peft_config and encoder.DEFAULT_LR. They must be the same, or the live check compares apples
    with pears."""
    import json
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "03_peft_methods.ipynb").read_text())
    (cell,) = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and "CONFIGS = {" in "".join(c["source"])]
    namespace: dict = {}
    exec(cell, namespace)
    assert set(namespace["CONFIGS"]) == set(encoder.PEFT_METHODS)
    for method, config in namespace["CONFIGS"].items():
        assert config.to_dict() == encoder.peft_config(method).to_dict(), method
    assert namespace["LR"] == encoder.DEFAULT_LR


@pytest.mark.slow
def test_the_shipped_table_is_what_its_code_computes_now():
    """scripts/lesson03_results.py wrote minilm_compare.json with encoder.compare: the cheapest
    method (the head alone, 60 steps) recomputed here gives the same losses and the same held-out accuracy."""
    from labkit import tuning

    cmp = tuning.load_results("minilm_compare")
    shipped = next(row for row in cmp["rows"] if row["method"] == "head")
    rows, _ = encoder.compare(LABELS, data.read_jsonl(cmp["train"]), data.read_jsonl(cmp["eval"]), steps=cmp["steps"],
                              methods=("head",), log=None)
    assert rows[0]["accuracy"] == pytest.approx(shipped["accuracy"], abs=1e-9)
    assert rows[0]["losses"] == pytest.approx(shipped["losses"], rel=1e-4)
    assert rows[0]["trainable"] == shipped["trainable"] and rows[0]["lr"] == shipped["lr"]
    labels = [LABELS.index(r["label"]) for r in data.read_jsonl(cmp["train"])]
    ev = data.read_jsonl(cmp["eval"])
    model, tok = encoder.load_classifier(LABELS)
    probe = encoder.linear_probe(model, tok, [r["text"] for r in data.read_jsonl(cmp["train"])], labels,
                                 [r["text"] for r in ev], [LABELS.index(r["label"]) for r in ev])
    assert probe["accuracy"] == pytest.approx(cmp["head_converged"]["accuracy"], abs=2 / len(ev))
    assert probe["train_accuracy"] == pytest.approx(cmp["head_converged"]["train_accuracy"], abs=1e-9)

"""labkit.encoder: MiniLM with a head, three ways to train it, memory accounting."""

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
    import copy

    model, tok = loaded
    return encoder.prepare(copy.deepcopy(model), method), tok


def _counts(model):
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def test_the_encoder_is_minilm_from_its_package(loaded):
    model, tok = loaded
    assert model.encoder.config.num_hidden_layers == 6 and model.encoder.config.hidden_size == 384
    assert sum(p.numel() for p in model.encoder.parameters()) == 22_565_376


def test_each_method_trains_what_it_says(loaded):
    head, _ = _fresh("head", loaded)
    assert _counts(head)[0] == 384 * len(LABELS) + len(LABELS)
    lora, _ = _fresh("lora", loaded)
    t, total = _counts(lora)
    # r=8 on q,k,v,attn-out (384x384), intermediate (384->1536) and output (1536->384), 6 layers, + head
    assert t == 6 * 8 * (4 * (384 + 384) + 2 * (384 + 1536)) + 2310
    assert t / total < 0.05
    full, _ = _fresh("full", loaded)
    assert _counts(full)[0] == _counts(full)[1]


def test_memory_accounting_orders_the_methods(loaded, rows):
    texts, labels = rows
    mem = {m: encoder.training_memory(*_fresh(m, loaded), texts[:8], labels[:8]) for m in encoder.METHODS}
    # no gradient flows into a frozen encoder: only the pooled features the head needs are kept
    assert mem["head"]["activations"] < 0.01 * mem["lora"]["activations"]
    assert mem["lora"]["activations"] > 0 and mem["full"]["activations"] > 0
    for m, (model, _) in ((m, _fresh(m, loaded)) for m in encoder.METHODS):
        assert mem[m]["optimizer"] == 8 * _counts(model)[0]
    assert mem["head"]["total"] < mem["lora"]["total"] < mem["full"]["total"]


def test_training_the_head_lowers_the_loss(loaded, rows):
    model, tok = _fresh("head", loaded)
    res = encoder.train(model, tok, *rows, steps=15, lr=1e-2, batch_size=16)
    assert res["losses"][-1] < res["losses"][0] and res["seconds_per_step"] > 0


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


@pytest.mark.slow
def test_the_shipped_adapter_reproduces_the_shipped_table():
    from labkit import tuning

    cmp = tuning.load_results("minilm_compare")
    by = {row["method"]: row for row in cmp["rows"]}
    model, tok = encoder.load_shipped(LABELS)
    ev = data.read_jsonl("intents_eval.jsonl")
    acc = encoder.accuracy(model, tok, [r["text"] for r in ev], [LABELS.index(r["label"]) for r in ev])
    assert acc == pytest.approx(by["lora"]["accuracy"], abs=1e-9)
    assert by["lora"]["trainable_pct"] < 5

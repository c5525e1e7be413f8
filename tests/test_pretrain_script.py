"""The committed pretraining script still reproduces the shipped tokenizer.

If labkit.corpus or the tokenizer recipe changes, this fails: the bundled model would no longer be
what scripts/pretrain_base.py makes, and it must be retrained (or the change undone).
"""

import json

import pytest


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("pretrain_base")


@pytest.mark.slow
def test_script_rebuilds_the_shipped_tokenizer(script):
    from labkit import models

    card = models.model_card()
    t = card["training"]
    tok = script.build_tokenizer(script.tokenizer_corpus(t["seed"], t["copy_share"]), card["config"]["vocab_size"])
    shipped = json.loads((models.BASE_MODEL_DIR / "tokenizer.json").read_text())
    rebuilt = json.loads(tok.backend_tokenizer.to_str())
    assert rebuilt["model"]["vocab"] == shipped["model"]["vocab"]
    assert rebuilt["model"]["merges"] == shipped["model"]["merges"]
    assert rebuilt["normalizer"] == shipped["normalizer"] and rebuilt["decoder"] == shipped["decoder"]


def test_script_writes_the_shipped_chat_template(script):
    from labkit import models

    assert (models.BASE_MODEL_DIR / "chat_template.jinja").read_text() == script.CHAT_TEMPLATE
    assert models.load_tokenizer().chat_template == script.CHAT_TEMPLATE


def test_lr_schedule_warms_up_and_decays(script):
    lrs = [script.lr_at(s, 1000, 1e-3, 100) for s in range(1000)]
    assert lrs[0] < lrs[99] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


def test_copy_rows_are_copyable(script):
    import random

    row = script.repeat_row(random.Random(0), 256, list(range(10, 60)), eos=0)
    assert len(row) == 256 and row[0] == 0 and row[64] == 0
    piece = row[1:64]
    period = next(p for p in range(8, 25) if piece[p:2 * p] == piece[:p])
    assert piece[period:] == (piece[:period] * 10)[: 63 - period]

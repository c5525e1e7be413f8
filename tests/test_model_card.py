"""The shipped weights agree with the model card that the pretraining script wrote."""

import hashlib
import json

import pytest

from labkit import corpus, evaluate, models

CARD = json.loads((models.BASE_MODEL_DIR / "model_card.json").read_text())


def test_weights_match_the_card_sha256():
    digest = hashlib.sha256((models.BASE_MODEL_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert digest == CARD["weights_sha256"]


def test_card_matches_the_loaded_model(base):
    model, _ = base
    assert sum(p.numel() for p in model.parameters()) == CARD["parameters"]
    for key, value in CARD["config"].items():
        assert getattr(model.config, key) == value, key


def test_card_states_what_the_issue_asks_for():
    t = CARD["training"]
    for key in ("tokens_seen", "train_minutes", "final_loss_ema", "steps"):
        assert key in t
    assert set(CARD["heldout_perplexity"]) == {"general", "domain"}


def test_readme_card_shows_the_same_figures():
    text = (models.BASE_MODEL_DIR / "README.md").read_text()
    assert CARD["weights_sha256"] in text
    assert f"{CARD['parameters']:,}" in text


@pytest.mark.slow
def test_copy_probe_reproduces_the_card(base):
    """Re-run the card's copy probe (same held-out documents, greedy generation)."""
    model, tok = base
    seed = CARD["training"]["seed"]
    probe = corpus.copy_probe(CARD["copy_probe"]["n"], seed=999_002 + seed)
    score = evaluate.copy_probe_score(model, tok, probe, generate=True)
    assert score["all"] == pytest.approx(CARD["copy_probe"]["all"], abs=0.02)
    assert score["all"] >= 0.80

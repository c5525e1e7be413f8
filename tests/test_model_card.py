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


def test_the_cards_training_figures_agree_with_each_other():
    t, history = CARD["training"], CARD["history"]
    assert t["tokens_seen"] == t["steps"] * t["batch"] * t["context"], "every step sees batch x context tokens"
    steps = [h["step"] for h in history]
    assert steps == sorted(steps) and steps[-1] == t["steps"], "the history ends at the last step"
    assert history[-1]["loss"] == t["final_loss_ema"] and history[-1]["copy"]["all"] == CARD["copy_probe"]["all"]
    assert t["train_minutes"] == pytest.approx(history[-1]["minutes"], abs=0.1) and t["total_minutes"] >= t["train_minutes"]
    assert set(CARD["heldout_perplexity"]) == {"general", "domain"}


@pytest.mark.slow
def test_heldout_perplexity_reproduces_the_card(base):
    """Re-measure the card's held-out perplexities: scripts/pretrain_base.py's 200 general and 200 domain texts
    (random.Random(999_001 + seed), never in training) at the training context (measured: 1.5523 and 1.9934, 5 s)."""
    import random

    from labkit.evaluate import perplexity

    model, tok = base
    held = random.Random(999_001 + CARD["training"]["seed"])
    general = [corpus.general_text(held) for _ in range(200)]
    domain = [corpus.domain_document(held) for _ in range(200)]
    ctx = CARD["training"]["context"]
    assert perplexity(model, tok, general, ctx) == pytest.approx(CARD["heldout_perplexity"]["general"], abs=2e-4)
    assert perplexity(model, tok, domain, ctx) == pytest.approx(CARD["heldout_perplexity"]["domain"], abs=2e-4)


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

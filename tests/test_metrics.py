"""evaluate.perplexity_from_logits and evaluate.exact_match (the references of lesson 07's exercises)."""

import math

import pytest
import torch

from labkit import evaluate


def test_perplexity_from_logits_equals_the_models_own_loss(base):
    model, tok = base
    ids = tok("Applicant: Linda Garcia\nMonthly income: $4,200", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(ids, labels=ids)
    assert evaluate.perplexity_from_logits(out.logits, ids) == pytest.approx(math.exp(out.loss.item()), rel=1e-5)


def test_perplexity_ignores_minus_100_and_averages_over_tokens():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(1))
    labels[1, 3:] = -100
    logp = logits.log_softmax(-1)
    nll = [-logp[b, t - 1, labels[b, t]].item() for b in range(2) for t in range(1, 5) if labels[b, t] != -100]
    assert evaluate.perplexity_from_logits(logits, labels) == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)
    uniform = torch.zeros(1, 4, 50)
    assert evaluate.perplexity_from_logits(uniform, torch.tensor([[1, 2, 3, 4]])) == pytest.approx(50)


def test_perplexity_errors():
    with pytest.raises(ValueError, match="every label is -100"):
        evaluate.perplexity_from_logits(torch.zeros(1, 3, 5), torch.full((1, 3), -100))
    with pytest.raises(ValueError, match="batch, seq, vocab"):
        evaluate.perplexity_from_logits(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))


def test_exact_match_normalises_case_and_whitespace_but_not_punctuation():
    assert evaluate.normalize_answer("  Risk:   HIGH\n") == "risk: high"
    assert evaluate.exact_match([" Risk:  HIGH ", "risk: high.", "approve"], ["risk: high"] * 2 + ["Approve"]) == \
        pytest.approx(2 / 3)
    assert evaluate.exact_match(["Risk: high"], ["risk: high"], normalize=False) == 0.0


def test_exact_match_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        evaluate.exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="at least one"):
        evaluate.exact_match([], [])

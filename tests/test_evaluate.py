"""labkit.evaluate: perplexity from logits, exact match, token F1, ROUGE-L (against the rouge-score package),
format validity, and win rates from any judge (one answer each, or both orders to cancel position bias)."""

import math
import random

import pytest
import torch

from labkit import evaluate

# ---------------------------------------------------------------------------------------------
# perplexity and exact match (the references of lesson 13's exercises)


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


# ---------------------------------------------------------------------------------------------
# token F1 and ROUGE-L


def test_token_f1_by_hand():
    assert evaluate.token_f1("Risk: high", "risk: HIGH") == 1.0
    # prediction "the ratio is 30" vs reference "ratio 30 percent": common {ratio, 30}; P = 2/4, R = 2/3
    assert evaluate.token_f1("the ratio is 30", "ratio 30 percent") == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert evaluate.token_f1("low", "high") == 0.0
    assert evaluate.token_f1("", "") == 1.0 and evaluate.token_f1("", "x") == 0.0
    assert evaluate.token_f1("a a a", "a") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))  # counts, not sets


def test_lcs_length():
    assert evaluate.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert evaluate.lcs_length([], [1]) == 0


def _random_sentence(rng):
    words = ["the", "loan", "risk", "is", "high", "low", "ratio", "30%", "Linda", "Garcia", "$1,500", "paid", "a"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))


def test_rouge_l_matches_the_rouge_score_package():
    from rouge_score import rouge_scorer  # a test dependency (pyproject's test extra): missing is a failure, not a skip

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(0)
    pairs = [(_random_sentence(rng), _random_sentence(rng)) for _ in range(300)]
    pairs += [("The debt-to-income ratio is $1,500 / $5,000 = 30%.", "The ratio is 30%."), ("Risk: high", "risk: HIGH")]
    for pred, ref in pairs:
        theirs = scorer.score(ref, pred)["rougeL"]  # rouge-score takes (target, prediction)
        ours = evaluate.rouge_l(pred, ref)
        assert ours["precision"] == pytest.approx(theirs.precision)
        assert ours["recall"] == pytest.approx(theirs.recall)
        assert ours["f1"] == pytest.approx(theirs.fmeasure), (pred, ref)


def test_rouge_l_rewards_order_token_f1_does_not():
    assert evaluate.token_f1("high risk", "risk high") == 1.0
    assert evaluate.rouge_l("high risk", "risk high")["f1"] == 0.5


def test_mean_score_and_errors():
    assert evaluate.mean_score(evaluate.rouge_l, ["a b", "c"], ["a b", "d"]) == 0.5
    assert evaluate.mean_score(evaluate.token_f1, ["a"], ["a"]) == 1.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        evaluate.mean_score(evaluate.token_f1, ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="expected a string"):
        evaluate.token_f1(None, "a")


def test_format_validity():
    assert evaluate.format_validity("risk", ["Risk: low", "Risk: hi", "risk: low"]) == pytest.approx(1 / 3)
    assert evaluate.format_validity(["classify", "extract"], ["memo", '{"a": 1}']) == 1.0
    with pytest.raises(ValueError, match="Unknown task 'nope'"):
        evaluate.format_validity("nope", ["x"])
    with pytest.raises(ValueError, match="2 tasks but 1 answers"):
        evaluate.format_validity(["risk", "risk"], ["Risk: low"])


# ---------------------------------------------------------------------------------------------
# win rates


def test_win_rate_counts_wins_ties_losses():
    score = lambda prompt, answer: len(answer)  # noqa: E731 - a judge that likes long answers
    res = evaluate.win_rate(score, ["p"] * 4, ["aaa", "a", "aa", "aaaa"], ["a", "aaa", "aa", "aaa"])
    assert (res["wins"], res["ties"], res["losses"], res["n"]) == (2, 1, 1, 4)
    assert res["win_rate"] == pytest.approx(2.5 / 4)
    assert evaluate.win_rate(score, ["p"], ["ab"], ["a"], tie_margin=1.0)["ties"] == 1
    with pytest.raises(ValueError, match="one answer of each system per prompt"):
        evaluate.win_rate(score, ["p"], ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="NaN"):
        evaluate.win_rate(lambda p, a: float("nan"), ["p"], ["a"], ["b"])


def test_pairwise_win_rate_cancels_position_bias():
    # a judge that always prefers the first answer shown: pure position bias, no opinion
    biased = lambda prompt, first, second: 0.9  # noqa: E731
    res = evaluate.pairwise_win_rate(biased, ["p"] * 3, ["a"] * 3, ["b"] * 3)
    assert res["win_rate"] == pytest.approx(0.5) and res["first_position_rate"] == pytest.approx(0.9)
    assert res["consistent"] == 0.0
    fair = lambda prompt, first, second: 1.0 if len(first) > len(second) else 0.0  # noqa: E731
    res = evaluate.pairwise_win_rate(fair, ["p"] * 2, ["long", "long"], ["s", "s"])
    assert res["win_rate"] == 1.0 and res["first_position_rate"] == 0.5 and res["consistent"] == 1.0

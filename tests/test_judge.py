"""labkit.judge: the rule judge (task format, grounded facts) and the MiniLM embedding judge trained on
preference pairs."""

import pytest

from labkit import data, judge


def test_rule_judge_prefers_the_chosen_answer_on_most_preference_pairs():
    pairs = list(data.load("preferences", "eval"))
    acc = sum(judge.rule_score(p["prompt"], p["chosen"]) > judge.rule_score(p["prompt"], p["rejected"])
              for p in pairs) / len(pairs)
    assert acc > 0.8


def test_rule_judge_parts():
    prompt = "Rate the risk of this loan as low, medium or high.\n\nBorrower: Ana Silva\nMonthly income: $4,000"
    assert judge.task_of(prompt) == "risk" and judge.task_of("Who is the account holder?\n\nx") == "qa"
    assert judge.rule_score(prompt, "Risk: low") == 2.0
    assert judge.rule_score(prompt, "risk is low") == 1.0
    assert judge.grounded_share(prompt, "Ana Silva earns $4,000") == 1.0
    assert judge.grounded_share(prompt, "Bob Silva earns $9,999") == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="two strings"):
        judge.rule_score(prompt, None)


@pytest.mark.slow
def test_embedding_judge_learns_from_preference_pairs():
    pairs = list(data.load("preferences", "train", n=80))
    held = list(data.load("preferences", "eval", n=60))
    j = judge.EmbeddingJudge(max_length=96)
    assert j.accuracy(held) == 0.0  # an untrained head scores every answer 0: no pair is ranked right
    losses = j.fit(pairs, steps=150)
    assert losses[-1] < losses[0]
    assert j.accuracy(held) > 0.7
    with pytest.raises(ValueError, match="learning rate"):
        j.fit(pairs, lr=0)

"""labkit.judge: the rule judge (task format, grounded facts), the rubric as a judge prompt, a position-biased judge,
validation against a reference, and the MiniLM embedding judge trained on preference pairs."""

import math

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


def test_judge_prompt_holds_the_request_both_answers_and_every_rule():
    text = judge.judge_prompt("Rate the risk", "Risk: low", "RISK: LOW")
    assert text.index("[Request]\nRate the risk") < text.index("[Answer A]\nRisk: low") < text.index("[Answer B]\nRISK: LOW")
    assert all(f"{i}. {rule}" in text for i, rule in enumerate(judge.RUBRIC, 1)) and text.endswith("A or B.")
    assert "2. be short" in judge.judge_prompt("q", "a", "b", rubric=("be right", "be short"))
    with pytest.raises(ValueError, match="three strings"):
        judge.judge_prompt("q", None, "b")


def test_position_biased_judge_adds_its_bonus_to_the_first_answer():
    score = lambda prompt, answer: len(answer)  # noqa: E731
    biased, fair = judge.position_biased(score, bonus=2.0), judge.position_biased(score, bonus=0.0)
    assert fair("p", "ab", "ab") == 0.5 and biased("p", "ab", "ab") == pytest.approx(1 / (1 + math.exp(-2)))
    assert biased("p", "a", "abc") == pytest.approx(0.5), "a bonus of 2 exactly offsets two characters"


def test_agreement_on_decisive_counts_only_prompts_where_one_system_is_right():
    score = lambda prompt, answer: {"good": 1.0, "bad": 0.0, "same": 0.5}[answer]  # noqa: E731
    v = judge.agreement_on_decisive(score, ["p"] * 5, ["good", "bad", "good", "same", "bad"],
                                    ["bad", "good", "good", "same", "good"],
                                    [True, False, True, True, True], [False, True, True, False, False])
    # prompt 2: both right (not decisive); 0 and 1: the judge prefers the right one; 3: a tie; 4: the wrong one
    assert v == {"n": 4, "agree": 2, "ties": 1, "disagree": 1}
    with pytest.raises(ValueError, match="one answer and one verdict"):
        judge.agreement_on_decisive(score, ["p"], ["good"], ["bad"], [True], [])


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


@pytest.mark.slow
def test_embedding_judge_embeds_each_pair_once_and_scores_alike():
    j = judge.EmbeddingJudge(max_length=128)
    j.fit(list(data.load("preferences", "train", n=16)), steps=5)
    calls = []
    embed = j.embed
    j.embed = lambda p, a: calls.append(len(p)) or embed(p, a)
    prompts, answers = ["Rate the risk", "Who holds it?", "Rate the risk"], ["Risk: low", "Ana Silva", "Risk: low"]
    many = j.score_many(prompts, answers)
    assert calls == [2], "one batch, the repeated pair embedded once"
    assert [j.score(p, a) for p, a in zip(prompts, answers)] == pytest.approx(many) and calls == [2]
    fresh = judge.EmbeddingJudge(max_length=128)
    fresh.head.load_state_dict(j.head.state_dict())
    assert [fresh.score(p, a) for p, a in zip(prompts, answers)] == pytest.approx(many, abs=1e-5)

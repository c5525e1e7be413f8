"""labkit.interview: lesson 19's quiz wrapper shows where the answer is proven, and why once right."""

import re

import pytest

from labkit import check as C
from labkit import interview


pytestmark = pytest.mark.usefixtures("checker_env")


def _right_letter(qid):
    return next(letter for letter in "abc" if C.quiz(qid, letter).passed)


def test_enough_questions_and_every_one_explained():
    from labkit.checks import lesson19

    ids = [q for q in C.quizzes() if q.startswith("q19_")]
    assert len(ids) >= 23
    assert set(ids) == set(lesson19.EXPLANATIONS) == set(lesson19.TOPICS)
    for qid in ("q19_which_rank", "q19_prevent_forgetting", "q19_finetune_vs_prompting"):
        assert qid in ids
    for where, why in lesson19.EXPLANATIONS.values():
        assert re.search(r"lesson \d\d", where) and why
    assert {"token_f1", "rouge_l_f1"} <= set(C.exercises())


def test_choice_answers_are_spread_over_the_letters():
    letters = [_right_letter(q) for q in C.quizzes() if q.startswith("q19_") and C.get(q).kind == "choice"]
    assert all(letters.count(x) >= 4 for x in "abc")


def test_quiz_shows_where_after_any_answer_and_why_only_when_right():
    qid = "q19_which_rank"
    right = _right_letter(qid)
    wrong = next(x for x in "abc" if x != right)
    where, why = interview.explain(qid)
    shown = interview.quiz(qid)
    assert shown.message.startswith("?") and where not in shown.message
    bad = interview.quiz(qid, wrong)
    assert not bad.passed and where in bad.message and why not in bad.message
    good = interview.quiz(qid, right)
    assert good.passed and good.message.startswith("✔") and where in good.message and why in good.message
    empty = interview.quiz(qid, None)
    assert "not answered yet" in empty.message and where not in empty.message


def test_quiz_of_another_lesson_and_unknown_ids_never_raise():
    assert interview.quiz("q13_em_normalised", "a").message.startswith(("✔", "✘"))
    assert "there is no quiz question" in interview.quiz("nope", "a").message
    with pytest.raises(ValueError, match="no explanation for 'nope'"):
        interview.explain("nope")


def test_deck_groups_by_topic():
    d = interview.deck()
    assert sum(len(v) for v in d.values()) == len([q for q in C.quizzes() if q.startswith("q19_")])
    assert list(interview.deck("DPO")) == ["DPO"]
    with pytest.raises(ValueError, match="unknown topic 'Nope'"):
        interview.deck("Nope")


@pytest.mark.parametrize("which", ["all", "attention"])
def test_lesson_09s_lora_count_is_what_peft_trains_for_each_model(base, hub_models, which):
    """Section 1 counts r * (d_in + d_out) over the model's own targets (adapters.targets); for every model,
    GPT-2's Conv1D (weight stored (in, out)) included, that is exactly the number of parameters peft trains."""
    import copy

    from labkit import adapters, lora, models

    expected = {"bundled": {"all": list(adapters.DEFAULT_TARGETS), "attention": ["q_proj", "v_proj"]},
                "gpt2": {"all": ["c_attn", "c_proj", "c_fc"], "attention": ["c_attn"]}}
    for kind in ("bundled", *hub_models):
        model = base[0] if kind == "bundled" else models.load_base(hub_models[kind], device="cpu")[0]
        targets = adapters.targets(model, which)
        if kind in expected:
            assert targets == expected[kind][which]
        for r in (4, 8):
            pm = adapters.add(copy.deepcopy(model), "lora", r=r, alpha=2 * r, target_modules=targets)
            assert lora.count_lora_params(model, r, targets) == pm.get_nb_trainable_parameters()[0], (kind, r)

"""labkit.interview and lesson 19's deck: open questions, the deck's balance, every lesson covered, the index
of every lesson's exercises, the drills' references against the libraries, and token_f1's check against
a set-based implementation."""

import html
import math
import random
import re
from pathlib import Path

import pytest
import torch

from labkit import check as C
from labkit import interview
from labkit.interview_open import OPEN

pytestmark = pytest.mark.usefixtures("checker_env")
ROOT = Path(__file__).resolve().parents[1]


def _deck_ids():
    return [q for q in C.quizzes() if C.get(q).lesson == "19"]


# ---------------------------------------------------------------------------------------------
# the deck


@pytest.mark.parametrize("which", ["the deck (19)", "the lessons' quizzes (00-18)"])
def test_choice_keys_are_balanced_and_not_given_away_by_length(which):
    """Over the whole deck, and over the quizzes of every other lesson together: each position holds between
    2/3 and 4/3 of its fair share of the right answers, and the right answer is (at least as long as) the
    longest option in no more than chance + 10% of the questions (the old deck's keys cycled a, b, c and were
    nearly always the longest)."""
    deck = set(_deck_ids())
    ids = sorted(deck) if which.startswith("the deck") else [q for q in C.quizzes() if q not in deck]
    stats = interview.choice_balance(ids)
    n, positions = stats["n"], stats["positions"]
    assert n >= 30
    letters = sorted(positions)
    assert letters == ["a", "b", "c"], positions  # every question offers three plausible options
    for letter in letters:
        assert 2 / 3 * n / 3 <= positions[letter] <= 4 / 3 * n / 3, positions
    assert stats["key_longest"] / n <= stats["chance"] + 0.10, stats


def test_choice_balance_catches_a_deck_that_gives_its_keys_away(monkeypatch):
    """The balance measure itself can fail: a deck whose right answers are always a) and the longest."""
    from labkit.check import registry

    ids = []
    for i in range(6):
        qid = f"test_only_giveaway_{i}"
        monkeypatch.setitem(registry.QUESTIONS, qid, registry.Question(
            id=qid, lesson="99", text="?", kind="choice", answer_hash=C.answer_hash(qid, "a"),
            choices=("the right one, spelled out at length", "short", "brief"), feedback={"b": "no", "c": "no"}))
        ids.append(qid)
    stats = interview.choice_balance(ids)
    assert stats["positions"] == {"a": 6} and stats["key_longest"] == 6 and stats["chance"] == pytest.approx(1 / 3)


def test_every_question_says_where_the_course_backs_it():
    from labkit.checks import lesson19

    ids = _deck_ids()
    assert set(ids) == set(lesson19.EXPLANATIONS) == set(lesson19.TOPICS)
    have = {p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for qid, (where, why) in lesson19.EXPLANATIONS.items():
        cited = set(re.findall(r"lesson (\d\d)", where))
        assert cited and cited <= have and why, (qid, cited - have)


def test_every_lesson_contributes_and_the_new_topics_are_covered():
    cov = interview.coverage()
    missing = [f"{n:02d}" for n in range(18) if f"{n:02d}" not in cov]
    assert not missing, f"lessons with no interview question: {missing}"
    topics = set(interview.deck()) | {q["topic"] for q in OPEN}
    for must in ("GRPO", "DPO variants", "distributed training", "merging and serving", "data", "tool use"):
        assert must in topics


def test_quiz_shows_where_after_any_answer_and_why_only_when_right():
    qid = "q19_which_rank"
    right = interview.right_choice(qid)
    wrong = next(x for x in "abc" if x != right)
    where, why = interview.explain(qid)
    shown = interview.quiz(qid)
    assert shown.message.startswith("?") and where not in shown.message
    bad = interview.quiz(qid, wrong)
    assert not bad.passed and where in bad.message and why not in bad.message
    assert C.get(qid).feedback[wrong] in bad.message
    good = interview.quiz(qid, right)
    assert good.passed and good.message.startswith("✔") and where in good.message and why in good.message
    for empty in (None, "", "  "):
        result = interview.quiz(qid, empty)
        assert result.message.startswith("… q19_which_rank: not answered yet") and where not in result.message


def test_quiz_of_another_lesson_and_unknown_ids_never_raise():
    other = next(q for q in C.quizzes() if C.get(q).lesson != "19")
    for answer in ("a", "b", 1.0):
        assert interview.quiz(other, answer).message == C.quiz(other, answer).message
    assert "there is no quiz question" in interview.quiz("nope", "a").message
    with pytest.raises(ValueError, match="no explanation for 'nope'"):
        interview.explain("nope")


def test_deck_groups_by_topic():
    d = interview.deck()
    assert sum(len(v) for v in d.values()) == len(_deck_ids())
    assert list(interview.deck("DPO")) == ["DPO"]
    with pytest.raises(ValueError, match="unknown topic 'Nope'"):
        interview.deck("Nope")


# ---------------------------------------------------------------------------------------------
# open questions


def test_open_questions_are_complete_and_tight():
    ids = [q["id"] for q in OPEN]
    assert len(ids) == len(set(ids)) >= 12
    registered = set(C.quizzes()) | set(C.exercises())
    for q in OPEN:
        assert q["question"].endswith("?") and q["follow_up"].endswith("?"), q["id"]
        assert re.search(r"lesson \d\d", q["figure"]), q["id"]
        assert len(q["answer"].split()) <= 90, (q["id"], len(q["answer"].split()))  # a minute's answer
        assert q["then"] in registered, (q["id"], q["then"])
        assert len(q["points"]) >= 3


def test_reveal_waits_for_an_answer_then_shows_model_answer_figure_and_follow_up():
    q = next(q for q in OPEN if q["id"] == "lora")
    for blank in (None, "", "   ", ...):
        waiting = interview.reveal("lora", blank)
        assert waiting.message.startswith("… lora: not answered yet") and q["answer"] not in waiting.message
        assert "#0b57d0" in waiting._repr_html_() and "#b3261e" not in waiting._repr_html_()
    shown = interview.reveal("lora", "Freeze W and train a low-rank B·A; B starts at zero.")
    text = repr(shown)
    assert q["answer"] in text and q["figure"] in text and q["follow_up"] in text
    assert "touched 3 of 5 key points" in text
    assert "<details>" in shown._repr_html_() and "check('lora_linear'" in text
    assert "check(&#x27;lora_linear&#x27;" in shown._repr_html_() and html.escape(q["answer"]) in shown._repr_html_()
    with pytest.raises(ValueError, match="no open question 'nope'"):
        interview.ask("nope")


def test_key_points_are_read_from_the_answer_not_granted():
    assert all(not t for _, t in interview.key_points("grpo", "I would use PPO."))
    full = interview.key_points("grpo", "Sample a group per prompt; advantage = reward minus the group mean; no "
                                        "value network; a verifier scores; report pass@k against an SFT control.")
    assert all(t for _, t in full)


# ---------------------------------------------------------------------------------------------
# the index of every lesson's exercises


def test_index_links_every_lessons_exercise_notebook_with_its_checks():
    idx = interview.index()
    numbers = [row[0] for row in idx.rows]
    assert numbers == sorted(numbers) and "19" in numbers and len(numbers) >= 18
    for number, title, path, quizzes, drills in idx.rows:
        assert (ROOT / path).exists(), path
        assert quizzes + drills
        assert all(C.get(i).lesson == number for i in quizzes + drills)
    assert sum(len(r[3]) + len(r[4]) for r in idx.rows) == len(C.quizzes()) + len(C.exercises())
    html = idx._repr_html_()
    assert html.count("<a href=") == len(idx.rows) and 'href="../exercises/01_lora_from_scratch_exercises.ipynb"' in html


def test_index_leaves_out_lessons_with_nothing_registered():
    rows = [{"number": "19", "title": "Interview prep", "stem": "19_interview_prep"},
            {"number": "98", "title": "Nothing here", "stem": "98_nothing"}]
    assert [r[0] for r in interview.index(rows).rows] == ["19"]


def test_index_links_the_lesson_itself_when_its_checks_live_there(monkeypatch, tmp_path):
    """A lesson without an exercise notebook (a clinic whose checks are in the lesson) is linked to the lesson."""
    from labkit.check import registry

    monkeypatch.setitem(registry.QUESTIONS, "test_only_in_lesson", registry.Question(
        id="test_only_in_lesson", lesson="97", text="?", kind="number", answer_hash=C.answer_hash("x", 1, "number")))
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "97_clinic.ipynb").write_text("{}")
    rows = [{"number": "97", "title": "Clinic", "stem": "97_clinic"}]
    assert interview.index(rows, root=tmp_path).rows[0][2] == "notebooks/97_clinic.ipynb"
    (tmp_path / "exercises").mkdir()
    (tmp_path / "exercises" / "97_clinic_exercises.ipynb").write_text("{}")
    assert interview.index(rows, root=tmp_path).rows[0][2] == "exercises/97_clinic_exercises.ipynb"


# ---------------------------------------------------------------------------------------------
# the drills' references, against the libraries that do the same


def test_lora_linear_is_labkits_lora_layer():
    from labkit.lora import LoRALinear

    torch.manual_seed(0)
    base = torch.nn.Linear(12, 7, bias=False)
    for rslora in (False, True):
        layer = LoRALinear(base, r=4, alpha=8, rslora=rslora)
        torch.nn.init.normal_(layer.B)
        x = torch.randn(3, 12)
        got = interview.lora_linear(x, base.weight, layer.A, layer.B, 8, 4, rslora)
        torch.testing.assert_close(got, layer(x))


def test_causal_attention_is_torchs_with_is_causal():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(interview.causal_attention(q, k, v), want)
    out = interview.causal_attention(q, k, v)
    changed = v.clone()
    changed[..., -1, :] += 100  # the last position's value: only the last query may see it
    torch.testing.assert_close(interview.causal_attention(q, k, changed)[..., :-1, :], out[..., :-1, :])


def test_top_p_probs_matches_transformers_top_p_warper():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    for temperature, top_p in ((1.0, 0.9), (0.7, 0.5), (1.5, 0.95), (1.0, 1.0)):
        logits = 2 * torch.randn(4, 50, generator=g)
        warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
        torch.testing.assert_close(interview.top_p_probs(logits, temperature, top_p), warped.softmax(-1))
    one = interview.top_p_probs(torch.tensor([5.0, 0.0, 0.0]), 1.0, 0.01)
    assert one.tolist() == [1.0, 0.0, 0.0]  # the most likely token is always kept


def test_dpo_mean_loss_is_labkits_dpo_loss():
    from labkit import preference

    g = torch.Generator().manual_seed(0)
    logps = [torch.randn(5, generator=g) * 4 - 20 for _ in range(4)]
    for beta in (0.1, 1.0):
        assert interview.dpo_mean_loss(*logps, beta) == pytest.approx(preference.dpo_loss(*logps, beta=beta)[0].item())
    same = torch.tensor([-3.0, -9.0])
    assert interview.dpo_mean_loss(same, same, same, same, 0.1) == pytest.approx(math.log(2))


def test_mean_pass_at_k_is_the_mean_of_lesson_11s_pass_at_k():
    from labkit import grpo

    rng = random.Random(0)
    for _ in range(20):
        n = rng.choice([4, 10, 50])
        correct, k = [rng.randint(0, n) for _ in range(5)], rng.randint(1, n)
        want = sum(grpo.pass_at_k(n, c, k) for c in correct) / len(correct)
        assert interview.mean_pass_at_k(n, correct, k) == pytest.approx(want)


@pytest.mark.parametrize("exercise_id, wrong", [
    ("lora_linear", lambda x, W, A, B, alpha, r, rslora: x @ W.T + alpha / r * (x @ A.T) @ B.T),  # rsLoRA ignored
    ("causal_attention", lambda q, k, v: (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1) @ v),  # no mask
    ("causal_attention", lambda q, k, v: (((q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1)
                                           * torch.ones(q.shape[-2], q.shape[-2]).tril()) @ v)),  # masked after
    ("top_p_probs", lambda logits, temperature, top_p: torch.softmax(logits / temperature, -1)),  # no top-p
    ("dpo_mean_loss", lambda pc, pr, rc, rr, beta: float(-torch.nn.functional.logsigmoid(pc - pr).mean())),  # no ref, beta
    ("mean_pass_at_k", lambda n, correct, k: sum(1 - (1 - c / n) ** k for c in correct) / len(correct)),  # biased
])
def test_a_drill_fails_the_usual_mistake_at_every_seed(exercise_id, wrong):
    for seed in range(3):
        assert not C.check(exercise_id, wrong, seed=seed).passed


@pytest.mark.parametrize("which", ["all", "attention"])
def test_section_3s_lora_count_is_what_peft_trains_for_each_model(base, hub_models, which):
    """Section 3 counts r * (d_in + d_out) over the model's own targets (adapters.targets); for every model,
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


# ---------------------------------------------------------------------------------------------
# token_f1: a set-based implementation never passes


def _words(s):
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).split()


def _f1_with_sets(prediction, reference):
    p, r = _words(prediction), _words(reference)
    if not p or not r:
        return float(p == r)
    common = len(set(p) & set(r))
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def test_a_set_based_token_f1_fails_a_public_case_whatever_the_hidden_ones():
    """Shared tokens counted once (a set) instead of with multiplicity (a Counter): a public case with a word
    repeated on both sides fails it at every seed, so passing cannot depend on the random hidden cases."""
    for seed in range(8):
        result = C.check("token_f1", _f1_with_sets, seed=seed)
        assert not result.passed and "a word repeated on both sides" in result.message, result.message


def test_the_repeated_word_case_is_one_a_set_cannot_pass():
    """The case itself separates the two: the reference (counts) and the set version disagree on it."""
    from labkit import evaluate

    case = next(c for c in C.get("token_f1").public() if c.label == "a word repeated on both sides")
    assert _f1_with_sets(**case.inputs) != pytest.approx(evaluate.token_f1(**case.inputs))


# ---------------------------------------------------------------------------------------------
# the lesson after Run All, unanswered: nothing red


def test_the_lesson_run_unanswered_shows_no_red_box():
    """Every ask/reveal/quiz/check cell of lesson 19, run as committed (no answer written, drill stubs that
    raise NotImplementedError), shows a question or a neutral "not answered yet", never a failure."""
    import ast
    import json

    nb = json.loads((ROOT / "notebooks" / "19_interview_prep.ipynb").read_text())
    namespace = {}
    exec("from labkit.check import check, progress\nfrom labkit.interview import ask, index, quiz, reveal", namespace)
    shown = []
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] != "code" or not any(f in src for f in ("ask(", "reveal(", "quiz(", "check(")):
            continue
        tree = ast.parse(src)
        *body, last = tree.body
        exec(compile(ast.Module(body=body, type_ignores=[]), "cell", "exec"), namespace)
        shown.append(eval(compile(ast.Expression(last.value), "cell", "eval"), namespace))
    assert len(shown) >= 3 * len(OPEN)
    for result in shown:
        text = repr(result)
        assert text.startswith(("?", "…", "Interviewer:")), text
        assert "#b3261e" not in getattr(result, "_repr_html_")(), text
    assert sum("not answered yet" in repr(r) for r in shown) >= 2 * len(OPEN)

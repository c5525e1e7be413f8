"""Lesson 18's clinic: for every case, the broken version of the fix fails its check and the fixed one passes;
the diagnosis quizzes take their keys and nothing else; the cheap case runners give the broken and the fixed
numbers the lesson reads."""

import math

import pytest
import torch

from labkit import check as C
from labkit import chat, quant
from labkit.check import answer_hash
from labkit.checks import lesson18
from labkit.lessons import clinic, clinic_beyond

pytestmark = pytest.mark.usefixtures("checker_env")


def _last_is_stop(labels, stop_ids):  # looks only at the last label: a stop followed by padding labels is missed
    return [i for i, row in enumerate(labels) if int(row[-1]) not in set(stop_ids)]


def _labels_by_pad_id(input_ids, attention_mask):  # DataCollatorForLanguageModeling's rule: masks the EOS too
    labels = input_ids.clone()
    labels[input_ids == 0] = -100
    return labels


def _substring_targets(module_names, target_modules):  # 'proj' would match every projection: peft does not
    return [t for t in target_modules if not any(t in n for n in module_names)]


def _requantized(codes, absmax, shape, A, B, scaling):  # the naive merge: W + ΔW back onto the NF4 grid
    w = quant.dequantize_nf4(codes, absmax, shape) + scaling * (B @ A)
    c, a = quant.quantize_nf4(w)
    return quant.dequantize_nf4(c, a, shape)


def _lowest_final_loss(runs):  # picks the run that ended lowest, even after a diverged step
    return min(runs, key=lambda lr: runs[lr][-1])


def _tokenizer():
    return lesson18._tokenizer()


CASES = {  # exercise id: (the broken version, the fixed version)
    "clinic_untrained_stop": (_last_is_stop, clinic.untrained_stop),
    "clinic_serving_prompt": (lambda q: _tokenizer().apply_chat_template([{"role": "user", "content": q}], tokenize=False),
                              lambda q: _tokenizer().apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                                        add_generation_prompt=True)),
    "clinic_pad_labels": (_labels_by_pad_id, clinic.lm_labels),
    "clinic_unmatched_targets": (_substring_targets, clinic.unmatched_targets),
    "clinic_supervised_rows": (lambda labels: list(range(len(labels))), clinic.supervised_rows),
    "clinic_safe_lr": (_lowest_final_loss, clinic.safe_lr),
    "clinic_merge_4bit": (_requantized, clinic_beyond.merge_dequantized),
    "clinic_dpo_config": (lambda w: {"loss_type": ["sigmoid"], "loss_weights": [1.0]}, clinic_beyond.dpo_fix_kwargs),
    "clinic_informative_groups": (lambda r, g: [sum(r[i:i + g]) > 0 for i in range(0, len(r), g)],
                                  clinic_beyond.informative_groups),
    "clinic_decontaminate": (lambda test, train, n, t: list(range(len(test))), clinic_beyond.decontaminate),
    "clinic_verify_rating": (lambda c, g: float(g.strip() in c), clinic_beyond.verify_rating),
}


def test_every_exercise_of_the_lesson_has_a_broken_and_a_fixed_version():
    assert sorted(CASES) == sorted(e for e in C.exercises() if C.get(e).lesson == "18")


@pytest.mark.parametrize("exercise_id", sorted(CASES))
def test_the_broken_version_fails_and_the_fixed_one_passes(exercise_id):
    broken, fixed = CASES[exercise_id]
    for seed in (0, 1):
        assert not C.check(exercise_id, broken, seed=seed).passed
        result = C.check(exercise_id, fixed, seed=seed)
        assert result.passed, result.message


KEYS = {"q18_turn_end": "a", "q18_template": "c", "q18_pad_eos": "b", "q18_targets": "b", "q18_all_masked": "a",
        "q18_lr": "c", "q18_merge": "a", "q18_dpo": "b", "q18_grpo": "c", "q18_leak": "b", "q18_gamed": "a"}


def test_each_diagnosis_takes_its_key_and_gives_feedback_on_the_others():
    assert sorted(KEYS) == sorted(q for q in C.quizzes() if C.get(q).lesson == "18")
    for qid, key in KEYS.items():
        assert C.quiz(qid, key).passed
        for other in "abc".replace(key, ""):
            result = C.quiz(qid, other)
            assert not result.passed and C.get(qid).feedback[other] in result.message


def test_keys_are_balanced_and_not_the_longest_choice():
    counts = {k: list(KEYS.values()).count(k) for k in "abc"}
    assert max(counts.values()) - min(counts.values()) <= 1
    longest = sum(len(C.get(q).choices["abc".index(k)]) == max(map(len, C.get(q).choices)) for q, k in KEYS.items())
    assert longest <= len(KEYS) // 2


def test_hashes_are_the_keys():
    for qid, key in KEYS.items():
        assert C.get(qid).answer_hash == answer_hash(qid, key)


# --------------------------------------------------------------------------------------------- the pure helpers


def test_diverged_at_and_safe_lr():
    assert clinic.diverged_at([6.0, 5.0, 4.0]) is None
    assert clinic.diverged_at([6.2, 12.8, 8.8]) == 1
    assert clinic.diverged_at([5.0, 4.0, math.nan]) == 2
    assert clinic.safe_lr({1e-1: [6.2, 12.8], 2e-3: [6.2, 5.5], 1e-4: [6.2, 6.1]}) == 2e-3
    with pytest.raises(ValueError):
        clinic.safe_lr({1e-1: [6.2, math.inf]})


def test_misspell_gives_the_issue_typo():
    assert clinic.misspell("v_proj") == "v_prj"
    assert clinic.unmatched_targets(["a.q_proj", "a.v_proj"], ["q_proj", "v_prj"]) == ["v_prj"]


def test_lm_labels_keep_an_eos_equal_to_pad():
    ids, mask = torch.tensor([[7, 0, 0]]), torch.tensor([[1, 1, 0]])
    assert clinic.lm_labels(ids, mask).tolist() == [[7, 0, -100]]


def test_merge_dequantized_keeps_the_update_and_requantising_loses_it():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 128, generator=g) * 0.05
    codes, absmax = quant.quantize_nf4(w)
    A, B = torch.randn(4, 128, generator=g) * 0.1, torch.randn(16, 4, generator=g) * 0.002
    base = quant.dequantize_nf4(codes, absmax, w.shape)
    delta = 2.0 * B @ A
    assert torch.allclose(clinic_beyond.merge_dequantized(codes, absmax, w.shape, A, B, 2.0), base + delta, atol=1e-7)
    lost = (_requantized(codes, absmax, w.shape, A, B, 2.0) - base - delta).norm() / delta.norm()
    assert lost > 0.3


def test_informative_groups_and_verify_rating():
    assert clinic_beyond.informative_groups([1, 1, 0, 1, 0, 0], 2) == [False, True, False]
    assert clinic_beyond.verify_rating("Risk: high", "Risk: high") == 1.0
    assert clinic_beyond.verify_rating("Risk: low Risk: medium Risk: high", "Risk: high") == 0.0
    assert clinic_beyond.dpo_fix_kwargs(0.5) == {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}


def test_decontaminate_drops_copied_rows_only():
    train = ["the ratio of debts to income is twenty percent today"]
    assert clinic_beyond.decontaminate([train[0], "a new question about a loan for Linda"], train, 3, 0.95) == [1]


# --------------------------------------------------------------------------------------------- cheap runners


@pytest.fixture(scope="module")
def bundled():
    from labkit import models

    return models.load_base("bundled", device="cpu")


def test_targets_case_finds_half_the_parameters_and_peft_refuses_the_typo_alone(bundled):
    model, _ = bundled
    r = clinic.targets_case(model)
    broken, fixed = r["targets"]
    assert r["trainable"][0] * 2 == r["trainable"][1]
    assert r["unmatched"] == [broken[1]] and "not found" in r["alone"]


def test_pad_eos_case_masks_the_eos_only_when_pad_is_eos(bundled):
    _, tok = bundled
    r = clinic.pad_eos_case(tok, n=4)
    eos = r["stops"][tok.eos_token]
    assert eos == {"broken": 0, "fixed": 4}
    end = chat.turn_end(tok)
    if end != tok.eos_token:  # the bundled template's turn end is its own token: still trained
        assert r["stops"][end] == {"broken": 4, "fixed": 4}


def test_all_masked_case_logs_nan_only_in_the_broken_run(bundled):
    model, tok = bundled
    r = clinic.all_masked_case(model, tok, steps=4, bad_step=1)
    assert math.isnan(r["broken"][1]) and all(math.isfinite(x) for x in r["fixed"])
    assert len(r["fixed"]) == len(r["broken"]) - 1


# --------------------------------------------------------------------------------------------- every case's run


@pytest.fixture(scope="module")
def sft_model(bundled):
    from labkit import preference

    model, tok = bundled
    return preference.reference_model(model, tok, model="bundled")[0]


@pytest.mark.slow
def test_sft_side_cases_break_and_their_fixes_repair(bundled, sft_model):
    model, tok = bundled
    c1 = clinic.turn_end_case(model, tok, steps=16, n_eval=4)
    assert c1["broken"]["untrained"] == c1["n"] and c1["fixed"]["untrained"] == 0
    assert c1["broken"]["stopped"] < c1["fixed"]["stopped"]
    c2 = clinic.template_case(sft_model, tok, n_eval=8)
    assert c2["broken"]["right"] < c2["fixed"]["right"]
    c6 = clinic.lr_case(model, tok, steps=6)
    assert c6["diverged"][0] is not None and c6["diverged"][1] is None


@pytest.mark.slow
def test_later_cases_break_and_their_fixes_repair(bundled, sft_model):
    model, tok = bundled
    c7 = clinic_beyond.merge_4bit_case(model, tok, steps=0, n_eval=8)
    assert c7["max_diff"]["fixed"] < 1e-3 < c7["max_diff"]["naive"] and c7["lost"] > 0.2
    c8 = clinic_beyond.dpo_case(sft_model, tok, steps=4, n=8)
    assert c8["broken"]["chosen"] < 0 and c8["fixed"]["chosen"] > c8["broken"]["chosen"]
    low = clinic_beyond.sampled_groups(sft_model, tok, n_prompts=4, temperature=0.1)
    one = clinic_beyond.sampled_groups(sft_model, tok, n_prompts=4, temperature=1.0)
    c9 = clinic_beyond.grpo_case(sft_model, tok, {"broken": low, "fixed": one})
    assert c9["broken"]["grad_norm"] == 0 and c9["broken"]["informative"] == 0
    assert c9["fixed"]["informative"] > 0 and c9["fixed"]["grad_norm"] > 0
    c10 = clinic_beyond.leak_case(sft_model, tok)
    assert c10["flagged_leaked"] == c10["leaked"] == c10["flagged"]
    assert c10["broken"]["right"] / c10["broken"]["rows"] > c10["fixed"]["right"] / c10["fixed"]["rows"]
    c11 = clinic_beyond.gamed_case(one)
    assert c11["broken"]["hack"] == 1.0 and c11["fixed"]["hack"] == 0.0

"""The exercises of lesson 17: plausible wrong answers fail with a message that names the case and gives
away none of the expected values; other right ways of writing them pass. (That every reference passes,
and the quizzes' answers, are in test_exercises.py, for all exercises.)"""

import copy

import pytest
import torch

from labkit import check as C
from labkit import ship

pytestmark = pytest.mark.usefixtures("checker_env")


def _merge_no_transpose(W, A, B, alpha, r, fan_in_fan_out):
    return W + (alpha / r) * (B @ A)


def _merge_in_place(W, A, B, alpha, r, fan_in_fan_out):
    delta = (alpha / r) * (B @ A)
    W += delta.T if fan_in_fan_out else delta
    return W


def _mixed_every_adapter_on_every_row(x, W, b, adapters, names):
    y = x @ W.T + (0 if b is None else b)
    for A, B, s in adapters.values():
        y = y + s * (x @ A.T) @ B.T
    return y


def _mixed_no_scaling(x, W, b, adapters, names):
    unscaled = {n: (A, B, 1.0) for n, (A, B, s) in adapters.items()}
    return ship.mixed_lora_linear(x, W, b, unscaled, names)


def _mixed_first_adapter_for_base_rows(x, W, b, adapters, names):
    first = next(iter(adapters))
    return ship.mixed_lora_linear(x, W, b, adapters, [first if n == "__base__" else n for n in names])


WRONG = [
    ("merge_into_weight", "Conv1D update not transposed", _merge_no_transpose),
    ("merge_into_weight", "alpha instead of alpha / r",
     lambda W, A, B, alpha, r, f: W + alpha * ((B @ A).T if f else B @ A)),
    ("merge_into_weight", "changes W in place", _merge_in_place),
    ("mixed_lora_linear", "every adapter on every row", _mixed_every_adapter_on_every_row),
    ("mixed_lora_linear", "scaling forgotten", _mixed_no_scaling),
    ("mixed_lora_linear", "'__base__' rows get the first adapter", _mixed_first_adapter_for_base_rows),
]


def _leaks(value):
    vals = value.flatten()[:6].tolist() if isinstance(value, torch.Tensor) else []
    return [s for v in vals for s in (f"{v:.4f}", f"{v:.3g}") if len(s) >= 4]


@pytest.mark.parametrize("exercise_id,why,fn", WRONG, ids=[w[1] for w in WRONG])
def test_a_wrong_answer_fails_naming_the_case_without_the_expected_values(exercise_id, why, fn):
    result = C.check(exercise_id, fn, seed=3)
    assert not result.passed, why
    assert "case" in result.message and "problem:" in result.message
    ex = C.get(exercise_id)
    for case in ex.public():
        for s in _leaks(ex.reference(*copy.deepcopy(case.inputs).values())):
            assert s not in result.message, (s, result.message)


def test_other_right_answers_pass():
    def merge_by_hand(W, A, B, alpha, r, fan_in_fan_out):
        delta = torch.einsum("or,ri->oi", B, A) * alpha / r
        return W.clone().add_(delta.t() if fan_in_fan_out else delta)

    def mixed_row_by_row(x, W, b, adapters, names):
        rows = []
        for i, n in enumerate(names):
            y = x[i] @ W.T + (0 if b is None else b)
            if n != "__base__":
                A, B, s = adapters[n]
                y = y + s * x[i] @ (B @ A).T
            rows.append(y)
        return torch.stack(rows)

    assert C.check("merge_into_weight", merge_by_hand).passed
    assert C.check("mixed_lora_linear", mixed_row_by_row).passed


def test_the_square_conv1d_case_catches_a_missing_transpose_that_raises_nothing():
    ex = C.get("merge_into_weight")
    case = next(c for c in ex.public() if "square" in c.label)
    W = case.inputs["W"]
    assert W.shape[0] == W.shape[1] and case.inputs["fan_in_fan_out"]
    got = _merge_no_transpose(*copy.deepcopy(case.inputs).values())
    assert got.shape == W.shape and not torch.allclose(got, ex.reference(*copy.deepcopy(case.inputs).values()))

"""labkit.check.compare: each comparator says what is wrong (type, shape, dtype, NaN, which index,
which key or part) and never the reference's values; describe_inputs names a case by its shapes."""

import pytest
import torch

from labkit import check as C
from labkit.check import compare

pytestmark = pytest.mark.usefixtures("checker_env")


def _merged(W, A, B, alpha, r):
    return W + (alpha / r) * (B @ A)


@pytest.mark.parametrize("returned, words", [
    (lambda W, A, B, alpha, r: W.tolist(), ["returned list", "expected a torch.Tensor"]),
    (lambda W, A, B, alpha, r: _merged(W, A, B, alpha, r).T, ["returned shape", "expected shape"]),
    (lambda W, A, B, alpha, r: _merged(W, A, B, alpha, r).double(), ["returned dtype torch.float64", "expected torch.float32"]),
    (lambda W, A, B, alpha, r: _merged(W, A, B, alpha, r) * float("nan"), ["NaN or inf"]),
    (lambda W, A, B, alpha, r: None, ["returned None"]),
])
def test_wrong_type_shape_dtype_and_nan(returned, words, failed):
    failed(C.check("lora_merge", returned), *words)


def test_wrong_values_name_the_first_index_not_the_values(failed):
    r = failed(C.check("lora_merge", lambda W, A, B, alpha, r: W + B @ A), "values differ", "index (0, 0)")
    assert "tensor(" not in r.message


def test_tensor_within_tolerance_passes_and_integer_mode_wants_integers():
    exp = torch.tensor([1.0, 2.0, 3.0])
    assert compare.tensor(rtol=1e-3)(exp * (1 + 1e-4), exp) is None
    assert "2 of 3 values differ" in compare.tensor()(exp + torch.tensor([0.0, 1.0, 1.0]), exp)
    assert "at index (1,)" in compare.tensor()(exp + torch.tensor([0.0, 1.0, 1.0]), exp)
    idx = torch.tensor([0, 2, 1])
    assert compare.tensor(integer=True)(idx.to(torch.uint8), idx) is None  # any integer dtype
    assert "expected integer indices" in compare.tensor(integer=True)(idx.float(), idx)
    assert compare.tensor(check_dtype=False)(exp.double(), exp) is None


@pytest.mark.parametrize("got, words", [
    (True, "returned bool; expected a number"),
    (None, "returned None; expected a number"),
    (torch.zeros(2), "returned a tensor of shape (2,); expected a single number"),
    ("0.5", "returned str; expected a number"),
    (float("inf"), "expected a finite number"),
    (0.6, "the number is not right (checked to rtol=0.01)"),
])
def test_number_explains_what_is_not_a_right_number(got, words):
    assert words in compare.number(rtol=0.01)(got, 0.5)


def test_number_accepts_floats_ints_and_one_element_tensors():
    for got in (0.5, 0.501, torch.tensor([[0.5]])):
        assert compare.number(rtol=0.01)(got, 0.5) is None
    assert compare.number(atol=0.1)(0, 0.05) is None


def test_integer_wants_an_int():
    assert compare.integer()(7, 7) is None
    assert "expected an int (use int(...)" in compare.integer()(7.0, 7)
    assert "expected an int" in compare.integer()(True, 1)
    assert compare.integer()(8, 7) == "the count is not right"


def test_text_quotes_the_learners_text_never_the_expected_one():
    assert compare.text()("  hello world\n", "hello world") is None
    problem = compare.text()("hello there", "hello world SECRET")
    assert "from character 6" in problem and "'there'" in problem and "SECRET" not in problem
    assert "your text ends there" in compare.text()("hello", "hello world")
    assert "returned int; expected a str" in compare.text()(3, "3")


def test_sequence_checks_the_type_the_length_and_names_the_failing_part():
    cmp = compare.sequence(loss=compare.number(), count=compare.integer())
    assert cmp((1.0, 2), (1.0, 2)) is None and cmp([1.0, 2], (1.0, 2)) is None
    assert "expected a tuple (loss, count)" in cmp(1.0, (1.0, 2))
    assert "returned 1 items; expected 2" in cmp((1.0,), (1.0, 2))
    assert cmp((1.0, 3), (1.0, 2)) == "count: the count is not right"


def test_mapping_checks_keys_and_names_the_failing_value():
    cmp = compare.mapping(["a", "b"], compare.integer(), optional_zero=("c",))
    assert cmp({"a": 1, "b": 2}, {"a": 1, "b": 2}) is None and cmp({"a": 1, "b": 2, "c": 0}, {"a": 1, "b": 2}) is None
    assert "expected a dict with keys a, b" in cmp([1, 2], {"a": 1, "b": 2})
    assert "lacks key(s) 'b'" in cmp({"a": 1}, {"a": 1, "b": 2})
    assert "unexpected key(s) 'z'" in cmp({"a": 1, "b": 2, "z": 0}, {"a": 1, "b": 2})
    assert "'c' should be 0 here" in cmp({"a": 1, "b": 2, "c": 5}, {"a": 1, "b": 2})
    assert cmp({"a": 1, "b": 3}, {"a": 1, "b": 2}) == "'b': the count is not right"


def test_describe_inputs_gives_shapes_and_small_values():
    text = compare.describe_inputs({"x": torch.zeros(2, 5, dtype=torch.float64), "b": None, "r": 4,
                                    "layer": torch.nn.Sequential(torch.nn.Linear(2, 2)), "s": "x" * 100})
    assert text.startswith("x (2, 5) float64, b=None, r=4, layer: a Sequential with 1 nn.Linear layers (on cpu)")
    assert text.endswith(", s='" + "x" * 36 + "...")  # a long repr is cut at 40 characters

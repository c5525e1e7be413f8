import math

import pytest
import torch

from labkit import lowrank

LLAMA_QV = [(4096, 4096), (4096, 4096)] * 32   # q_proj and v_proj of Llama-2-7B's 32 blocks
LLAMA_PARAMS = 6_738_415_616


def _known_spectrum(d_out=40, d_in=30, seed=0):
    """U diag(s) V^T with orthonormal U, V and known descending s."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d_out, d_in, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))
    s = torch.linspace(5.0, 0.1, d_in, dtype=torch.float64) ** 2
    return (U * s) @ V.T, s


def test_singular_values_are_the_known_ones_descending():
    dw, s = _known_spectrum()
    got = lowrank.singular_values(dw.float())
    assert got.dtype == torch.float64 and got.shape == (30,)
    assert torch.all(got[:-1] >= got[1:])
    torch.testing.assert_close(got, s, rtol=1e-5, atol=1e-5)


def test_full_rank_error_is_zero_and_zero_matrix_gives_zero():
    dw = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    assert lowrank.rank_r_error(dw, 12) == pytest.approx(0.0, abs=1e-12)
    assert lowrank.rank_r_error(dw, 50) == pytest.approx(0.0, abs=1e-12)
    assert lowrank.rank_r_error(torch.zeros(5, 7), 1) == 0.0
    torch.testing.assert_close(lowrank.best_rank_r(dw, 12), dw, rtol=1e-5, atol=1e-5)


def test_error_decreases_monotonically_with_rank():
    dw = torch.randn(32, 24, generator=torch.Generator().manual_seed(2))
    errs = lowrank.error_curve(dw, range(1, 25))
    assert len(errs) == 24 and 0 < errs[0] < 1
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs == [lowrank.rank_r_error(dw, r) for r in range(1, 25)]


@pytest.mark.parametrize("r", [1, 3, 10, 29])
def test_error_matches_closed_form_and_truncated_svd(r):
    dw, s = _known_spectrum()
    closed = math.sqrt(float((s[r:] ** 2).sum() / (s ** 2).sum()))
    assert lowrank.rank_r_error(dw, r) == pytest.approx(closed, rel=1e-9)
    approx = lowrank.best_rank_r(dw, r)
    assert approx.shape == dw.shape and approx.dtype == dw.dtype
    assert torch.linalg.matrix_rank(approx).item() == r
    frob = float(torch.linalg.norm(dw - approx) / torch.linalg.norm(dw))
    assert frob == pytest.approx(lowrank.rank_r_error(dw, r), rel=1e-9)


def test_rank_report_matches_peft_numbers_for_llama_q_v():
    dw, s = _known_spectrum()
    rep = lowrank.rank_report(dw, 8, 16, LLAMA_PARAMS, LLAMA_QV)
    assert rep["trainable"] == 4_194_304
    assert rep["share"] == pytest.approx(4_194_304 / (LLAMA_PARAMS + 4_194_304), rel=1e-12)
    assert rep["r"] == 8 and rep["alpha"] == 16.0 and rep["scaling"] == 2.0
    assert rep["rel_error"] == pytest.approx(lowrank.rank_r_error(dw, 8), rel=1e-12)
    # r above the matrix's rank: cost keeps growing, the error is clipped at full rank (0).
    big = lowrank.rank_report(dw, 64, 16, LLAMA_PARAMS, LLAMA_QV)
    assert big["trainable"] == 8 * 4_194_304 and big["rel_error"] == pytest.approx(0.0, abs=1e-12)
    text = lowrank.format_report(rep, LLAMA_PARAMS)
    assert "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622" in text


@pytest.mark.parametrize("r", [0, -1, 2.5, True])
def test_bad_r_is_a_readable_error(r):
    with pytest.raises(ValueError, match=rf"r must be a positive integer.*r={r!r}"):
        lowrank.rank_report(torch.eye(4), r, 16, 100, [(4, 4)])
    with pytest.raises(ValueError, match="r must be a positive integer"):
        lowrank.rank_r_error(torch.eye(4), r)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"alpha": 0}, r"alpha must be a positive number.*alpha=0"),
    ({"alpha": -2.0}, r"alpha must be a positive number"),
    ({"layer_shapes": []}, r"layer_shapes must be a non-empty list"),
    ({"layer_shapes": [(4096,)]}, r"\(d_out, d_in\) pair"),
    ({"delta_w": torch.ones(3, 4, 5)}, r"2-D.*\(3, 4, 5\)"),
    ({"delta_w": torch.tensor([[float("nan")]])}, r"NaN"),
])
def test_bad_inputs_are_readable_errors(kwargs, pattern):
    args = {"delta_w": torch.eye(4), "r": 2, "alpha": 4.0, "n_model_params": 100, "layer_shapes": [(4, 4)]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        lowrank.rank_report(**args)


def test_lowrank_imports_no_widget_code():
    """The idea (lesson 01's SVD) never imports the teaching floor: its sliders live in labkit.course.widgets."""
    import subprocess
    import sys

    code = ("import sys, labkit.lowrank; bad = [m for m in ('labkit.course.widgets', 'ipywidgets', 'matplotlib') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_error_curve_reuses_given_singular_values():
    dw, _ = _known_spectrum()
    s = lowrank.singular_values(dw)
    assert lowrank.error_curve(dw, [1, 4, 16], s=s) == lowrank.error_curve(dw, [1, 4, 16])
    assert lowrank.error_curve(dw, [4], s=s * 0 + s[0]) != lowrank.error_curve(dw, [4])  # S is what it reads


def test_smallest_rank_reads_the_error_curve():
    dw, s = _known_spectrum()
    errors = lowrank.error_curve(dw, range(1, 31))
    for k in (1, 5, 17):   # a max_error between rank k's error and rank k+1's: the answer is k + 1
        assert lowrank.smallest_rank(dw, (errors[k - 1] + errors[k]) / 2) == k + 1
        assert lowrank.smallest_rank(dw, errors[k - 1]) == k   # exactly rank k's error: k meets it
    assert lowrank.smallest_rank(dw, 1.0) == 1
    assert lowrank.smallest_rank(dw, 0.0) == 30
    with pytest.raises(ValueError, match="max_error must be"):
        lowrank.smallest_rank(dw, 1.5)

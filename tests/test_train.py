import copy

import pytest
import torch

from labkit import data, lowrank, train


def _texts(n=64):
    return [data.plain_text(r) for r in data.read_jsonl("instructions_train.jsonl")[:n]]


def test_full_finetune_lowers_the_loss_and_is_deterministic(base):
    model, tok = base
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    la = train.finetune(a, tok, _texts(), steps=12, lr=1e-3, batch_size=4, seed=0)
    lb = train.finetune(b, tok, _texts(), steps=12, lr=1e-3, batch_size=4, seed=0)
    assert la == lb
    assert sum(la[-3:]) / 3 < sum(la[:3]) / 3
    assert not model.training  # the shared fixture is left alone


def test_weight_updates_are_real_and_low_rank_friendly(base):
    model, tok = base
    tuned = copy.deepcopy(model)
    train.finetune(tuned, tok, _texts(), steps=8, lr=1e-3, batch_size=4)
    dws = train.weight_updates(model, tuned)
    assert len(dws) == 2 * model.config.num_hidden_layers
    dw = next(iter(dws.values()))
    assert dw.abs().max() > 0
    errs = lowrank.error_curve(dw, [1, 8, 64])
    # the rank-8 error by hand: the truncated SVD rebuilt, its Frobenius distance relative to the update's norm
    U, S, Vh = torch.linalg.svd(dw.double())
    by_hand = torch.linalg.norm(dw.double() - U[:, :8] @ torch.diag(S[:8]) @ Vh[:8]) / torch.linalg.norm(dw.double())
    assert errs[1] == pytest.approx(by_hand.item(), abs=1e-6)
    # low-rank friendly: every update's energy sits in far fewer directions than a random matrix's of the same
    # shape (measured for q_proj of block 0: rank 8 misses 63% vs 94%, rank 64 misses 24% vs 61%)
    for name, d in dws.items():
        noise = torch.randn(d.shape, generator=torch.Generator().manual_seed(0))
        mine, chance = lowrank.error_curve(d, [8, 64]), lowrank.error_curve(noise, [8, 64])
        assert mine[0] < 0.8 * chance[0] and mine[1] < 0.5 * chance[1], (name, mine, chance)


@pytest.mark.parametrize("lr", [0, -1e-4, float("nan"), "3e-4"])
def test_bad_learning_rate_is_named(base, lr):
    model, tok = base
    with pytest.raises(ValueError, match="learning rate"):
        train.finetune(copy.deepcopy(model), tok, ["hello"], steps=1, lr=lr)


def test_bad_steps_and_frozen_models_are_named(base):
    model, tok = base
    with pytest.raises(ValueError, match="steps"):
        train.finetune(model, tok, ["hello"], steps=0)
    frozen = copy.deepcopy(model).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train.finetune(frozen, tok, ["hello"], steps=1)
    with pytest.raises(ValueError, match="no weights match"):
        train.weight_updates(model, model, ("nope",))


def test_batches_mask_padding(base):
    _, tok = base
    batch = next(train.lm_batches(tok, ["a", "a much longer text than the first"], 2, 64))
    assert batch["input_ids"].shape == batch["labels"].shape
    assert torch.equal(batch["labels"] == -100, batch["attention_mask"] == 0)


def test_forward_times_interleave_the_models_and_check_repeats(base, monkeypatch):
    import time

    from labkit import evaluate

    model, tok = base
    x = torch.tensor([tok("Once upon a time")["input_ids"]])
    calls = []

    def named(name):
        def forward(ids):
            calls.append(name)
            return model(ids)
        return forward

    times = evaluate.forward_times({"a": named("a"), "b": named("b")}, x, repeats=3, warmup=1)
    assert calls == ["a", "b", "b", "a"] * 2  # round robin, each first in turn: a slow spell hits both alike
    assert [len(t) for t in times.values()] == [3, 3] and all(t > 0 for t in times["a"] + times["b"])
    ticks = iter(range(100))
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))
    assert evaluate.forward_times({"a": model}, x, repeats=2, warmup=0) == {"a": [1.0, 1.0]}
    with pytest.raises(ValueError, match="repeats"):
        evaluate.forward_times({"a": model}, x, repeats=0)
    with pytest.raises(ValueError, match="at least one model"):
        evaluate.forward_times({}, x)


def test_weight_updates_default_to_the_models_attention_and_use_d_out_by_d_in(hub_models):
    """GPT-2's fused c_attn is a Conv1D, its weight stored (in, out) = (64, 192): the update comes back as the
    notation's (d_out, d_in) = (192, 64), and without naming layers the query/value projections are taken."""
    from labkit import models

    model, tok = models.load_base(hub_models["gpt2"], device="cpu")
    tuned = copy.deepcopy(model)
    train.finetune(tuned, tok, _texts(), steps=2, lr=1e-3, batch_size=4)
    dws = train.weight_updates(model, tuned)
    assert sorted(dws) == [f"transformer.h.{i}.attn.c_attn" for i in range(model.config.n_layer)]
    name = "transformer.h.0.attn.c_attn"
    stored = dict(tuned.named_parameters())[name + ".weight"] - dict(model.named_parameters())[name + ".weight"]
    assert stored.shape == (64, 192) and dws[name].shape == (192, 64)
    assert torch.equal(dws[name], stored.T.float()) and dws[name].abs().max() > 0
    llama, _ = models.load_base(hub_models["llama-chatml"], device="cpu")
    assert {n.rsplit(".", 1)[-1] for n in train.weight_updates(llama, llama)} == {"q_proj", "v_proj"}


def test_epoch_order_sees_every_item_once_per_epoch_and_is_seeded():
    import itertools

    batches = list(itertools.islice(train.epoch_order(10, 4, seed=3), 5))  # 20 indices = 2 epochs
    flat = [i for b in batches for i in b]
    assert all(len(b) == 4 for b in batches)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != list(range(10))  # shuffled
    assert batches == list(itertools.islice(train.epoch_order(10, 4, seed=3), 5))
    assert batches != list(itertools.islice(train.epoch_order(10, 4, seed=4), 5))
    big = next(train.epoch_order(3, 8, seed=0))  # a batch larger than the data is still full
    assert len(big) == 8 and set(big) == {0, 1, 2}


def test_epoch_order_and_optimizer_refuse_bad_input():
    with pytest.raises(ValueError, match="batch_size must be"):
        next(train.epoch_order(10, 0))
    with pytest.raises(ValueError, match="n must be"):
        next(train.epoch_order(0, 4))
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="the reward model has no trainable parameters"):
        train.optimizer(frozen, 1e-3, what="the reward model")
    with pytest.raises(ValueError, match="lr must be"):
        train.optimizer(torch.nn.Linear(2, 2), -1.0)


def test_optimizer_seeds_torch_and_holds_only_trainable_parameters():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    net[0].requires_grad_(False)
    params, opt = train.optimizer(net, 1e-3, seed=7)
    first = torch.rand(3)
    assert [p.shape for p in params] == [torch.Size([1, 3]), torch.Size([1])]
    assert opt.param_groups[0]["params"] == params and opt.param_groups[0]["lr"] == 1e-3
    train.optimizer(net, 1e-3, seed=7)
    assert torch.equal(torch.rand(3), first)

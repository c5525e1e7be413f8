"""labkit.preference_losses: IPO, SimPO, ORPO and DPO with an SFT term by hand on small tensors; each loss
equal to its trl trainer's on the same batch after a few updates with a LoRA adapter, as lesson 10 runs them
(DPOTrainer loss_type="ipo", the experimental CPOTrainer loss_type="simpo" and ORPOTrainer of trl 1.16); the
forward-call counter and the weights count of lesson 10's cost table."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from labkit import data
from labkit import preference as P
from labkit import preference_losses as L


@pytest.fixture(scope="module")
def tok(base):
    return base[1]


@pytest.fixture(scope="module")
def rows():
    return data.read_jsonl("preferences_train.jsonl")[:16]


PC, PR = torch.tensor([-3.0, -12.0]), torch.tensor([-8.0, -6.0])  # policy log pi(chosen), log pi(rejected)
RC, RR = torch.tensor([-4.0, -10.0]), torch.tensor([-6.0, -9.0])  # the reference's
NC, NR = torch.tensor([2, 4]), torch.tensor([4, 3])                # answer tokens


# ----------------------------------------------------------------------------- by hand

def test_answer_lengths_count_the_tokens_sequence_logps_sums():
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 0]])
    assert L.answer_lengths(labels).tolist() == [2, 4]
    batch = {"labels": torch.cat([labels, labels.flip(0)])}
    c, r = L.batch_lengths(batch)
    assert c.tolist() == [2, 4] and r.tolist() == [4, 2]


def test_ipo_loss_by_hand_and_its_minimum_is_the_target_margin():
    loss, c, r = L.ipo_loss(PC, PR, RC, RR, NC, NR, beta=0.5)
    # pair 1: s_w = (−3+4)/2 = 0.5, s_l = (−8+6)/4 = −0.5, h = 1;   pair 2: s_w = −2/4, s_l = 3/3, h = −1.5
    assert c.tolist() == [0.5, -0.5] and r.tolist() == [-0.5, 1.0]
    assert loss.item() == pytest.approx(((1 - 1) ** 2 + (-1.5 - 1) ** 2) / 2)
    # exactly at the target margin 1/(2 beta) the loss is 0; DPO's would still be above 0 and pushing
    at = L.ipo_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                    torch.tensor([1]), torch.tensor([1]), beta=0.5)[0]
    assert at.item() == 0
    beyond = L.ipo_loss(torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                        torch.tensor([1]), torch.tensor([1]), beta=0.5)[0]
    assert beyond.item() == pytest.approx(4.0), "a margin past the target is penalised too (squared loss)"


def test_simpo_loss_by_hand_needs_no_reference():
    loss, c, r = L.simpo_loss(PC, PR, NC, NR, beta=2.0, gamma=1.0)
    want_c, want_r = 2.0 * PC / NC, 2.0 * PR / NR
    assert torch.allclose(c, want_c) and torch.allclose(r, want_r)
    want = -torch.log(torch.sigmoid(want_c - want_r - 1.0)).mean()
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    # the average, not the sum: doubling an answer's length at the same per-token log-prob changes nothing
    same = L.simpo_loss(PC * 2, PR, NC * 2, NR, beta=2.0, gamma=1.0)[0]
    assert same.item() == pytest.approx(loss.item(), abs=1e-6)
    # gamma asks for a margin: at gamma = 0 the same pairs give a smaller loss
    assert L.simpo_loss(PC, PR, NC, NR, beta=2.0, gamma=0.0)[0] < loss


def test_orpo_loss_by_hand_is_nll_plus_the_odds_ratio_term():
    loss, c, r = L.orpo_loss(PC, PR, NC, NR, beta=0.1)
    p_w, p_l = torch.exp(PC / NC), torch.exp(PR / NR)           # per-token average probabilities
    log_odds = torch.log(p_w / (1 - p_w)) - torch.log(p_l / (1 - p_l))
    nll = -(PC.sum() / NC.sum())                                 # token mean over the chosen answers
    want = nll - 0.1 * torch.log(torch.sigmoid(log_odds)).mean()
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    assert torch.allclose(c, 0.1 * PC / NC) and torch.allclose(r, 0.1 * PR / NR)
    given = L.orpo_loss(PC, PR, NC, NR, beta=0.1, nll=torch.tensor(2.0))[0]
    assert given.item() == pytest.approx((want - nll + 2.0).item(), abs=1e-6), "a given NLL replaces the default"


def test_dpo_sft_loss_is_dpo_plus_the_weighted_nll_of_the_chosen_answers():
    loss, c, r = L.dpo_sft_loss(PC, PR, RC, RR, NC, beta=0.1, sft_weight=0.5)
    dpo, dc, dr = P.dpo_loss(PC, PR, RC, RR, beta=0.1)
    assert loss.item() == pytest.approx(dpo.item() + 0.5 * 15 / 6), "NLL = (3 + 12) / (2 + 4) tokens"
    assert torch.equal(c, dc) and torch.equal(r, dr), "the SFT term leaves the implicit rewards alone"
    assert L.dpo_sft_loss(PC, PR, RC, RR, NC, beta=0.1, sft_weight=0.0)[0].item() == pytest.approx(dpo.item())
    with pytest.raises(ValueError, match="sft_weight"):
        L.dpo_sft_loss(PC, PR, RC, RR, NC, sft_weight=-1.0)


def test_log1mexp_is_accurate_on_both_sides_of_its_branch():
    x = torch.tensor([-1e-8, -0.1, -0.6931, -0.7, -5.0, -40.0], dtype=torch.float64)
    assert torch.allclose(L.log1mexp(x.float()).double(), torch.log(1 - torch.exp(x)), rtol=1e-5)


def test_pair_loss_dispatches_and_dpo_is_dpo_loss():
    dpo = L.pair_loss("dpo", (PC, PR), (NC, NR), (RC, RR), beta=0.3)
    want = P.dpo_loss(PC, PR, RC, RR, beta=0.3)
    assert all(torch.equal(a, b) for a, b in zip(dpo, want))
    assert L.pair_loss("simpo", (PC, PR), (NC, NR))[0].item() == pytest.approx(
        L.simpo_loss(PC, PR, NC, NR, beta=2.0, gamma=1.0)[0].item())
    with pytest.raises(ValueError, match="ref_logps"):
        L.pair_loss("ipo", (PC, PR), (NC, NR))
    with pytest.raises(ValueError, match="loss must be one of"):
        L.pair_loss("kto", (PC, PR), (NC, NR), (RC, RR))


@pytest.mark.parametrize("call", [
    lambda: L.ipo_loss(PC, PR, RC, RR, NC, NR, beta=0),
    lambda: L.simpo_loss(PC, PR, NC, NR, beta=-2.0),
    lambda: L.simpo_loss(PC, PR, NC, NR, gamma=float("nan")),
    lambda: L.orpo_loss(PC, PR, NC, NR, beta="0.1"),
])
def test_losses_reject_bad_knobs(call):
    with pytest.raises(ValueError, match="beta|gamma"):
        call()


def test_losses_reject_bad_shapes_and_empty_answers():
    with pytest.raises(ValueError, match="same shape"):
        L.simpo_loss(PC, PR[:1], NC, NR)
    with pytest.raises(ValueError, match="at least one answer token"):
        L.orpo_loss(PC, PR, torch.tensor([0, 2]), NR)


# ----------------------------------------------------------------------------- training with each loss

def test_train_dpo_takes_a_loss_and_the_reference_free_ones_need_no_ref(base, tok, rows):
    model, _ = base
    policy = copy.deepcopy(model).requires_grad_(True)
    log = P.train_dpo(policy, None, tok, rows[:8], loss="orpo", steps=3, lr=1e-3, batch_size=8)
    assert len(log["loss"]) == 3 and log["loss"][-1] < log["loss"][0]
    with pytest.raises(ValueError, match="reference"):
        P.train_dpo(policy, None, tok, rows[:8], loss="ipo", steps=1)
    with pytest.raises(ValueError, match="loss must be one of"):
        P.train_dpo(policy, model, tok, rows[:8], loss="kto", steps=1)


# ----------------------------------------------------------------------------- equal to trl

def _trl_common(tmp_path):
    return dict(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=2e-3, max_steps=3,
                bf16=False, report_to="none", dataloader_pin_memory=False, disable_tqdm=True, save_strategy="no",
                logging_strategy="no", use_cpu=True, seed=0)


@pytest.mark.slow
def test_each_loss_equals_its_trl_trainer_with_a_lora_adapter_and_costs_what_lesson_10_counts(base, tok, rows, tmp_path):
    """Lesson 10's section 2 and 4: each trainer with a LoRA adapter, a few updates, then one batch as it collates it:
    trl's compute_loss equals loss_on_trl_batch (the reference of DPO and IPO being the adapter switched off; ORPO's
    NLL over prompt and answer, as trl's). DPO and IPO call the model twice per step, SimPO and ORPO once."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from labkit import env

    env.quiet()
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, _ = base
    common = _trl_common(tmp_path)
    recipes = {"dpo": (DPOTrainer, DPOConfig(**common, beta=0.1), 0.1, 2),
               "ipo": (DPOTrainer, DPOConfig(**common, beta=0.1, loss_type=["ipo"]), 0.1, 2),
               "simpo": (CPOTrainer, CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=1.0), 2.0, 1),
               "orpo": (ORPOTrainer, ORPOConfig(**common, beta=0.1), 0.1, 1)}
    ds = Dataset.from_list(P.trl_pairs(rows[:12], tok))
    for name, (Trainer, args, beta, calls_per_step) in recipes.items():
        trainer = Trainer(model=copy.deepcopy(model), args=args, processing_class=tok, train_dataset=ds,
                          peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
        with L.ForwardCounter({"m": trainer.model.get_base_model()}) as calls:
            trainer.train()
        assert calls.counts["m"] == {"passes": 3 * calls_per_step, "decode": 0}, name
        assert L.weights_held(trainer.model) == sum(p.numel() for p in trainer.model.parameters())
        assert L.weights_held(trainer.model) < 1.1 * sum(p.numel() for p in model.parameters()), "one copy, not two"
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        trainer.model.eval()
        with torch.no_grad():
            theirs = trainer.compute_loss(trainer.model, dict(batch)).item()
        ours = L.loss_on_trl_batch(name, trainer.model, batch, beta=beta)
        assert ours == pytest.approx(theirs, abs=1e-5), name
        start = {"dpo": math.log(2), "ipo": 25.0}.get(name)
        if start is not None:
            assert abs(theirs - start) > 1e-3, f"{name}: the check must not be at the trivial start"
        if name == "simpo":
            mine = P.tokenize_pairs(tok, rows[:4])
            got = [[x for x in row if x != -100] for row in batch["chosen_labels"].tolist()]
            assert got == [[x for x in p["chosen"]["labels"] if x != -100] for p in mine], "the same answer tokens"
        if name == "orpo":
            with torch.no_grad():
                logps, lengths = L.trl_batch_logps(trainer.model, batch)
                answer_only = L.orpo_loss(*logps, *lengths, beta=0.1)[0].item()
            assert abs(answer_only - theirs) > 1e-3, "trl's NLL (prompt and answer) differs from the answer-only one"


def test_loss_on_trl_batch_names_a_batch_it_cannot_read(base):
    with pytest.raises(ValueError, match="not a batch trl"):
        L.trl_batch_logps(base[0], {"input_ids": torch.zeros(2, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="loss must be one of"):
        L.loss_on_trl_batch("kto", base[0], {})


def test_forward_counter_tells_passes_from_generation_steps(base, tok):
    model, _ = base
    other = copy.deepcopy(model)
    ids = torch.tensor([tok("hello there")["input_ids"]])
    with L.ForwardCounter({"a": model, "b": other}) as calls:
        with torch.no_grad():
            model(input_ids=ids)
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert calls.counts == {"a": {"passes": 2, "decode": 3}, "b": {"passes": 0, "decode": 0}}, "prefill + 3 steps"
    with torch.no_grad():
        model(input_ids=ids)
    assert calls.counts["a"]["passes"] == 2, "the hooks are gone after the block"


def test_weights_held_counts_a_shared_tensor_once(base):
    from peft import LoraConfig, get_peft_model

    model, _ = base
    n = sum(p.numel() for p in model.parameters())
    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    lora = sum(p.numel() for name, p in pm.named_parameters() if "lora_" in name)
    assert L.weights_held(pm) == L.weights_held(pm, pm) == n + lora > n
    assert L.weights_held(model, copy.deepcopy(model)) == 2 * n
    text = L.describe_costs({"DPO": {"weights": n, "passes": 2, "decode": 0, "seconds": 0.5}})
    assert f"{n:,}" in text and text.splitlines()[1].split()[2:] == ["2", "0", "0.50"]


# ----------------------------------------------------------------------------- the exercise (labkit/checks/lesson10.py)

def _ipo(pc, pr, rc, rr, nc, nr, beta, normalise=True, target=None):
    sc, sr = (pc - rc), (pr - rr)
    if normalise:
        sc, sr = sc / nc, sr / nr
    t = 1 / (2 * beta) if target is None else target(beta)
    return ((sc - sr - t) ** 2).mean(), sc, sr


IPO_WRONG = [
    ("not length-normalised", lambda *a: _ipo(*a, normalise=False)),
    ("target 1/beta", lambda *a: _ipo(*a, target=lambda b: 1 / b)),
    ("DPO's loss on the per-token log-ratios", lambda pc, pr, rc, rr, nc, nr, beta: (
        -F.logsigmoid(beta * ((pc - rc) / nc - (pr - rr) / nr)).mean(), (pc - rc) / nc, (pr - rr) / nr)),
    ("chosen and rejected swapped", lambda pc, pr, rc, rr, nc, nr, beta: _ipo(pr, pc, rr, rc, nr, nc, beta)),
]


@pytest.mark.usefixtures("checker_env")
@pytest.mark.parametrize("name, wrong", IPO_WRONG, ids=[n for n, _ in IPO_WRONG])
def test_the_ipo_exercise_fails_plausible_wrong_answers(name, wrong):
    from labkit import check as C

    for seed in (3, 4):
        result = C.check("ipo_loss", wrong, seed=seed)
        assert not result.passed, f"{name} passed"
        assert "problem:" in result.message and "hint:" in result.message


@pytest.mark.usefixtures("checker_env")
def test_the_ipo_exercise_passes_labkits_and_another_right_way():
    from labkit import check as C

    assert C.get("ipo_loss").reference is L.ipo_loss and C.get("ipo_loss").lesson == "10"
    for seed in range(4):
        assert C.check("ipo_loss", lambda *a: _ipo(*a), seed=seed).passed
    assert C.quiz("q10_ipo_vs_dpo", "b").passed and not C.quiz("q10_ipo_vs_dpo", "a").passed
    assert C.get("q10_ipo_vs_dpo").lesson == C.get("q10_reference_cost").lesson == "10"

"""labkit.preference_losses: IPO, SimPO and ORPO by hand on small tensors, and equal to trl's own
trainers on the same batch after a few updates (DPOTrainer loss_type="ipo", the experimental
CPOTrainer loss_type="simpo" and ORPOTrainer of trl 1.16)."""

import copy
import math
import warnings

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


def test_family_run_trains_each_loss_the_same_way(base, tok, rows):
    model, _ = base
    sft_model = copy.deepcopy(model).requires_grad_(False)
    prompts = [P.pair_texts(r, tok)["prompt"] for r in rows[8:10]]
    out = L.family_run(sft_model, tok, rows[:8], rows[8:12], prompts, losses=("dpo", "simpo"), steps=1,
                       lr=1e-3, batch_size=4, max_new_tokens=4)
    assert [r["loss"] for r in out] == ["SFT", "dpo", "simpo"]
    assert out[0]["accuracy"] == 0 and out[0]["ties"] == 1, "SFT against itself: every margin is 0"
    assert len(out[1]["right"]) == 4 and sum(out[1]["right"]) / 4 == out[1]["accuracy"]
    assert out[1]["final_loss"] == pytest.approx(math.log(2), abs=1e-5), "one DPO step: the loss of step 0"
    from labkit.evaluate import answer

    sft_answers = answer(sft_model, tok, prompts, max_new_tokens=4)
    want = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in sft_answers) / 2
    assert out[0]["answer_tokens"] == want > 0, "the SFT row measures the SFT model's own greedy answers"
    assert all(not p.requires_grad for p in sft_model.parameters()), "the SFT model is left as it was"
    table = L.describe_family(out)
    assert table.splitlines()[0].startswith("loss") and len(table.splitlines()) == 4
    assert table.splitlines()[1].split()[1] == "ties" and table.splitlines()[2].split()[4].endswith("%")
    with pytest.raises(ValueError, match="loss must be one of"):
        L.family_run(sft_model, tok, rows[:8], rows[8:12], prompts, losses=("kto",))


def test_describe_family_shows_ties_by_the_rows_margins_not_its_name():
    def row(loss, accuracy, ties):
        return {"loss": loss, "beta": 0.1, "final_loss": 0.5, "accuracy": accuracy, "ties": ties, "avg_accuracy": 1.0,
                "chosen_logp": -1.0, "answer_tokens": 5.0, "seconds": 1.0}

    lines = L.describe_family([row("SFT", 0.0, 1.0), row("dpo", 0.0, 1.0), row("ipo", 0.75, 0.0)]).splitlines()
    assert lines[2].split()[3] == "ties", "a trained loss whose margins all stayed 0 is ties too"
    assert lines[3].split()[3] == "75%"
    assert L.describe_family([row("SFT", 0.5, 0.25)]).splitlines()[1].split()[3] == "50%"


# ----------------------------------------------------------------------------- equal to trl

def _trl_common(tmp_path):
    return dict(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=3,
                bf16=False, report_to="none", dataloader_pin_memory=False, disable_tqdm=True, save_strategy="no",
                logging_strategy="no", use_cpu=True, seed=0)


def _sides(batch, side):
    return {"input_ids": batch[f"{side}_input_ids"], "attention_mask": batch[f"{side}_attention_mask"],
            "labels": batch[f"{side}_labels"]}


def _logps_and_lengths(model, batch):
    """Our sequence_logps and answer_lengths on a batch as trl's CPO / ORPO trainers collate it."""
    out = {}
    for side in ("chosen", "rejected"):
        b = _sides(batch, side)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        out[side] = (P.sequence_logps(logits, b["labels"]), L.answer_lengths(b["labels"]), logits)
    return out


@pytest.mark.slow
def test_ipo_loss_equals_trl_dpo_trainer_ipo_after_training(base, tok, rows, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from labkit import env

    env.quiet()
    model, _ = base
    policy, ref = copy.deepcopy(model), copy.deepcopy(model)
    trainer = DPOTrainer(model=policy, ref_model=ref, processing_class=tok,
                         args=DPOConfig(**_trl_common(tmp_path), beta=0.1, loss_type=["ipo"]),
                         train_dataset=Dataset.from_list(P.trl_pairs(rows[:12], tok)))
    trainer.train()
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(examples)
    mine = P.collate_pairs(P.tokenize_pairs(tok, rows[:4]), tok.pad_token_id)
    assert torch.equal(mine["input_ids"], batch["input_ids"]), "our tokens are trl's"
    policy.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, dict(batch)).item()
        ours, _, _ = L.ipo_loss(*P.batch_logps(policy, mine), *P.batch_logps(ref, mine), *L.batch_lengths(mine),
                                beta=0.1)
    start = (1 / (2 * 0.1)) ** 2  # policy == ref: h = 0, loss = 25
    assert abs(trl_loss - start) > 1e-2, "the check must not be at the trivial 25 of step 0"
    assert ours.item() == pytest.approx(trl_loss, abs=1e-5)


@pytest.mark.slow
def test_simpo_loss_equals_trl_cpo_trainer_simpo_after_training(base, tok, rows, tmp_path):
    from datasets import Dataset

    from labkit import env

    env.quiet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOConfig, CPOTrainer
    model, _ = base
    policy = copy.deepcopy(model)
    trainer = CPOTrainer(model=policy, processing_class=tok,
                         args=CPOConfig(**_trl_common(tmp_path), loss_type="simpo", cpo_alpha=0.0, beta=2.0,
                                        simpo_gamma=1.0),
                         train_dataset=Dataset.from_list(P.trl_pairs(rows[:12], tok)))
    trainer.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    policy.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, dict(batch)).item()
        s = _logps_and_lengths(policy, batch)
        ours, _, _ = L.simpo_loss(s["chosen"][0], s["rejected"][0], s["chosen"][1], s["rejected"][1],
                                  beta=2.0, gamma=1.0)
    mine = P.tokenize_pairs(tok, rows[:4])
    got = [[t for t in row if t != -100] for row in batch["chosen_labels"].tolist()]
    assert got == [[t for t in p["chosen"]["labels"] if t != -100] for p in mine], "the same answer tokens"
    assert ours.item() == pytest.approx(trl_loss, abs=1e-5)
    assert trl_loss > 1e-4, "a loss that is not already 0"


@pytest.mark.slow
def test_orpo_loss_equals_trl_orpo_trainer_after_training(base, tok, rows, tmp_path):
    """trl 1.16's ORPOTrainer (trl.experimental.orpo) takes the NLL over the prompt *and* the answer
    (its comment: "orpo chosen nll loss is computed over the full prompt and response"); labkit's
    default is the answer only, as SFT in lesson 06. Given trl's NLL, orpo_loss gives trl's loss."""
    from datasets import Dataset

    from labkit import env

    env.quiet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    model, _ = base
    policy = copy.deepcopy(model)
    trainer = ORPOTrainer(model=policy, processing_class=tok, args=ORPOConfig(**_trl_common(tmp_path), beta=0.1),
                          train_dataset=Dataset.from_list(P.trl_pairs(rows[:12], tok)))
    trainer.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    policy.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, dict(batch)).item()
        s = _logps_and_lengths(policy, batch)
        b = _sides(batch, "chosen")
        whole = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)  # prompt and answer, as trl
        logits = s["chosen"][2]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), whole[:, 1:].flatten())
        ours, _, _ = L.orpo_loss(s["chosen"][0], s["rejected"][0], s["chosen"][1], s["rejected"][1], beta=0.1,
                                 nll=nll)
        answer_only, _, _ = L.orpo_loss(s["chosen"][0], s["rejected"][0], s["chosen"][1], s["rejected"][1], beta=0.1)
    assert ours.item() == pytest.approx(trl_loss, abs=1e-5)
    assert abs(answer_only.item() - trl_loss) > 1e-3, "the two NLLs differ: the test can tell them apart"


def test_compare_with_dpo_says_plainly_which_loss_does_not_beat_dpo():
    def row(loss, acc, logp=-1.0):
        return {"loss": loss, "accuracy": acc, "avg_accuracy": 1.0, "chosen_logp": logp, "answer_tokens": 5.0,
                "first_loss": 0.7, "final_loss": 0.2, "beta": 0.1, "seconds": 1.0}

    text = L.compare_with_dpo([row("SFT", 0), row("dpo", 0.8), row("ipo", 0.9, -0.5), row("simpo", 0.8),
                               row("orpo", 0.6)])
    lines = text.splitlines()
    assert "100%" in lines[0] and lines[1].startswith("dpo:") and "baseline" in lines[1]
    assert "(beats DPO)" in lines[2] and "+0.50 nats" in lines[2]
    assert "(ties with DPO)" in lines[3] and "(does not beat DPO)" in lines[4]
    assert lines[-1] == "no loss changed the greedy answers' mean length in this run"
    longer = L.compare_with_dpo([row("SFT", 0), row("dpo", 0.8), {**row("ipo", 0.9), "answer_tokens": 7.0}])
    assert "no loss changed" not in longer and "7.0 tokens" in longer
    with pytest.raises(ValueError, match="dpo"):
        L.compare_with_dpo([row("SFT", 0), row("ipo", 0.9)])


def test_compare_with_dpo_gives_mcnemars_p_value_on_the_same_pairs():
    def row(loss, right):
        return {"loss": loss, "accuracy": sum(right) / len(right), "right": right, "avg_accuracy": 1.0,
                "chosen_logp": -1.0, "answer_tokens": 5.0, "first_loss": 0.7, "final_loss": 0.2, "beta": 0.1,
                "seconds": 1.0}

    dpo = [True] * 30 + [False] * 10
    close = [True] * 31 + [False] * 9             # one more pair right: chance
    far = [True] * 40                             # ten more pairs right, none lost: p = 2 / 2**10
    lines = L.compare_with_dpo([row("SFT", [False] * 40), row("dpo", dpo), row("ipo", close),
                                row("simpo", far), row("orpo", dpo)]).splitlines()
    assert "beats DPO; McNemar p = 1 on the same 40 pairs: not distinguishable from chance" in lines[2]
    assert f"McNemar p = {2 / 2 ** 10:.2g} on the same 40 pairs: unlikely to be chance" in lines[3]
    assert "(ties with DPO)" in lines[4] and "McNemar" not in lines[4]


# ----------------------------------------------------------------------------- the exercise (labkit/checks/lesson09.py)

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

    assert C.get("ipo_loss").reference is L.ipo_loss and C.get("ipo_loss").lesson == "09"
    for seed in range(4):
        assert C.check("ipo_loss", lambda *a: _ipo(*a), seed=seed).passed
    assert C.quiz("q09_ipo_vs_dpo", "b").passed and not C.quiz("q09_ipo_vs_dpo", "a").passed


def test_beta_run_given_the_reference_log_probs_gives_the_same_result(base, tok, rows):
    model, _ = base
    sft_model = copy.deepcopy(model).requires_grad_(False)
    ref = P.pair_logps(sft_model, tok, rows[4:8])
    a = P.beta_run(sft_model, tok, rows[:4], rows[4:8], beta=0.5, steps=1, lr=1e-3, batch_size=4)
    b = P.beta_run(sft_model, tok, rows[:4], rows[4:8], beta=0.5, steps=1, lr=1e-3, batch_size=4, ref_logps=ref)
    assert a["logratio_rejected"] != 0 and a == b

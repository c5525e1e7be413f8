"""labkit.preference: sequence log-probs, the Bradley-Terry and DPO losses, checked by hand and against trl."""

import copy
import math

import pytest
import torch

from labkit import data
from labkit import preference as P
from labkit.lessons import preference as lesson


@pytest.fixture(scope="module")
def tok(base):
    return base[1]


@pytest.fixture(scope="module")
def rows():
    return data.read_jsonl("preferences_train.jsonl")[:16]


# ----------------------------------------------------------------------------- sequence_logps

def test_sequence_logps_sums_shifted_token_logprobs_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 0]])
    logp = logits.log_softmax(-1)
    want = torch.stack([logp[0, 1, 3] + logp[0, 2, 4],
                        logp[1, 0, 1] + logp[1, 1, 2] + logp[1, 2, 6] + logp[1, 3, 0]])
    assert torch.allclose(P.sequence_logps(logits, labels), want, atol=1e-6)


def test_sequence_logps_equals_the_models_own_loss(base, tok):
    model, _ = base
    ids = torch.tensor([tok("<|user|>\nHello there<|end|>\n<|assistant|> Risk: low<|end|>")["input_ids"]])
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    n = (labels[0, 1:] != -100).sum()
    assert torch.allclose(P.sequence_logps(out.logits, labels), -out.loss * n, atol=1e-4)


@pytest.mark.parametrize("logits_shape,labels_shape", [((2, 5, 7), (2, 4)), ((2, 5), (2, 5)), ((3, 5, 7), (2, 5))])
def test_sequence_logps_rejects_mismatched_shapes(logits_shape, labels_shape):
    with pytest.raises(ValueError, match="logits"):
        P.sequence_logps(torch.zeros(logits_shape), torch.zeros(labels_shape, dtype=torch.long))


# ----------------------------------------------------------------------------- reward_loss and dpo_loss

def test_reward_loss_is_bradley_terry():
    rc, rr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    want = -(torch.log(torch.sigmoid(rc - rr))).mean()
    assert torch.allclose(P.reward_loss(rc, rr), want, atol=1e-6)
    assert P.reward_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(math.log(2))
    # only differences matter
    assert torch.allclose(P.reward_loss(rc + 5, rr + 5), P.reward_loss(rc, rr))


def test_reward_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="r_chosen"):
        P.reward_loss(torch.zeros(3), torch.zeros(4))


def test_dpo_loss_matches_the_formula_and_is_log2_at_the_start():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    loss, cr, rj = P.dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert torch.allclose(cr, 0.5 * (pc - rc)) and torch.allclose(rj, 0.5 * (pr - rr))
    want = -torch.nn.functional.logsigmoid(0.5 * ((pc - rc) - (pr - rr))).mean()
    assert torch.allclose(loss, want, atol=1e-6)
    loss0, c0, r0 = P.dpo_loss(pc, pr, pc, pr)
    assert loss0.item() == pytest.approx(math.log(2)) and c0.abs().max() == 0 and r0.abs().max() == 0


@pytest.mark.parametrize("beta", [-0.1, 0, float("nan"), "0.1", True])
def test_dpo_loss_rejects_a_bad_beta(beta):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        P.dpo_loss(x, x, x, x, beta=beta)


def test_dpo_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        P.dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(3))


def test_dpo_loss_curve_is_log2_at_zero_and_sharper_for_larger_beta():
    curve = lesson.dpo_loss_curve([-10, 0, 10], [0.1, 1.0])
    assert curve["margin"] == [-10, 0, 10]
    for b in (0.1, 1.0):
        assert curve["loss"][b][1] == pytest.approx(math.log(2))
        assert curve["loss"][b][0] > curve["loss"][b][1] > curve["loss"][b][2]
    assert curve["loss"][1.0][2] < curve["loss"][0.1][2], "a larger beta is satisfied sooner by the same margin"
    assert curve["weight"][1.0][2] < curve["weight"][1.0][0]
    assert curve["push"][0.1][1] == pytest.approx(0.5) and curve["push"][1.0][2] < curve["push"][0.1][2] < 0.5
    with pytest.raises(ValueError, match="beta"):
        lesson.dpo_loss_curve([0], [0.1, -1])
    with pytest.raises(ValueError, match="margins"):
        lesson.dpo_loss_curve([], [0.1])


def test_the_beta_plot_shows_where_the_curves_differ_and_marks_the_margins_reached():
    import matplotlib

    matplotlib.use("Agg")
    curve = lesson.dpo_loss_curve([m / 2 for m in range(-20, 161)], [0.01, 0.1, 1.0])
    loss_ax, push_ax = lesson.plot_dpo_loss_curve(curve, reached={0.1: 30.0})
    assert loss_ax.get_ylim() == (0, 1.5), "the loss axis stops where the curves still differ (log 2 = 0.69 at m = 0)"
    assert push_ax.get_ylim()[1] <= 1.05 and len(loss_ax.get_legend().get_texts()) == 3
    dots = [ln for ln in loss_ax.get_lines() if ln.get_marker() == "o"]
    assert len(dots) == 1 and dots[0].get_xdata()[0] == 30.0
    assert dots[0].get_ydata()[0] == pytest.approx(-math.log(1 / (1 + math.exp(-3.0))))


# ----------------------------------------------------------------------------- data

def test_pairs_train_only_on_the_answers(tok, rows):
    pairs = P.tokenize_pairs(tok, rows[:3])
    for row, pair in zip(rows, pairs):
        for side in ("chosen", "rejected"):
            f = pair[side]
            trained = [t for t in f["labels"] if t != -100]
            assert tok.decode(trained) == " " + row[side] + "<|end|>" + tok.eos_token
    batch = P.collate_pairs(pairs, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 6
    assert batch["labels"][0].tolist()[: len(pairs[0]["chosen"]["labels"])] == pairs[0]["chosen"]["labels"]
    assert batch["labels"][3].tolist()[: len(pairs[0]["rejected"]["labels"])] == pairs[0]["rejected"]["labels"]


def test_pair_texts_names_a_missing_field(tok):
    with pytest.raises(ValueError, match="rejected"):
        P.pair_texts({"prompt": "hi", "chosen": "yes"}, tok)


# ----------------------------------------------------------------------------- equal to trl

def _trl_common(tmp_path):
    return dict(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=3,
                bf16=False, report_to="none", dataloader_pin_memory=False, disable_tqdm=True, save_strategy="no",
                logging_strategy="no", use_cpu=True, seed=0)


@pytest.mark.slow
def test_reward_loss_equals_trl_reward_trainer_on_the_same_batch(tok, rows, tmp_path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from labkit import env

    env.quiet()
    rm, rtok = P.load_reward_model(device="cpu")
    ds = Dataset.from_list([P.pair_texts(r, rtok) for r in rows[:12]])
    trainer = RewardTrainer(model=rm, args=RewardConfig(**_trl_common(tmp_path), center_rewards_coefficient=None),
                            train_dataset=ds, processing_class=rtok)
    trainer.train()  # a few steps, so the score head is no longer near its initial values
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(examples)
    # our tokenisation gives trl's token ids
    ours_pairs = P.tokenize_pairs(rtok, rows[:4])
    assert [p["chosen"]["input_ids"] for p in ours_pairs] == [e["chosen_ids"] for e in examples]
    assert [p["rejected"]["input_ids"] for p in ours_pairs] == [e["rejected_ids"] for e in examples]
    rm.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(rm, dict(batch)).item()
        rc, rr = P.pair_rewards(rm, batch)
        ours = P.reward_loss(rc, rr).item()
    assert abs(trl_loss - math.log(2)) > 1e-3, "the check must not be at the trivial starting point"
    assert ours == pytest.approx(trl_loss, abs=1e-6)


@pytest.mark.slow
def test_dpo_loss_equals_trl_dpo_trainer_after_training(base, tok, rows, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from labkit import env

    env.quiet()
    model, _ = base
    policy, ref = copy.deepcopy(model), copy.deepcopy(model)
    ds = Dataset.from_list([P.pair_texts(r, tok) for r in rows[:12]])
    trainer = DPOTrainer(model=policy, ref_model=ref, args=DPOConfig(**_trl_common(tmp_path), beta=0.1),
                         train_dataset=ds, processing_class=tok)
    trainer.train()
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(examples)
    policy.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, dict(batch)).item()
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        ours_batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
        loss, rc, rr = P.dpo_loss(*P.batch_logps(policy, ours_batch), *P.batch_logps(ref, ours_batch), beta=0.1)
        # and our own tokenisation + collation gives the same batch
        mine = P.collate_pairs(P.tokenize_pairs(tok, rows[:4]), tok.pad_token_id)
        loss_mine, _, _ = P.dpo_loss(*P.batch_logps(policy, mine), *P.batch_logps(ref, mine), beta=0.1)
    assert abs(trl_loss - math.log(2)) > 1e-3, "the check must not be at the trivial 0.693 of step 0"
    assert loss.item() == pytest.approx(trl_loss, abs=1e-5)
    assert loss_mine.item() == pytest.approx(trl_loss, abs=1e-5)


# ----------------------------------------------------------------------------- training

def test_reward_model_training_lowers_the_loss(tok, rows):
    rm, rtok = P.load_reward_model(device="cpu")
    losses = P.train_reward_model(rm, rtok, rows, steps=6, lr=3e-4, batch_size=8)
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2])
    acc = P.pairwise_accuracy(rm, rtok, rows[:8])
    # the margins of score_texts' path equal the training path's (tokenize_pairs + collate_pairs + pair_rewards)
    with torch.no_grad():
        rc, rr = P.pair_rewards(rm, P.collate_pairs(P.tokenize_pairs(rtok, rows[:8]), rtok.pad_token_id))
    assert acc["margins"] == pytest.approx((rc - rr).tolist(), abs=1e-4)
    assert acc["accuracy"] >= 0.75, "six steps on these pairs rank most of them right"
    with pytest.raises(ValueError, match="learning rate"):
        P.train_reward_model(rm, rtok, rows, steps=1, lr=-1)


def test_train_dpo_raises_the_margin_and_preference_accuracy_starts_at_zero(base, tok, rows):
    model, _ = base
    policy, ref = copy.deepcopy(model), copy.deepcopy(model)
    before = P.preference_accuracy(policy, ref, tok, rows[:8])
    assert before["accuracy"] == 0 and before["margin"] == 0, "policy == ref: every implicit reward is 0"
    assert before["ties"] == 1, "0% at the start is ties, not wrong answers"
    log = P.train_dpo(policy, ref, tok, rows[:8], beta=0.1, steps=4, lr=1e-3, batch_size=8)
    assert log["loss"][0] == pytest.approx(math.log(2), abs=1e-5)
    after = P.preference_accuracy(policy, ref, tok, rows[:8])
    assert after["margin"] > 0 and after["accuracy"] > 0.5 and after["ties"] == 0
    assert after["right"] == [m > 0 for m in after["margins"]] and before["right"] == [False] * 8
    given = P.preference_accuracy(None, None, tok, rows[:8], ref_logps=P.pair_logps(ref, tok, rows[:8]),
                                  policy_logps=P.pair_logps(policy, tok, rows[:8]))
    assert given["margins"] == pytest.approx(after["margins"], abs=1e-6), "precomputed log-probs give the same margins"
    with pytest.raises(ValueError, match="beta"):
        P.train_dpo(policy, ref, tok, rows[:8], beta=-1)


def test_rejected_kind_names_each_kind_of_bad_answer():
    assert P.rejected_kind({"chosen": "Risk: low", "rejected": "I don't know."}) == "refusal"
    assert P.rejected_kind({"chosen": "Risk: low", "rejected": "RISK: LOW RISK: LOW"}) == "shouting"
    assert P.rejected_kind({"chosen": "The total is $1,234.", "rejected": "The total is $9,876."}) == "wrong values"
    import random

    # every refusal labkit.data writes is one of P.REFUSALS; a risk answer has no wrong-values variant
    made = {data._bad_answer(random.Random(s), {"task": "risk", "output": "Risk: low"}) for s in range(60)}
    kinds = {P.rejected_kind({"chosen": "Risk: low", "rejected": r}) for r in made}
    assert kinds == {"refusal", "shouting"} and made - {"RISK: LOW RISK: LOW"} == set(P.REFUSALS)
    shipped = [P.rejected_kind(r) for r in data.read_jsonl("preferences_train.jsonl")]
    assert {k: shipped.count(k) > 50 for k in ("refusal", "shouting", "wrong values")} == dict.fromkeys(
        ("refusal", "shouting", "wrong values"), True)


def test_accuracy_by_kind_counts_positive_margins_per_kind():
    rows = [{"chosen": "a", "rejected": "I don't know."}, {"chosen": "a", "rejected": "A A"},
            {"chosen": "a", "rejected": "b"}, {"chosen": "c", "rejected": "d"}]
    assert P.accuracy_by_kind(rows, [0.5, -1.0, 2.0, 0.0]) == {"refusal": (1, 1), "shouting": (0, 1),
                                                               "wrong values": (1, 2)}, "a tie is not ranked right"
    assert list(P.accuracy_by_kind(rows[2:], [1.0, 1.0])) == ["wrong values"], "kinds without pairs are left out"
    with pytest.raises(ValueError, match="one margin per pair"):
        P.accuracy_by_kind(rows, [1.0])


def test_dpo_metrics_are_trls_names_and_start_at_log2(base, tok, rows):
    from labkit import preference_losses as L

    model, _ = base
    ref = P.pair_logps(model, tok, rows[:6])
    m = P.dpo_metrics(model, tok, rows[:6], ref, beta=0.1)
    assert list(m) == list(P.TRL_METRICS)
    assert m["loss"] == pytest.approx(math.log(2), abs=1e-5) and m["rewards/accuracies"] == 0
    assert m["rewards/chosen"] == pytest.approx(0, abs=1e-5) and m["rewards/margins"] == pytest.approx(0, abs=1e-5)
    batch = P.collate_pairs(P.tokenize_pairs(tok, rows[:6]), tok.pad_token_id)
    nll = L.sft_term(ref[0], L.batch_lengths(batch)[0]).item()
    with_sft = P.dpo_metrics(model, tok, rows[:6], ref, beta=0.1, sft_weight=0.5)
    assert with_sft["loss"] == pytest.approx(math.log(2) + 0.5 * nll, abs=1e-4) and nll > 0
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.get_output_embeddings().weight.mul_(1.5)
    c, r = P.logratio_moves(moved, tok, rows[:6], ref)
    shifted = P.dpo_metrics(moved, tok, rows[:6], ref, beta=0.1)
    assert shifted["rewards/chosen"] == pytest.approx(0.1 * c, abs=1e-4) and shifted["rewards/rejected"] == pytest.approx(0.1 * r, abs=1e-4)
    assert P.logratio_moves(model, tok, rows[:6], ref) == (0.0, 0.0)


def test_describe_side_by_side_and_the_trl_log():
    trl = {"eval_loss": 0.5, "eval_rewards/chosen": 0.25, "eval_rewards/rejected": -1.0, "eval_rewards/margins": 1.25,
           "eval_rewards/accuracies": 1.0}
    ours = {"loss": 0.5000004, "rewards/chosen": 0.25, "rewards/rejected": -1.0, "rewards/margins": 1.25,
            "rewards/accuracies": 1.0}
    lines = lesson.describe_side_by_side(trl, ours).splitlines()
    assert lines[0].split() == ["trl", "labkit", "|difference|"] and len(lines) == 6
    assert lines[1].split() == ["loss", "0.500000", "0.500000", "4.0e-07"]
    log = [{"loss": 0.69 - 0.01 * i, "step": i + 1, **{n: 0.1 * i for n in P.TRL_METRICS[1:]}} for i in range(10)]
    table = lesson.describe_trl_log(log + [{"train_runtime": 1.0, "step": 10}], rows=4).splitlines()
    assert [ln.split()[0] for ln in table[1:]] == ["1", "4", "7", "10"], "first, last and evenly between"
    with pytest.raises(ValueError, match="logging_steps=1"):
        lesson.describe_trl_log([{"train_runtime": 1.0}])


@pytest.mark.slow
def test_dpo_metrics_equal_trls_evaluate_with_a_lora_adapter(base, tok, rows, tmp_path):
    """Lesson 09's check: with peft and no ref_model trl's reference is the adapter switched off, and its evaluate()
    on held-out pairs in one batch gives dpo_metrics' numbers, plain and with the SFT term."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from labkit import env

    env.quiet()
    model, _ = base
    held = data.read_jsonl("preferences_eval.jsonl")[:8]
    ref = P.pair_logps(model, tok, held)
    for loss_type, weights, w in ((["sigmoid"], None, 0.0), (["sigmoid", "sft"], [1.0, 0.5], 0.5)):
        trainer = DPOTrainer(model=copy.deepcopy(model), processing_class=tok,
                             train_dataset=Dataset.from_list(P.trl_pairs(rows[:12], tok)),
                             eval_dataset=Dataset.from_list(P.trl_pairs(held, tok)),
                             peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
                             args=DPOConfig(**{**_trl_common(tmp_path), "learning_rate": 2e-3}, beta=0.1,
                                            per_device_eval_batch_size=8, loss_type=loss_type, loss_weights=weights))
        trainer.train()
        theirs = trainer.evaluate()
        ours = P.dpo_metrics(trainer.model, tok, held, ref, beta=0.1, sft_weight=w)
        assert abs(theirs["eval_loss"] - math.log(2)) > 1e-3, "the check must not be at the trivial start"
        for name in P.TRL_METRICS:
            assert ours[name] == pytest.approx(theirs["eval_" + name], abs=1e-5), name


# ----------------------------------------------------------------------------- every model (tests/hub_models.py)

KINDS = ["bundled", "llama-chatml", "gpt2", "gemma-style"]


@pytest.fixture(scope="module", params=KINDS)
def reward_model(request, hub_models):
    """(kind, reward model, its tokenizer) for the bundled model and each Hub-style fixture."""
    from labkit import env

    env.quiet()
    kind = request.param
    rm, rtok = P.load_reward_model(None if kind == "bundled" else hub_models[kind], device="cpu")
    torch.manual_seed(0)
    torch.nn.init.normal_(rm.score.weight, std=1.0)  # a head far from zero, so positions give distinct scores
    return kind, rm, rtok


def _rewards_at_every_position(rm, batch):
    with torch.no_grad():
        out = rm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        every = rm.score(out.hidden_states[-1]).squeeze(-1)  # (2B, T): the head applied at each position
    return out.logits.squeeze(-1), every


def test_the_reward_head_reads_the_eos_that_ends_chosen_and_rejected(reward_model, rows):
    """transformers reads the score at the last token that is not the pad token; with pad == EOS (GPT-2's
    tokenizer has no pad token) that rule would skip the EOS that ends every answer and read the token
    before it. load_reward_model gives such a model a pad token of its own."""
    kind, rm, rtok = reward_model
    assert rtok.pad_token_id is not None and rtok.pad_token_id != rtok.eos_token_id
    assert rm.config.pad_token_id == rtok.pad_token_id
    if kind == "gpt2":
        assert rtok.pad_token == P.REWARD_PAD, "GPT-2 has no pad token: the reward model gets its own"
        assert rm.get_input_embeddings().num_embeddings == len(rtok)
    batch = P.collate_pairs(P.tokenize_pairs(rtok, rows[:6]), rtok.pad_token_id)
    last = batch["attention_mask"].sum(1) - 1
    assert len(set(last.tolist())) > 1, "rows of different lengths: some are padded"
    pooled, every = _rewards_at_every_position(rm, batch)
    rows_ = torch.arange(len(last))
    assert torch.allclose(pooled, every[rows_, last], atol=1e-5), "the score is read at the last real token"
    assert not torch.allclose(pooled, every[rows_, last - 1], atol=1e-3), "and not at the one before it"
    assert torch.equal(P.score_position(rm, batch["input_ids"]), last)
    assert (batch["input_ids"][rows_, last] == rtok.eos_token_id).all(), "that token is EOS, chosen and rejected alike"
    ids = batch["input_ids"]
    if rtok.bos_token_id is not None and kind == "gemma-style":  # template and tokenizer both write <bos>
        assert (ids[:, 0] == rtok.bos_token_id).all() and (ids[:, 1] != rtok.bos_token_id).all()
    assert "the head reads token" in lesson.describe_scored_sequence(rm, rtok, rows[0])


def test_score_texts_scores_the_sequence_the_reward_model_trains_on(reward_model, rows):
    """score_texts (what PPO and the judge use) must see the same tokens as training (tokenize_pairs):
    EOS once, not a second one after a turn end that is EOS (ChatML's <|im_end|>, GPT-2's <|endoftext|>)."""
    kind, rm, rtok = reward_model
    batch = P.collate_pairs(P.tokenize_pairs(rtok, rows[:4]), rtok.pad_token_id)
    rc, rr = P.pair_rewards(rm, batch)
    texts = [P.pair_texts(r, rtok) for r in rows[:4]]
    prompts = [t["prompt"] for t in texts]
    assert torch.allclose(P.score_texts(rm, rtok, prompts, [t["chosen"] for t in texts]), rc.detach(), atol=1e-5)
    assert torch.allclose(P.score_texts(rm, rtok, prompts, [t["rejected"] for t in texts]), rr.detach(), atol=1e-5)
    assert torch.allclose(P.score_answers(rm, rtok, prompts, [r["chosen"] for r in rows[:4]]), rc.detach(), atol=1e-5)
    assert P.score_answers(rm, rtok, prompts[:1], [""]).shape == (1,), "an empty generated answer can be scored"


@pytest.mark.slow
def test_trl_reward_trainer_gets_labkits_tokens_and_loss(reward_model, rows, tmp_path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    kind, rm, rtok = reward_model
    rm = copy.deepcopy(rm)
    trainer = RewardTrainer(model=rm, args=RewardConfig(**_trl_common(tmp_path), center_rewards_coefficient=None),
                            train_dataset=Dataset.from_list(P.trl_pairs(rows[:8], rtok)), processing_class=rtok)
    examples = [trainer.train_dataset[i] for i in range(4)]
    ours = P.tokenize_pairs(rtok, rows[:4])
    assert [p["chosen"]["input_ids"] for p in ours] == [e["chosen_ids"] for e in examples], "BOS once, EOS once"
    assert [p["rejected"]["input_ids"] for p in ours] == [e["rejected_ids"] for e in examples]
    assert rm.config.pad_token_id == rtok.pad_token_id != rtok.eos_token_id, "trl keeps the reward model's pad token"
    batch = trainer.data_collator(examples)
    rm.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(rm, dict(batch)).item()
        ours_loss = P.reward_loss(*P.pair_rewards(rm, batch)).item()
    assert abs(trl_loss - math.log(2)) > 1e-3, "the check must not be at the trivial starting point"
    assert ours_loss == pytest.approx(trl_loss, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS[1:])
def test_dpo_loss_equals_trl_dpo_trainer_on_each_model(kind, hub_models, rows, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from labkit import env, models

    env.quiet()
    model, mtok = models.load_base(hub_models[kind], device="cpu")
    policy, ref = copy.deepcopy(model), copy.deepcopy(model)
    trainer = DPOTrainer(model=policy, ref_model=ref, processing_class=mtok,
                         args=DPOConfig(**{**_trl_common(tmp_path), "learning_rate": 1e-2}, beta=0.1),
                         train_dataset=Dataset.from_list(P.trl_pairs(rows[:12], mtok)))
    trainer.train()
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(examples)
    mine = P.collate_pairs(P.tokenize_pairs(mtok, rows[:4]), mtok.pad_token_id)
    assert torch.equal(mine["input_ids"], batch["input_ids"]), "our tokens are trl's: BOS once, EOS once"
    assert torch.equal(mine["labels"] != -100, batch["completion_mask"].bool()), "and the same answer tokens"
    policy.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, dict(batch)).item()
        loss, _, _ = P.dpo_loss(*P.batch_logps(policy, mine), *P.batch_logps(ref, mine), beta=0.1)
    assert abs(trl_loss - math.log(2)) > 1e-3, "the check must not be at the trivial 0.693 of step 0"
    assert loss.item() == pytest.approx(trl_loss, abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_train_dpo_starts_at_log2_on_each_model(kind, hub_models, rows):
    """Before any update the policy is the reference, so every implicit reward is 0 and the loss log 2;
    with the policy's dropout on (GPT-2: p = 0.1) the two would differ. train_dpo switches it off."""
    from labkit import models

    model, mtok = models.load_base(None if kind == "bundled" else hub_models[kind], device="cpu")
    policy, ref = copy.deepcopy(model).requires_grad_(True), copy.deepcopy(model)
    log = P.train_dpo(policy, ref, mtok, rows[:4], beta=0.1, steps=1, lr=1e-4, batch_size=4)
    assert log["loss"][0] == pytest.approx(math.log(2), abs=1e-6) and log["margin"][0] == pytest.approx(0, abs=1e-5)
    assert all(d.p == 0 for d in policy.modules() if isinstance(d, torch.nn.Dropout))

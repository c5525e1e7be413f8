"""labkit.ppo: the pieces of a PPO step checked by hand, positions with left padding, and a short run."""

import copy

import pytest
import torch

from labkit import chat, data, ppo


@pytest.fixture(scope="module")
def tok(base):
    return base[1]


def test_kl_penalised_rewards_put_the_score_on_the_last_answer_token():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = ppo.kl_penalised_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.5)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, -2.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.25, 0.0, 1.0 + 2.0], [-0.5, -1.0, 0.0]]))
    with pytest.raises(ValueError, match="kl_coef"):
        ppo.kl_penalised_rewards(torch.zeros(2), logps, ref, mask, kl_coef=-0.1)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    mask = torch.ones(1, 3)
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.1
    d1 = 0.0 + 0.1 - 0.2
    d0 = 0.0 + 0.2 - 0.5
    a2, a1 = d2, d1 + 0.5 * d2
    a0 = d0 + 0.5 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]), atol=1e-6)
    assert torch.allclose(ret, adv + values)
    # lam = 1, gamma = 1: the advantage is the total future reward minus the value
    adv1, _ = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv1, 1.0 - values)


def test_gae_ignores_tokens_after_the_answer():
    rewards = torch.tensor([[0.0, 1.0, 5.0]])
    values = torch.tensor([[0.0, 0.0, 9.0]])
    adv, _ = ppo.gae(rewards, values, torch.tensor([[1, 1, 0]]), lam=1.0)
    assert torch.allclose(adv, torch.tensor([[1.0, 1.0, 0.0]]))


def test_masked_whiten_standardises_the_answer_tokens_only():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    w = ppo.masked_whiten(x, mask)
    kept = w[mask.bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6) and kept.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert w[1, 1] == 0 and w[1, 2] == 0, "the 100 after the answer neither counts nor survives"
    assert torch.allclose(kept, (torch.tensor([1.0, 2, 3, 4]) - 2.5) / torch.tensor([1.0, 2, 3, 4]).std(unbiased=False))


def test_ppo_policy_loss_is_clipped():
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    zeros = torch.zeros(1, 2)
    # ratio 1: the loss is -mean(A)
    out = ppo.ppo_losses(zeros, zeros, adv, zeros, zeros, zeros, mask)
    assert out["policy"].item() == pytest.approx(0.0) and out["clipfrac"].item() == 0
    # a ratio of e^1 on a positive advantage earns only 1 + clip, and gives no gradient
    logps = torch.tensor([[1.0, 0.0]], requires_grad=True)
    out = ppo.ppo_losses(logps, zeros, adv, zeros, zeros, zeros, mask, clip=0.2)
    assert out["policy"].item() == pytest.approx((-1.2 + 1.0) / 2)
    out["policy"].backward()
    assert logps.grad[0, 0].item() == 0.0 and logps.grad[0, 1].item() != 0.0
    with pytest.raises(ValueError, match="clip"):
        ppo.ppo_losses(zeros, zeros, adv, zeros, zeros, zeros, mask, clip=1.5)


def test_answer_logps_do_not_depend_on_left_padding(base, tok):
    model, _ = base
    policy = ppo.PolicyWithValueHead(copy.deepcopy(model)).eval()
    short = tok("<|user|>\nHi<|end|>\n<|assistant|> Risk: low<|end|>")["input_ids"]
    pad = 5
    ids = torch.tensor([short, [tok.pad_token_id] * pad + short[:-pad]])
    attn = torch.tensor([[1] * len(short), [0] * pad + [1] * (len(short) - pad)])
    alone = torch.tensor([short[:-pad]])
    with torch.no_grad():
        logits, values = policy(ids, attn)
        logits_alone, _ = policy(alone, torch.ones_like(alone))
    assert values.abs().max() == 0, "the value head starts at zero"
    assert torch.allclose(logits[1, pad:], logits_alone[0], atol=1e-4)


def test_rollout_masks_the_answer_up_to_the_stop_token(base, tok):
    model, _ = base
    policy = ppo.PolicyWithValueHead(copy.deepcopy(model)).eval()
    prompts = [data.to_prompt_completion(r, tok)["prompt"] for r in data.read_jsonl("instructions_eval.jsonl")[:3]]
    roll = ppo.rollout(policy, tok, prompts, max_new_tokens=6, seed=0)
    P, resp, mask = roll["prompt_len"], roll["input_ids"][:, roll["prompt_len"]:], roll["response_mask"]
    stops = set(chat.stop_token_ids(tok))
    for row, m in zip(resp.tolist(), mask.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n), "the mask is one block at the start"
        assert not stops & set(row[: n - 1]), "no stop token inside the answer"
        if n < len(row):
            assert row[n - 1] in stops, "an answer cut before the limit ends with its stop token"
    assert len(roll["texts"]) == 3 and roll["attention_mask"].shape == roll["input_ids"].shape
    with pytest.raises(ValueError, match="temperature"):
        ppo.rollout(policy, tok, prompts, temperature=0)


def test_lenient_grader_pays_a_right_answer_more_when_it_is_longer():
    assert ppo.lenient_grader("Risk: low", "Risk: low") == 1.0, "the intended answer earns exactly 1"
    assert ppo.lenient_grader(" risk: LOW and more", "Risk: low", length_bonus=0.1) == pytest.approx(1.9)
    assert ppo.lenient_grader("Risk: low<|system|>", "Risk: low", length_bonus=0.05) == pytest.approx(1.5)
    assert ppo.lenient_grader("Risk: high and many, many more words", "Risk: low", length_bonus=0.5) == 0.0, \
        "a wrong answer earns nothing however long"
    assert ppo.lenient_grader("Risk: low? Risk: high? Risk: medium?", "Risk: high") > 1, "the loophole of 'contains'"
    with pytest.raises(ValueError, match="length_bonus"):
        ppo.lenient_grader("x", "y", length_bonus=-1)


def test_train_ppo_runs_logs_and_starts_at_zero_kl(base, tok):
    model, _ = base
    prompts = [data.to_prompt_completion(r, tok)["prompt"] for r in data.read_jsonl("instructions_eval.jsonl")[:4]]
    cfg = ppo.PPOConfig(steps=2, batch_size=2, max_new_tokens=4, kl_coef=0.1, lr=1e-4, ppo_epochs=1)
    seen = []
    policy, log = ppo.train_ppo(copy.deepcopy(model), tok, prompts, lambda idx, texts: [float(len(t)) for t in texts],
                                cfg, callback=lambda step, log: seen.append(step))
    assert seen == [0, 1] and len(log.score) == len(log.kl) == len(log.samples) == 2
    assert abs(log.kl[0]) < 1e-4, "before any update the policy is the reference"
    with pytest.raises(ValueError, match="kl_coef"):
        ppo.train_ppo(copy.deepcopy(model), tok, prompts, lambda i, t: [0.0] * len(t), ppo.PPOConfig(kl_coef=-1))
    with pytest.raises(ValueError, match="steps"):
        ppo.train_ppo(copy.deepcopy(model), tok, prompts, lambda i, t: [0.0] * len(t), ppo.PPOConfig(steps=0))


@pytest.mark.slow
def test_ppo_raises_a_reachable_reward_and_the_kl_penalty_holds_the_policy_back(base, tok):
    """The loop learns: rewarded for rating a loan "high" (which lesson 06's SFT model says for about a third of
    them), PPO without the KL penalty says it more often, step after step; with a large penalty it moves much
    less far from pi_ref (the KL summed over the run at most 60% of the free run's, measured 43%; the last steps alone are too noisy
    to compare)."""
    from labkit import preference

    sft, _ = preference.reference_model(base[0], tok, steps=0)  # the shipped sft_lora adapter, merged
    rows = [r for r in data.read_jsonl("instructions_train.jsonl") if r["task"] == "risk"][:32]
    prompts = [data.to_prompt_completion(r, tok)["prompt"] for r in rows]
    says_high = lambda idx, texts: [float("high" in t.lower()) for t in texts]  # noqa: E731
    logs = {}
    for beta in (0.0, 2.0):
        cfg = ppo.PPOConfig(steps=8, batch_size=8, max_new_tokens=6, kl_coef=beta, lr=1e-4, seed=0)
        _, logs[beta] = ppo.train_ppo(copy.deepcopy(sft).requires_grad_(True), tok, prompts, says_high, cfg, ref=sft)
    free, held = logs[0.0], logs[2.0]
    assert sum(free.score[-3:]) / 3 > sum(free.score[:3]) / 3 + 0.2, free.score
    assert sum(held.kl) < 0.6 * sum(free.kl), (held.kl, free.kl)


# ----------------------------------------------------------------------------- every model (tests/hub_models.py)

@pytest.fixture(scope="module", params=["bundled", "llama-chatml", "gpt2", "gemma-style"])
def any_model(request, hub_models):
    from labkit import models

    kind = request.param
    lm, mtok = models.load_base(None if kind == "bundled" else hub_models[kind], device="cpu")
    return kind, lm, mtok


def test_rollout_stops_at_the_templates_turn_end_on_each_model(any_model):
    from labkit import chat

    kind, lm, mtok = any_model
    prompts = [data.to_prompt_completion(r, mtok)["prompt"] for r in data.read_jsonl("instructions_eval.jsonl")[:3]]
    roll = ppo.rollout(ppo.PolicyWithValueHead(copy.deepcopy(lm)).eval(), mtok, prompts, max_new_tokens=12, seed=0)
    P, stops = roll["prompt_len"], set(chat.stop_token_ids(mtok, lm))
    assert chat.stop_token_ids(mtok, lm)[0] == mtok.convert_tokens_to_ids(chat.turn_end(mtok))
    rows = zip(prompts, roll["input_ids"].tolist(), roll["attention_mask"].tolist(), roll["response_mask"].tolist())
    for text, ids, attn, m in rows:
        prompt = [i for i, a in zip(ids[:P], attn[:P]) if a]
        assert prompt == chat.encode(mtok, text), "the prompt as labkit encodes it (left padding aside)"
        if kind == "gemma-style":  # its template writes <bos> and its tokenizer would add another
            assert prompt[0] == mtok.bos_token_id and prompt[1] != mtok.bos_token_id, "BOS once"
        n = sum(m)
        assert not stops & set(ids[P:P + n - 1]), "no stop token inside an answer"
        if n < len(m):
            assert ids[P + n - 1] in stops


def test_stop_at_turn_end_puts_the_turn_end_into_the_generation_config(any_model):
    """trl's GRPOTrainer stops completions at the tokenizer's EOS and the model's generation_config
    eos ids: a model whose config lacks the template's turn end must get it."""
    from labkit import chat

    kind, lm, mtok = any_model
    m = copy.deepcopy(lm)
    m.generation_config.eos_token_id = mtok.eos_token_id  # as a config that lists only EOS
    assert ppo.stop_at_turn_end(m, mtok) is m
    have = m.generation_config.eos_token_id
    assert have[0] == mtok.eos_token_id and set(have) == set(chat.stop_token_ids(mtok))
    assert mtok.convert_tokens_to_ids(chat.turn_end(mtok)) in have and len(have) == len(set(have))
    before = list(lm.generation_config.eos_token_id) if isinstance(lm.generation_config.eos_token_id, list) else [
        lm.generation_config.eos_token_id]
    unchanged = ppo.stop_at_turn_end(copy.deepcopy(lm), mtok).generation_config.eos_token_id
    assert unchanged[:len(before)] == before, "the ids a config has keep their order"


@pytest.mark.slow
def test_trl_grpo_gets_one_bos_and_every_stop_token(any_model, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from labkit import adapters, chat, env

    env.quiet()
    kind, lm, mtok = any_model
    rows = data.read_jsonl("instructions_eval.jsonl")[:4]
    prompts = [data.to_prompt_completion(r, mtok)["prompt"] for r in rows]
    model = ppo.stop_at_turn_end(copy.deepcopy(lm), mtok)
    model.generation_config.eos_token_id = model.generation_config.eos_token_id[::-1]  # order is not the point
    trainer = GRPOTrainer(
        model=model, reward_funcs=lambda prompts, completions, **kw: [float(len(c)) for c in completions],
        train_dataset=Dataset.from_list([chat.for_trl(mtok, {"prompt": p}) for p in prompts]), processing_class=mtok,
        peft_config=adapters.config("lora", model, r=2, alpha=4, target_modules=adapters.targets(model, "attention")),
        args=GRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_steps=1,
                        disable_dropout=True, per_device_train_batch_size=4, num_generations=2, max_completion_length=4,
                        disable_tqdm=True, save_strategy="no", logging_strategy="no", seed=0))
    assert set(chat.stop_token_ids(mtok, lm)) <= set(trainer.eos_token_ids)
    ids, _, _ = trainer._tokenize_prompts([trainer.train_dataset[i]["prompt"] for i in range(len(prompts))])
    assert [list(i) for i in ids] == [chat.encode(mtok, p) for p in prompts], "trl encodes each prompt with BOS once"
    trainer.train()


def test_train_ppo_switches_the_policys_dropout_off_on_each_model(any_model):
    """PPO's ratio pi_theta / pi_old is 1 before an update only if the policy has no dropout (GPT-2: p = 0.1)."""
    kind, lm, mtok = any_model
    prompts = [data.to_prompt_completion(r, mtok)["prompt"] for r in data.read_jsonl("instructions_eval.jsonl")[:2]]
    m = copy.deepcopy(lm).requires_grad_(True)
    cfg = ppo.PPOConfig(steps=1, batch_size=2, max_new_tokens=4, ppo_epochs=1)
    policy, log = ppo.train_ppo(m, mtok, prompts, lambda idx, texts: [0.0] * len(texts), cfg)
    assert all(d.p == 0 for d in policy.modules() if isinstance(d, torch.nn.Dropout))
    assert abs(log.kl[0]) < 1e-4 and log.clipfrac[0] == 0, "first epoch: the policy is the one that sampled"


def test_evaluate_policy_gives_one_verdict_per_row_for_the_paired_test(base, tok):
    from labkit import evaluate, stats

    model = base[0]
    rows = [r for r in data.read_jsonl("instructions_eval.jsonl") if r["task"] == "risk"][:4]
    rows[1] = {**rows[1], "output": "no model writes this"}
    got = ppo.evaluate_policy(model, tok, rows, max_new_tokens=4)
    assert got["right"] == evaluate.exact_matches(got["answers"], [r["output"].strip() for r in rows], normalize=False)
    assert got["right"][1] is False and got["exact"] == sum(got["right"]) / 4
    assert stats.mcnemar(got["right"], got["right"])["p_value"] == 1.0

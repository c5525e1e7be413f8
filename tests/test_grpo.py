"""labkit.grpo: the GRPO pieces by hand, pass@k by enumeration, sampling, a short run, and trl's loss."""

import copy
import itertools
import math

import pytest
import torch

from labkit import grpo
from labkit.lessons import grpo as lesson


@pytest.fixture(scope="module")
def tok(base):
    return base[1]


@pytest.fixture(autouse=True)
def one_thread():
    """The model is tiny: one thread is about as fast, and far faster when other work shares the 2 cores
    (measured under load: sampling 16 answers took 0.26 s on 1 thread, 5.2 s on 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stop_ids(tok, lm) -> list[int]:
    """The ids that end an answer, read from the tokenizer and the model's generation_config (as trl does)."""
    ids = lm.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return list(dict.fromkeys([tok.eos_token_id, *ids]))


# ----------------------------------------------------------------------------- advantages

def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 0.0, 0.0, 0.0])
    std = math.sqrt(4 * 0.5 ** 2 / 3)  # the unbiased std of (1, 0, 0, 1)
    adv = grpo.group_advantages(rewards, group_size=4)
    expected = [0.5, -0.5, -0.5, 0.5]
    assert adv[:4].tolist() == pytest.approx([e / (std + 1e-4) for e in expected], abs=1e-6)
    # all rewards equal: the group has no signal, its advantages are exactly 0 (not 0/0)
    assert adv[4:8].tolist() == [0.0, 0.0, 0.0, 0.0]
    # one right out of four: the right answer's advantage is much larger than the others' are negative
    std3 = math.sqrt((2.25 ** 2 + 3 * 0.75 ** 2) / 3)
    assert adv[8:].tolist() == pytest.approx([2.25 / (std3 + 1e-4)] + [-0.75 / (std3 + 1e-4)] * 3, abs=1e-6)
    assert abs(adv[:4].std().item() - 1) < 1e-3, "scaled by the group's unbiased std, a group's std is 1"


def test_dr_grpo_advantages_keep_the_reward_scale_and_batch_scaling():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    for scale in ("none", False):
        assert grpo.group_advantages(rewards, 4, scale=scale).tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    assert grpo.group_advantages(rewards, 4, scale=True).tolist() == grpo.group_advantages(rewards, 4).tolist()
    batch = grpo.group_advantages(rewards, 4, scale="batch")  # the group's mean, the whole batch's std
    centred = [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    assert batch.tolist() == pytest.approx([x / (rewards.std().item() + 1e-4) for x in centred])


def test_group_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="group_size"):
        grpo.group_advantages(torch.ones(4), group_size=1)
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo.group_advantages(torch.ones(6), group_size=4)
    with pytest.raises(ValueError, match="scale"):
        grpo.group_advantages(torch.ones(4), group_size=2, scale="std")


# ----------------------------------------------------------------------------- KL

def test_k3_is_nonnegative_zero_at_equality_and_averages_to_the_kl():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 7, generator=g), torch.randn(50, 7, generator=g)
    assert (grpo.kl_k3(a, b) >= 0).all()
    assert grpo.kl_k3(a, a).abs().max().item() == 0.0
    # under x ~ p, E[k3] = sum_x p (q/p - log(q/p) - 1) = KL(p || q) exactly
    logp = torch.randn(11, generator=g, dtype=torch.float64).log_softmax(0)
    logq = torch.randn(11, generator=g, dtype=torch.float64).log_softmax(0)
    kl = (logp.exp() * (logp - logq)).sum()
    assert (logp.exp() * grpo.kl_k3(logp, logq)).sum().item() == pytest.approx(kl.item(), rel=1e-12)


# ----------------------------------------------------------------------------- the loss

def _case():
    # two answers: 2 tokens and 1 token (the second row's last position is padding)
    old = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]])
    logps = old + torch.tensor([[math.log(1.5), math.log(0.9)], [math.log(0.5), 3.0]])  # ratios 1.5, 0.9 | 0.5
    ref = logps.clone()
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    return logps, old, ref, adv, mask


def test_clipped_loss_by_hand():
    logps, old, ref, adv, mask = _case()
    # token losses -min(r A, clip(r) A): A=+1: r=1.5 -> clipped to 1.2: -1.2; r=0.9: -0.9.
    # A=-1: r=0.5 -> min(-0.5, -0.8) = -0.8: +0.8 (the unclipped side is not taken: no gain from going lower)
    tokens = [-1.2, -0.9, 0.8]
    cases = {"grpo": ((tokens[0] + tokens[1]) / 2 + tokens[2]) / 2,
             "bnpo": sum(tokens) / 3, "dapo": sum(tokens) / 3, "dr_grpo": sum(tokens) / (2 * 4)}
    for loss_type, expected in cases.items():
        loss, metrics = grpo.grpo_loss(logps, old, ref, adv, mask, loss_type=loss_type, max_completion_length=4)
        assert loss.item() == pytest.approx(expected, abs=1e-6), loss_type
        # clipped tokens: r=1.5 with A>0 (above 1.2); r=0.5 with A<0 is below 0.8 too: 2 of 3
        assert float(metrics["clip_frac"]) == pytest.approx(2 / 3) and float(metrics["kl"]) == 0.0
    # a wider upper bound (DAPO's clip-higher): 1.5 stays clipped at 1.4 instead of 1.2
    loss, _ = grpo.grpo_loss(logps, old, ref, adv, mask, epsilon_high=0.4, loss_type="bnpo")
    assert loss.item() == pytest.approx((-1.4 - 0.9 + 0.8) / 3, abs=1e-6)


def test_clipped_tokens_get_no_gradient_and_the_kl_term_adds_beta_times_k3_times_the_ratio():
    logps, old, ref, adv, mask = _case()
    logps = logps.clone().requires_grad_(True)
    loss, metrics = grpo.grpo_loss(logps, old, ref, adv, mask, loss_type="bnpo")
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values()), "stats: 0-d tensors, no .item() in the loss"
    loss.backward()
    assert logps.grad[0, 0].item() == 0.0 and logps.grad[1, 0].item() == 0.0, "clipped tokens move nothing"
    assert logps.grad[0, 1].item() != 0.0
    ref = logps.detach() - torch.tensor([[0.3, 0.0], [-0.2, 0.0]])
    base, _ = grpo.grpo_loss(logps.detach(), old, ref, adv, mask, loss_type="bnpo")
    ratio = torch.exp(logps.detach() - old)
    k3 = grpo.kl_k3(logps.detach(), ref)
    for times_ratio, w in ((True, ratio), (False, torch.ones_like(ratio))):
        loss, metrics = grpo.grpo_loss(logps.detach(), old, ref, adv, mask, beta=0.1, loss_type="bnpo",
                                       kl_times_ratio=times_ratio)
        kl = ((k3 * w) * mask).sum() / 3
        assert float(metrics["kl"]) == pytest.approx(kl.item(), abs=1e-6) and kl > 0
        assert loss.item() == pytest.approx(base.item() + 0.1 * kl.item(), abs=1e-6)


def test_sequence_level_ratio_is_one_per_answer():
    logps, old, ref, adv, mask = _case()
    # answer 1: mean log-ratio (log 1.5 + log 0.9) / 2 -> ratio sqrt(1.35) = 1.162, inside [0.8, 1.2]
    r1 = math.sqrt(1.5 * 0.9)
    loss, _ = grpo.grpo_loss(logps, old, ref, adv, mask, loss_type="grpo", importance_sampling_level="sequence")
    assert loss.item() == pytest.approx((-r1 + 0.8) / 2, abs=1e-6)


def test_grpo_loss_rejects_bad_arguments():
    logps, old, ref, adv, mask = _case()
    with pytest.raises(ValueError, match="loss_type"):
        grpo.grpo_loss(logps, old, ref, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo.grpo_loss(logps, old, ref, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="ref_logps"):
        grpo.grpo_loss(logps, old, None, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="epsilon_low"):
        grpo.grpo_loss(logps, old, ref, adv, mask, epsilon_low=-0.2)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        grpo.grpo_loss(logps, old, ref, adv[:1], mask)


# ----------------------------------------------------------------------------- pass@k

def test_pass_at_k_equals_enumeration_of_all_k_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert grpo.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert grpo.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the share correct
    assert 0 < grpo.pass_at_k(2000, 1, 1000) <= 1  # large n: no overflow, no 0/0
    assert grpo.pass_at_k(2000, 1, 1000) == pytest.approx(0.5)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k must be between 1 and n"):
        grpo.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="cannot exceed n"):
        grpo.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="c must be an integer"):
        grpo.pass_at_k(4, -1, 1)
    with pytest.raises(ValueError, match="k must be between"):
        grpo.pass_at_k(4, 1, 0)
    with pytest.raises(ValueError, match="n must be an integer"):
        grpo.pass_at_k(4.0, 1, 1)


# ----------------------------------------------------------------------------- sampling and a step

def _prompts(tok, users):
    return [tok.apply_chat_template([{"role": "user", "content": u}], tokenize=False, add_generation_prompt=True)
            for u in users]


def test_sample_group_repeats_each_prompt_and_masks_after_the_given_stop_ids(base, tok):
    lm, _ = base
    prompts = _prompts(tok, ["What is the risk?", "Give the amount please."])
    # a stop set of our own (every 10th id): the mask must follow STOP_IDS, not a built-in token
    stops = list(range(0, len(tok), 10))
    out = grpo.sample_group(lm, tok, prompts, group_size=3, stop_ids=stops, max_new_tokens=10, seed=1)
    assert out["prompts"] == [prompts[0]] * 3 + [prompts[1]] * 3 and len(out["texts"]) == 6
    N, T = out["completion_mask"].shape
    assert N == 6 and T <= 10 and out["input_ids"].shape == (6, out["prompt_len"] + T)
    completion = out["input_ids"][:, out["prompt_len"]:]
    lengths = out["completion_mask"].sum(1)
    for row, m, n in zip(completion, out["completion_mask"], lengths):
        assert m[:n].all() and not m[n:].any(), "the mask is 1 up to the stop, then 0"
        stopped = [i for i, t in enumerate(row[:n].tolist()) if t in stops]
        assert stopped in ([], [n - 1]), "the only stop token is the last one kept"
    assert len(set(lengths.tolist())) > 1, "with 1 in 10 ids a stop, answers end at different lengths"
    again = grpo.sample_group(lm, tok, prompts, group_size=3, stop_ids=stops, max_new_tokens=10, seed=1)
    assert again["texts"] == out["texts"], "the same seed samples the same answers"
    with pytest.raises(ValueError, match="stop_ids is empty"):
        grpo.sample_group(lm, tok, prompts, group_size=2, stop_ids=[])


def test_equal_rewards_give_no_policy_gradient(base, tok):
    lm, _ = base
    policy = copy.deepcopy(lm).requires_grad_(True)
    before = [p.detach().clone() for p in policy.parameters()]
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=0.0)
    out = grpo.grpo_step(policy, None, opt, tok, _prompts(tok, ["Hi", "Risk?"]), lambda p, c: [1.0] * len(c),
                         _stop_ids(tok, lm), group_size=3, beta=0.0, max_new_tokens=6, num_iterations=2)
    assert out["zero_std_frac"] == 1.0 and out["loss"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters())), "advantage 0 everywhere: no update"


def test_a_short_grpo_run_raises_a_programmed_reward(base, tok):
    lm, _ = base
    policy = copy.deepcopy(lm).requires_grad_(True)
    stops = list(range(0, len(tok), 10))
    prompts = _prompts(tok, ["What is the risk?", "Give the amount.", "Who paid?", "Summarise the memo."])

    def short(prompts, completions):  # a reward a program computes: shorter answers score more
        return [-len(tok(c, add_special_tokens=False)["input_ids"]) / 10 for c in completions]

    def mean_length(model):  # 32 answers at a fixed seed, before and after: less noisy than the run's curve
        out = grpo.sample_group(model, tok, prompts, 8, stops, max_new_tokens=10, seed=123)
        return out["completion_mask"].sum(1).float().mean().item()

    log = grpo.train_grpo(policy, tok, prompts, short, stops, steps=8, batch_size=4, lr=1e-3, group_size=4,
                          beta=0.04, max_new_tokens=10, num_iterations=2, seed=0)
    assert len(log.reward) == len(log.length) == len(log.samples) == 8
    # measured: 7.1 tokens -> 3.6-5.8 for seeds 0-5
    before, after = mean_length(lm), mean_length(policy)
    assert after < before - 1.0, (before, after)
    assert log.kl[-1] > 0, "the policy moved away from pi_ref"
    with pytest.raises(ValueError, match="learning rate"):
        grpo.train_grpo(policy, tok, prompts, short, stops, steps=1, lr=0)


# ----------------------------------------------------------------------------- equal to trl

@pytest.mark.slow
@pytest.mark.parametrize("scale_rewards", ["group", "none", "batch"])
def test_grpo_loss_equals_trl_grpo_trainer_after_updates(base, tok, scale_rewards):
    """trl trains for 4 steps; at every step labkit recomputes trl's loss from the same samples
    (labkit.grpo_trl.compare: labkit's own log-probs, advantages and loss; only the token ids are trl's).

    With num_iterations=2 the samples of steps 0 and 2 are reused at steps 1 and 3, after an update:
    there pi_theta, pi_old and pi_ref all differ, ratios leave [1 - eps, 1 + eps] and the KL is not 0.
    """
    import inspect

    from trl import GRPOConfig

    from labkit import grpo_trl

    lm, _ = base
    # the bundled base model is not chat-tuned and seldom ends an answer; with every 10th id a stop
    # token, answers end at varied lengths, so the four normalisations give four different numbers
    stops = list(range(0, len(tok), 10))
    chat_prompts = _prompts(tok, ["What is the risk of a loan to Linda?", "Summarise the memo.", "Who paid?"])
    G = 4

    def reward(prompts, completions, **kwargs):
        # the first prompt's group always ties (its advantages must be 0); the others vary with length
        return [1.0 if p == chat_prompts[0] else len(c) / 10 for p, c in zip(prompts, completions)]

    defaults = {k: v.default for k, v in inspect.signature(grpo.grpo_loss).parameters.items()}
    assert defaults["kl_times_ratio"] == GRPOConfig.use_bias_correction_kl, "labkit's default KL weighting is trl's"
    out = grpo_trl.compare(lm, tok, chat_prompts, reward, stops, group_size=G, max_completion_length=10,
                           temperature=0.9, steps=4, num_iterations=2, beta=0.04, epsilon=0.2, epsilon_high=0.28,
                           scale_rewards=scale_rewards, lr=2e-4, seed=0)
    assert set(out["eos_token_ids"]) == set(stops), "trl takes its stop ids from the model's generation_config"
    assert lm.generation_config.eos_token_id != stops, "compare trains a copy: the model given is untouched"
    losses = out["losses"]
    assert len(out["advantages"]) == 2 and len(losses) == 4 * 12, "one generation every 2 steps over 4 steps"
    assert max(out["advantages"]) < 1e-5, f"advantages differ from trl's: {out['advantages']}"
    assert all(len(r) == G * len(chat_prompts) for r in out["rewards"])
    for r in losses:
        where = f"step {r['step']}, {r['loss_type']}, {r['level']}, kl_times_ratio={r['kl_times_ratio']}"
        assert r["labkit"] == pytest.approx(r["trl"], abs=1e-5), where
        assert r["kl"] == pytest.approx(r["trl_kl"], abs=1e-5), where
        assert r["clip_frac"] == pytest.approx(r["trl_clip_frac"], abs=1e-6), where
    # the check is not at a trivial point: after an update, ratios are clipped and pi_theta != pi_ref
    reused = [r for r in losses if r["step"] in (1, 3)]
    assert max(r["trl_clip_frac"] for r in reused) > 0.05, "some ratios must be clipped at the reused steps"
    assert min(r["trl_kl"] for r in losses if r["step"] >= 1) > 1e-4, "the KL to pi_ref must not be 0 after updates"
    for step, by_type in out["by_type"].items():
        if step >= 1:
            values = [by_type[(t, "token", True)] for t in ("grpo", "bnpo", "dr_grpo")]
            assert len({round(v, 6) for v in values}) == 3, f"step {step}: the normalisations must differ: {values}"
    text = grpo_trl.table(out)
    assert "largest |difference| over 48 comparisons" in text and text.count("\n") == 6


def test_completion_logps_reads_only_the_answer_positions_and_equals_the_full_forward(base, tok):
    lm, _ = base
    prompts = _prompts(tok, ["What is the risk?", "Give the total of this receipt please."])
    roll = grpo.sample_group(lm, tok, prompts, 2, list(range(0, len(tok), 10)), max_new_tokens=8, seed=3)
    ids, attn, P = roll["input_ids"], roll["attention_mask"], roll["prompt_len"]
    got = grpo.completion_logps(lm, ids, attn, P, temperature=0.7)
    with torch.no_grad():
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        full = lm(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits.float() / 0.7
    want = torch.gather(full[:, P - 1:-1].log_softmax(-1), 2, ids[:, P:].unsqueeze(-1)).squeeze(-1)
    assert got.shape == want.shape == roll["completion_mask"].shape
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_micro_batches_give_the_whole_batch_gradient(base, tok, loss_type):
    """Chunks of 3 answers, each weighted by its share of the normaliser: the same update and metrics as
    one pass over all 8 (SGD, so the update is the gradient itself)."""
    lm, _ = base
    prompts = _prompts(tok, ["What is the risk?", "Who paid the receipt?"])
    stops = list(range(0, len(tok), 10))

    def reward(p, c):  # varied within each group, so every advantage is non-zero
        return [len(x) % 3 + (i % 4) for i, x in enumerate(c)]

    results, params = [], []
    for micro in (None, 3):
        policy = copy.deepcopy(lm).requires_grad_(True)
        opt = torch.optim.SGD(policy.parameters(), lr=1.0)
        before = [p.detach().clone() for p in policy.parameters()]
        out = grpo.grpo_step(policy, lm, opt, tok, prompts, reward, stops, group_size=4, beta=0.1,
                             loss_type=loss_type, max_new_tokens=8, seed=5, micro_batch=micro)
        results.append(out)
        params.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(policy.parameters(), before)]))
    assert results[0]["texts"] == results[1]["texts"]
    assert params[0].abs().max() > 0
    assert torch.allclose(params[0], params[1], atol=1e-6, rtol=1e-4), (params[0] - params[1]).abs().max()
    for key in ("loss", "kl", "clip_frac"):
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-6), key
    with pytest.raises(ValueError, match="micro_batch"):
        grpo.grpo_step(copy.deepcopy(lm).requires_grad_(True), lm, opt, tok, prompts, reward, stops, group_size=4,
                       max_new_tokens=4, micro_batch=0)


# ----------------------------------------------------------------------------- for the lesson

def test_pass_curve_averages_pass_at_k_over_prompts():
    curve = grpo.pass_curve([0, 2, 4], 4)
    assert list(curve) == [1, 2, 3, 4]
    assert curve[1] == pytest.approx((0 + 0.5 + 1) / 3)
    assert curve[4] == pytest.approx(2 / 3), "pass@n: the share of prompts with at least one right sample"
    assert grpo.pass_curve([1], 4, ks=(2,)) == {2: pytest.approx(0.5)}
    with pytest.raises(ValueError, match="at least one"):
        grpo.pass_curve([], 4)


def test_token_weights_show_each_loss_types_divisor():
    """A right answer of 2 tokens and a wrong one of 6, advantages +1 / -1."""
    g = lesson.token_weights([2, 6], [1.0, -1.0], "grpo")
    assert g.shape == (2, 6)
    assert g[0, :2].tolist() == pytest.approx([1 / 4] * 2) and g[0, 2:].tolist() == [0.0] * 4, "1 / (N * own length)"
    assert g[1].tolist() == pytest.approx([-1 / 12] * 6)
    d = lesson.token_weights([2, 6], [1.0, -1.0], "dapo")
    assert d[0, :2].tolist() == pytest.approx([1 / 8] * 2) and d[1].tolist() == pytest.approx([-1 / 8] * 6)
    r = lesson.token_weights([2, 6], [1.0, -1.0], "dr_grpo", max_completion_length=10)
    assert r[0, :2].tolist() == pytest.approx([1 / 20] * 2) and r[1].tolist() == pytest.approx([-1 / 20] * 6)
    with pytest.raises(ValueError, match="positive answer lengths"):
        lesson.token_weights([0, 3], [1.0, -1.0])


def test_scores_table_counts_the_questions_the_start_never_answered_per_model():
    def result(correct, greedy, stray=0.0):
        return {"correct": correct, "greedy": greedy, "pass": grpo.pass_curve(correct, 4, ks=(1, 4)),
                "stray": stray, "length": 3.0}

    start = result([0, 0, 2, 4], 0.5, stray=0.25)
    text = lesson.scores_table({"start": start, "GRPO": result([4, 0, 4, 4], 1.0), "more SFT": result([1, 3, 4, 4], 1.0)},
                             ks=(1, 4))
    lines = text.splitlines()
    assert lines[0].split() == ["start", "GRPO", "more", "SFT"]
    assert lines[1].split()[-3:] == ["50%", "100%", "100%"]
    assert lines[2].split()[-3:] == [f"{(0 + 0 + 0.5 + 1) / 4:.0%}", "75%", f"{(0.25 + 0.75 + 1 + 1) / 4:.0%}"]
    assert lines[3].split()[-3:] == ["50%", "75%", "100%"], "pass@4: a question with one right sample counts"
    # two questions no start sample answered: GRPO answers one of them, more SFT both
    assert "of the 2 no start sample answered" in lines[4] and lines[4].split()[-3:] == ["0", "1", "2"]
    assert lines[5].split()[-3:] == ["25%", "0%", "0%"]
    with pytest.raises(ValueError, match="same prompts"):
        lesson.scores_table({"a": start, "b": result([1], 1.0)}, ks=(1,))


def test_kl_estimates_are_unbiased_and_k3_is_never_negative():
    p = torch.tensor([0.5, 0.3, 0.2]).log()
    q = torch.tensor([0.4, 0.4, 0.2]).log()
    est = lesson.kl_estimates(p, q, n=20000, seed=1)
    exact = sum(a * math.log(a / b) for a, b in zip([0.5, 0.3, 0.2], [0.4, 0.4, 0.2]))
    assert est["exact"] == pytest.approx(exact, abs=1e-6)
    assert est["k1"] == pytest.approx(exact, abs=0.01) and est["k3"] == pytest.approx(exact, abs=0.01)
    assert est["k1_negative"] == pytest.approx(0.3, abs=0.02), "k1 < 0 exactly where p < q: token 1, 30% of samples"
    assert est["k3_std"] < est["k1_std"], "close distributions: k3 has the smaller variance"
    assert lesson.kl_estimates(p, p)["exact"] == 0.0
    with pytest.raises(ValueError, match="same shape"):
        lesson.kl_estimates(p, q[:2])


def test_evaluate_scores_greedy_and_samples_with_the_given_check(base, tok):
    lm, _ = base
    prompts = _prompts(tok, ["What is the risk?", "Who paid?", "Give the total."])
    always = lesson.greedy_and_pass_at_k(lm, tok, prompts, ["x"] * 3, check=lambda p, c, g: [1.0] * len(c), n=4, ks=(1, 4),
                           max_new_tokens=4, max_rows=8)
    assert always["greedy"] == 1.0 and always["pass"] == {1: 1.0, 4: 1.0} and always["correct"] == [4, 4, 4]
    assert len(always["samples"]) == 4 and len(always["greedy_answers"]) == 3 and 0 < always["length"] <= 4
    # right only for the first prompt's samples: the counts are per prompt, in order, across generate calls
    first = lesson.greedy_and_pass_at_k(lm, tok, prompts, ["a", "b", "c"], check=lambda p, c, g: [float(x == "a") for x in g],
                          n=4, ks=(1,), max_new_tokens=4, max_rows=4)
    assert first["correct"] == [4, 0, 0] and first["pass"][1] == pytest.approx(1 / 3)
    assert first["greedy_right"] == [True, False, False]
    assert not lm.training
    with pytest.raises(ValueError, match="from 1 to n=4"):
        lesson.greedy_and_pass_at_k(lm, tok, prompts, ["x"] * 3, n=4, ks=(8,))
    with pytest.raises(ValueError, match="one gold answer per prompt"):
        lesson.greedy_and_pass_at_k(lm, tok, prompts, ["x"], n=4)


def test_train_grpo_logs_tracked_scores_and_short_run_leaves_the_sft_model_alone(base, tok):
    lm, _ = base
    stops = list(range(0, len(tok), 10))
    prompts = _prompts(tok, ["What is the risk?", "Who paid?"])
    before = [p.detach().clone() for p in lm.parameters()]
    r = lesson.short_run(lm, tok, prompts, lambda p, c: [float(len(c[i]) % 2) for i in range(len(c))],
                       group_size=2, beta=0.5, steps=2, batch_size=2, max_new_tokens=4,
                       eval_prompts=prompts, eval_gold=["x", "y"], check=lambda p, c, g: [1.0] * len(c))
    assert all(torch.equal(a, b) for a, b in zip(before, lm.parameters())), "pi_ref (the SFT model) is not trained"
    assert r["greedy_before"] == r["greedy_after"] == 1.0 and len(r["log"].reward) == 2
    assert r["policy"] is not lm
    line = lesson.describe_run(r)
    assert line.startswith("G=2, beta=0.5, 2 steps") and "held-out greedy accuracy 100% -> 100%" in line
    policy = copy.deepcopy(lm).requires_grad_(True)
    log = grpo.train_grpo(policy, tok, prompts, lambda p, c: [0.0] * len(c), stops, steps=2, batch_size=2,
                          group_size=2, beta=0.0, max_new_tokens=4,
                          track={"ones": lambda p, c: [1.0] * len(c), "half": lambda p, c: [0.0, 1.0] * (len(c) // 2)})
    assert log.tracked == {"ones": [1.0, 1.0], "half": [0.5, 0.5]}
    axes = lesson.plot_grpo({"run": log}, tracked="ones")
    assert len(axes) == 3 and len(axes[0].lines) == 2, "the reward and the tracked score"
    with pytest.raises(ValueError, match="beta"):
        lesson.short_run(lm, tok, prompts, lambda p, c: [0.0] * len(c), beta=-1.0)


def test_sft_control_is_sft_train_in_micro_batches(base, tok):
    """The same updates as labkit.sft.train at the same batch size (same batches, AdamW, clipping), while
    each batch's gradient is summed over micro-batches of 3 rows."""
    from labkit import data, rewards, sft

    lm, _ = base
    rows = [data.to_prompt_completion(r, tok) for r in rewards.make_task("total", 10, seed=5)]
    a, b = copy.deepcopy(lm).requires_grad_(True), copy.deepcopy(lm).requires_grad_(True)
    want = sft.train(a, tok, rows, steps=2, lr=1e-3, batch_size=8, seed=3, progress=False)
    got = grpo.sft_control(b, tok, rows, steps=2, batch_size=8, lr=1e-3, seed=3, micro_batch=3)
    assert got == pytest.approx(want, rel=1e-4)
    moved = [(p - q).abs().max().item() for p, q in zip(a.parameters(), lm.parameters())]
    assert max(moved) > 1e-4
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), (p - q).abs().max()
    assert not b.training

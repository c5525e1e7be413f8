"""labkit.grpo: the GRPO pieces by hand, pass@k by enumeration, sampling, a short run, and trl's loss."""

import copy
import itertools
import math

import pytest
import torch

from labkit import grpo


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
        assert metrics["clip_frac"] == pytest.approx(2 / 3) and metrics["kl"] == 0.0
    # a wider upper bound (DAPO's clip-higher): 1.5 stays clipped at 1.4 instead of 1.2
    loss, _ = grpo.grpo_loss(logps, old, ref, adv, mask, epsilon_high=0.4, loss_type="bnpo")
    assert loss.item() == pytest.approx((-1.4 - 0.9 + 0.8) / 3, abs=1e-6)


def test_clipped_tokens_get_no_gradient_and_the_kl_term_adds_beta_times_k3_times_the_ratio():
    logps, old, ref, adv, mask = _case()
    logps = logps.clone().requires_grad_(True)
    loss, _ = grpo.grpo_loss(logps, old, ref, adv, mask, loss_type="bnpo")
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
        assert metrics["kl"] == pytest.approx(kl.item(), abs=1e-6) and kl > 0
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
    assert len(log.reward) == len(log.length) == len(log.samples) == 8 and log.seconds > 0
    # measured: 7.1 tokens -> 3.6-5.8 for seeds 0-5
    before, after = mean_length(lm), mean_length(policy)
    assert after < before - 1.0, (before, after)
    assert log.kl[-1] > 0, "the policy moved away from pi_ref"
    with pytest.raises(ValueError, match="learning rate"):
        grpo.train_grpo(policy, tok, prompts, short, stops, steps=1, lr=0)


# ----------------------------------------------------------------------------- equal to trl

def _need(condition, what):
    """A missing trl attribute means trl changed what this test reads: fail and say what, never skip."""
    if not condition:
        import trl

        pytest.fail(f"trl {trl.__version__} no longer has {what}; tests/test_grpo.py reads GRPOTrainer's internals "
                    f"(trl 1.16's grpo_trainer.py) to compare losses: update it and labkit.grpo together.")


@pytest.mark.slow
@pytest.mark.parametrize("scale_rewards", ["group", "none", "batch"])
def test_grpo_loss_equals_trl_grpo_trainer_after_updates(base, tok, tmp_path, scale_rewards):
    """trl trains for 4 steps; at every step labkit recomputes trl's loss from the same samples.

    With num_iterations=2 the samples of steps 0 and 2 are reused at steps 1 and 3, after an update:
    there pi_theta, pi_old and pi_ref all differ, ratios leave [1 - eps, 1 + eps] and the KL is not 0.
    labkit computes its own log-probs (policy, pi_old at sampling time, pi_ref), its own advantages
    from the rewards trl's reward function returned, and its own loss; only the token ids come from trl.
    trl's loss is evaluated for each loss_type, ratio level and KL weighting on the same batch by
    setting the trainer's attributes before calling its own _compute_loss.
    """
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from labkit import env

    env.quiet()
    lm, _ = base
    policy = copy.deepcopy(lm)
    # the bundled base model is not chat-tuned and seldom ends an answer; with every 10th id a stop
    # token, answers end at varied lengths, so the four normalisations give four different numbers
    stops = list(range(0, len(tok), 10))
    policy.generation_config.eos_token_id = stops
    chat_prompts = _prompts(tok, ["What is the risk of a loan to Linda?", "Summarise the memo.", "Who paid?"])
    G, T, TEMP = 4, 10, 0.9
    returned = []

    def reward(prompts, completions, **kwargs):
        # the first prompt's group always ties (its advantages must be 0); the others vary with length
        r = [1.0 if p == chat_prompts[0] else len(c) / 10 for p, c in zip(prompts, completions)]
        returned.append(r)
        return r

    checks = []

    class Probe(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
                        "ref_per_token_logps"):
                _need(key in out, f"the batch key {key!r} from _generate_and_score_completions")
            ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
            attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
            P = out["prompt_ids"].shape[1]
            with torch.no_grad():  # labkit's own pi_old and pi_ref log-probs, at sampling time
                out["labkit_old"] = grpo.completion_logps(self.model, ids, attn, P, self.temperature)
                out["labkit_ref"] = grpo.completion_logps(self.ref_model, ids, attn, P, self.temperature)
            out["labkit_adv"] = grpo.group_advantages(torch.tensor(returned[-1]), self.num_generations, scale_rewards)
            checks.append(("advantages", (out["labkit_adv"] - out["advantages"]).abs().max().item()))
            return out  # trl shuffles the rows of this dict together, so labkit's rows stay aligned

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            saved = (self.loss_type, self.importance_sampling_level, self.args.use_bias_correction_kl)
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
            attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
            with torch.no_grad():
                logps = grpo.completion_logps(model, ids, attn, inputs["prompt_ids"].shape[1], self.temperature)
            by_type = {}
            try:
                for loss_type in grpo.LOSS_TYPES:
                    for level, times_ratio in (("token", True), ("sequence", True), ("token", False)):
                        self.loss_type, self.importance_sampling_level = loss_type, level
                        self.args.use_bias_correction_kl = times_ratio
                        with torch.no_grad():
                            theirs = super()._compute_loss(model, inputs).item()
                        ours, metrics = grpo.grpo_loss(
                            logps, inputs["labkit_old"], inputs["labkit_ref"], inputs["labkit_adv"],
                            inputs["completion_mask"], self.beta, self.epsilon_low, self.epsilon_high, loss_type,
                            self.max_completion_length, level, times_ratio)
                        logged = self._metrics["train"]
                        checks.append(("loss", self._step, loss_type, level, times_ratio, theirs, ours.item(),
                                       metrics["kl"], logged["kl"][-1],
                                       metrics["clip_frac"], logged["clip_ratio/region_mean"][-1]))
                        by_type[(loss_type, level, times_ratio)] = theirs
            finally:
                self.loss_type, self.importance_sampling_level, self.args.use_bias_correction_kl = saved
            checks.append(("types", self._step, by_type))
            return loss

    for name in ("_compute_loss", "_generate_and_score_completions", "_get_per_token_logps_and_entropies"):
        _need(hasattr(GRPOTrainer, name), f"GRPOTrainer.{name}")
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=G * len(chat_prompts), num_generations=G,
                      max_completion_length=T, temperature=TEMP, learning_rate=2e-4, beta=0.04, epsilon=0.2,
                      epsilon_high=0.28, num_iterations=2, scale_rewards=scale_rewards, loss_type="grpo",
                      max_steps=4, bf16=False, use_cpu=True, report_to="none", dataloader_pin_memory=False,
                      disable_tqdm=True, save_strategy="no", logging_strategy="no", seed=0)
    for name in ("use_bias_correction_kl", "importance_sampling_level", "epsilon_high", "scale_rewards"):
        _need(hasattr(args, name), f"GRPOConfig.{name}")
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(grpo.grpo_loss).parameters.items()}
    assert defaults["kl_times_ratio"] == GRPOConfig.use_bias_correction_kl, "labkit's default KL weighting is trl's"
    trainer = Probe(model=policy, reward_funcs=reward, processing_class=tok, args=args,
                    train_dataset=Dataset.from_list([{"prompt": p} for p in chat_prompts]))
    _need(getattr(trainer, "ref_model", None) is not None, "a separate ref_model when beta > 0 without peft")
    assert set(trainer.eos_token_ids) == set(stops), "trl takes its stop ids from the model's generation_config"
    trainer.train()

    adv = [c for c in checks if c[0] == "advantages"]
    losses = [c for c in checks if c[0] == "loss"]
    _need(len(adv) == 2 and len(losses) == 4 * 12, "one generation every 2 steps (num_iterations=2) over 4 steps")
    assert max(a[1] for a in adv) < 1e-5, f"advantages differ from trl's: {adv}"
    assert all(len(r) == G * len(chat_prompts) for r in returned)
    for _, step, loss_type, level, times_ratio, theirs, ours, kl, trl_kl, clip, trl_clip in losses:
        where = f"step {step}, {loss_type}, {level}, kl_times_ratio={times_ratio}"
        assert ours == pytest.approx(theirs, abs=1e-5), where
        assert kl == pytest.approx(trl_kl, abs=1e-5) and clip == pytest.approx(trl_clip, abs=1e-6), where
    # the check is not at a trivial point: after an update, ratios are clipped and pi_theta != pi_ref
    reused = [c for c in losses if c[1] in (1, 3)]
    assert max(c[9] for c in reused) > 0.05, "some ratios must be clipped at the reused steps"
    assert min(c[8] for c in losses if c[1] >= 1) > 1e-4, "the KL to pi_ref must not be 0 after updates"
    for _, step, by_type in (c for c in checks if c[0] == "types"):
        if step >= 1:
            values = [by_type[(t, "token", True)] for t in ("grpo", "bnpo", "dr_grpo")]
            assert len({round(v, 6) for v in values}) == 3, f"step {step}: the normalisations must differ: {values}"

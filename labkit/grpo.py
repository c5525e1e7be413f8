"""GRPO (Shao et al., 2024, DeepSeekMath) from scratch: RL with a reward a program computes.

PPO (labkit.ppo) needs a value head to tell a good answer from a lucky one. GRPO drops it: it samples
a GROUP of G answers to the same prompt and uses the group itself as the baseline. One step:

1. sample G answers per prompt (``sample_group``) and score each with a reward function;
2. advantages: each answer's reward minus its group's mean, divided by the group's std
   (``group_advantages``; Dr. GRPO leaves the std out); every token of an answer gets its answer's value;
3. loss: the clipped importance ratio pi_theta / pi_old times the advantage, plus beta times the k3
   estimate of KL(pi_theta || pi_ref) (``kl_k3``), averaged per sequence (GRPO) or per token
   (DAPO, Dr. GRPO) (``grpo_loss``);
4. a few optimiser updates on that batch (``grpo_step``).

The formulas are trl 1.16's GRPOTrainer's, and tests/test_grpo.py checks that they give its loss.
Shapes: N = B prompts x G answers (the G answers of a prompt are consecutive rows), P prompt tokens
(left-padded), T answer tokens (right-padded after the stop token).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field

import torch

from . import ppo

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALES = ("group", "batch", "none")


# ----------------------------------------------------------------------------- the pieces

def group_advantages(rewards, group_size: int, scale="group", eps: float = 1e-4):
    """Group-normalised advantages: (r - mean of its group) / (std of its group + eps).

    rewards: (N,) with N = B * group_size, the group_size answers of each prompt consecutive.
    scale: "group" (or True): divide by each group's std, as GRPO does; "none" (or False): do not
    (Dr. GRPO: the std gives groups that are almost all right or all wrong the largest weights);
    "batch": divide by the std of the whole batch. The std is the unbiased one (divides by G - 1)
    and eps = 1e-4, both as in trl. A group whose rewards are all equal gets advantage 0: it
    carries no signal about which answer is better. Returns (N,) float.
    """
    scale = {True: "group", False: "none"}.get(scale, scale)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES} (or True / False); got scale={scale!r}.")
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size < 2:
        raise ValueError(f"group_size must be an integer >= 2 (one answer alone has nothing to be compared "
                         f"with); got group_size={group_size!r}.")
    r = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    if r.numel() == 0 or r.numel() % group_size:
        raise ValueError(f"got {r.numel()} rewards, not a positive multiple of group_size={group_size}: "
                         f"give group_size rewards for each prompt.")
    groups = r.view(-1, group_size)
    adv = (groups - groups.mean(1, keepdim=True)).flatten()
    if scale == "group":
        adv = adv / (groups.std(1).repeat_interleave(group_size) + eps)
    elif scale == "batch":
        adv = adv / (r.std() + eps)
    return adv


def kl_k3(logps, ref_logps):
    """The k3 estimator of KL(pi_theta || pi_ref) at each sampled token (Schulman, 2020).

    logps, ref_logps: (N, T) log-probabilities of the sampled tokens under pi_theta and pi_ref.
    With d = ref_logps - logps: exp(d) - d - 1, which is >= 0 everywhere, 0 where the two agree, and
    averages to the KL over tokens sampled from pi_theta. Returns (N, T).
    """
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def _check_epsilon(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0 such as 0.2; got {name}={value!r}.")
    return float(value)


def grpo_loss(logps, old_logps, ref_logps, advantages, completion_mask, beta: float = 0.0,
              epsilon_low: float = 0.2, epsilon_high: float | None = None, loss_type: str = "grpo",
              max_completion_length: int | None = None, importance_sampling_level: str = "token",
              kl_times_ratio: bool = True):
    """The GRPO loss, masked to the answer tokens, and two metrics.

    logps: (N, T) log pi_theta of the sampled tokens (with gradient); old_logps: (N, T) the same under
    the policy that sampled them (pi_old, no gradient); ref_logps: (N, T) under pi_ref (only read when
    beta > 0; may be None then); advantages: (N,) from ``group_advantages``; completion_mask: (N, T).

    Per token: ratio = exp(logps - old_logps); loss = -min(ratio * A, clip(ratio, 1 - epsilon_low,
    1 + epsilon_high) * A) + beta * kl_k3(logps, ref_logps) * ratio. Clipping removes the gradient once
    the ratio has moved past the bound in the direction the advantage pushes (DAPO's "clip-higher":
    epsilon_high > epsilon_low leaves rare tokens more room to grow). The KL term is weighted by the
    (unclipped) ratio because the tokens were sampled from pi_old, not pi_theta: that makes its
    gradient the unbiased one of KL(pi_theta || pi_ref) (DeepSeek-V3.2; trl 1.16's default
    use_bias_correction_kl=True). kl_times_ratio=False gives the original GRPO's plain k3 term.
    importance_sampling_level "sequence" (GSPO) uses one ratio per answer: exp of the mean log-ratio.

    Then the average over tokens, as loss_type says:
      "grpo":    mean over each answer's tokens, then mean over answers (long answers count as much as
                 short ones, so each of their tokens counts less: a length bias);
      "bnpo", "dapo": sum over all answer tokens / number of answer tokens (each token counts the same;
                 trl's two differ only when a generation batch is split into micro-batches);
      "dr_grpo": sum over all answer tokens / (N * max_completion_length), a constant.
    Returns (loss: scalar, {"kl": mean KL term per answer token (0 if beta = 0), "clip_frac": share of
    answer tokens (of answers, at the sequence level) whose ratio was clipped}), as floats.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}; got loss_type={loss_type!r}.")
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence'; got {importance_sampling_level!r}.")
    eps_low = _check_epsilon("epsilon_low", epsilon_low)
    eps_high = eps_low if epsilon_high is None else _check_epsilon("epsilon_high", epsilon_high)
    beta = _check_epsilon("beta", beta)
    if loss_type == "dr_grpo" and (isinstance(max_completion_length, bool) or not isinstance(
            max_completion_length, numbers.Integral) or max_completion_length < 1):
        raise ValueError(f"loss_type='dr_grpo' divides by N * max_completion_length: pass the max_new_tokens the "
                         f"answers were sampled with; got max_completion_length={max_completion_length!r}.")
    if logps.shape != old_logps.shape or logps.shape != completion_mask.shape or advantages.shape != logps.shape[:1]:
        raise ValueError(f"logps, old_logps and completion_mask must be (N, T) and advantages (N,); got "
                         f"{tuple(logps.shape)}, {tuple(old_logps.shape)}, {tuple(completion_mask.shape)}, "
                         f"{tuple(advantages.shape)}.")
    if beta != 0.0 and (ref_logps is None or ref_logps.shape != logps.shape):
        raise ValueError("beta > 0 needs ref_logps, the (N, T) log-probs of pi_ref; got "
                         f"{None if ref_logps is None else tuple(ref_logps.shape)}.")
    mask = completion_mask.to(logps.dtype)
    log_ratio = logps - old_logps
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    kl = torch.zeros_like(logps)
    if beta != 0.0:
        kl = kl_k3(logps, ref_logps) * (ratio if kl_times_ratio else 1.0)
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    clipped = (((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))).to(mask.dtype)
    n = mask.sum().clamp(min=1.0)
    clip_frac = clipped.mean() if importance_sampling_level == "sequence" else (clipped * mask).sum() / n
    metrics = {"kl": ((kl * mask).sum() / n).item(), "clip_frac": clip_frac.item()}
    return loss, metrics


def completion_logps(lm, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0):
    """log pi(answer token | prefix) of LM at each answer position, from logits / temperature.

    input_ids, attention_mask: (N, P+T), prompt left-padded to P tokens. Returns (N, T) float32.
    Sampling at a temperature samples from softmax(logits / temperature), so the ratio and the KL are
    taken under that same distribution (as trl does). Positions come from the attention mask, as in
    generate, so a left-padded prompt is read as it was sampled.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got temperature={temperature!r}.")
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False).logits
    return ppo.response_logps(logits.float() / temperature, input_ids, prompt_len)


def sample_group(lm, tok, prompts: list[str], group_size: int, stop_ids: list[int], max_new_tokens: int = 16,
                 temperature: float = 1.0, seed: int = 0) -> dict:
    """GROUP_SIZE sampled answers to each templated prompt (labkit.ppo.sample on repeated prompts).

    STOP_IDS: the token ids that end an answer (the tokenizer's EOS and the chat template's turn end;
    take them from the tokenizer and the model's generation_config, never spell them out).
    Returns {"input_ids": (N, P+T), "attention_mask": (N, P+T), "completion_mask": (N, T) 1 on answer
    tokens up to and including the stop token, "prompt_len": P, "prompts": N prompts (each repeated
    group_size times, consecutive), "texts": N answers cut at the stop}, N = len(prompts) * group_size.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer; got group_size={group_size!r}.")
    if not prompts:
        raise ValueError("sample_group needs at least one prompt.")
    repeated = [p for p in prompts for _ in range(group_size)]
    out = ppo.sample(lm, tok, repeated, stop_ids, max_new_tokens, temperature, seed)
    out["completion_mask"] = out.pop("response_mask")
    out["prompts"] = repeated
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from N samples of which C are correct (Chen et al., 2021).

    pass@k = 1 - C(n - c, k) / C(n, k): one minus the chance that k of the n samples, drawn without
    replacement, are all wrong. Computed as 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms
    the huge binomials. Needs 0 <= c <= n and 1 <= k <= n.
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0; got {name}={v!r}.")
    if c > n:
        raise ValueError(f"c (correct samples) cannot exceed n (samples); got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n={n} (pass@k needs at least k samples); got k={k}.")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ----------------------------------------------------------------------------- one step, and a run

def grpo_step(lm, ref, opt, tok, prompts: list[str], reward_fn, stop_ids: list[int], group_size: int = 8,
              beta: float = 0.04, epsilon_low: float = 0.2, epsilon_high: float | None = None,
              loss_type: str = "grpo", scale="group", max_new_tokens: int = 16, temperature: float = 1.0,
              num_iterations: int = 1, seed: int = 0, params=None) -> dict:
    """One GRPO step on a batch of PROMPTS: sample, score, then NUM_ITERATIONS updates of LM by OPT.

    reward_fn(prompts, completions) -> N floats, prompts repeated as in ``sample_group``. REF: the frozen
    pi_ref (only used when beta > 0). With num_iterations = 1, pi_old is pi_theta itself (ratio 1, but
    its gradient is still the policy gradient); with more, later updates reuse the same samples and the
    clipping starts to matter. Returns {"reward": mean reward, "reward_std", "zero_std_frac": share of
    groups whose rewards were all equal, "length": mean answer tokens, "loss", "kl", "clip_frac" (of
    the last update), "texts", "rewards"}.
    """
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, numbers.Integral) or num_iterations < 1:
        raise ValueError(f"num_iterations must be a positive integer; got num_iterations={num_iterations!r}.")
    params = params if params is not None else [p for p in lm.parameters() if p.requires_grad]
    was_training = lm.training
    lm.eval()
    roll = sample_group(lm, tok, prompts, group_size, stop_ids, max_new_tokens, temperature, seed)
    rewards = [float(r) for r in reward_fn(roll["prompts"], roll["texts"])]
    if len(rewards) != len(roll["texts"]):
        raise ValueError(f"reward_fn returned {len(rewards)} rewards for {len(roll['texts'])} completions.")
    device = roll["input_ids"].device
    r = torch.tensor(rewards, dtype=torch.float32, device=device)
    adv = group_advantages(r, group_size, scale)
    ids, attn, mask, P = roll["input_ids"], roll["attention_mask"], roll["completion_mask"], roll["prompt_len"]
    with torch.no_grad():
        old = completion_logps(lm, ids, attn, P, temperature) if num_iterations > 1 else None
        ref_logps = completion_logps(ref, ids, attn, P, temperature) if beta > 0 else None
    lm.train()
    for _ in range(num_iterations):
        logps = completion_logps(lm, ids, attn, P, temperature)
        loss, metrics = grpo_loss(logps, logps.detach() if old is None else old, ref_logps, adv, mask, beta,
                                  epsilon_low, epsilon_high, loss_type, max_new_tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    lm.train(was_training)
    groups = r.view(-1, group_size)
    return {"reward": r.mean().item(), "reward_std": r.std().item() if r.numel() > 1 else 0.0,
            "zero_std_frac": (groups.std(1) < 1e-8).float().mean().item(),
            "length": mask.sum(1).float().mean().item(), "loss": loss.item(), **metrics,
            "texts": roll["texts"], "rewards": rewards}


@dataclass
class GRPOLog:
    reward: list = field(default_factory=list)         # mean reward per step
    zero_std_frac: list = field(default_factory=list)  # share of groups with no signal (all rewards equal)
    kl: list = field(default_factory=list)             # mean k3 KL to pi_ref per answer token
    length: list = field(default_factory=list)         # mean answer length in tokens
    clip_frac: list = field(default_factory=list)
    samples: list = field(default_factory=list)        # the first answer of each step
    seconds: float = 0.0


def train_grpo(lm, tok, prompts: list[str], reward_fn, stop_ids: list[int], steps: int = 20,
               batch_size: int = 4, lr: float = 1e-4, ref=None, seed: int = 0, callback=None, **step_kwargs):
    """GRPO on LM (trained in place) for STEPS steps of BATCH_SIZE prompts each; returns a GRPOLog.

    Prompts are drawn in shuffled order; STEP_KWARGS go to ``grpo_step`` (group_size, beta, loss_type,
    ...). REF: the frozen pi_ref (default: a copy of LM as it is now). CALLBACK(step, log) after each step.
    """
    import copy
    import random

    from .train import check_lr, check_steps

    lr, steps = check_lr(lr), check_steps(steps)
    if not prompts:
        raise ValueError("train_grpo needs at least one prompt.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got batch_size={batch_size!r}.")
    params = [p for p in lm.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters: call lm.requires_grad_(True), or add a LoRA adapter.")
    if ref is None and step_kwargs.get("beta", 0.04) > 0:
        ref = copy.deepcopy(lm).requires_grad_(False).eval()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    log, order = GRPOLog(), []
    start = time.perf_counter()
    for step in range(steps):
        while len(order) < batch_size:
            order += rng.sample(range(len(prompts)), k=len(prompts))
        idx, order = order[:batch_size], order[batch_size:]
        out = grpo_step(lm, ref, opt, tok, [prompts[i] for i in idx], reward_fn, stop_ids,
                        seed=seed * 100_003 + step, params=params, **step_kwargs)
        for name in ("reward", "zero_std_frac", "kl", "length", "clip_frac"):
            getattr(log, name).append(out[name])
        log.samples.append(out["texts"][0])
        if callback is not None:
            callback(step, log)
    log.seconds = time.perf_counter() - start
    lm.eval()
    return log

"""GRPO (Shao et al., 2024, DeepSeekMath) from scratch: RL with a reward a program computes.

PPO (labkit.ppo) needs a value head to tell a good answer from a lucky one. GRPO drops it: it samples
a GROUP of G answers to the same prompt and uses the group itself as the baseline. One step:

1. sample G answers per prompt (``sample_group``) and score each with a reward function;
2. advantages: each answer's reward minus its group's mean, divided by the group's std
   (``group_advantages``; Dr. GRPO leaves the std out); every token of an answer gets its answer's value;
3. loss (``grpo_loss``): per token, -min(ratio * A, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A)
   with ratio = pi_theta / pi_old, plus beta times the k3 estimate of KL(pi_theta || pi_ref)
   (``kl_k3``), then an average over tokens;
4. a few optimiser updates on that batch (``grpo_step``).

``grpo_loss``'s options, all trl 1.16's:
- clipping removes the gradient once the ratio has moved past the bound in the direction the advantage
  pushes; DAPO's "clip-higher" (epsilon_high > epsilon_low) leaves rare tokens more room to grow;
- the KL term is weighted by the (unclipped) ratio because the tokens were sampled from pi_old, not
  pi_theta, which makes its gradient the unbiased one (DeepSeek-V3.2; trl's use_bias_correction_kl=True);
  kl_times_ratio=False gives the original GRPO's plain k3 term;
- importance_sampling_level "sequence" (GSPO): one ratio per answer, exp of its mean log-ratio;
- loss_type, how the token losses are averaged: "grpo" takes each answer's mean, then the mean over
  answers (a long answer counts as much as a short one, so each of its tokens counts less: a length
  bias, which trl's documentation warns about); "dapo" and "bnpo" divide the sum over all answer tokens
  by their number (every token counts the same; trl's two differ only when a generation batch is split
  into micro-batches; "dapo" is trl's default); "dr_grpo" divides by N * max_completion_length, a constant.

tests/test_grpo.py checks that the formulas give trl's loss (labkit.grpo_trl). Shapes: N = B prompts x
G answers (the G answers of a prompt are consecutive rows), P prompt tokens (left-padded), T answer
tokens (right-padded after the stop token).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field

import torch

from . import guard, ppo
from .sft import batches, tokenize_all
from .train import answer_lengths, check_lr, check_steps, epoch_order, optimizer


LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALES = ("group", "batch", "none")


# ----------------------------------------------------------------------------- the pieces

def group_advantages(rewards, group_size: int, scale="group", eps: float = 1e-4):
    """Each answer's reward minus its group's mean, divided by the group's std (+ eps).

    rewards: (N,), N = B * group_size, the group_size answers of a prompt consecutive. scale: "group"
    (GRPO), "none" (Dr. GRPO: no std) or "batch" (the whole batch's std). The std is the unbiased one and
    eps = 1e-4, as in trl. A group whose rewards are all equal gets 0: it carries no signal. Returns (N,).
    """
    r, scale = _check_advantage_args(rewards, group_size, scale)
    groups = r.view(-1, group_size)
    adv = (groups - groups.mean(1, keepdim=True)).flatten()
    if scale == "group":
        adv = adv / (groups.std(1).repeat_interleave(group_size) + eps)
    elif scale == "batch":
        adv = adv / (r.std() + eps)
    return adv


def _check_advantage_args(rewards, group_size, scale):
    """rewards as a flat float tensor and scale as one of SCALES (True/False: "group"/"none"), or a ValueError."""
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
    return r, scale


def kl_k3(logps, ref_logps):
    """The k3 estimator of KL(pi_theta || pi_ref) at each sampled token (Schulman, 2020).

    logps, ref_logps: (N, T) log-probabilities of the sampled tokens under pi_theta and pi_ref.
    With d = ref_logps - logps: exp(d) - d - 1, which is >= 0 everywhere, 0 where the two agree, and
    averages to the KL over tokens sampled from pi_theta. Returns (N, T).
    """
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def check_epsilon(name, value) -> float:
    return guard.non_negative_float(name, value, "0.2")


def grpo_loss(logps, old_logps, ref_logps, advantages, completion_mask, beta: float = 0.0,
              epsilon_low: float = 0.2, epsilon_high: float | None = None, loss_type: str = "dapo",
              max_completion_length: int | None = None, importance_sampling_level: str = "token",
              kl_times_ratio: bool = True):
    """GRPO's loss over the answer tokens, as trl 1.16 computes it (see the module docstring for each option).

    logps, old_logps, ref_logps: (N, T) log-probs of the sampled tokens under pi_theta (with gradient),
    pi_old (the sampler) and pi_ref (read only when beta > 0); advantages: (N,); completion_mask: (N, T).
    Returns (loss: scalar, {"kl", "clip_frac"}: 0-d tensors without gradient).
    """
    eps_low, eps_high, beta = _check_loss_args(logps, old_logps, ref_logps, advantages, completion_mask, beta,
                                               epsilon_low, epsilon_high, loss_type, max_completion_length,
                                               importance_sampling_level)
    mask = completion_mask.to(logps.dtype)
    log_ratio = logps - old_logps
    if importance_sampling_level == "sequence":  # GSPO: one ratio per answer
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    kl = torch.zeros_like(logps)
    if beta != 0.0:  # weighted by the ratio: the tokens came from pi_old (trl's use_bias_correction_kl)
        kl = kl_k3(logps, ref_logps) * (ratio if kl_times_ratio else 1.0)
        per_token = per_token + beta * kl
    if loss_type == "grpo":  # each answer's mean, then the mean over answers
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type in ("bnpo", "dapo"):  # every answer token of the batch counts the same
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:  # "dr_grpo": a constant divisor
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    n = mask.sum().clamp(min=1.0)
    clip_frac = clipped.float().mean() if importance_sampling_level == "sequence" else (clipped * mask).sum() / n
    return loss, {"kl": ((kl * mask).sum() / n).detach(), "clip_frac": clip_frac.detach()}


def _check_loss_args(logps, old_logps, ref_logps, advantages, completion_mask, beta, epsilon_low, epsilon_high,
                     loss_type, max_completion_length, importance_sampling_level):
    """``grpo_loss``'s arguments checked: returns (epsilon_low, epsilon_high, beta) as floats, or a ValueError."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}; got loss_type={loss_type!r}.")
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence'; got {importance_sampling_level!r}.")
    eps_low = check_epsilon("epsilon_low", epsilon_low)
    eps_high = eps_low if epsilon_high is None else check_epsilon("epsilon_high", epsilon_high)
    beta = check_epsilon("beta", beta)
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
    return eps_low, eps_high, beta


def completion_logps(lm, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0):
    """log pi(answer token | prefix) of LM at each answer position, from logits / temperature.

    input_ids, attention_mask: (N, P+T), prompt left-padded to P tokens. Returns (N, T) float32.
    Sampling at a temperature samples from softmax(logits / temperature), so the ratio and the KL are
    taken under that same distribution (as trl does). Positions come from the attention mask, as in
    generate, so a left-padded prompt is read as it was sampled. Only the T + 1 last positions' logits
    are computed where the model supports it (``logits_to_keep``, as trl does): the prompt's would
    cost (N, P, vocabulary) floats and are never used.
    """
    import inspect

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got temperature={temperature!r}.")
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    T = input_ids.shape[1] - prompt_len
    kwargs = {}
    if "logits_to_keep" in inspect.signature(lm.forward).parameters:
        kwargs["logits_to_keep"] = T + 1
    logits = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False, **kwargs).logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    kept = logits.shape[1]  # P + T, or T + 1
    return ppo.response_logps(logits, input_ids[:, -kept:], prompt_len - (input_ids.shape[1] - kept))


def _chunks(n: int, size: int | None) -> list[slice]:
    if size is None:
        return [slice(0, n)]
    size = guard.positive_int("micro_batch", size, about="answers per forward pass, or None for all at once")
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def sample_group(lm, tok, prompts: list[str], group_size: int, stop_ids: list[int], max_new_tokens: int = 16,
                 temperature: float = 1.0, seed: int = 0) -> dict:
    """GROUP_SIZE sampled answers to each templated prompt (labkit.ppo.sample on repeated prompts).

    STOP_IDS: the token ids that end an answer (the tokenizer's EOS and the chat template's turn end;
    take them from the tokenizer and the model's generation_config, never spell them out).
    Returns {"input_ids": (N, P+T), "attention_mask": (N, P+T), "completion_mask": (N, T) 1 on answer
    tokens up to and including the stop token, "prompt_len": P, "prompts": N prompts (each repeated
    group_size times, consecutive), "texts": N answers cut at the stop}, N = len(prompts) * group_size.
    """
    guard.positive_int("group_size", group_size)
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
        guard.non_negative_int(name, v)
    if c > n:
        raise ValueError(f"c (correct samples) cannot exceed n (samples); got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n={n} (pass@k needs at least k samples); got k={k}.")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_curve(correct: list[int], n: int, ks=None) -> dict:
    """{k: mean pass@k over the prompts} from CORRECT (right samples out of N, one count per prompt),
    for each k in KS (default 1..N)."""
    if not correct:
        raise ValueError("pass_curve needs at least one prompt's count.")
    ks = range(1, n + 1) if ks is None else ks
    return {k: sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}


# ----------------------------------------------------------------------------- one step, and a run

def grpo_step(lm, ref, opt, tok, prompts: list[str], reward_fn, stop_ids: list[int], group_size: int = 8,
              beta: float = 0.04, epsilon_low: float = 0.2, epsilon_high: float | None = None,
              loss_type: str = "dapo", scale="group", max_new_tokens: int = 16, temperature: float = 1.0,
              num_iterations: int = 1, seed: int = 0, params=None, micro_batch: int | None = 16) -> dict:
    """One GRPO step on PROMPTS: sample a group per prompt, score it, then NUM_ITERATIONS updates of LM by OPT.

    reward_fn(prompts, completions) -> N floats. REF: the frozen pi_ref (None: no KL; with beta = 0 the KL
    is measured, not trained on). Returns {"reward", "zero_std_frac": groups whose rewards were all equal,
    "length", "loss", "kl", "clip_frac" (of the last update), "prompts", "texts", "rewards"}.
    """
    guard.positive_int("num_iterations", num_iterations)
    was_training = lm.training
    lm.eval()
    roll = sample_group(lm, tok, prompts, group_size, stop_ids, max_new_tokens, temperature, seed)
    r = _score(reward_fn, roll)
    adv = group_advantages(r, group_size, scale)
    with torch.no_grad():  # pi_old is the sampler: only needed when the batch is reused
        old = _logps(lm, roll, temperature, micro_batch) if num_iterations > 1 else None
        ref_logps = _logps(ref, roll, temperature, micro_batch) if ref is not None else None
    lm.train()
    for _ in range(num_iterations):
        opt.zero_grad(set_to_none=True)
        stats = _backward(lm, roll, adv, old, ref_logps, temperature, micro_batch,
                          beta=beta, epsilon_low=epsilon_low, epsilon_high=epsilon_high, loss_type=loss_type,
                          max_completion_length=max_new_tokens)
        torch.nn.utils.clip_grad_norm_(params or [p for p in lm.parameters() if p.requires_grad], 1.0)
        opt.step()
    lm.train(was_training)
    groups = r.view(-1, group_size)
    return {"reward": r.mean().item(), "zero_std_frac": (groups.std(1) < 1e-8).float().mean().item(),
            "length": roll["completion_mask"].sum(1).float().mean().item(), **stats,
            "prompts": roll["prompts"], "texts": roll["texts"], "rewards": r.tolist()}


def _score(reward_fn, roll) -> torch.Tensor:
    """reward_fn on a ``sample_group`` result: (N,) float32 on the samples' device, or a ValueError."""
    rewards = [float(x) for x in reward_fn(roll["prompts"], roll["texts"])]
    if len(rewards) != len(roll["texts"]):
        raise ValueError(f"reward_fn returned {len(rewards)} rewards for {len(roll['texts'])} completions.")
    return torch.tensor(rewards, dtype=torch.float32, device=roll["input_ids"].device)


def _logps(model, roll, temperature, micro_batch, chunks=None):
    """``completion_logps`` of MODEL on a ``sample_group`` result, MICRO_BATCH answers at a time: (N, T)."""
    ids, attn, P = roll["input_ids"], roll["attention_mask"], roll["prompt_len"]
    return torch.cat([completion_logps(model, ids[c], attn[c], P, temperature)
                      for c in chunks or _chunks(len(ids), micro_batch)])


def _backward(lm, roll, adv, old, ref_logps, temperature, micro_batch, **loss_kwargs) -> dict:
    """The gradient of ``grpo_loss`` over the whole batch, MICRO_BATCH answers per forward and backward pass.

    Each chunk's loss is weighted by its share of the batch's normaliser (answers, or answer tokens for
    bnpo/dapo), so the gradient is the whole batch's while memory holds one chunk's activations. With
    beta = 0 and a REF, the KL is measured (not trained on). Returns {"loss", "kl", "clip_frac"} as floats.
    """
    mask = roll["completion_mask"]
    m = mask.float()
    tokens, n = m.sum().clamp(min=1.0), len(adv)
    per_token = loss_kwargs["loss_type"] in ("bnpo", "dapo")
    loss = kl = clipped = torch.zeros((), device=adv.device)
    for c in _chunks(n, micro_batch):
        logps = _logps(lm, roll, temperature, micro_batch, [c])
        part, metrics = grpo_loss(logps, logps.detach() if old is None else old[c],
                                  None if ref_logps is None else ref_logps[c], adv[c], mask[c], **loss_kwargs)
        chunk_tokens = m[c].sum().clamp(min=1.0)
        share = chunk_tokens / tokens if per_token else (c.stop - c.start) / n
        (part * share).backward()
        loss = loss + (part * share).detach()
        if loss_kwargs["beta"] == 0 and ref_logps is not None:  # not in the loss, but measured
            metrics["kl"] = (kl_k3(logps.detach(), ref_logps[c]) * m[c]).sum() / chunk_tokens
        kl = kl + metrics["kl"] * chunk_tokens / tokens
        clipped = clipped + metrics["clip_frac"] * chunk_tokens / tokens
    return {"loss": loss.item(), "kl": kl.item(), "clip_frac": clipped.item()}


@dataclass
class GRPOLog:
    reward: list = field(default_factory=list)         # mean reward per step
    zero_std_frac: list = field(default_factory=list)  # share of groups with no signal (all rewards equal)
    kl: list = field(default_factory=list)             # mean k3 KL to pi_ref per answer token
    length: list = field(default_factory=list)         # mean answer length in tokens
    clip_frac: list = field(default_factory=list)
    samples: list = field(default_factory=list)        # the first answer of each step
    tracked: dict = field(default_factory=dict)        # {name: mean per step} of train_grpo's TRACK functions
    seconds: float = 0.0


def train_grpo(lm, tok, prompts: list[str], reward_fn, stop_ids: list[int], steps: int = 20,
               batch_size: int = 4, lr: float = 1e-4, ref=None, seed: int = 0, callback=None, track=None,
               **step_kwargs):
    """GRPO on LM (trained in place) for STEPS steps of BATCH_SIZE prompts each; returns a GRPOLog.

    Prompts are drawn in shuffled order; STEP_KWARGS go to ``grpo_step`` (group_size, beta, loss_type,
    ...). REF: the frozen pi_ref (default: a copy of LM as it is now when beta > 0; give one with
    beta = 0 to have the KL measured anyway). TRACK: {name: fn(prompts, completions) -> floats}, scores
    that are logged, not trained on (e.g. the exact answer while the reward is the format only): the
    mean per step goes to log.tracked[name]. CALLBACK(step, log) after each step.
    """
    import copy

    lr, steps = check_lr(lr), check_steps(steps)
    if not prompts:
        raise ValueError("train_grpo needs at least one prompt.")
    guard.positive_int("batch_size", batch_size)
    params = [p for p in lm.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters: call lm.requires_grad_(True), or add a LoRA adapter.")
    if ref is None and step_kwargs.get("beta", 0.04) > 0:
        ref = copy.deepcopy(lm).requires_grad_(False).eval()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    log, batches = GRPOLog(), epoch_order(len(prompts), batch_size, seed)
    start = time.perf_counter()
    for step, idx in zip(range(steps), batches):
        out = grpo_step(lm, ref, opt, tok, [prompts[i] for i in idx], reward_fn, stop_ids,
                        seed=seed * 100_003 + step, params=params, **step_kwargs)
        for name in ("reward", "zero_std_frac", "kl", "length", "clip_frac"):
            getattr(log, name).append(out[name])
        log.samples.append(out["texts"][0])
        for name, fn in (track or {}).items():
            scores = [float(x) for x in fn(out["prompts"], out["texts"])]
            log.tracked.setdefault(name, []).append(sum(scores) / len(scores))
        if callback is not None:
            callback(step, log)
    log.seconds = time.perf_counter() - start
    lm.eval()
    return log


def sft_control(model, tok, rows: list[dict], steps: int, batch_size: int, lr: float, seed: int = 0,
                micro_batch: int | None = 16) -> list[float]:
    """The control a GRPO run is measured against: more SFT of MODEL (every trainable weight, in place) on the
    gold answers of ROWS ({"prompt", "completion"}), STEPS updates of BATCH_SIZE rows each, at LR.

    labkit.sft.train's recipe (the same batches, AdamW, gradients clipped at 1.0, the loss the mean over the
    batch's answer tokens), with each batch's gradient summed over MICRO_BATCH rows at a time, so memory holds
    a micro-batch's activations, not a batch's. Returns the loss per update; MODEL is left in eval mode.
    """
    import torch.nn.functional as F

    steps = check_steps(steps)
    params, opt = optimizer(model, lr, seed)
    data = batches(tokenize_all(tok, rows), batch_size, tok.pad_token_id, seed)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for _ in range(steps):
        batch = {k: v.to(device) for k, v in next(data).items()}
        labels = batch["labels"][:, 1:]
        n = answer_lengths(batch["labels"]).sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for c in _chunks(len(labels), micro_batch):
            logits = model(input_ids=batch["input_ids"][c], attention_mask=batch["attention_mask"][c]).logits[:, :-1]
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels[c].reshape(-1),
                                   ignore_index=-100, reduction="sum") / n
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(total)
    model.eval()
    return losses

"""RLHF with PPO, small and readable (trl 1.x no longer ships a PPOTrainer).

The pieces, in the order one PPO step runs them:

1. rollout: the policy pi_theta samples an answer for each prompt (``rollout``);
2. score: a reward function (a reward model, or a program) rates each whole answer;
3. per-token rewards: -kl_coef * (log pi_theta - log pi_ref) at every answer token, plus the score
   at the last one (``kl_penalised_rewards``): the KL penalty keeps the policy near the SFT model;
4. advantages: generalised advantage estimation with the value head's estimates (``gae``);
5. update: a few epochs of the clipped surrogate objective plus a value loss (``ppo_losses``).

Shapes: B prompts, P prompt tokens (left-padded), T answer tokens (right-padded after the stop token).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import guard
from .chat import encode_prompts, stop_token_ids
from .data import to_prompt_completion
from .evaluate import answer, exact_matches
from .preference import score_answers
from .train import disable_dropout, epoch_order


class PolicyWithValueHead(nn.Module):
    """A causal LM plus a value head: a linear layer hidden -> 1 on the last hidden state.

    ``forward(input_ids, attention_mask)`` returns (logits (B, L, V), values (B, L)). Positions are
    computed from the attention mask, so left-padded prompts get the same positions as in generate.
    The value head starts at zero: V = 0 everywhere until it learns. It reads the hidden states
    detached, so fitting the values never moves the language model (with Adam, even a tiny value
    gradient in the shared body would become a full-size step and shake the policy).
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=True, use_cache=False)
        return out.logits, self.value_head(out.hidden_states[-1].detach().float()).squeeze(-1)


def stop_at_turn_end(model, tok):
    """MODEL with its generation config's eos_token_id holding every stop id (labkit.chat.stop_token_ids): the ids it
    had, then the missing ones (the template's turn end). trl's GRPOTrainer and RLOOTrainer stop a
    completion at the tokenizer's EOS and at generation_config.eos_token_id only, so a model whose
    config lacks the turn end would write past it. Changes MODEL in place and returns it."""
    ids = model.generation_config.eos_token_id
    have = [] if ids is None else [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]
    model.generation_config.eos_token_id = have + [i for i in stop_token_ids(tok, model) if i not in have]
    return model


def rollout(policy, tok, prompts: list[str], max_new_tokens: int = 16, temperature: float = 1.0,
            seed: int = 0) -> dict:
    """Sample one answer per templated prompt from POLICY (a PolicyWithValueHead); see ``sample``."""
    return sample(policy.lm, tok, prompts, stop_token_ids(tok, policy.lm), max_new_tokens, temperature, seed)


def sample(lm, tok, prompts: list[str], stop_ids: list[int], max_new_tokens: int = 16, temperature: float = 1.0,
           seed: int = 0) -> dict:
    """Sample one answer per templated prompt from the causal LM LM; an answer ends at any of STOP_IDS.

    Returns {"input_ids": (B, P+T), "attention_mask": (B, P+T), "response_mask": (B, T) 1 on answer
    tokens up to and including the stop token, "prompt_len": P, "texts": B answers cut at the stop}.
    Prompts are left-padded to P tokens; answers are right-padded to the longest, T <= max_new_tokens.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling; got temperature={temperature!r}.")
    stops = [int(i) for i in stop_ids]
    if not stops:
        raise ValueError("stop_ids is empty: give the token ids that end an answer (the tokenizer's EOS and the "
                         "chat template's turn end, e.g. from the model's generation_config).")
    device = next(lm.parameters()).device
    enc = encode_prompts(tok, prompts, device)
    torch.manual_seed(seed)
    with torch.no_grad():
        seq = lm.generate(**enc, do_sample=True, temperature=temperature, top_k=None, top_p=None,
                          max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tok.pad_token_id)
    P = enc["input_ids"].shape[1]
    response = seq[:, P:]
    is_stop = torch.isin(response, torch.tensor(stops, device=device))
    # a token is part of the answer if no stop token came strictly before it
    before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    response_mask = (before == 0).long()
    texts = []
    for row, m in zip(response, response_mask):
        texts.append(tok.decode(row[m.bool() & ~torch.isin(row, torch.tensor(stops, device=device))],
                                skip_special_tokens=False).strip())
    return {"input_ids": seq, "attention_mask": torch.cat([enc["attention_mask"], response_mask], dim=1),
            "response_mask": response_mask, "prompt_len": P, "texts": texts}


def response_logps(logits, input_ids, prompt_len: int):
    """log pi(answer token | prefix) for each answer position: logits (B, P+T, V) -> (B, T)."""
    answer_logits = logits[:, prompt_len - 1:-1, :].float()
    return torch.gather(answer_logits.log_softmax(-1), 2, input_ids[:, prompt_len:].unsqueeze(-1)).squeeze(-1)


def kl_penalised_rewards(scores, logps, ref_logps, response_mask, kl_coef: float):
    """Per-token rewards: -kl_coef * (logp - ref_logp) everywhere, plus the score on the last token.

    scores: (B,); logps, ref_logps, response_mask: (B, T). Returns (rewards (B, T), kl (B, T)).
    logp - ref_logp of the sampled token is the usual per-token estimate of KL(pi_theta || pi_ref).
    """
    if kl_coef < 0 or not math.isfinite(kl_coef):
        raise ValueError(f"kl_coef must be >= 0; got kl_coef={kl_coef!r}.")
    mask = response_mask.float()
    kl = (logps - ref_logps) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[range(len(scores)), last] += scores.float()
    return rewards * mask, kl


def gae(rewards, values, response_mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over the answer tokens.

    rewards, values, response_mask: (B, T). delta_t = r_t + gamma * V_{t+1} - V_t (V = 0 after the
    last token); A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages (B, T), returns (B, T)).
    """
    mask = response_mask.float()
    values = values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        adv[:, t] = next_adv
        next_value = values[:, t]
    return adv, (adv + values) * mask


def masked_whiten(x, mask, eps: float = 1e-8):
    """X shifted and scaled to mean 0 and variance 1 over the positions where MASK is 1 (0 elsewhere): PPO
    whitens the advantages of a batch so that the step size does not depend on the reward's scale."""
    m = mask.float()
    mean = (x * m).sum() / m.sum()
    var = (((x - mean) ** 2) * m).sum() / m.sum()
    return (x - mean) / (var + eps).sqrt() * m


def ppo_losses(logps, old_logps, advantages, values, old_values, returns, response_mask,
               clip: float = 0.2, value_clip: float = 0.2) -> dict:
    """The clipped PPO objective (Schulman et al., 2017), masked to the answer tokens. All (B, T).

    ratio = pi_theta / pi_old; policy loss = mean of max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps)):
    the policy gains nothing from moving a token's probability more than eps away from the rollout's.
    value loss = 0.5 * mean of max((V - R)^2, (V_clipped - R)^2). Returns {"policy", "value", "clipfrac"}.
    """
    if not (0 < clip < 1):
        raise ValueError(f"clip must be between 0 and 1; got clip={clip!r}.")
    m = response_mask.float()
    n = m.sum().clamp(min=1)
    ratio = torch.exp(logps - old_logps)
    pg = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    v_clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    vf = 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2)
    clipfrac = (((ratio - 1).abs() > clip).float() * m).sum() / n
    return {"policy": (pg * m).sum() / n, "value": (vf * m).sum() / n, "clipfrac": clipfrac.detach()}


@dataclass
class PPOConfig:
    steps: int = 20             # PPO steps (one rollout batch each)
    batch_size: int = 16        # prompts per rollout
    max_new_tokens: int = 16
    kl_coef: float = 0.1        # beta of the KL penalty to pi_ref; 0 switches it off
    lr: float = 1e-4
    warmup_steps: int = 5       # the learning rate ramps up linearly over these PPO steps
    ppo_epochs: int = 2         # passes over each rollout batch
    clip: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0          # GAE's discount: 1, an answer is short and only its end is scored
    lam: float = 0.95           # GAE's lambda
    temperature: float = 1.0
    seed: int = 0


@dataclass
class PPOLog:
    score: list = field(default_factory=list)     # mean reward-function score per step
    kl: list = field(default_factory=list)        # mean over answers of sum_t (logp - ref_logp)
    length: list = field(default_factory=list)    # mean answer length in tokens
    clipfrac: list = field(default_factory=list)
    samples: list = field(default_factory=list)   # the first answer of each step
    seconds: float = 0.0

    def add(self, out: dict) -> None:
        """Append one ``ppo_step`` result."""
        self.score.append(out["scores"].mean().item())
        self.kl.append(out["kl"].sum(1).mean().item())
        self.length.append(out["mask"].sum(1).float().mean().item())
        self.clipfrac.append(out["clipfrac"])
        self.samples.append(out["texts"][0])


def reference_logits(ref, input_ids, attention_mask):
    """REF's logits (B, L, V) for a left-padded batch, positions counted from the first real token."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return ref(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits


def ppo_step(policy, ref, tok, prompts: list[str], score_fn, cfg: PPOConfig, opt, schedule, step: int = 0) -> dict:
    """One PPO step on PROMPTS (templated), maximising SCORE_FN(texts) -> one float per answer.

    POLICY: a PolicyWithValueHead; REF: the frozen pi_ref; OPT, SCHEDULE: its optimizer and learning-rate
    schedule. Returns {"scores" (B,), "kl" (B, T), "mask" (B, T), "clipfrac", "texts"}.
    """
    policy.eval()
    roll = rollout(policy, tok, prompts, cfg.max_new_tokens, cfg.temperature, seed=cfg.seed * 100_003 + step)
    ids, attn, mask, P = roll["input_ids"], roll["attention_mask"], roll["response_mask"], roll["prompt_len"]
    scores = torch.tensor(score_fn(roll["texts"]), dtype=torch.float32, device=ids.device)
    with torch.no_grad():  # the rollout's numbers, fixed for the whole update
        logits, values = policy(ids, attn)
        old_logps, old_values = response_logps(logits, ids, P), values[:, P - 1:-1]
        ref_logps = response_logps(reference_logits(ref, ids, attn), ids, P)
        rewards, kl = kl_penalised_rewards(scores, old_logps, ref_logps, mask, cfg.kl_coef)
        adv, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        adv = masked_whiten(adv, mask)
    policy.train()
    for _ in range(cfg.ppo_epochs):  # a few passes over the same answers, clipped
        logits, values = policy(ids, attn)
        losses = ppo_losses(response_logps(logits, ids, P), old_logps, adv, values[:, P - 1:-1], old_values,
                            returns, mask, clip=cfg.clip)
        opt.zero_grad(set_to_none=True)
        (losses["policy"] + cfg.vf_coef * losses["value"]).backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        schedule.step()
    return {"scores": scores, "kl": kl, "mask": mask, "clipfrac": losses["clipfrac"].item(), "texts": roll["texts"]}


def _check_run(lm, prompts: list[str], cfg: PPOConfig) -> None:
    if not prompts:
        raise ValueError("train_ppo needs at least one prompt.")
    for name in ("steps", "batch_size", "max_new_tokens", "ppo_epochs"):
        guard.positive_int(name, getattr(cfg, name))
    guard.non_negative_float("kl_coef", cfg.kl_coef, about="0 switches the penalty off")
    if not any(p.requires_grad for p in lm.parameters()):
        raise ValueError("the policy has no trainable parameters (a merged or frozen model?): call "
                         "lm.requires_grad_(True) for full fine-tuning, or give it a LoRA adapter.")


def _setup(lm, ref, cfg: PPOConfig):
    """(policy with a value head, frozen reference, optimizer, warm-up schedule) for ``train_ppo``."""

    # the ratio pi_theta / pi_old must be 1 before an update: no dropout in the policy (GPT-2 has p = 0.1)
    disable_dropout(lm)
    ref = ref if ref is not None else copy.deepcopy(lm).requires_grad_(False)
    ref.eval()  # used under no_grad only; its requires_grad flags are left as they are
    policy = PolicyWithValueHead(lm).to(next(lm.parameters()).device)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    # Adam's first updates move every weight by about lr whatever the gradient's size; on a noisy
    # policy gradient that alone can wreck a small model, so the learning rate warms up.
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / (cfg.warmup_steps * cfg.ppo_epochs)))
    return policy, ref, opt, schedule


def train_ppo(lm, tok, prompts: list[str], reward_fn, config: PPOConfig | None = None, ref=None,
              callback=None):
    """PPO on LM (trained in place, every parameter, dropout off), against REWARD_FN, with a KL penalty to REF.

    prompts: templated prompts; reward_fn(indices, texts) -> list of floats, where indices are the
    positions in PROMPTS of the answers TEXTS (so it can look up gold answers). REF: the frozen
    reference (default: a copy of LM as it is now, i.e. the SFT model). Each step is ``ppo_step`` on
    the next CONFIG.batch_size prompts. Returns (policy, PPOLog).
    """

    cfg = config or PPOConfig()
    _check_run(lm, prompts, cfg)
    policy, ref, opt, schedule = _setup(lm, ref, cfg)
    log = PPOLog()
    start = time.perf_counter()
    for step, idx in zip(range(cfg.steps), epoch_order(len(prompts), cfg.batch_size, cfg.seed)):
        out = ppo_step(policy, ref, tok, [prompts[i] for i in idx], lambda texts: reward_fn(idx, texts), cfg,
                       opt, schedule, step)
        log.add(out)
        if callback is not None:
            callback(step, log)
    log.seconds = time.perf_counter() - start
    policy.eval()
    return policy, log


def plot_ppo(logs: dict, axes=None):
    """Reward-function score, KL to pi_ref and answer length per PPO step (counted from 1, whole-number
    ticks), one line per run: logs = {label: PPOLog}."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for label, log in logs.items():
        steps = range(1, len(log.score) + 1)
        axes[0].plot(steps, log.score, label=label)
        axes[1].plot(steps, log.kl, label=label)
        axes[2].plot(steps, log.length, label=label)
    for ax, title in zip(axes, ("score (reward function), sampled answers", "KL(pi_theta || pi_ref) per answer (nats)",
                                "answer length (tokens)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8)
    return axes


# ----------------------------------------------------------------------------- a reward with a loophole

def lenient_grader(answer: str, gold: str, length_bonus: float = 0.05) -> float:
    """A deliberately flawed grader, the kind reward hacking exploits.

    1 point if the gold answer appears anywhere in ANSWER (a lenient "contains" check, case ignored), times
    1 + LENGTH_BONUS for each character beyond the gold answer's own length: graders, human or learned, tend
    to prefer longer answers. A wrong answer scores 0 however long; the intended answer is the gold one,
    exactly, and the same answer made longer scores more.
    """
    if length_bonus < 0:
        raise ValueError(f"length_bonus must be >= 0; got length_bonus={length_bonus!r}.")
    right = gold.strip().lower() in answer.lower()
    return float(right) * (1 + length_bonus * max(0, len(answer.strip()) - len(gold.strip())))


def evaluate_policy(model, tok, rows: list[dict], rm=None, max_new_tokens: int = 16) -> dict:
    """Greedy answers of MODEL to instruction ROWS, scored three ways.

    Returns {"exact": share equal to the reference answer, "right": that verdict per row (for a paired test
    such as stats.mcnemar), "contains": share that hold the reference answer somewhere (case ignored, as
    ``lenient_grader`` checks it), "words": mean answer length in words, "rm_score": mean reward-model score
    (None without RM), "answers": the answers}.
    """

    if not rows:
        raise ValueError("evaluate_policy needs at least one example.")
    prompts = [to_prompt_completion(r, tok)["prompt"] for r in rows]
    got = answer(model, tok, prompts, max_new_tokens=max_new_tokens)
    right = exact_matches(got, [r["output"].strip() for r in rows], normalize=False)  # answers come stripped
    contains = [r["output"].strip().lower() in g.lower() for r, g in zip(rows, got)]
    out = {"exact": sum(right) / len(right), "right": right, "contains": sum(contains) / len(rows),
           "words": sum(len(g.split()) for g in got) / len(rows), "rm_score": None, "answers": got}
    if rm is not None:
        out["rm_score"] = score_answers(rm, tok, prompts, got).mean().item()
    return out

"""GRPO for lesson 11: the held-out scores (greedy accuracy and pass@k from sampled groups), how each loss
type weights an answer's tokens, the KL estimators side by side, a short run for the widget, and its plot."""

from __future__ import annotations

import numbers
import torch

from ..chat import stop_token_ids
from ..evaluate import answer
from ..grpo import check_epsilon, grpo_loss, kl_k3, pass_curve, sample_group, train_grpo
from ..rewards import exact_reward, stray_special


def greedy_and_pass_at_k(lm, tok, prompts: list[str], gold: list[str], check=None, n: int = 16, ks=(1, 4, 16),
             max_new_tokens: int = 16, temperature: float = 1.0, seed: int = 0, max_rows: int = 128) -> dict:
    """LM's held-out scores on PROMPTS: the greedy answer's accuracy, and pass@k from N samples each.

    check(prompts, completions, gold) -> one float per completion, 1 when right (default: the exact
    answer, labkit.rewards.exact_reward). Greedy answers come from labkit.evaluate.answer; samples from
    ``sample_group`` (N per prompt, at TEMPERATURE, at most MAX_ROWS answers per generate call), both
    stopped by labkit.chat's stop tokens. pass@k is the unbiased estimate (``pass_at_k``) averaged over
    the prompts, for each k in KS (k <= N). Returns {"greedy", "pass": {k: pass@k}, "correct": right
    samples per prompt, "length": mean sampled answer tokens, "stray": share of samples that did not
    end their turn: they hold a special token other than the template's turn end and EOS
    (labkit.rewards.stray_special), or stopped at one (labkit.rewards.stop_at_special_tokens),
    "right_then_stray": share of samples that begin with the gold answer and then hold or stop at such a token,
    "greedy_right": per prompt, "greedy_answers", "samples": the N samples of the first prompt}.
    """

    check = exact_reward if check is None else check
    if not prompts or len(prompts) != len(gold):
        raise ValueError(f"greedy_and_pass_at_k needs one gold answer per prompt; got {len(prompts)} prompts, {len(gold)} answers.")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n]
    if bad:
        raise ValueError(f"every k must be an integer from 1 to n={n}; got {bad}.")
    was_training = lm.training
    lm.eval()
    try:
        greedy = answer(lm, tok, prompts, max_new_tokens=max_new_tokens)
        right = check(prompts, greedy, gold)
        stops = stop_token_ids(tok, lm)
        correct, lengths, stray, right_stray, first = [], [], [], [], None
        per_call = max(1, max_rows // n)
        for i in range(0, len(prompts), per_call):
            chunk, chunk_gold = prompts[i:i + per_call], gold[i:i + per_call]
            roll = sample_group(lm, tok, chunk, n, stops, max_new_tokens, temperature, seed + i)
            scores = check(roll["prompts"], roll["texts"], [g for g in chunk_gold for _ in range(n)])
            correct += [int(sum(scores[j * n:(j + 1) * n])) for j in range(len(chunk))]
            lengths += roll["completion_mask"].sum(1).tolist()
            golds = [g for g in chunk_gold for _ in range(n)]
            strays = [stray_special(tok, t) or e for t, e in zip(roll["texts"], _ended_elsewhere(tok, roll))]
            stray += strays
            right_stray += [s and t.strip().startswith(g.strip()) for s, t, g in zip(strays, roll["texts"], golds)]
            first = roll["texts"][:n] if first is None else first
    finally:
        lm.train(was_training)
    return {"greedy": sum(right) / len(right), "pass": pass_curve(correct, n, ks),
            "correct": correct, "length": sum(lengths) / len(lengths), "stray": sum(stray) / len(stray),
            "right_then_stray": sum(right_stray) / len(right_stray),
            "greedy_right": [bool(x) for x in right], "greedy_answers": greedy, "samples": first}


def _ended_elsewhere(tok, roll) -> list[bool]:
    """Per sampled answer: did it stop at a special token that is not the template's turn end nor EOS?"""

    template = torch.tensor(stop_token_ids(tok), device=roll["input_ids"].device)
    answer = roll["input_ids"][:, roll["prompt_len"]:]
    lengths = roll["completion_mask"].sum(1)
    last = answer.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    special = torch.tensor(tok.all_special_ids, device=last.device)
    return ((lengths > 0) & torch.isin(last, special) & ~torch.isin(last, template)).tolist()


# ----------------------------------------------------------------------------- for the lesson: weights, curves, a short run

def token_weights(lengths: list[int], advantages, loss_type: str = "grpo", max_completion_length: int | None = None):
    """How much each answer token's log-prob is pushed by one update: -d loss / d logp, (N, T).

    LENGTHS: N answer lengths; ADVANTAGES: (N,). At ratio 1 (num_iterations = 1) the clip is inactive
    and the gradient of the loss with respect to a token's log-prob is -A / (the loss type's divisor):
    "grpo" divides by each answer's own length (a long answer's tokens each move less), "dapo"/"bnpo" by
    all tokens of the batch, "dr_grpo" by N * max_completion_length (default: the longest answer).
    """
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be positive answer lengths; got {lengths}.")
    T = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    logps = torch.zeros(len(lengths), T, requires_grad=True)
    adv = torch.as_tensor(advantages, dtype=torch.float32)
    loss, _ = grpo_loss(logps, logps.detach(), None, adv, mask, loss_type=loss_type,
                        max_completion_length=max_completion_length or T)
    loss.backward()
    return -logps.grad * mask


def scores_table(evals: dict, ks) -> str:
    """A table of ``evaluate`` results on the same held-out prompts, one column per model: EVALS = {label:
    result}, the first the start. Rows: greedy accuracy, pass@k for each k in KS, how many of the questions
    that none of the start's samples answered each model answers with at least one sample, the share of
    samples that did not end their turn, and the mean answer length."""
    names = list(evals)
    if not names or any(len(e["correct"]) != len(evals[names[0]]["correct"]) for e in evals.values()):
        raise ValueError("scores_table needs at least one result, all on the same prompts.")
    never = [i for i, c in enumerate(evals[names[0]]["correct"]) if c == 0]
    width = max(12, *(len(n) + 2 for n in names))
    rows = [("greedy accuracy", [f"{e['greedy']:.0%}" for e in evals.values()])]
    rows += [(f"pass@{k} (T = 1)", [f"{e['pass'][k]:.0%}" for e in evals.values()]) for k in ks]
    rows += [(f"of the {len(never)} no start sample answered", [f"{sum(e['correct'][i] > 0 for i in never)}"
                                                              for e in evals.values()]),
             ("did not end its turn", [f"{e['stray']:.0%}" for e in evals.values()]),
             ("answer length (tokens)", [f"{e['length']:.1f}" for e in evals.values()])]
    label = max(len(r[0]) for r in rows) + 2
    lines = [" " * label + "".join(f"{n:>{width}}" for n in names)]
    lines += [f"{name:<{label}}" + "".join(f"{v:>{width}}" for v in values) for name, values in rows]
    return "\n".join(lines)


def kl_estimates(logps, ref_logps, n: int = 4000, seed: int = 0) -> dict:
    """KL(p || q) of two next-token distributions, exactly and from N tokens sampled from p.

    logps, ref_logps: (V,) log-probabilities of p (pi_theta) and q (pi_ref). Returns {"exact": the sum
    over the vocabulary, "k1": mean of log p/q at the samples, "k3": mean of ``kl_k3``, "k1_std",
    "k3_std": their standard deviations over the samples, "k1_negative": the share of samples whose k1
    is below 0 (a KL is never negative; k3 never is)}. Both means estimate the KL without bias.
    """
    logps, ref_logps = logps.detach().float().flatten(), ref_logps.detach().float().flatten()
    if logps.shape != ref_logps.shape:
        raise ValueError(f"logps and ref_logps must have the same shape (V,); got {tuple(logps.shape)} and "
                         f"{tuple(ref_logps.shape)}.")
    gen = torch.Generator(device=logps.device).manual_seed(seed)
    x = torch.multinomial(logps.exp(), n, replacement=True, generator=gen)
    k1 = logps[x] - ref_logps[x]
    k3 = kl_k3(logps[x], ref_logps[x])
    return {"exact": (logps.exp() * (logps - ref_logps)).sum().item(), "k1": k1.mean().item(),
            "k3": k3.mean().item(), "k1_std": k1.std().item(), "k3_std": k3.std().item(),
            "k1_negative": (k1 < 0).float().mean().item()}


def plot_grpo(logs: dict, axes=None, tracked: str | None = None):
    """Reward, KL to pi_ref and answer length per step, one line per run: logs = {label: GRPOLog}.
    TRACKED: also draw log.tracked[TRACKED] (dashed, on the reward panel) for the runs that have it."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for label, log in logs.items():
        line, = axes[0].plot(log.reward, label=f"{label}: reward")
        if tracked and tracked in log.tracked:
            axes[0].plot(log.tracked[tracked], "--", color=line.get_color(), label=f"{label}: {tracked}")
        axes[1].plot(log.kl, label=label)
        axes[2].plot(log.length, label=label)
    for ax, title in zip(axes, ("mean reward of the samples", "KL(pi_theta || pi_ref) per token (k3)",
                                "answer length (tokens)")):
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8)
    return axes


def short_run(sft_model, tok, prompts: list[str], reward_fn, group_size: int = 8, beta: float = 0.0, steps: int = 4,
              batch_size: int = 4, lr: float = 1e-4, max_new_tokens: int = 16, seed: int = 0,
              eval_prompts: list[str] | None = None, eval_gold: list[str] | None = None, check=None) -> dict:
    """A short GRPO run from a copy of SFT_MODEL (which stays the frozen pi_ref): the widget's callback.

    reward_fn(prompts, completions) -> floats. The KL to pi_ref is measured at every step whatever
    BETA is. With EVAL_PROMPTS and EVAL_GOLD, the greedy held-out accuracy (labkit.evaluate.answer, scored
    by check(prompts, completions, gold), default exact match) before and after. Returns {"group_size",
    "beta", "steps", "log": GRPOLog, "policy": the trained copy, "greedy_before", "greedy_after"
    (None without eval prompts)}.
    """
    import copy

    beta = check_epsilon("beta", beta)
    policy = copy.deepcopy(sft_model).requires_grad_(True)
    log = train_grpo(policy, tok, prompts, reward_fn, stop_token_ids(tok, sft_model), steps=steps,
                     batch_size=batch_size, lr=lr, ref=sft_model, seed=seed, group_size=group_size, beta=beta,
                     max_new_tokens=max_new_tokens)
    out = {"group_size": group_size, "beta": beta, "steps": steps, "log": log, "policy": policy,
           "greedy_before": None, "greedy_after": None}
    if eval_prompts:
        check = exact_reward if check is None else check
        for key, model in (("greedy_before", sft_model), ("greedy_after", policy)):
            got = answer(model, tok, eval_prompts, max_new_tokens=max_new_tokens)
            scores = check(eval_prompts, got, eval_gold)
            out[key] = sum(scores) / len(scores)
    return out


def describe_run(r: dict) -> str:
    """One line about a ``short_run`` result."""
    log = r["log"]
    text = (f"G={r['group_size']}, beta={r['beta']:g}, {len(log.reward)} steps in {log.seconds:.1f} s: reward "
            f"{log.reward[0]:.2f} -> {log.reward[-1]:.2f}, KL {log.kl[-1]:.3f}, answer length {log.length[-1]:.1f} tokens")
    if r["greedy_after"] is not None:
        text += f"; held-out greedy accuracy {r['greedy_before']:.0%} -> {r['greedy_after']:.0%}"
    return text

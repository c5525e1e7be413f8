"""The preference-loss family next to DPO, written from scratch: IPO, SimPO and ORPO.

Each loss reads the same few numbers per pair: the summed log-probabilities of the chosen and the
rejected answer (``labkit.preference.sequence_logps``, (B,) each), their lengths in answer tokens
((B,) each, ``answer_lengths``) and, for the losses that keep a reference, the frozen SFT model's
log-probabilities. They differ in what they do with them:

- DPO   -log sigma(beta * m), m the log-ratio margin to pi_ref (labkit.preference.dpo_loss).
- IPO   (h - 1/(2 tau))^2: a squared loss that stops at a target margin instead of pushing the
        margin to infinity; h is the margin of the per-token log-ratios (as trl computes it).
- SimPO -log sigma(beta * (avg log pi(y_w) - avg log pi(y_l)) - gamma): no reference model; the
        reward is the per-token average log-probability, and gamma is a target margin.
- ORPO  NLL(y_w) - lambda * log sigma(log odds(y_w) - log odds(y_l)): SFT and preference in one
        loss, no reference model; odds(y) = p / (1 - p), p the per-token average probability.

Every loss returns (loss: scalar, chosen_rewards: (B,), rejected_rewards: (B,)), the rewards detached,
as ``dpo_loss`` does; a pair counts as ordered correctly when its chosen reward is the larger.
"""

from __future__ import annotations

from . import guard

LOSSES = ("dpo", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")  # they never read pi_ref: no reference forward pass


def _check_same_shape(**tensors) -> None:
    from .preference import _check_same_shape as check

    check(**tensors)


def _check_lengths(**lengths) -> None:
    for name, t in lengths.items():
        if (t <= 0).any():
            raise ValueError(f"{name} must count at least one answer token per pair; got {t.tolist()}.")


def answer_lengths(labels):
    """Number of scored tokens per row: labels (B, T) with -100 on prompt and padding -> (B,) long.

    The tokens ``sequence_logps`` sums over (labels[:, 1:] that are not -100)."""
    from .sft import IGNORE_INDEX

    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


def batch_lengths(batch: dict):
    """``answer_lengths`` of a ``collate_pairs`` batch: returns (chosen (B,), rejected (B,))."""
    return answer_lengths(batch["labels"]).chunk(2)


def sft_term(policy_chosen_logps, chosen_lengths):
    """The NLL of the chosen answers per token over the batch: -sum log pi(y_w) / sum |y_w|, the
    term trl's DPOTrainer adds with loss_type=["sigmoid", "sft"] (its token mean over the chosen
    completions). Both are (B,): summed log-probabilities (``sequence_logps``) and answer tokens."""
    _check_same_shape(policy_chosen_logps=policy_chosen_logps, chosen_lengths=chosen_lengths)
    tokens = chosen_lengths.sum()
    if tokens <= 0:
        raise ValueError("sft_term needs at least one chosen answer token (every answer is empty or masked).")
    return -policy_chosen_logps.sum() / tokens


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             chosen_lengths, rejected_lengths, beta=0.1):
    """The IPO loss (Azar et al., 2023, eq. 17), length-normalised as trl's DPOTrainer(loss_type="ipo").

    The four log-probabilities are (B,) sums over the answer tokens (``sequence_logps``), the lengths
    (B,) the number of answer tokens (``answer_lengths``). With the per-token log-ratios
    s_w = (log pi_theta(y_w|x) - log pi_ref(y_w|x)) / |y_w| and s_l likewise, h = s_w - s_l and

        loss = mean over pairs of (h - 1 / (2 beta))^2          (beta is the paper's tau)

    The square has its minimum at h = 1/(2 beta): IPO stops at a target margin where DPO's
    -log sigma keeps pushing (its gradient vanishes only as m -> infinity). Returns (loss, s_w, s_l).
    """
    beta = guard.positive_float("beta", beta, "0.1", about="IPO's tau: the target margin is 1/(2 beta)")
    _check_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                      ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                      chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    _check_lengths(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    chosen = (policy_chosen_logps - ref_chosen_logps) / chosen_lengths
    rejected = (policy_rejected_logps - ref_rejected_logps) / rejected_lengths
    loss = ((chosen - rejected - 1 / (2 * beta)) ** 2).mean()
    return loss, chosen.detach(), rejected.detach()


def simpo_loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, beta=2.0,
               gamma=1.0):
    """The SimPO loss (Meng et al., 2024): reference-free and length-normalised.

    policy_*_logps: (B,) sums over the answer tokens; *_lengths: (B,) answer tokens. The reward of an
    answer is its per-token average log-probability times beta, r = beta * log pi_theta(y|x) / |y|, and

        loss = mean over pairs of -log sigma(r_w - r_l - gamma)

    gamma > 0 asks for a margin, not just the right order. No pi_ref: one model in memory, and the
    average (not the sum) means a longer answer is not penalised for having more tokens.
    trl: CPOTrainer(loss_type="simpo", cpo_alpha=0) computes the same. Returns (loss, r_w, r_l).
    """
    beta = guard.positive_float("beta", beta, "2.0", about="SimPO's reward scale")
    gamma = guard.non_negative_float("gamma", gamma, "1.0", about="SimPO's target reward margin")
    _check_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                      chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    _check_lengths(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    import torch.nn.functional as F

    chosen = beta * policy_chosen_logps / chosen_lengths
    rejected = beta * policy_rejected_logps / rejected_lengths
    loss = -F.logsigmoid(chosen - rejected - gamma).mean()
    return loss, chosen.detach(), rejected.detach()


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, computed without cancellation (the branch at -log 2 of Maechler, 2012)."""
    import torch

    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, beta=0.1, nll=None):
    """The ORPO loss (Hong et al., 2024): SFT on the chosen answer plus an odds-ratio term, no reference.

    policy_*_logps: (B,) sums over the answer tokens; *_lengths: (B,) answer tokens. With the per-token
    average a = log pi_theta(y|x) / |y| (a log-probability, < 0) the log odds of an answer are
    log(p / (1 - p)) = a - log(1 - exp(a)), and

        loss = NLL - beta * mean over pairs of log sigma(log odds(y_w) - log odds(y_l))

    (beta is the paper's lambda). NLL: None gives the token-mean negative log-likelihood of the chosen
    answers, -sum(policy_chosen_logps) / sum(chosen_lengths), the SFT loss of lesson 06; a scalar
    given here replaces it (trl's ORPOTrainer takes the NLL over prompt *and* answer). Returns
    (loss, beta * a_w, beta * a_l), the rewards trl logs.
    """
    beta = guard.positive_float("beta", beta, "0.1", about="ORPO's lambda, the weight of the odds-ratio term")
    _check_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                      chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    _check_lengths(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    import torch.nn.functional as F

    a_w = policy_chosen_logps.float() / chosen_lengths
    a_l = policy_rejected_logps.float() / rejected_lengths
    log_odds = (a_w - a_l) - (log1mexp(a_w) - log1mexp(a_l))
    if nll is None:
        nll = -policy_chosen_logps.sum() / chosen_lengths.sum()
    loss = nll - beta * F.logsigmoid(log_odds).mean()
    return loss, (beta * a_w).detach(), (beta * a_l).detach()


DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "orpo": 0.1}


def pair_loss(loss: str, policy_logps, lengths, ref_logps=None, beta=None, gamma: float = 1.0):
    """One of LOSSES on a batch: POLICY_LOGPS and REF_LOGPS are (chosen (B,), rejected (B,)) summed
    log-probabilities, LENGTHS (chosen (B,), rejected (B,)) answer tokens. BETA None: DEFAULT_BETA[loss];
    GAMMA is SimPO's margin. Returns the loss's (loss, chosen_rewards, rejected_rewards)."""
    from .preference import dpo_loss

    loss = guard.one_of("loss", loss, LOSSES)
    beta = DEFAULT_BETA[loss] if beta is None else beta
    if loss not in REFERENCE_FREE and ref_logps is None:
        raise ValueError(f"loss={loss!r} compares the policy with a reference model: give ref_logps "
                         f"(or use one of the reference-free losses {REFERENCE_FREE}).")
    if loss == "dpo":
        return dpo_loss(*policy_logps, *ref_logps, beta=beta)
    if loss == "ipo":
        return ipo_loss(*policy_logps, *ref_logps, *lengths, beta=beta)
    if loss == "simpo":
        return simpo_loss(*policy_logps, *lengths, beta=beta, gamma=gamma)
    return orpo_loss(*policy_logps, *lengths, beta=beta)


# ----------------------------------------------------------------------------- the same run, each loss

def family_run(sft_model, tok, train_rows: list[dict], eval_rows: list[dict], prompts: list[str],
               losses=LOSSES, steps: int = 4, lr: float = 1e-4, batch_size: int = 4, seed: int = 0,
               max_new_tokens: int = 24, betas: dict | None = None, gamma: float = 1.0, ref_logps=None,
               ref_answers: list[str] | None = None) -> list[dict]:
    """Train a copy of SFT_MODEL with each of LOSSES for the same STEPS, LR, batches and seed
    (``labkit.preference.train_dpo(loss=...)``; SFT_MODEL is the frozen reference), and measure each
    on the same held-out data. Returns one row per model, SFT first:

    {"loss": "SFT" or the loss, "beta", "seconds" (training), "first_loss" and "final_loss" (training),
     "accuracy": share of EVAL_ROWS whose DPO implicit-reward margin (log-ratio to SFT, chosen minus
     rejected) is > 0, the same metric for every loss (0 for SFT: its margins are all 0), "ties": the share
     of margins exactly 0 (1 for SFT), "right": that verdict per pair (for a paired test between two losses,
     labkit.stats.mcnemar),
     "avg_accuracy": share whose per-token average log pi(chosen) beats log pi(rejected)'s (reference-free),
     "chosen_logp": mean summed log pi(chosen answer) over EVAL_ROWS, nats,
     "answer_tokens": mean length in tokens of the greedy answers to PROMPTS (cut at MAX_NEW_TOKENS)}.

    BETAS: {loss: beta}, default DEFAULT_BETA; GAMMA: SimPO's margin. REF_LOGPS: pair_logps(sft_model,
    tok, eval_rows), and REF_ANSWERS: evaluate.answer(sft_model, tok, prompts, max_new_tokens), if already
    computed.
    """
    import copy
    import time

    from .preference import collate_pairs, pair_logps, preference_accuracy, tokenize_pairs, train_dpo
    from .evaluate import answer

    losses = [guard.one_of("loss", name, LOSSES) for name in losses]
    if not losses or not eval_rows or not prompts:
        raise ValueError("family_run needs at least one loss, one held-out pair and one prompt.")
    betas = {**DEFAULT_BETA, **(betas or {})}
    lengths = batch_lengths(collate_pairs(tokenize_pairs(tok, eval_rows), tok.pad_token_id))
    ref_logps = pair_logps(sft_model, tok, eval_rows) if ref_logps is None else ref_logps
    ref_answers = answer(sft_model, tok, prompts, max_new_tokens=max_new_tokens) if ref_answers is None else ref_answers

    def measure(name, logps, answers, **extra):
        pref = preference_accuracy(None, None, tok, eval_rows, ref_logps=ref_logps, policy_logps=logps)
        avg = ((logps[0] / lengths[0]) > (logps[1] / lengths[1])).float().mean().item()
        n_tokens = [len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers]
        return {"loss": name, "accuracy": pref["accuracy"], "ties": pref["ties"], "right": pref["right"],
                "avg_accuracy": avg, "chosen_logp": logps[0].mean().item(),
                "answer_tokens": sum(n_tokens) / len(n_tokens), **extra}

    out = [measure("SFT", ref_logps, ref_answers, beta=None, seconds=0.0, first_loss=None, final_loss=None)]
    for name in losses:
        policy = copy.deepcopy(sft_model).requires_grad_(True)
        t0 = time.perf_counter()
        log = train_dpo(policy, None if name in REFERENCE_FREE else sft_model, tok, train_rows, beta=betas[name],
                        steps=steps, lr=lr, batch_size=batch_size, seed=seed, loss=name, gamma=gamma)
        seconds = time.perf_counter() - t0
        out.append(measure(name, pair_logps(policy, tok, eval_rows),
                           answer(policy, tok, prompts, max_new_tokens=max_new_tokens),
                           beta=betas[name], seconds=seconds, first_loss=log["loss"][0], final_loss=log["loss"][-1]))
        del policy
    return out


def describe_family(rows: list[dict]) -> str:
    """``family_run``'s rows as a plain-text table. A row whose every implicit-reward margin is exactly 0 (the SFT
    row: it is the reference) shows "ties" as its accuracy: neither right nor wrong."""
    head = (f"{'loss':<7}{'beta':>6}{'final loss':>12}{'accuracy':>10}{'avg-logp acc':>14}"
            f"{'log pi(chosen)':>16}{'change':>9}{'answer tokens':>15}{'train s':>9}")
    base = rows[0]["chosen_logp"]
    lines = [head]
    for r in rows:
        beta = "" if r["beta"] is None else f"{r['beta']:g}"
        final = "" if r["final_loss"] is None else f"{r['final_loss']:.3f}"
        accuracy = "ties" if r.get("ties") == 1 else f"{r['accuracy']:.0%}"
        lines.append(f"{r['loss']:<7}{beta:>6}{final:>12}{accuracy:>10}{r['avg_accuracy']:>14.0%}"
                     f"{r['chosen_logp']:>16.2f}{r['chosen_logp'] - base:>+9.2f}{r['answer_tokens']:>15.1f}"
                     f"{r['seconds']:>9.1f}")
    return "\n".join(lines)


def compare_with_dpo(rows: list[dict]) -> str:
    """What ``family_run``'s ROWS show, one line per loss against DPO's row (which must be there):
    held-out accuracy (beats / ties / does not beat DPO, with McNemar's exact p-value on the same pairs when
    the rows carry per-pair verdicts), the move of log pi(chosen) from SFT, the greedy
    answers' length, and the training loss from its first to its last batch (different batches: the two
    are not the same pairs)."""
    by = {r["loss"]: r for r in rows}
    if "dpo" not in by or "SFT" not in by:
        raise ValueError("compare_with_dpo needs family_run rows with the SFT and the dpo rows.")
    sft, dpo = by["SFT"], by["dpo"]
    lines = [f"SFT orders {sft['avg_accuracy']:.0%} of these pairs by per-token average log-prob already "
             f"(the reference-free reward of SimPO and ORPO); greedy answers {sft['answer_tokens']:.1f} tokens"]
    for r in rows:
        if r is sft:
            continue
        if r is dpo:
            verdict = "the baseline"
        else:
            d = r["accuracy"] - dpo["accuracy"]
            verdict = "beats DPO" if d > 0 else "ties with DPO" if d == 0 else "does not beat DPO"
            if "right" in r and "right" in dpo and d != 0:  # the same pairs: McNemar's exact test
                from .stats import mcnemar

                p = mcnemar(r["right"], dpo["right"])["p_value"]
                verdict += (f"; McNemar p = {p:.2g} on the same {len(r['right'])} pairs: "
                            + ("unlikely to be chance" if p < 0.05 else "not distinguishable from chance"))
        lines.append(f"{r['loss']}: held-out accuracy {r['accuracy']:.0%} ({verdict}); log pi(chosen) "
                     f"{r['chosen_logp'] - sft['chosen_logp']:+.2f} nats from SFT; answers "
                     f"{r['answer_tokens']:.1f} tokens; batch loss {r['first_loss']:.3f} -> {r['final_loss']:.3f}")
    if all(r["answer_tokens"] == sft["answer_tokens"] for r in rows):
        lines.append("no loss changed the greedy answers' mean length in this run")
    return "\n".join(lines)

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
from .train import IGNORE_INDEX, answer_lengths

LOSSES = ("dpo", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")  # they never read pi_ref: no reference forward pass


# ----------------------------------------------------------------------------- Bradley-Terry and DPO

def check_beta(beta) -> float:
    return guard.positive_float("beta", beta, "0.1")


def _check_same_shape(**tensors) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError("these tensors must have the same shape: "
                         + ", ".join(f"{n} {s}" for n, s in shapes.items()) + ".")


def sequence_logps(logits, labels):
    """Sum of log pi(token | prefix) over the tokens whose label is not -100.

    logits: (B, T, V) float, the model's output for input_ids (B, T);
    labels: (B, T) long, a copy of input_ids with -100 on tokens not to score (prompt, padding).
    The logits at position t predict the token at t+1, so logits[:, :-1] are scored against
    labels[:, 1:] (the one-token shift every causal LM loss makes). Returns (B,) float.
    """
    import torch

    if logits.dim() != 3 or labels.dim() != 2 or tuple(logits.shape[:2]) != tuple(labels.shape):
        raise ValueError(f"logits must be (batch, seq, vocab) and labels (batch, seq) with the same batch and seq; "
                         f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}.")
    logits, labels = logits[:, :-1, :], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    token_logps = torch.gather(logits.float().log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


def reward_loss(r_chosen, r_rejected):
    """Bradley-Terry loss: mean over pairs of -log sigma(r_chosen - r_rejected).

    r_chosen, r_rejected: (B,) rewards of the preferred and the other answer. Returns a scalar.
    sigma(r_w - r_l) is the model's probability that the chosen answer wins, so this is the negative
    log-likelihood of the observed preferences. Only differences of rewards matter.
    """
    import torch.nn.functional as F

    _check_same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """The DPO loss (Rafailov et al., 2023) and the implicit rewards it trains.

    All four inputs are (B,) sequence log-probabilities (``sequence_logps``) of the chosen and the
    rejected answers under the policy pi_theta and the frozen reference pi_ref.
    The implicit reward of an answer is beta * (log pi_theta(y|x) - log pi_ref(y|x)); the loss is the
    Bradley-Terry loss on those rewards: mean of -log sigma(chosen_reward - rejected_reward).
    Returns (loss: scalar, chosen_rewards: (B,), rejected_rewards: (B,)); the rewards are detached.
    """
    beta = check_beta(beta)
    _check_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                      ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = reward_loss(chosen_rewards, rejected_rewards)
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def batch_logps(model, batch: dict):
    """sequence_logps of every row of a ``collate_pairs`` batch under MODEL: returns (chosen (B,), rejected (B,))."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, batch["labels"]).chunk(2)


# ----------------------------------------------------------------------------- the family next to DPO


def _check_lengths(**lengths) -> None:
    for name, t in lengths.items():
        if (t <= 0).any():
            raise ValueError(f"{name} must count at least one answer token per pair; got {t.tolist()}.")


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


def dpo_sft_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_lengths,
                 beta=0.1, sft_weight=1.0):
    """DPO with an SFT term (RPO, Pang et al. 2024): ``dpo_loss`` plus SFT_WEIGHT times ``sft_term``, the NLL of
    the chosen answers per token, as trl's DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1, sft_weight]).

    The four log-probabilities are (B,) sums over the answer tokens (``sequence_logps``), CHOSEN_LENGTHS (B,) the
    chosen answers' tokens. DPO's term only widens the gap between chosen and rejected; the SFT term holds the
    chosen answers' likelihood up while it does. Returns (loss, chosen_rewards, rejected_rewards) as dpo_loss.
    """

    sft_weight = guard.non_negative_float("sft_weight", sft_weight, "1.0", about="0: plain DPO")
    loss, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                                      ref_rejected_logps, beta=beta)
    return loss + sft_weight * sft_term(policy_chosen_logps, chosen_lengths), chosen_rewards, rejected_rewards


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


# ----------------------------------------------------------------------------- each loss on a batch trl collated

def trl_batch_logps(model, batch: dict):
    """Summed answer log-probabilities and answer lengths of a batch as a trl trainer collates it, under MODEL.

    DPOTrainer's batch: input_ids, attention_mask and completion_mask, chosen rows then rejected rows.
    CPOTrainer's and ORPOTrainer's: chosen_input_ids, chosen_attention_mask, chosen_labels (-100 on the prompt),
    and the same for rejected. Returns ((chosen (B,), rejected (B,)) log-probs, (chosen, rejected) lengths).
    """
    if "completion_mask" in batch:
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX)
        ours = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
        return batch_logps(model, ours), batch_lengths(ours)
    if "chosen_labels" not in batch:
        raise ValueError(f"not a batch trl's DPO, CPO or ORPO trainer collates: its keys are {sorted(batch)}.")
    logps, lengths = [], []
    for side in ("chosen", "rejected"):
        ids, mask, labels = (batch[f"{side}_{k}"] for k in ("input_ids", "attention_mask", "labels"))
        logits = model(input_ids=ids, attention_mask=mask).logits
        logps.append(sequence_logps(logits, labels))
        lengths.append(answer_lengths(labels))
    return tuple(logps), tuple(lengths)


def prompt_and_answer_nll(model, batch: dict):
    """The NLL trl's ORPOTrainer adds (its comment: "computed over the full prompt and response"): the token
    mean over the chosen rows' prompt and answer of an ORPO batch (the padding left out)."""
    import torch.nn.functional as F

    ids, mask = batch["chosen_input_ids"], batch["chosen_attention_mask"]
    logits = model(input_ids=ids, attention_mask=mask).logits
    labels = ids.masked_fill(mask == 0, -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def loss_on_trl_batch(loss: str, model, batch: dict, beta=None, gamma: float = 1.0) -> float:
    """LOSS (one of LOSSES) from scratch on a BATCH trl collated, for MODEL (a peft model trained by trl: for
    "dpo" and "ipo" its reference is the same model with the adapter switched off, as trl's is). BETA None:
    DEFAULT_BETA[loss]; GAMMA: SimPO's margin. ORPO takes trl's NLL over prompt and answer. No gradient."""
    import torch

    loss = guard.one_of("loss", loss, LOSSES)
    was = model.training
    model.eval()
    with torch.no_grad():
        logps, lengths = trl_batch_logps(model, batch)
        ref = None
        if loss not in REFERENCE_FREE:
            with model.disable_adapter():
                ref, _ = trl_batch_logps(model, batch)
        if loss == "orpo":
            value = orpo_loss(*logps, *lengths, beta=DEFAULT_BETA["orpo"] if beta is None else beta,
                              nll=prompt_and_answer_nll(model, batch))[0]
        else:
            value = pair_loss(loss, logps, lengths, ref, beta=beta, gamma=gamma)[0]
    model.train(was)
    return value.item()


# ----------------------------------------------------------------------------- what a step costs

class ForwardCounter:
    """Counts forward calls of MODELS ({name: module}) while active (a context manager): "passes", calls over a
    whole sequence (a training or scoring forward, a generation's prefill), and "decode", generation's one-token
    calls with a cache. ``counts`` is {name: {"passes": n, "decode": n}}."""

    def __init__(self, models: dict):
        self.models = models
        self.counts = {name: {"passes": 0, "decode": 0} for name in models}
        self._handles = []

    def __enter__(self):
        for name, module in self.models.items():
            def hook(_module, args, kwargs, name=name):
                ids = kwargs.get("input_ids", args[0] if args else None)
                one_token = ids is not None and ids.dim() == 2 and ids.shape[1] == 1
                self.counts[name]["decode" if one_token else "passes"] += 1
            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False


def weights_held(*modules) -> int:
    """Parameters held by MODULES together, each tensor counted once (a peft model and its reference with the
    adapter off share their base weights: one copy)."""
    seen = {}
    for m in modules:
        for p in m.parameters():
            seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


def describe_costs(rows: dict) -> str:
    """A table of what a training step costs: ROWS {method: {"weights", "passes", "decode", "seconds"}} (per step;
    "decode": one-token generation calls)."""
    lines = [f"{'':<8}{'weights held':>14}{'forward passes':>16}{'generation calls':>18}{'seconds':>9}   (per step)"]
    for name, r in rows.items():
        lines.append(f"{name:<8}{r['weights']:>14,}{r['passes']:>16g}{r['decode']:>18g}{r['seconds']:>9.2f}")
    return "\n".join(lines)

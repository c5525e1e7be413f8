"""Learning from preferences: the Bradley-Terry reward model and DPO, written from scratch.

A preference pair is {"prompt", "chosen", "rejected"}: for the same prompt, a person (here: the data
generator) preferred one answer to the other. Two ways to use such pairs:

- RLHF: fit a reward model r(x, y) with the Bradley-Terry loss  -log sigma(r(x, y_w) - r(x, y_l)),
  then optimise the policy pi_theta against r with a KL penalty to the SFT model pi_ref (labkit.ppo).
- DPO: skip the reward model; the policy's own log-ratio beta * log(pi_theta / pi_ref) is the
  reward, and the same Bradley-Terry loss is applied to it directly.

Shapes follow one convention: B pairs, T tokens, V vocabulary. Data helpers render pairs with the
model's chat template (``pair_texts``) and tokenise them as trl does (prompt/completion split where
the token lists diverge, EOS appended), so our numbers and trl's can be compared token for token.
"""

from __future__ import annotations


from . import guard
from .adapters import add
from .chat import completion, encode, for_trl, messages, split
from .data import read_jsonl, to_prompt_completion
from .models import load_tokenizer, resolve, shipped_or_live
from .preference_losses import (
    batch_lengths,
    batch_logps,
    check_beta,
    DEFAULT_BETA,
    dpo_loss,
    dpo_sft_loss,
    LOSSES,
    pair_loss,
    REFERENCE_FREE,
    reward_loss,
    sequence_logps,
    sft_term,
)
from .sft import load_shipped_adapter, PadCollator, tokenize_example, train
from .train import check_lr, check_steps, disable_dropout, epoch_order, fit, optimizer

# The losses (Bradley-Terry, DPO and its family) live in labkit.preference_losses; preference.dpo_loss,
# preference.reward_loss, preference.sequence_logps and preference.batch_logps are the same functions.


# ----------------------------------------------------------------------------- data

def pair_texts(row: dict, tok) -> dict:
    """A preference row (the prompt is the user message) rendered with the model's chat template.

    Returns {"prompt": the templated prompt, ending with the generation prompt, "chosen", "rejected":
    each answer as the template completes the prompt (answer and turn end, labkit.chat.split)}: the
    same completion strings SFT trained on (labkit.data.to_prompt_completion).
    """

    for key in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"a preference row needs string fields prompt, chosen, rejected; {key!r} is "
                             f"{row.get(key)!r}.")
    chosen, rejected = (split(tok, messages(row["prompt"], row[k].strip())) for k in ("chosen", "rejected"))
    return {"prompt": chosen["prompt"], "chosen": chosen["completion"], "rejected": rejected["completion"]}


MAX_LENGTH = 512  # tokens of prompt + answer; a longer pair is cut (and loses its EOS): see tokenize_pairs


def trl_pairs(rows: list[dict], tok) -> list[dict]:
    """ROWS as trl's RewardTrainer and DPOTrainer should get them: ``pair_texts`` with the prompt as
    ``labkit.chat.for_trl`` gives it (trl encodes prompt + answer with the tokenizer's defaults, which
    would add a second BOS after a template's own, Gemma's), so trl's token ids are ``tokenize_pairs``'."""

    return [for_trl(tok, pair_texts(r, tok)) for r in rows]


def tokenize_pairs(tok, rows: list[dict], max_length: int = MAX_LENGTH) -> list[dict]:
    """Rows {"prompt", "chosen", "rejected"} -> [{"chosen": features, "rejected": features}].

    Each side is tokenised like SFT data (labkit.sft.tokenize_example): input_ids, attention_mask
    and labels with -100 on the prompt, EOS appended, as trl's DPOTrainer tokenises them (BOS once:
    give trl ``trl_pairs``). MAX_LENGTH leaves room for long templates (a default system turn, split
    digits: the course's longest pair is about 290 tokens with SmolLM2's ChatML); a pair cut there
    would lose its EOS, where the reward model reads its score.
    """
    out = []
    for i, row in enumerate(rows):
        t = pair_texts(row, tok)
        out.append({side: tokenize_example(tok, t["prompt"], t[side], max_length, name=f"pair {i} ({side})")
                    for side in ("chosen", "rejected")})
    return out


def collate_pairs(pairs: list[dict], pad_token_id: int) -> dict:
    """Pad tokenised pairs into ONE batch of 2B rows: chosen first, then rejected (as trl does).

    Returns {"input_ids", "attention_mask", "labels"}, each (2B, T), right-padded.
    """

    if not pairs:
        raise ValueError("no pairs to collate.")
    return PadCollator(pad_token_id)([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])


def pair_batches(pairs: list[dict], batch_size: int, pad_token_id: int, seed: int = 0):
    """Endless ``collate_pairs`` batches of BATCH_SIZE tokenised pairs: the pairs in a random order
    (seeded), reshuffled each time fewer than a batch are left. The reward model's and DPO's trainers
    draw from it."""

    for idx in epoch_order(len(pairs), batch_size, seed):
        yield collate_pairs([pairs[i] for i in idx], pad_token_id)


# ----------------------------------------------------------------------------- the reward model

REWARD_PAD = "<|pad|>"  # the pad token a reward model gets when its tokenizer pads with EOS (GPT-2)


def load_reward_model(model: str | None = None, device: str = "cpu"):
    """A reward model r(x, y): the causal LM's body with a scalar head on the last token.

    AutoModelForSequenceClassification(num_labels=1) on the same checkpoint: the LM head is replaced
    by a linear layer hidden -> 1 (newly initialised). transformers reads a sequence's score at its last
    token that is not the pad token (``config.pad_token_id``); every scored sequence ends with EOS
    (``tokenize_pairs``, ``score_texts``), so that is the EOS, which has seen the whole answer and its
    turn end. A tokenizer without a pad token (GPT-2), or one that pads with EOS, would make that
    rule skip the EOS and read the token before it: such a reward model gets a pad token of its own
    (``REWARD_PAD``, a new embedding row that only padding positions use). Returns (reward_model,
    tokenizer); the tokenizer is the reward model's own (load the policy's separately).
    """
    import logging

    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(model)
    name = resolve(model)
    log = logging.getLogger("transformers.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)  # "newly initialized: score.weight" is the point, not a problem
    try:
        rm = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, use_safetensors=True,
                                                                trust_remote_code=False)
    finally:
        log.setLevel(level)
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": REWARD_PAD})
        if len(tok) > rm.get_input_embeddings().num_embeddings:
            rm.resize_token_embeddings(len(tok), mean_resizing=False)
    rm.config.pad_token_id = tok.pad_token_id
    return rm.to(device).eval(), tok


def with_eos(tok, completion: str) -> str:
    """COMPLETION ending with the tokenizer's EOS (appended unless it is there already), as trl and
    ``labkit.sft.tokenize_example`` end every completion: the token a reward model reads its score at."""
    return completion if completion.endswith(tok.eos_token) else completion + tok.eos_token


def score_position(rm, input_ids):
    """Where transformers' sequence-classification head reads each row's score: the last position whose
    token is not ``rm.config.pad_token_id`` (its rule, for left and right padding). input_ids: (B, T);
    returns (B,) long."""
    import torch

    keep = (input_ids != rm.config.pad_token_id).long()
    return (torch.arange(input_ids.shape[-1], device=input_ids.device) * keep).argmax(-1)


def pair_rewards(rm, batch: dict):
    """Rewards of a ``collate_pairs`` batch: returns (r_chosen (B,), r_rejected (B,))."""
    out = rm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    return out.chunk(2)


def train_reward_model(rm, tok, rows: list[dict], steps: int = 60, lr: float = 3e-4, batch_size: int = 16,
                       seed: int = 0, max_length: int = MAX_LENGTH, callback=None) -> list[float]:
    """Fit RM on preference ROWS with ``reward_loss`` and AdamW (RM's dropout switched off, as trl's
    RewardTrainer does); returns the loss per step.

    CALLBACK(step, loss), if given, runs after each step.
    """

    steps = check_steps(steps)
    disable_dropout(rm)  # as trl's RewardTrainer does by default
    batch_size = guard.positive_int("batch_size", batch_size)
    pairs = tokenize_pairs(tok, rows, max_length)
    params, opt = optimizer(rm, lr, seed, what="the reward model")
    losses = fit(rm, pair_batches(pairs, batch_size, tok.pad_token_id, seed), opt, params, steps,
                 callback=callback, loss_fn=lambda model, batch: reward_loss(*pair_rewards(model, batch)))
    rm.eval()
    return losses


def score_texts(rm, tok, prompts: list[str], completions: list[str], batch_size: int = 32):
    """Reward of each (templated prompt, completion) pair as a (N,) float tensor, no gradient.

    The completion ends with EOS (``with_eos``), exactly as the reward model was trained on it
    (``tokenize_pairs``); padding is on the right.
    """
    import torch

    if len(prompts) != len(completions):
        raise ValueError(f"prompts and completions must have the same length; got {len(prompts)} and "
                         f"{len(completions)}.")
    device = next(rm.parameters()).device
    feats = []
    for p, c in zip(prompts, completions):
        ids = encode(tok, p + with_eos(tok, c))
        feats.append({"input_ids": ids, "labels": ids})
    out = []
    with torch.no_grad():
        for i in range(0, len(feats), batch_size):
            b = PadCollator(tok.pad_token_id)(feats[i:i + batch_size])
            out.append(rm(input_ids=b["input_ids"].to(device),
                          attention_mask=b["attention_mask"].to(device)).logits.squeeze(-1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def score_answers(rm, tok, prompts: list[str], answers: list[str], batch_size: int = 32):
    """Reward of each (templated prompt, answer) as a (N,) float tensor: ANSWERS are plain answers, as
    generated and cut (labkit.evaluate.answer), completed as the template writes them (labkit.chat.completion)."""

    return score_texts(rm, tok, prompts, [completion(tok, a) for a in answers], batch_size)


def pairwise_accuracy(rm, tok, rows: list[dict]) -> dict:
    """Share of held-out pairs the reward model orders correctly, overall and per task.

    Returns {"accuracy", "by_task": {task: accuracy}, "margins": [r_chosen - r_rejected per pair]}.
    """
    if not rows:
        raise ValueError("pairwise_accuracy needs at least one preference pair.")
    texts = [pair_texts(r, tok) for r in rows]
    prompts = [t["prompt"] for t in texts]
    rc = score_texts(rm, tok, prompts, [t["chosen"] for t in texts])
    rr = score_texts(rm, tok, prompts, [t["rejected"] for t in texts])
    margins = (rc - rr).tolist()
    by_task: dict[str, list] = {}
    for r, m in zip(rows, margins):
        by_task.setdefault(r.get("task", "all"), []).append(m > 0)
    return {"accuracy": sum(m > 0 for m in margins) / len(margins),
            "by_task": {t: sum(v) / len(v) for t, v in by_task.items()}, "margins": margins}


REFUSALS = ("I don't know.", "I cannot help with that.", "Please ask someone else.")  # labkit.data._bad_answer's


def rejected_kind(row: dict) -> str:
    """What is wrong with a course preference pair's rejected answer, as labkit.data makes them: "refusal" (one of
    REFUSALS), "shouting" (the chosen answer upper-cased, twice) or "wrong values" (another amount or name)."""
    if row["rejected"] in REFUSALS:
        return "refusal"
    up = row["chosen"].upper()
    return "shouting" if row["rejected"] == f"{up} {up}" else "wrong values"


def accuracy_by_kind(rows: list[dict], margins: list[float]) -> dict:
    """{kind: (pairs ranked right, pairs)} over ROWS, a pair ranked right when its margin r_chosen - r_rejected
    (``pairwise_accuracy``'s "margins", one per row) is positive; kinds as ``rejected_kind``, in a fixed order."""
    if len(rows) != len(margins):
        raise ValueError(f"need one margin per pair; got {len(margins)} margins for {len(rows)} pairs.")
    out = {k: [0, 0] for k in ("refusal", "shouting", "wrong values")}
    for r, m in zip(rows, margins):
        out[rejected_kind(r)][0] += m > 0
        out[rejected_kind(r)][1] += 1
    return {k: (right, n) for k, (right, n) in out.items() if n}


# ----------------------------------------------------------------------------- the SFT model preference training starts from

def reference_model(base, tok, steps: int = 0, lr: float = 2e-3, seed: int = 0, batch_size: int = 8,
                    model: str | None = "bundled", rows: list[dict] | None = None, adapter: str = "sft_lora"):
    """The SFT model that preference training starts from (and keeps, frozen, as pi_ref); deterministic in SEED.

    steps == 0: the shipped adapter ADAPTER merged into BASE when MODEL is the bundled model; for any other
    model a live SFT of models.LIVE_STEPS steps instead (the description says so). "sft_lora" is
    lesson 06's (``load_shipped_adapter``, 800 steps by scripts/train_sft_adapter.py), "sft_hedged" lesson
    09's model that hedges (scripts/train_hedged_sft.py: this function's live SFT on labkit.hedge.mixed_quality rows). steps > 0: a
    live LoRA SFT (r=8 on all seven projections, completion-only loss) of that many steps on ROWS
    (default: instructions_train.jsonl), merged. BASE itself is left untouched (a copy is trained).
    Returns (model, description): the merged model in eval mode with every parameter frozen.
    """
    import copy

    knob = {"sft_lora": "SFT_STEPS", "sft_hedged": "HEDGE_SFT_STEPS"}.get(adapter, "steps")
    steps, note = shipped_or_live(steps, model, f"SFT adapter {adapter}", knob)
    if steps == 0:

        pm, report = load_shipped_adapter(copy.deepcopy(base), adapter)
        what = (f"the shipped SFT adapter {adapter} ({report.get('steps', 800)} steps), merged")
    else:
        pm = live_sft(base, tok, steps=steps, lr=lr, seed=seed, batch_size=batch_size, rows=rows)
        what = f"a live LoRA SFT of {steps} steps (lr {lr:g}), merged" + (f"\n{note}" if note else "")
    merged = pm.merge_and_unload().eval()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged, what


def live_sft(base, tok, steps: int, lr: float = 2e-3, seed: int = 0, batch_size: int = 8,
             rows: list[dict] | None = None):
    """``reference_model``'s live SFT, unmerged: a copy of BASE with a LoRA adapter (r=8, alpha 16, all
    seven projections) trained STEPS steps with completion-only loss on ROWS (default
    instructions_train.jsonl). Returns the peft model (scripts/train_hedged_sft.py saves its adapter)."""
    import copy

    rows = read_jsonl("instructions_train.jsonl") if rows is None else rows
    # add() seeds LoRA's random A, so the same SEED gives the same model whatever ran before
    pm = add(copy.deepcopy(base), "lora", seed=seed, r=8, alpha=16)
    train(pm, tok, [to_prompt_completion(r, tok) for r in rows], steps=steps, lr=lr,
          batch_size=batch_size, seed=seed, progress=False)
    return pm


# ----------------------------------------------------------------------------- DPO from scratch

def pair_logps(model, tok, rows: list[dict], batch_size: int = 16):
    """Sequence log-probs of the chosen and rejected answers of ROWS under MODEL, no gradient.

    Returns (chosen (N,), rejected (N,)) float tensors on the CPU.
    """
    import torch

    if not rows:
        raise ValueError("pair_logps needs at least one preference pair.")
    pairs = tokenize_pairs(tok, rows)
    device = next(model.parameters()).device
    chosen, rejected = [], []
    was = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            b = {k: v.to(device) for k, v in collate_pairs(pairs[i:i + batch_size], tok.pad_token_id).items()}
            c, r = batch_logps(model, b)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    model.train(was)
    return torch.cat(chosen), torch.cat(rejected)


def preference_accuracy(policy, ref, tok, rows: list[dict], beta: float = 0.1, ref_logps=None,
                        policy_logps=None) -> dict:
    """DPO's held-out metric: share of pairs whose implicit reward margin is above zero.

    Returns {"accuracy", "ties": share of margins exactly 0, "margin": mean of chosen_reward - rejected_reward,
    "margins": per pair, "right": per pair, margin > 0 (for a paired test, labkit.stats.mcnemar)}. At the start (policy == ref) every margin is exactly 0: the accuracy is 0 and
    every pair is a tie, which says nothing about the policy yet (report the ties beside the accuracy). REF_LOGPS, if
    given, is ``pair_logps(ref, tok, rows)`` computed once (the reference never changes);
    POLICY_LOGPS likewise for the policy, when the caller already has them.
    """
    beta = check_beta(beta)
    ref_c, ref_r = ref_logps if ref_logps is not None else pair_logps(ref, tok, rows)
    pol_c, pol_r = policy_logps if policy_logps is not None else pair_logps(policy, tok, rows)
    _, rc, rr = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=beta)
    margins = (rc - rr).tolist()
    right = [m > 0 for m in margins]
    return {"accuracy": sum(right) / len(margins), "ties": sum(m == 0 for m in margins) / len(margins),
            "margin": sum(margins) / len(margins), "margins": margins, "right": right}


def train_dpo(policy, ref, tok, rows: list[dict], beta: float | None = None, steps: int = 20, lr: float = 1e-3,
              batch_size: int = 8, seed: int = 0, loss: str = "dpo", gamma: float = 1.0,
              sft_weight: float = 0.0) -> dict:
    """DPO with ``dpo_loss`` (or LOSS, another of ``labkit.preference_losses.LOSSES``: "ipo", "simpo",
    "orpo"): the trainable parameters of POLICY (its dropout switched off), REF frozen (None for the
    reference-free "simpo" and "orpo", which never read it). BETA None: the loss's default
    (``preference_losses.DEFAULT_BETA``: 0.1 for DPO); GAMMA is SimPO's margin. Returns per-step logs.

    SFT_WEIGHT > 0 adds that many times ``preference_losses.sft_term`` (the NLL of the chosen answers,
    per token) to the loss, as trl's ``DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1, w])``
    (RPO, Pang et al. 2024): it holds the chosen answers up while the pair loss pushes the rejected ones down.

    {"loss": [...], "margin": [mean chosen - rejected reward of the loss], "accuracy": [batch share > 0]}.
    """
    import torch

    loss = guard.one_of("loss", loss, LOSSES)
    sft_weight = guard.non_negative_float("sft_weight", sft_weight, about="0: the pair loss alone")
    beta = check_beta(DEFAULT_BETA[loss] if beta is None else beta)
    lr, steps = check_lr(lr), check_steps(steps)
    needs_ref = loss not in REFERENCE_FREE
    if needs_ref and ref is None:
        raise ValueError(f"loss={loss!r} needs the frozen reference model: give ref (or loss='simpo' / 'orpo').")
    disable_dropout(policy)  # else policy != ref before any update (trl's DPOTrainer does the same)
    params, opt = optimizer(policy, lr, seed, what="the policy")
    pairs = tokenize_pairs(tok, rows)
    if needs_ref:
        ref.eval()
    log = {"loss": [], "margin": [], "accuracy": []}

    def loss_fn(model, b):
        ref_logps = None
        if needs_ref:
            with torch.no_grad():
                ref_logps = batch_logps(ref, b)
        logps, lengths = batch_logps(model, b), batch_lengths(b)
        value, rc, rr = pair_loss(loss, logps, lengths, ref_logps, beta=beta, gamma=gamma)
        if sft_weight:
            value = value + sft_weight * sft_term(logps[0], lengths[0])
        log["margin"].append((rc - rr).mean().item())
        log["accuracy"].append((rc > rr).float().mean().item())
        return value

    log["loss"] = fit(policy, pair_batches(pairs, batch_size, tok.pad_token_id, seed), opt, params, steps,
                      loss_fn=loss_fn)
    policy.eval()
    return log


def logratio_moves(policy, tok, rows: list[dict], ref_logps) -> tuple[float, float]:
    """How far POLICY moved the answers of ROWS from the reference: the mean over the pairs of
    log pi_theta(y|x) - log pi_ref(y|x), in nats, for the chosen and for the rejected answers.
    REF_LOGPS: ``pair_logps(ref, tok, rows)``. Returns (chosen_move, rejected_move)."""
    pol = pair_logps(policy, tok, rows)
    return tuple((p - r).mean().item() for p, r in zip(pol, ref_logps))


TRL_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def dpo_metrics(policy, tok, rows: list[dict], ref_logps, beta: float = 0.1, sft_weight: float = 0.0) -> dict:
    """What trl's DPOTrainer logs for ROWS taken as one batch, computed from scratch: {"loss", "rewards/chosen",
    "rewards/rejected", "rewards/margins", "rewards/accuracies"} (trl's names; means over the pairs).

    The rewards are ``dpo_loss``'s implicit rewards beta * (log pi_theta - log pi_ref); "rewards/accuracies" is the
    share of pairs whose chosen reward is the larger. SFT_WEIGHT > 0 adds that many times
    ``preference_losses.sft_term`` to the loss, as DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1, w]).
    REF_LOGPS: ``pair_logps(ref, tok, rows)`` (for a peft policy, the same model with its adapter off).
    """
    import torch

    pairs = collate_pairs(tokenize_pairs(tok, rows), tok.pad_token_id)
    device = next(policy.parameters()).device
    was = policy.training
    policy.eval()
    with torch.no_grad():
        chosen, rejected = (t.float().cpu() for t in batch_logps(policy, {k: v.to(device) for k, v in pairs.items()}))
    policy.train(was)
    loss, rc, rr = dpo_sft_loss(chosen, rejected, *ref_logps, batch_lengths(pairs)[0], beta=beta, sft_weight=sft_weight)
    return {"loss": loss.item(), "rewards/chosen": rc.mean().item(), "rewards/rejected": rr.mean().item(),
            "rewards/margins": (rc - rr).mean().item(), "rewards/accuracies": (rc > rr).float().mean().item()}

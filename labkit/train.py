"""A small, plain training loop for causal LMs: what lessons use when a Trainer would hide the point.

Lessons use peft and trl for real fine-tuning; this loop is for the measurements around them
(a full fine-tune whose weight update lesson 01 takes apart with an SVD, quick baselines), and it
checks its inputs so a bad knob gives a clear error instead of a traceback from inside torch.
"""

from __future__ import annotations

from . import guard
from .adapters import targets
from .chat import document_start
from .lora import is_conv1d

IGNORE_INDEX = -100  # the label value torch's cross-entropy (and every HF model) skips


def check_lr(lr) -> float:
    return guard.positive_float("lr", lr, "1e-4 or 3e-4", about="the learning rate")


def check_steps(steps) -> int:
    return guard.positive_int("steps", steps)


def epoch_order(n: int, batch_size: int, seed: int = 0):
    """Endless lists of BATCH_SIZE indices into N items: the items in a random order (random.Random(SEED)),
    reshuffled whenever fewer than a batch are left, so every item is seen once per epoch and a batch may
    span two epochs. Every trainer's batches come from it (SFT, LM text, preference pairs, prompts of PPO
    and GRPO, the encoder's texts).

        list(itertools.islice(epoch_order(5, 2), 3))  ->  [[a, b], [c, d], [e, f]] (f from the 2nd epoch)
    """
    import random

    n = guard.positive_int("n", n, about="the number of training items")
    batch_size = guard.positive_int("batch_size", batch_size)
    rng, order = random.Random(seed), []
    while True:
        while len(order) < batch_size:
            order += rng.sample(range(n), k=n)
        chosen, order = order[:batch_size], order[batch_size:]
        yield chosen


def optimizer(model, lr, seed: int = 0, weight_decay: float = 0.0, what: str = "the model", hint: str = ""):
    """The setup every trainer shares: MODEL's trainable parameters (refused when there are none),
    torch seeded with SEED, and AdamW over them at LR. Returns (params, opt).

    WHAT names the model in the error, HINT says what to do about it.
    """
    import torch

    lr = check_lr(lr)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{what} has no trainable parameters: nothing would be learned.{' ' + hint if hint else ''}")
    torch.manual_seed(seed)
    return params, torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def answer_lengths(labels):
    """Number of trained tokens per row: labels (B, T) with -100 on prompt and padding -> (B,) long.

    A causal LM shifts labels by one inside the model, so the first position never counts; -100 never counts.
    These are the tokens the loss averages over (and labkit.preference_losses.sequence_logps sums)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


def disable_dropout(model, keep: str | None = None) -> int:
    """Set MODEL's dropout to 0, in place: every nn.Dropout layer and the attention_dropout rate of attention
    modules, except modules whose name contains KEEP (e.g. "lora_dropout"). Returns how many were above 0.

    Preference and RL training compare the trained model's log-probabilities with a reference's (DPO's
    log-ratio, PPO's ratio pi_theta / pi_old) and need both computed the same way: with dropout active
    in the trained model only (GPT-2 ships p = 0.1; Llama-style models have none), the ratio is not 1
    and DPO's loss not log 2 before any update; trl's DPO and reward trainers do the same by default.
    Scaling out (labkit.scale) turns the base model's dropout off, keeping LoRA's, so that every layout of
    a global batch (1 process, N processes, accumulation) computes the same gradient.
    """
    import torch.nn as nn

    n = 0
    for name, m in model.named_modules():
        if keep and keep in name:
            continue
        if isinstance(m, nn.Dropout) and m.p > 0:
            m.p, n = 0.0, n + 1
        rate = getattr(m, "attention_dropout", None)
        if isinstance(rate, float) and rate > 0:
            m.attention_dropout, n = 0.0, n + 1
    return n


def lm_batches(tok, texts: list[str], batch_size: int, max_tokens: int, seed: int = 0):
    """Endless shuffled batches {"input_ids", "attention_mask", "labels"} (labels -100 on padding).

    Each text starts with the tokenizer's BOS when it has one (labkit.chat.document_start), as documents
    did in pretraining; shapes are
    (batch_size, longest text in the batch, at most max_tokens).
    """
    import torch

    if not texts:
        raise ValueError("no training texts were given.")
    start = document_start(tok)
    encoded = [(start + tok(t, add_special_tokens=False)["input_ids"])[:max_tokens] for t in texts]
    for chosen in epoch_order(len(encoded), batch_size, seed):
        rows = [encoded[i] for i in chosen]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def finetune(model, tok, texts: list[str], steps: int = 50, lr: float = 3e-4, batch_size: int = 8,
             max_tokens: int = 256, seed: int = 0, weight_decay: float = 0.0) -> list[float]:
    """Train every parameter of MODEL that requires grad on TEXTS with AdamW; return the loss per step.

    Works the same for a full fine-tune (all parameters trainable) and for a model whose adapters are
    the only trainable parameters (peft or labkit.lora).
    """
    steps = check_steps(steps)
    batch_size = guard.positive_int("batch_size", batch_size)
    params, opt = optimizer(model, lr, seed, weight_decay)
    return fit(model, lm_batches(tok, texts, batch_size, max_tokens, seed), opt, params, steps)


def fit(model, data, opt, params, steps: int, progress: str | None = None, callback=None,
        loss_fn=None) -> list[float]:
    """The training loop itself: STEPS batches from the iterator DATA ({"input_ids", "attention_mask",
    "labels"}), each a forward with the model's own loss, backward, gradient clipping at 1.0 and an
    OPT step over PARAMS. Returns the loss per step.

    PROGRESS names a progress bar (None: no bar); CALLBACK(step, loss), if given, runs after each step.
    LOSS_FN(model, batch), if given, replaces the model's own loss (the reward model's Bradley-Terry
    loss, DPO's loss). finetune, labkit.sft.train and labkit.preference's trainers call this, after optimizer().
    """
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=progress, leave=False)
    for step in range(steps):
        batch = {k: v.to(device) for k, v in next(data).items()}
        loss = model(**batch).loss if loss_fn is None else loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if callback is not None:
            callback(step, losses[-1])
    if bar is not None:
        bar.close()
    model.train(was_training)
    return losses


def weight_updates(base, tuned, suffixes: tuple[str, ...] | None = None) -> dict:
    """{name: W_tuned - W_base} for every Linear / Conv1D weight whose module name ends with a suffix.

    suffixes: None means the model's query and value projections (``adapters.targets(base, "attention")``:
    Llama's q_proj and v_proj, GPT-2's fused c_attn). Each update has the notation's shape (d_out, d_in):
    GPT-2's Conv1D stores its weight transposed, (in, out), so its update is transposed back.
    """

    if suffixes is None:

        suffixes = tuple(targets(base, "attention"))
    suffixes = (suffixes,) if isinstance(suffixes, str) else tuple(suffixes)
    base_params = dict(base.named_parameters())
    tuned_modules = dict(tuned.named_modules())
    out = {}
    for name, p in tuned.named_parameters():
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and module.rsplit(".", 1)[-1] in suffixes:
            delta = (p.detach() - base_params[name].detach()).float()
            out[module] = delta.T if is_conv1d(tuned_modules[module]) else delta
    if not out:
        raise ValueError(f"no weights match {suffixes}; e.g. ('q_proj', 'v_proj') for a Llama model, "
                         "or adapters.targets(model) for the names this model uses.")
    return out

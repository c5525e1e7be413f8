"""The same global batch everywhere, and the loss normalised over it.

Every step trains on GLOBAL_BATCH examples = world_size x micro_batch x accum_steps; every rank draws the same
global batch (same seed) and takes its own micro-batches, so 1 process with accum 2 and 2 processes with accum 1
see the same examples. With completion-only labels micro-batches hold different numbers of trained tokens:
loss_normalisation = "tokens" divides each micro-batch's summed token loss by the step's GLOBAL count of trained
tokens (times world_size, which DDP divides by), which is exactly the one-process gradient; "mean" averages the
micro-batch means (the naive recipe), so the lesson can measure the difference."""

from __future__ import annotations

import json

from ..data import to_prompt_completion
from ..sft import batches
from ..train import answer_lengths
from .config import ConfigError, data_path, TrainConfig


# ----------------------------------------------------------------------------- data: the same global batch everywhere

def load_pairs(cfg: TrainConfig, tok) -> list[dict]:
    """The training rows of CFG as {"prompt", "completion", "task"} pairs (instruction rows go through the
    chat template with labkit.data.to_prompt_completion; prompt/completion rows are taken as they are;
    "task" is the row's task family, None when it has none)."""

    path = data_path(cfg.data)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if cfg.tasks:
        rows = [r for r in rows if r.get("task") in cfg.tasks]
    if cfg.n_examples:
        rows = rows[:cfg.n_examples]
    if not rows:
        raise ConfigError(f"no training rows left in {path} (tasks={cfg.tasks}, n_examples={cfg.n_examples}).")
    pairs = []
    for i, r in enumerate(rows):
        if "prompt" in r and "completion" in r:
            pairs.append({"prompt": r["prompt"], "completion": r["completion"], "task": r.get("task")})
        elif "instruction" in r and "output" in r:
            pairs.append({**to_prompt_completion(r, tok), "task": r.get("task")})
        else:
            raise ConfigError(f"{path}, row {i}: expected instruction/input/output or prompt/completion keys, "
                              f"got {sorted(r)}.")
    return pairs


def supervised_tokens(labels) -> int:
    """How many tokens a causal LM's loss counts in LABELS (batch, seq), all rows together."""
    return int(answer_lengths(labels).sum())


def micro_batches(batch: dict, world_size: int, rank: int, accum_steps: int) -> list[dict]:
    """RANK's ACCUM_STEPS micro-batches of one global BATCH ({"input_ids", "attention_mask",
    "labels"}, each (global_batch, seq), padded on the right).

    The global batch is cut into world_size x accum_steps equal slices of rows; rank r gets slices
    r*accum_steps .. (r+1)*accum_steps - 1. Columns that are padding in every row of a slice are
    dropped (right padding: the other tokens' logits do not depend on them).
    """
    n = batch["input_ids"].shape[0]
    parts = world_size * accum_steps
    if not 0 <= rank < world_size or n % parts:
        raise ValueError(f"cannot cut a batch of {n} rows into {world_size} x {accum_steps} micro-batches for rank {rank}.")
    size = n // parts
    out = []
    for k in range(rank * accum_steps, (rank + 1) * accum_steps):
        rows = slice(k * size, (k + 1) * size)
        width = int(batch["attention_mask"][rows].sum(1).max())
        out.append({key: v[rows, :width] for key, v in batch.items()})
    return out


def uneven_batch(features: list[dict], global_batch: int, pad_token_id: int, seed: int = 0, world_size: int = 2,
                 accum_steps: int = 1, max_batches: int = 100) -> tuple[dict, int]:
    """The first global batch of labkit.sft.batches(FEATURES, ...) whose micro-batches (world_size x
    accum_steps of them) hold different numbers of trained tokens, and how many batches came before it.

    Where every micro-batch holds as many trained tokens as the others the naive mean of means IS the
    token mean, so a demonstration of the difference needs a batch where they differ (with the bundled
    model the first one does; with GPT-2's tokenizer the first ones can split evenly). Raises ValueError
    after MAX_BATCHES even batches (every example as long as the others, say).
    """

    stream = batches(features, global_batch, pad_token_id, seed)
    for i in range(max_batches):
        batch = next(stream)
        parts = [b for r in range(world_size) for b in micro_batches(batch, world_size, r, accum_steps)]
        if len({supervised_tokens(b["labels"]) for b in parts}) > 1:
            return batch, i
    raise ValueError(f"the first {max_batches} global batches all split into micro-batches with equal numbers of "
                     "trained tokens: the token mean and the naive mean of means agree on this data.")


def normalisation_check(model, batch: dict, world_size: int = 2, accum_steps: int = 1) -> dict:
    """One global BATCH cut into world_size x accum_steps micro-batches, on one process: the whole
    batch's loss and gradient next to the two ways of adding up the micro-batches.

    model: a model with trainable parameters (e.g. a peft model); batch: {"input_ids",
    "attention_mask", "labels"} (global_batch, seq). Returns {"tokens": trained tokens per
    micro-batch, "whole": the batch's loss (mean over all its trained tokens), "tokens_normalised":
    the micro-batches' summed token losses / all trained tokens, "naive": the mean of the
    micro-batches' own means, "grad_diff_tokens" and "grad_diff_naive": |g - g_whole| / |g_whole|}.
    The forward passes run in eval mode (gradients still flow): dropout (GPT-2's p = 0.1) would draw other
    masks for the whole batch than for its parts, and hide the arithmetic this checks.
    """
    import torch

    parts = [b for r in range(world_size) for b in micro_batches(batch, world_size, r, accum_steps)]
    counts = [supervised_tokens(b["labels"]) for b in parts]
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    parts = [{k: v.to(device) for k, v in b.items()} for b in parts]
    was_training = model.training
    model.eval()

    def value_and_grad(loss_fn):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in params])
        model.zero_grad(set_to_none=True)
        return loss.item(), g

    total = torch.tensor(float(sum(counts)), device=device)
    whole, g_whole = value_and_grad(lambda: model(**{k: v.to(device) for k, v in batch.items()}).loss)
    tok, g_tok = value_and_grad(lambda: sum(model(**b, num_items_in_batch=total).loss for b in parts))
    naive, g_naive = value_and_grad(lambda: sum(model(**b).loss for b in parts) / len(parts))
    model.train(was_training)

    def rel(g):
        return ((g - g_whole).norm() / g_whole.norm()).item()

    return {"tokens": counts, "whole": whole, "tokens_normalised": tok, "naive": naive,
            "grad_diff_tokens": rel(g_tok), "grad_diff_naive": rel(g_naive)}


def rank_losses(token_losses: list):
    """The loss each rank backpropagates so that DDP's average of the ranks' gradients is the gradient of
    the mean over ALL the step's trained tokens (what train_step does with num_items_in_batch).

    token_losses: one 1-D float tensor per rank, that rank's per-token losses (trained tokens only; a rank
    may hold none). Returns an (N,) tensor: rank k's summed token losses / T x N, with T the trained
    tokens of all N ranks (DDP divides the summed gradients by N, the factor N undoes it). Their mean is
    the global token mean; the naive recipe, each rank's own mean, is not unless every T_k is equal.
    """
    import torch

    if not token_losses:
        raise ValueError("rank_losses needs one tensor of token losses per rank.")
    n, total = len(token_losses), sum(t.numel() for t in token_losses)
    if total == 0:
        raise ValueError("no rank holds a trained token: the step has no loss.")
    return torch.stack([t.sum() for t in token_losses]) / total * n


def most_uneven_step(log: dict) -> dict:
    """The step of a launched run's LOG (labkit.scale.train's) whose ranks held the most unequal numbers of
    trained tokens (largest max / min), read back from what each rank recorded: {"step" (from 1),
    "ranks": [{"rank", "families": {task family: examples}, "tokens", "loss_sum", "mean": its own token
    mean}], "token_mean": all token losses / all trained tokens (the whole batch's loss), "naive_mean":
    the mean of the ranks' own means}. Pure arithmetic on the log: the losses are those of the step's
    weights, the same for both means."""
    ranks = log["ranks"]
    if len(ranks) < 2:
        raise ValueError("most_uneven_step needs the log of a run on 2 or more processes.")
    steps = len(ranks[0]["tokens"])
    step = max(range(steps), key=lambda i: max(r["tokens"][i] for r in ranks) / max(1, min(r["tokens"][i] for r in ranks)))
    rows = []
    for r in ranks:
        families: dict = {}
        for f in r.get("families", [[]] * steps)[step]:
            families[f] = families.get(f, 0) + 1
        n, total = r["tokens"][step], r["loss_sums"][step]
        rows.append({"rank": r["rank"], "families": families, "tokens": n, "loss_sum": total,
                     "mean": total / n if n else float("nan")})
    all_tokens = sum(r["tokens"] for r in rows)
    return {"step": step + 1, "ranks": rows, "token_mean": sum(r["loss_sum"] for r in rows) / all_tokens,
            "naive_mean": sum(r["mean"] for r in rows) / len(rows)}

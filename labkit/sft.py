"""Supervised fine-tuning (SFT) with prompt masking: labels are -100 on the prompt and on padding.

The loss of a causal LM is the mean cross-entropy over every position whose label is not -100. For
instruction tuning we want the model to learn to *answer*, not to reproduce the question, so the
prompt's tokens get the label -100 and only the completion is trained on ("completion-only loss").

Tokenisation follows trl's SFTTrainer for prompt/completion data, so the two give the same labels
token for token: the prompt and prompt+completion are tokenised separately, the completion starts
where the two token lists first differ, and the tokenizer's EOS is appended to a completion that does
not already end with it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

IGNORE_INDEX = -100  # the label value torch's cross-entropy (and every HF model) skips


def completion_labels(input_ids, prompt_length: int):
    """Labels for one sequence: a copy of INPUT_IDS with -100 on the first PROMPT_LENGTH tokens.

    input_ids: a list of ints or a 1-D tensor (seq,); returns the same kind, same length.
    """
    n = len(input_ids)
    if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or not 0 <= prompt_length <= n:
        raise ValueError(f"prompt_length must be an integer between 0 and len(input_ids)={n}; got {prompt_length!r}.")
    if hasattr(input_ids, "clone"):
        labels = input_ids.clone()
        labels[:prompt_length] = IGNORE_INDEX
        return labels
    return [IGNORE_INDEX] * prompt_length + list(input_ids[prompt_length:])


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_example(tok, prompt: str, completion: str, max_length: int = 256, name: str = "example") -> dict:
    """One prompt/completion pair -> {"input_ids", "attention_mask", "labels", "prompt_length"} (lists).

    Raises ValueError naming the example (NAME) when the completion is empty, or when the prompt alone
    fills the context so no completion token would be trained on. A completion that runs past
    MAX_LENGTH is cut, as trl cuts it.
    """
    if not isinstance(completion, str) or not completion.strip():
        raise ValueError(f"{name}: the completion is empty; there is nothing to learn from it. "
                         "Drop the example or give it an answer.")
    if not completion.endswith(tok.eos_token):
        completion = completion + tok.eos_token
    prompt_ids = tok(prompt)["input_ids"]
    ids = tok(prompt + completion)["input_ids"]
    prompt_length = _common_prefix_length(prompt_ids, ids)
    if prompt_length >= max_length:
        raise ValueError(f"{name}: the prompt is {len(prompt_ids)} tokens but max_length is {max_length}, so no "
                         "completion token fits. Raise max_length or shorten the prompt.")
    ids = ids[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": completion_labels(ids, prompt_length),
            "prompt_length": prompt_length}


@dataclass
class PadCollator:
    """Pads a list of tokenised examples into a batch of tensors (batch, longest).

    input_ids are padded with PAD_TOKEN_ID, attention_mask with 0 and labels with -100, on the right.
    A batch in which an example has no supervised token (every label -100: a template mismatch, an
    empty answer cut off by max_length) raises, because it would silently teach nothing.
    """

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict:
        import torch

        if not features:
            raise ValueError("cannot collate an empty list of examples.")
        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": torch.full((len(features), width), self.pad_token_id, dtype=torch.long),
                 "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
                 "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)}
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            labels = f.get("labels", f["input_ids"])
            if all(int(x) == IGNORE_INDEX for x in labels):
                raise ValueError(f"example {i} of the batch has no supervised token (every label is -100): check "
                                 "that the prompt/template matches the data; nothing would be learned from it.")
            batch["input_ids"][i, :n] = torch.as_tensor(f["input_ids"])
            batch["attention_mask"][i, :n] = torch.as_tensor(f.get("attention_mask", [1] * n))
            batch["labels"][i, :n] = torch.as_tensor(labels)
        return batch


def tokenize_all(tok, pairs: list[dict], max_length: int = 256, completion_only: bool = True) -> list[dict]:
    """Tokenise {"prompt", "completion"} rows; with completion_only=False every token is trained on."""
    out = []
    for i, row in enumerate(pairs):
        f = tokenize_example(tok, row["prompt"], row["completion"], max_length, name=f"example {i}")
        if not completion_only:
            f["labels"] = list(f["input_ids"])
        out.append(f)
    return out


def batches(features: list[dict], batch_size: int, pad_token_id: int, seed: int = 0):
    """Endless shuffled, padded batches from tokenised FEATURES (each epoch a new order)."""
    if not features:
        raise ValueError("no training examples were given.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    rng, collate, order = random.Random(seed), PadCollator(pad_token_id), []
    while True:
        if len(order) < batch_size:
            order += rng.sample(range(len(features)), k=len(features))
        chosen, order = order[:batch_size], order[batch_size:]
        yield collate([features[i] for i in chosen])


def train(model, tok, pairs: list[dict], steps: int = 100, lr: float = 1e-3, batch_size: int = 8,
          max_length: int = 256, seed: int = 0, completion_only: bool = True, progress: bool = True,
          callback=None) -> list[float]:
    """SFT of every trainable parameter of MODEL (a peft model: only the adapter) with AdamW.

    pairs: [{"prompt", "completion"}]; returns the training loss per step. CALLBACK(step, loss), if
    given, is called after each step (for live plots and evaluation during training).
    """
    import torch

    from .train import check_lr, check_steps

    lr, steps = check_lr(lr), check_steps(steps)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: nothing would be learned.")
    torch.manual_seed(seed)
    features = tokenize_all(tok, pairs, max_length, completion_only)
    data = batches(features, batch_size, tok.pad_token_id, seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="SFT", leave=False)
    for step in range(steps):
        batch = {k: v.to(device) for k, v in next(data).items()}
        loss = model(**batch).loss
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


def answer(model, tok, prompts: list[str], max_new_tokens: int = 48, batch_size: int = 16) -> list[str]:
    """Greedy answers to PROMPTS (already rendered, e.g. by the chat template), cut at <|end|> or EOS."""
    import torch

    stop = [i for i in (tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id) if i is not None and i >= 0]
    device = next(model.parameters()).device
    was_training, side = model.training, tok.padding_side
    model.eval()
    tok.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                     pad_token_id=tok.pad_token_id, top_k=None, top_p=None, temperature=None)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                text = tok.decode(row, skip_special_tokens=False)
                for s in ("<|end|>", tok.eos_token, tok.pad_token):
                    text = text.split(s)[0]
                out.append(text.strip())
    finally:
        tok.padding_side = side
        model.train(was_training)
    return out


def score(model, tok, examples, max_new_tokens: int = 48) -> dict:
    """Held-out scores of instruction EXAMPLES ({"task", "instruction", "input", "output"} rows).

    Returns {"exact": share answered exactly, "format": share in the task's answer format,
    "by_task": {task: {"exact", "format", "n"}}, "answers": the generated answers}.
    """
    from .data import answer_format_ok, to_prompt_completion

    rows = list(examples)
    if not rows:
        raise ValueError("score needs at least one example.")
    prompts = [to_prompt_completion(r, tok)["prompt"] for r in rows]
    got = answer(model, tok, prompts, max_new_tokens)
    by_task: dict[str, dict] = {}
    for r, g in zip(rows, got):
        t = by_task.setdefault(r["task"], {"exact": 0, "format": 0, "n": 0})
        t["n"] += 1
        t["exact"] += g == r["output"].strip()
        t["format"] += answer_format_ok(r["task"], g)
    for t in by_task.values():
        t["exact"], t["format"] = t["exact"] / t["n"], t["format"] / t["n"]
    n = len(rows)
    return {"exact": sum(t["exact"] * t["n"] for t in by_task.values()) / n,
            "format": sum(t["format"] * t["n"] for t in by_task.values()) / n,
            "by_task": by_task, "answers": got}

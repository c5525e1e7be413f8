"""Measuring a language model: perplexity on held-out text and the copy probe.

Later lessons add exact match, ROUGE-L and win rates here; every metric runs on held-out data.
"""

from __future__ import annotations

import math


def _device(model):
    return next(model.parameters()).device


def perplexity(model, tok, texts: list[str], max_tokens: int = 256) -> float:
    """exp(mean negative log-likelihood per predicted token) over TEXTS.

    Each text is scored on its own, preceded by <|endoftext|> (the document start the model saw in
    pretraining) and cut to MAX_TOKENS tokens; the mean is over all predicted tokens of all texts.
    """
    import torch

    if not texts:
        raise ValueError("perplexity needs at least one text.")
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"][:max_tokens]
            x = torch.tensor([[tok.eos_token_id] + ids], device=_device(model))
            out = model(x, labels=x)
            n = x.shape[1] - 1
            nll += out.loss.float().item() * n
            count += n
    model.train(was_training)
    return math.exp(nll / count)


def copy_probe_score(model, tok, probe: list[dict], generate: bool = False) -> dict:
    """Share of restatements the model completes exactly, greedily: {"name", "amount", "all"}.

    probe: rows {"prompt", "answer", "kind"} from labkit.corpus.copy_probe. With generate=False the
    check is teacher-forced (every answer token is the argmax), which is the same as greedy decoding
    over the answer span; with generate=True the model really generates and the text is compared,
    and the answer must not run on into more digits.
    """
    import torch

    was_training = model.training
    model.eval()
    hits: dict[str, list[bool]] = {}
    dev = _device(model)
    with torch.no_grad():
        for ex in probe:
            p_ids = [tok.eos_token_id] + tok(ex["prompt"], add_special_tokens=False)["input_ids"]
            full = tok(ex["prompt"] + " " + ex["answer"], add_special_tokens=False)["input_ids"]
            a_ids = full[len(p_ids) - 1:]
            if generate:
                x = torch.tensor([p_ids], device=dev)
                out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=len(a_ids) + 2,
                                     do_sample=False, pad_token_id=tok.pad_token_id)
                text = tok.decode(out[0, len(p_ids):])
                rest = text[len(ex["answer"]) + 1:]
                runs_on = rest[:1].isdigit() or (rest[:1] == "," and rest[1:2].isdigit())
                ok = text.startswith(" " + ex["answer"]) and not runs_on
            else:
                x = torch.tensor([p_ids + a_ids], device=dev)
                pred = model(x).logits[0, len(p_ids) - 1:-1].argmax(-1).cpu()
                ok = bool((pred == torch.tensor(a_ids)).all())
            hits.setdefault(ex["kind"], []).append(ok)
    model.train(was_training)
    res = {k: sum(v) / len(v) for k, v in hits.items()}
    res["all"] = sum(sum(v) for v in hits.values()) / max(1, sum(len(v) for v in hits.values()))
    return res


def median_forward_seconds(model, input_ids, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of one no-grad forward pass over INPUT_IDS (batch, seq), after WARMUP runs.

    The median, not the mean: a stray slow run (the OS, another process) should not move the figure.
    """
    import statistics
    import time

    import torch

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(input_ids)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# Metrics on tensors and strings (no model needed)


def perplexity_from_logits(logits, labels) -> float:
    """exp(mean negative log-likelihood) of LABELS under LOGITS, with the causal one-token shift.

    logits: (batch, seq, vocab); labels: (batch, seq) token ids, -100 where ignored (padding, prompt).
    Position t's logits predict labels[:, t + 1], as in transformers' causal-LM loss. The mean is over
    every predicted, non-ignored token of the whole batch (not a mean of per-row perplexities).
    """
    import torch
    import torch.nn.functional as F

    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (batch, seq, vocab) and labels (batch, seq); got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}.")
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    target = labels[:, 1:].reshape(-1).long()
    if not (target != -100).any():
        raise ValueError("every label is -100: there is no token to score.")
    nll = F.cross_entropy(pred, target, ignore_index=-100, reduction="mean")
    return math.exp(nll.item()) if torch.isfinite(nll) else float("inf")


def normalize_answer(text: str) -> str:
    """Lower-case, strip and collapse runs of whitespace: "  Risk:   HIGH\\n" -> "risk: high".

    Punctuation is kept on purpose: in the course's answers (JSON, "Risk: high") it is content.
    """
    return " ".join(str(text).casefold().split())


def exact_match(predictions: list[str], references: list[str], normalize: bool = True) -> float:
    """The share of PREDICTIONS equal to their REFERENCES (after normalize_answer if NORMALIZE).

    predictions, references: equally long lists of strings. Returns a float in [0, 1].
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if not predictions:
        raise ValueError("exact_match needs at least one prediction.")
    norm = normalize_answer if normalize else (lambda s: s)
    return sum(norm(p) == norm(r) for p, r in zip(predictions, references)) / len(predictions)

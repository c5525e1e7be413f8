"""Catastrophic forgetting, measured: general-text perplexity before and after SFT, and its remedies.

Fine-tuning on a narrow task moves weights that general language also uses, so the model gets worse
at text it used to predict well. The usual advice (a low learning rate, a small LoRA rank, ~10%
general data mixed into the SFT set) is tested here rather than assumed:

    result = forgetting.run_sft(base, tok, task_pairs, general_train, general_eval, eval_examples,
                                lr=2e-3, r=8, mix=0.1, steps=60)
    result["ppl_ratio"]        # general-text perplexity after / before (1.0 = nothing forgotten)

Evaluation during training (not only at the end) is a callback of labkit.sft.train:

    log = forgetting.EvalEvery(every=10, metrics={"general_ppl": lambda m: evaluate.perplexity(m, tok, texts)})
    sft.train(model, tok, pairs, steps=60, callback=log.bind(model))
    log.history                # [{"step": 0, "general_ppl": ...}, {"step": 10, ...}, ...]
"""

from __future__ import annotations

import copy
import math
import numbers
import random
import time


def general_pairs(texts: list[str], tok) -> list[dict]:
    """General TEXTS as SFT pairs: the prompt is the document start (the tokenizer's BOS, if it has one),
    every text token is trained on, as in pretraining."""
    return [{"prompt": tok.bos_token or "", "completion": t} for t in texts]


def check_fraction(mix) -> float:
    if isinstance(mix, bool) or not isinstance(mix, numbers.Real) or not 0 <= mix < 1 or not math.isfinite(mix):
        raise ValueError(f"mix is the share of general text in the SFT set, a number in [0, 1) such as 0.1; "
                         f"got mix={mix!r}.")
    return float(mix)


def mix_in_general(task_pairs: list[dict], general: list[dict], mix: float, seed: int = 0) -> list[dict]:
    """TASK_PAIRS plus enough GENERAL pairs that they make up the share MIX of the result, shuffled.

    With n task pairs the result holds round(n * mix / (1 - mix)) general pairs (drawn without
    replacement while GENERAL lasts, then cycling), so mix=0.1 on 90 task pairs adds 10.
    """
    mix = check_fraction(mix)
    if not task_pairs:
        raise ValueError("mix_in_general needs at least one task pair.")
    n_general = round(len(task_pairs) * mix / (1 - mix))
    if n_general and not general:
        raise ValueError(f"mix={mix} asks for {n_general} general pairs but none were given.")
    rng = random.Random(seed)
    pool = list(general)
    rng.shuffle(pool)
    extra = [pool[i % len(pool)] for i in range(n_general)]
    out = list(task_pairs) + extra
    rng.shuffle(out)
    return out


class EvalEvery:
    """A callback for labkit.sft.train that evaluates the model every EVERY steps.

    metrics: {name: fn(model) -> float}. bind(model) returns the callback(step, loss) to pass as
    sft.train(..., callback=...). history holds one dict per evaluation: {"step", "loss", name: value};
    step 0 is evaluated before any update when bind(model, at_start=True) (the default).
    """

    def __init__(self, every: int, metrics: dict):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive number of steps; got every={every!r}.")
        if not metrics:
            raise ValueError("EvalEvery needs at least one metric {name: fn(model) -> float}.")
        self.every, self.metrics, self.history, self.seconds = every, dict(metrics), [], 0.0

    def evaluate(self, model, step: int, loss: float | None = None) -> dict:
        t0 = time.perf_counter()
        row = {"step": step, "loss": loss}
        row.update({name: float(fn(model)) for name, fn in self.metrics.items()})
        self.seconds += time.perf_counter() - t0
        self.history.append(row)
        return row

    def bind(self, model, at_start: bool = True):
        if at_start:
            self.evaluate(model, 0)

        def callback(step: int, loss: float) -> None:
            if (step + 1) % self.every == 0:
                self.evaluate(model, step + 1, loss)

        return callback

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, for plotting."""
        if self.history and name not in self.history[0]:
            raise ValueError(f"no metric {name!r}; known: {sorted(k for k in self.history[0] if k != 'step')}.")
        return [r["step"] for r in self.history], [r[name] for r in self.history]


def run_sft(base, tok, task_pairs: list[dict], general_train: list[str], general_eval: list[str],
            eval_examples: list[dict] | None = None, lr: float = 2e-3, r: int = 8, alpha: float | None = None,
            mix: float = 0.0, steps: int = 60, batch_size: int = 8, seed: int = 0, max_length: int = 256) -> dict:
    """LoRA-SFT a copy of BASE on TASK_PAIRS (with the share MIX of general text) and measure forgetting.

    alpha defaults to 2r, so the update's scale alpha/r is the same at every rank and only the rank
    (the update's capacity) changes. Returns {"lr", "r", "alpha", "mix", "steps", "ppl_before",
    "ppl_after", "ppl_ratio", "exact", "format", "seconds", "losses"}; exact/format are
    labkit.sft.score on EVAL_EXAMPLES (None when none are given). BASE is not modified.
    """
    from . import adapters, evaluate, sft

    alpha = 2 * r if alpha is None else alpha
    pairs = mix_in_general(task_pairs, general_pairs(general_train, tok), mix, seed)
    ppl_before = evaluate.perplexity(base, tok, general_eval)
    model = adapters.add(copy.deepcopy(base), "lora", seed=seed, r=r, alpha=alpha)
    t0 = time.perf_counter()
    losses = sft.train(model, tok, pairs, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                       max_length=max_length, progress=False)
    seconds = time.perf_counter() - t0
    ppl_after = evaluate.perplexity(model, tok, general_eval)
    scores = sft.score(model, tok, eval_examples, max_new_tokens=12) if eval_examples else None
    return {"lr": lr, "r": r, "alpha": alpha, "mix": mix, "steps": steps, "ppl_before": ppl_before,
            "ppl_after": ppl_after, "ppl_ratio": ppl_after / ppl_before,
            "exact": scores["exact"] if scores else None, "format": scores["format"] if scores else None,
            "seconds": seconds, "losses": losses}

"""Verifiable rewards (lesson 11): rewards a program computes, and the questions they score.

A verifiable task has an answer a program can check: no reward model, no judge, nothing to over-fit.
Each reward here is a plain function of (prompts, completions, gold) returning one float per
completion, the signature trl's GRPOTrainer calls its reward functions with (extra dataset columns
arrive as keyword arguments, so a dataset column named "gold" is enough):

- ``exact_reward``: 1 if the answer is exactly the gold answer, else 0. It cannot be gamed: the only
  way to earn it is the right answer.
- ``format_reward``: 1 if the answer has the gold answer's FORMAT ("$" and an amount, "Risk: " and a
  level), whatever its value. A proxy that is cheaper to satisfy than the task: RL games it.
- ``contains_reward``: 1 if the gold answer appears anywhere in the answer. Gamed by listing every
  amount of the receipt (lesson 11's exercise).

``stop_at_special_tokens`` ends an answer at its first special token, so that a score measures the
value written, not whether the model ended its turn with the right token.

The questions (``make_task``, ``split``) come from labkit.corpus, like every dataset of the course,
in the instruction format {"task", "instruction", "input", "output"}; the held-out ones share no
question with the RL training ones nor with any split of instructions_*.jsonl (SFT's data).
"""

from __future__ import annotations

import random
import re

from . import corpus, data, guard
from .chat import stop_strings, stop_token_ids
from .corpus import money
from .evaluate import exact_matches

TASKS = {
    # the receipt question of the qa family: copy the total from the receipt ("$1,234")
    "total": "What was the total?",
    # the risk family: a rating from income, debts and credit score ("Risk: high")
    "risk": "Rate the risk of this loan as low, medium or high.",
}

FORMATS = {"total": r"\$\d{1,3}(?:,\d{3})*", "risk": r"Risk: (?:low|medium|high)"}

SEEDS = {"train": 11, "heldout": 12}


def _example(task: str, rng: random.Random) -> dict:
    if task == "total":
        text, a = corpus.receipt(rng)
        return {"task": "qa", "instruction": TASKS["total"], "input": text, "output": money(a["total"])}
    return data.risk_row(rng)


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {tuple(TASKS)}.")
    return task


def make_task(task: str, n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """N distinct questions of TASK ("total" or "risk"), none whose question (instruction + input) is in
    EXCLUDE (keys as labkit.data.split_key makes them). Deterministic in SEED."""
    _check_task(task)
    guard.positive_int("n", n)
    rng = random.Random(f"{task}/{seed}")
    seen, out = set(exclude or ()), []
    for _ in range(100 * n + 1000):
        row = _example(task, rng)
        if data.split_key(row) not in seen:
            seen.add(data.split_key(row))
            out.append(row)
            if len(out) == n:
                return out
    raise ValueError(f"could not draw {n} distinct {task!r} questions outside EXCLUDE; ask for fewer.")


def keys(rows: list[dict]) -> set[str]:
    """The questions of ROWS (instruction + input), as the course compares splits (labkit.data.split_key)."""
    return {data.split_key(r) for r in rows}


def sft_keys() -> set[str]:
    """The questions of every split of instructions_*.jsonl (what SFT trains and is scored on)."""
    return {k for s in data.SEEDS for k in keys(data.read_jsonl(f"instructions_{s}.jsonl"))}


def split(task: str, n_train: int, n_heldout: int) -> dict:
    """{"train": N_TRAIN questions for RL, "heldout": N_HELDOUT questions to measure it on}.

    Both skip every question of instructions_*.jsonl; the held-out ones also skip the training ones,
    so a held-out score is about questions RL never saw. The held-out set is drawn first, from its own
    seed, so it is the same whatever N_TRAIN is.
    """
    known = sft_keys()
    heldout = make_task(task, n_heldout, SEEDS["heldout"], known)
    train = make_task(task, n_train, SEEDS["train"], known | keys(heldout))
    return {"train": train, "heldout": heldout}


# ----------------------------------------------------------------------------- rewards

def _check_lengths(completions, gold) -> None:
    if isinstance(gold, str) or len(gold) != len(completions):
        raise ValueError(f"gold must be a list with one gold answer per completion; got "
                         f"{'a string' if isinstance(gold, str) else len(gold)} for {len(completions)} completions.")


def exact_reward(prompts, completions, gold, **kwargs) -> list[float]:
    """1.0 where a completion, outer whitespace stripped, equals its gold answer exactly; else 0.0.

    prompts: N prompts (unused: the answer alone is checked); completions: N answer texts as sampled,
    cut at the stop token (an answer that wrote another special token instead of stopping keeps it,
    and is wrong); gold: N gold answers. Returns N floats.
    """

    _check_lengths(completions, gold)
    if not completions:
        return []
    return [float(hit) for hit in exact_matches([c.strip() for c in completions], [g.strip() for g in gold],
                                                normalize=False)]


def answer_format(gold: str) -> str:
    """The regular expression of GOLD's format (a key of FORMATS' pattern that GOLD matches)."""
    for pattern in FORMATS.values():
        if re.fullmatch(pattern, gold.strip()):
            return pattern
    raise ValueError(f"no known answer format matches the gold answer {gold!r}; formats: {FORMATS}.")


def format_reward(prompts, completions, gold, **kwargs) -> list[float]:
    """1.0 where a completion has the FORMAT of its gold answer ("$1,234" for a total, "Risk: low" for a
    risk), whatever its value; else 0.0. Same arguments as ``exact_reward``.

    A reward that is easier to earn than the task: any amount copied from the receipt, or the same
    rating for every loan, scores 1. Optimise it and the policy learns exactly that.
    """
    _check_lengths(completions, gold)
    return [float(re.fullmatch(answer_format(g), c.strip()) is not None) for c, g in zip(completions, gold)]


def contains_reward(prompts, completions, gold, **kwargs) -> list[float]:
    """1.0 where the gold answer appears anywhere in a completion ("The total is $22." for "$22"); else 0.0.

    Lenient, and gameable: an answer that lists every amount of the receipt is paid in full without
    finding the total. Same arguments as ``exact_reward``.
    """
    _check_lengths(completions, gold)
    return [float(g.strip() in c) for c, g in zip(completions, gold)]


def with_gold(reward, gold_of: dict):
    """REWARD as labkit.grpo calls a reward: fn(prompts, completions), each prompt's gold answer looked up
    in GOLD_OF {prompt: gold answer}."""
    def fn(prompts, completions):
        return reward(prompts, completions, [gold_of[p] for p in prompts])

    fn.__name__ = getattr(reward, "__name__", "reward")
    return fn


def stray_special(tok, text: str) -> bool:
    """Does TEXT (an answer cut at the stop tokens) contain a special token of TOK other than the stop
    strings, e.g. the bundled model's <|assistant|>? Such an answer did not end its turn."""

    stops = set(stop_strings(tok))
    return any(s and s not in stops and s in text for s in tok.all_special_tokens)


def stop_at_special_tokens(model, tok):
    """MODEL with every special token of TOK among its generation config's stop ids (after the ones it had).

    An answer then ends at its first special token: one that writes a template marker (<|user|>, <|pad|>)
    where the turn end belongs is read up to that marker, so a score measures the value the answer
    states, not whether it ended its turn with the right token. labkit.chat.stop_token_ids, labkit.evaluate.answer
    and trl's GRPOTrainer all read the stop ids from there. Changes MODEL in place and returns it.
    """

    have = stop_token_ids(tok, model)
    model.generation_config.eos_token_id = have + [i for i in tok.all_special_ids if i not in have]
    return model

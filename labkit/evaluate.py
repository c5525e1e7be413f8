"""Measuring a language model: perplexity on held-out text and the copy probe; greedy answers and their
held-out scores (answer, score, score_table); exact match, ROUGE-L, format validity and win rates.
Every metric runs on held-out data.
"""

from __future__ import annotations

import math

from . import guard
from .adapters import generate
from .chat import document_start, encode_prompts, stop_strings, stop_token_ids
from .data import answer_format_ok, to_prompt_completion
from .sft import IGNORE_INDEX


def _device(model):
    return next(model.parameters()).device


def perplexity(model, tok, texts: list[str], max_tokens: int = 256) -> float:
    """exp(mean negative log-likelihood per predicted token) over TEXTS.

    Each text is scored on its own, preceded by the tokenizer's BOS when it has one (the document start
    the model saw in pretraining; labkit.chat.document_start) and cut to MAX_TOKENS tokens after it; the
    mean is over all predicted tokens of all texts.
    """
    import torch

    if not texts:
        raise ValueError("perplexity needs at least one text.")
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = (document_start(tok) + tok(t, add_special_tokens=False)["input_ids"])[:max_tokens + 1]
            if len(ids) < 2:
                continue
            x = torch.tensor([ids], device=_device(model))
            out = model(x, labels=x)
            n = x.shape[1] - 1
            nll += out.loss.float().item() * n
            count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("perplexity needs texts of at least two tokens: nothing was predicted.")
    return math.exp(nll / count)


def copy_probe_score(model, tok, probe: list[dict], generate: bool = False, temperature: float = 0.0,
                     seed: int = 0) -> dict:
    """Share of restatements the model completes exactly: {"name", "amount", "all", "verdicts"}.

    probe: rows {"prompt", "answer", "kind"} from labkit.corpus.copy_probe. With generate=False the
    check is teacher-forced (every answer token is the argmax), which is the same as greedy decoding
    over the answer span; with generate=True the model really generates (greedily, or sampling at
    TEMPERATURE > 0 from torch's generator seeded with SEED) and the text is compared, and the answer
    must not run on into more digits. "verdicts": one bool per probe row, in order (for stats.mcnemar).
    """
    import torch

    was_training = model.training
    model.eval()
    hits: dict[str, list[bool]] = {}
    verdicts: list[bool] = []
    dev = _device(model)
    sampling = {"do_sample": True, "temperature": float(temperature), "top_k": 0} if temperature > 0 else {"do_sample": False}
    if temperature > 0:
        torch.manual_seed(seed)
    with torch.no_grad():
        for ex in probe:
            start = document_start(tok)
            p_ids = start + tok(ex["prompt"], add_special_tokens=False)["input_ids"]
            full = tok(ex["prompt"] + " " + ex["answer"], add_special_tokens=False)["input_ids"]
            a_ids = full[len(p_ids) - len(start):]
            if generate:
                x = torch.tensor([p_ids], device=dev)
                out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=len(a_ids) + 2,
                                     pad_token_id=tok.pad_token_id, **sampling)
                # the new text is what decoding the whole adds to the decoded prompt: decoding the new ids
                # alone loses the leading space with tokenizers that strip it (Llama 2's, Mistral's)
                text = tok.decode(out[0])[len(tok.decode(p_ids)):]
                rest = text[len(ex["answer"]) + 1:]
                runs_on = rest[:1].isdigit() or (rest[:1] == "," and rest[1:2].isdigit())
                ok = text.startswith(" " + ex["answer"]) and not runs_on
            else:
                x = torch.tensor([p_ids + a_ids], device=dev)
                pred = model(x).logits[0, len(p_ids) - 1:-1].argmax(-1).cpu()
                ok = bool((pred == torch.tensor(a_ids)).all())
            hits.setdefault(ex["kind"], []).append(ok)
            verdicts.append(ok)
    model.train(was_training)
    res = {k: sum(v) / len(v) for k, v in hits.items()}
    res["all"] = sum(verdicts) / max(1, len(verdicts))
    res["verdicts"] = verdicts
    return res


def forward_times(models: dict, input_ids, repeats: int = 20, warmup: int = 3) -> dict:
    """Wall times of no-grad forward passes over INPUT_IDS (batch, seq) for each of MODELS ({name: model}).

    The models take turns (round i times every model once, after WARMUP rounds, starting with the i-th model
    so that none always runs first), so a slow spell of the machine (the OS, another process) falls on all of
    them alike and the per-round ratios stay fair; compare
    two models by those ratios (stats.mean_interval of times[a][i] / times[b][i]), not by one median each.
    Returns {name: [seconds of round 1, ..., seconds of round REPEATS]}.
    """
    import time

    import torch

    guard.positive_int("repeats", repeats, "20", about="the timed rounds")
    if not models:
        raise ValueError("forward_times needs at least one model, as {name: model}.")
    times = {name: [] for name in models}
    with torch.no_grad():
        names = list(models)
        for i in range(warmup + repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:
                model = models[name]
                t0 = time.perf_counter()
                model(input_ids)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    return times


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
    if not (target != IGNORE_INDEX).any():
        raise ValueError("every label is -100: there is no token to score.")
    nll = F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX, reduction="mean")
    return math.exp(nll.item()) if torch.isfinite(nll) else float("inf")


def normalize_answer(text: str) -> str:
    """Lower-case, strip and collapse runs of whitespace: "  Risk:   HIGH\\n" -> "risk: high".

    Punctuation is kept on purpose: in the course's answers (JSON, "Risk: high") it is content.
    """
    return " ".join(str(text).casefold().split())


def exact_matches(predictions: list[str], references: list[str], normalize: bool = True) -> list[bool]:
    """For each prediction, is it equal to its reference (after normalize_answer if NORMALIZE, else
    as written)? predictions, references: equally long lists of strings. The course's one exact match:
    exact_match, the SFT and PPO scores and the RL reward (labkit.rewards.exact_reward) all use it."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if not predictions:
        raise ValueError("exact_match needs at least one prediction.")
    norm = normalize_answer if normalize else (lambda s: s)
    return [norm(p) == norm(r) for p, r in zip(predictions, references)]


def exact_match(predictions: list[str], references: list[str], normalize: bool = True) -> float:
    """The share of PREDICTIONS equal to their REFERENCES (after normalize_answer if NORMALIZE).

    predictions, references: equally long lists of strings. Returns a float in [0, 1].
    """
    hits = exact_matches(predictions, references, normalize)
    return sum(hits) / len(hits)


# ---------------------------------------------------------------------------------------------
# Greedy answers and their held-out scores (lessons 02, 06, 13 and on)


def answer(model, tok, prompts: list[str], max_new_tokens: int = 48, batch_size: int = 16,
           adapter_names: list[str] | None = None) -> list[str]:
    """Greedy answers to PROMPTS (already rendered by the chat template), each cut at the first stop token
    (the template's turn end or an EOS id of the tokenizer or MODEL's generation config; labkit.chat).
    adapter_names: for a peft MODEL, the adapter of each prompt (peft's mixed batches; labkit.ship)."""
    import torch

    stop = stop_token_ids(tok, model)
    cut = stop_strings(tok) + ([tok.pad_token] if tok.pad_token else [])
    cut += [t for t in tok.convert_ids_to_tokens(stop) if t in tok.all_special_tokens]  # any special stop id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = encode_prompts(tok, prompts[i:i + batch_size], device)
            route = {} if adapter_names is None else {"adapter_names": list(adapter_names[i:i + batch_size])}
            with torch.no_grad():
                gen = generate(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                               do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id, top_k=None,
                               top_p=None, temperature=None, **route)   # model.generate, prompt tuning included
            for row in gen[:, enc["input_ids"].shape[1]:]:
                text = tok.decode(row, skip_special_tokens=False)
                for s in cut:
                    text = text.split(s)[0]
                out.append(text.strip())
    finally:
        model.train(was_training)
    return out


def dti_value(text: str) -> int | None:
    """The percentage a DTI answer ends on ("... = 30%." -> 30), or None when there is none."""
    import re

    m = re.search(r"=\s*(\d+)\s*%\.?\s*$", text.strip())
    return int(m.group(1)) if m else None


def score(model, tok, examples, max_new_tokens: int = 48, batch_size: int = 16) -> dict:
    """Held-out scores of instruction EXAMPLES ({"task", "instruction", "input", "output"} rows),
    answered greedily BATCH_SIZE prompts at a time (answer()).

    Returns {"exact": share answered exactly, "format": share in the task's answer format,
    "by_task": {task: {"exact", "format", "n"}}, "answers": the generated answers, "right": per example,
    answered exactly (for a paired test of two models on the same examples, labkit.stats.mcnemar)}. The DTI task also
    gets "value": the share whose final percentage is right whatever the wording (dti_value).
    """

    rows = list(examples)
    if not rows:
        raise ValueError("score needs at least one example.")
    prompts = [to_prompt_completion(r, tok)["prompt"] for r in rows]
    got = answer(model, tok, prompts, max_new_tokens, batch_size=batch_size)
    hits = exact_matches(got, [r["output"].strip() for r in rows], normalize=False)  # answers come stripped
    by_task: dict[str, dict] = {}
    for r, g, hit in zip(rows, got, hits):
        t = by_task.setdefault(r["task"], {"exact": 0, "format": 0, "n": 0})
        t["n"] += 1
        t["exact"] += hit
        t["format"] += answer_format_ok(r["task"], g)
        if r["task"] == "dti":
            t["value"] = t.get("value", 0) + (dti_value(g) is not None and dti_value(g) == dti_value(r["output"]))
    for t in by_task.values():
        t["exact"], t["format"] = t["exact"] / t["n"], t["format"] / t["n"]
        if "value" in t:
            t["value"] /= t["n"]
    n = len(rows)
    return {"exact": sum(t["exact"] * t["n"] for t in by_task.values()) / n,
            "format": sum(t["format"] * t["n"] for t in by_task.values()) / n,
            "by_task": by_task, "answers": got, "right": list(hits)}


def score_table(results: dict) -> str:
    """A Markdown table of score() results side by side: one row per task, exact and format per model.

    results: {"model name": score(...) output}. DTI also shows its value (the final percentage).
    """
    if not results:
        raise ValueError("score_table needs at least one result.")
    names = list(results)
    tasks = list(next(iter(results.values()))["by_task"])
    head = "| task | n | " + " | ".join(f"{n}: exact | {n}: format" for n in names) + " |"
    rule = "|---|---|" + "---|---|" * len(names)
    lines = [head, rule]

    def pct(x):
        return f"{100 * x:.0f}%"

    for t in tasks:
        cells = [f"{pct(r['by_task'][t]['exact'])} | {pct(r['by_task'][t]['format'])}" for r in results.values()]
        lines.append(f"| {t} | {results[names[0]]['by_task'][t]['n']} | " + " | ".join(cells) + " |")
        if "value" in results[names[0]]["by_task"][t]:
            vals = [f"{pct(r['by_task'][t]['value'])} | " for r in results.values()]
            lines.append(f"| {t}: value only | | " + " | ".join(vals) + " |")
    cells = [f"{pct(r['exact'])} | {pct(r['format'])}" for r in results.values()]
    lines.append("| **all** | " + str(sum(v["n"] for v in results[names[0]]["by_task"].values())) + " | "
                 + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Lesson 13: overlap metrics (token F1, ROUGE-L), format validity, win rate


def _metric_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: rouge-score's default tokenizer (no stemming).

    "Risk: HIGH" -> ["risk", "high"]; "$1,500" -> ["1", "500"].
    """
    import re

    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}: {text!r}.")
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1: the harmonic mean of precision and recall of shared tokens (with counts).

    Tokens are _metric_tokens (lower-cased letters and digits). Two empty answers score 1, one empty 0.
    """
    from collections import Counter

    p, r = _metric_tokens(prediction), _metric_tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence of A and B (dynamic programming, O(len(a)·len(b)))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> dict:
    """ROUGE-L of one prediction: {"precision", "recall", "f1"} from the longest common subsequence.

    precision = LCS / len(prediction tokens), recall = LCS / len(reference tokens), f1 their harmonic
    mean; the same numbers as rouge_score.RougeScorer(["rougeL"]) without stemming.
    """
    p, r = _metric_tokens(prediction), _metric_tokens(reference)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    precision, recall = lcs / len(p), lcs / len(r)
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / (precision + recall)}


def mean_score(metric, predictions: list[str], references: list[str]) -> float:
    """The mean of METRIC(prediction, reference) over the pairs (for rouge_l, its f1)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if not predictions:
        raise ValueError("mean_score needs at least one prediction.")
    values = [metric(p, r) for p, r in zip(predictions, references)]
    return sum(v["f1"] if isinstance(v, dict) else v for v in values) / len(values)


def format_validity(tasks, answers: list[str]) -> float:
    """The share of ANSWERS in their task's answer format (labkit.data.answer_format_ok), values ignored.

    tasks: one task name for all answers, or a list with one task per answer.
    """

    tasks = [tasks] * len(answers) if isinstance(tasks, str) else list(tasks)
    if len(tasks) != len(answers):
        raise ValueError(f"{len(tasks)} tasks but {len(answers)} answers.")
    if not answers:
        raise ValueError("format_validity needs at least one answer.")
    return sum(answer_format_ok(t, a) for t, a in zip(tasks, answers)) / len(answers)


def win_rate(score_fn, prompts: list[str], answers_a: list[str], answers_b: list[str], tie_margin: float = 0.0) -> dict:
    """How often answer A beats answer B for the same prompt, judged by SCORE_FN(prompt, answer) -> float.

    SCORE_FN is any judge: a reward model, an LLM-as-judge's score, a rule. A wins when its score is
    more than TIE_MARGIN above B's; within the margin it is a tie. Returns {"wins", "ties", "losses",
    "n", "win_rate"} with win_rate = (wins + ties / 2) / n (0.5: no difference).
    """
    if not (len(prompts) == len(answers_a) == len(answers_b)):
        raise ValueError(f"need one answer of each system per prompt; got {len(prompts)} prompts, "
                         f"{len(answers_a)} answers A and {len(answers_b)} answers B.")
    if not prompts:
        raise ValueError("win_rate needs at least one prompt.")
    return win_rate_from_scores([score_fn(p, a) for p, a in zip(prompts, answers_a)],
                                [score_fn(p, b) for p, b in zip(prompts, answers_b)], tie_margin, prompts)


def win_rate_from_scores(scores_a, scores_b, tie_margin: float = 0.0, prompts: list[str] | None = None) -> dict:
    """win_rate from scores already computed (one per prompt for each system, e.g. a reward model's
    batched scores): the course's one win rate. PROMPTS, if given, only name a NaN score's prompt."""
    scores_a, scores_b = [float(s) for s in scores_a], [float(s) for s in scores_b]
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError(f"win_rate needs one score of each system per prompt, at least one; got "
                         f"{len(scores_a)} and {len(scores_b)}.")
    if not tie_margin >= 0:
        raise ValueError(f"tie_margin must be >= 0; got {tie_margin!r}.")
    wins = ties = 0
    for i, (a, b) in enumerate(zip(scores_a, scores_b)):
        d = a - b
        if math.isnan(d):
            where = f"prompt {prompts[i][:60]!r}" if prompts else f"prompt {i}"
            raise ValueError(f"the judge returned NaN for {where}.")
        wins += d > tie_margin
        ties += abs(d) <= tie_margin
    n = len(scores_a)
    return {"wins": wins, "ties": ties, "losses": n - wins - ties, "n": n, "win_rate": (wins + ties / 2) / n}


def pairwise_win_rate(prefer_fn, prompts: list[str], answers_a: list[str], answers_b: list[str]) -> dict:
    """Win rate from a PAIRWISE judge, asked in both orders to cancel its position bias.

    prefer_fn(prompt, first, second) -> probability that FIRST is the better answer (an LLM judge shown
    two answers). Returns {"win_rate": mean over both orders of P(A better), "first_position_rate":
    how often the judge prefers whichever answer is shown first (0.5 = no position bias),
    "consistent": share of prompts where both orders agree on the winner}.
    """
    if not (len(prompts) == len(answers_a) == len(answers_b)) or not prompts:
        raise ValueError(f"need one answer of each system per prompt (and at least one prompt); got "
                         f"{len(prompts)}, {len(answers_a)} and {len(answers_b)}.")
    p_ab = [float(prefer_fn(p, a, b)) for p, a, b in zip(prompts, answers_a, answers_b)]
    p_ba = [float(prefer_fn(p, b, a)) for p, a, b in zip(prompts, answers_a, answers_b)]
    n = len(prompts)
    return {"win_rate": sum(x + (1 - y) for x, y in zip(p_ab, p_ba)) / (2 * n),
            "first_position_rate": sum(x + y for x, y in zip(p_ab, p_ba)) / (2 * n),
            "consistent": sum((x > 0.5) == (y < 0.5) for x, y in zip(p_ab, p_ba)) / n}

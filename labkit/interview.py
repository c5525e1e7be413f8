"""Interview prep (lesson 19): open-ended questions first, then the parts that can be checked.

    from labkit.interview import ask, reveal, quiz, index
    ask("lora")                     # the question, as an interviewer asks it
    answer = "..."                  # you write your answer
    reveal("lora", answer)          # the key points you touched, a model answer, the figure that backs it,
                                    # and the follow-up an interviewer asks next
    quiz("q19_which_rank", "b")     # labkit.check.quiz, then where the course proves the answer
    index()                         # every lesson's exercise notebook, with its quizzes and checks

The open questions are data (labkit/interview_open.py), and so is the quiz deck
(labkit/assets/data/interview_deck.jsonl, `deck_rows`); labkit/checks/lesson19.py registers the deck's
questions and the code drills with labkit.check. The drills' reference implementations are below (`lora_linear`,
`causal_attention`, `top_p_probs`, `dpo_mean_loss`, `mean_pass_at_k`), each tested against the library
that does the same (peft, torch's attention, transformers' top-p warper, labkit's DPO and pass@k).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import check
from .check import registry
from .course import syllabus
from .interview_open import OPEN

_MISSING = object()
QUESTIONS = {q["id"]: q for q in OPEN}


# ----------------------------------------------------------------------------- open questions


@dataclass
class Card:
    """What ask() and reveal() show: plain text, or a box in Jupyter (blue: nothing judged)."""

    text: str
    html: str = ""

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, p, cycle):
        p.text(self.text)

    def _repr_html_(self) -> str:
        return ('<div style="border-left:4px solid #0b57d0;background:#e8f0fe;padding:6px 10px;'
                f'white-space:pre-wrap">{self.html or html.escape(self.text)}</div>')


def _question(qid: str) -> dict:
    if qid not in QUESTIONS:
        raise ValueError(f"no open question {qid!r}; the questions are: {', '.join(QUESTIONS)}.")
    return QUESTIONS[qid]


def ask(qid: str) -> Card:
    """The open question QID as an interviewer asks it, and what to do next."""
    q = _question(qid)
    return Card(f"Interviewer: {q['question']}\n(write your answer in `answer` below, in your own words, "
                f"then run reveal({qid!r}, answer))")


def key_points(qid: str, answer: str) -> list[tuple[str, bool]]:
    """[(point, touched)]: each key point of QID's model answer and whether ANSWER mentions any of its words
    (a case-insensitive substring test: a reminder of what a full answer covers, not a grade)."""
    text = " ".join(str(answer).casefold().split())
    return [(label, any(w.casefold() in text for w in words)) for label, words in _question(qid)["points"]]


def _blank(answer) -> bool:
    return answer is None or answer is Ellipsis or not str(answer).strip()


def reveal(qid: str, answer: Any = None) -> Card | check.Result:
    """Once you have written ANSWER: the key points it touched, the model answer, the lesson figure that
    backs it and the interviewer's follow-up. Before that, a neutral "not answered yet"."""
    q = _question(qid)
    if _blank(answer):
        return check.Result(False, f"… {qid}: not answered yet\n  write your answer in `answer` above first "
                                   f"(a few sentences), then run this cell again", qid)
    points = key_points(qid, answer)
    hit = sum(t for _, t in points)
    lines = [f"Your answer touched {hit} of {len(points)} key points: "
             + "; ".join(f"{'✔' if t else '·'} {label}" for label, t in points),
             f"A model answer: {q['answer']}",
             f"Backed by: {q['figure']}.",
             f"Follow-up: {q['follow_up']}",
             f"  (a short answer: {q['follow_up_answer']})"]
    nxt = q["then"]
    lines.append(f"Then: {'quiz' if nxt.startswith('q19_') else 'check'}({nxt!r}, ...) below.")
    h = [html.escape(lines[0]), f"<b>A model answer</b>: {html.escape(q['answer'])}",
         f"<b>Backed by</b>: {html.escape(q['figure'])}.", f"<b>Follow-up</b>: {html.escape(q['follow_up'])}",
         f"<details><summary>a short answer to the follow-up</summary>{html.escape(q['follow_up_answer'])}</details>",
         html.escape(lines[-1])]
    return Card("\n".join(lines), "<br>".join(h[:4]) + h[4] + h[5])


# ----------------------------------------------------------------------------- the quiz deck


DECK_FILE = Path(__file__).resolve().parent / "assets" / "data" / "interview_deck.jsonl"


@lru_cache(maxsize=None)
def _deck_rows() -> tuple:
    return tuple(json.loads(line) for line in DECK_FILE.read_text(encoding="utf-8").splitlines() if line.strip())


def deck_rows() -> list[dict]:
    """Lesson 19's quiz deck as data (labkit/assets/data/interview_deck.jsonl; labkit/checks/lesson19.py
    registers each row as a question): id, topic, where, why, text, answer_hash, and choices and feedback
    (a choice question) or rtol (a number)."""
    return [dict(r) for r in _deck_rows()]


def _explanations() -> dict:
    return {r["id"]: (r["where"], r["why"]) for r in _deck_rows()}


def explain(question_id: str) -> tuple[str, str]:
    """(where, why) for a lesson-19 question; ValueError naming the id when there is none."""
    table = _explanations()
    if question_id not in table:
        raise ValueError(f"no explanation for {question_id!r}; lesson 19's questions are: {', '.join(table)}.")
    return table[question_id]


def quiz(question_id: str, answer: Any = _MISSING) -> check.Result:
    """labkit.check.quiz, with the lesson and section that prove the answer once you have answered."""
    if answer is _MISSING:
        return check.quiz(question_id)
    result = check.quiz(question_id, answer)
    if result.message.startswith("…"):  # not answered yet: nothing to add
        return result
    try:
        where, why = explain(question_id)
    except Exception:  # a question of another lesson: nothing to add, and never raise into the kernel
        return result
    extra = f"\n  see:     {where}" + (f"\n  why:     {why}" if result.passed else "")
    return check.Result(result.passed, result.message + extra, result.exercise, result.case, result.output)


def deck(topic: str | None = None) -> dict[str, list[str]]:
    """{topic: [question ids]} of lesson 19's quiz deck, in order; TOPIC keeps one (ValueError naming the known ones)."""
    out: dict[str, list[str]] = {}
    for r in _deck_rows():
        out.setdefault(r["topic"], []).append(r["id"])
    if topic is not None:
        if topic not in out:
            raise ValueError(f"unknown topic {topic!r}; choose one of {sorted(out)}.")
        return {topic: out[topic]}
    return out


def coverage() -> dict[str, list[str]]:
    """{lesson number: the open questions and deck questions backed by it}, from their "lessons" and "where"."""
    import re

    out: dict[str, list[str]] = {}
    for q in OPEN:
        for n in q["lessons"]:
            out.setdefault(n, []).append(q["id"])
    for qid, (where, _) in _explanations().items():
        for n in dict.fromkeys(re.findall(r"lesson (\d\d)", where)):
            out.setdefault(n, []).append(qid)
    return dict(sorted(out.items()))


def right_choice(question_id: str) -> str:
    """The right letter of a choice question, found by asking quiz() each letter (answers are stored hashed).
    Counts as attempts in the progress file: for tests and maintainers, not for the lesson."""
    q = registry.get(question_id)
    return next(letter for letter in "abcdefghij"[:len(q.choices)] if check.quiz(question_id, letter).passed)


def choice_balance(question_ids) -> dict:
    """How guessable the right letters of QUESTION_IDS' choice questions are: n; positions {letter: count};
    key_longest, the number of questions whose right choice is at least as long as every other one; and
    chance, the share of longest keys a random position would give (mean of 1/k)."""
    positions: dict[str, int] = {}
    n = longest = 0
    chance = 0.0
    for qid in question_ids:
        q = registry.get(qid)
        if getattr(q, "kind", None) != "choice":
            continue
        right = right_choice(qid)
        lengths = [len(c) for c in q.choices]
        n += 1
        positions[right] = positions.get(right, 0) + 1
        longest += lengths["abcdefghij".index(right)] == max(lengths)
        chance += 1 / len(q.choices)
    return {"n": n, "positions": dict(sorted(positions.items())), "key_longest": longest,
            "chance": chance / n if n else 0.0}


# ----------------------------------------------------------------------------- every lesson's exercises


def _count(items, one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


@dataclass
class Index:
    rows: list  # (number, title, notebook path, [quiz ids], [exercise ids])

    def __repr__(self) -> str:
        lines = []
        for number, title, path, quizzes, drills in self.rows:
            lines.append(f"{number} {title}: {path} ({_count(quizzes, 'quiz', 'quizzes')}, "
                         f"{_count(drills, 'checked function', 'checked functions')})")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))

    def _repr_html_(self) -> str:
        cells = ["<tr><th>lesson</th><th>exercise notebook</th><th>quizzes</th><th>checked functions</th></tr>"]
        for number, title, path, quizzes, drills in self.rows:
            cells.append(f'<tr><td>{number} · {html.escape(title)}</td><td><a href="../{path}">{html.escape(path)}'
                         f'</a></td><td>{", ".join(quizzes) or "–"}</td><td>{", ".join(drills) or "–"}</td></tr>')
        return '<table style="font-size:90%">' + "".join(cells) + "</table>"


def _notebook_of(stem: str, root: Path) -> str:
    """exercises/STEM_exercises.ipynb, or the lesson itself (notebooks/STEM.ipynb) when its checks live in the
    lesson (a checkout without that exercise notebook); paths relative to the course's root."""
    exercises = f"exercises/{stem}_exercises.ipynb"
    if (root / exercises).exists() or not (root / "notebooks" / f"{stem}.ipynb").exists():
        return exercises
    return f"notebooks/{stem}.ipynb"


def index(rows: list[dict] | None = None, root: Path | None = None) -> Index:
    """Every lesson's exercise notebook (exercises/NN_stem_exercises.ipynb, or the lesson notebook where its
    checks live in the lesson) with the quiz questions and the checked functions it holds, from labkit's
    registry and the course map (labkit.course.syllabus). Lessons with none registered are left out."""
    root = syllabus.ROOT if root is None else Path(root)
    registry.load()
    rows = syllabus.load() if rows is None else rows
    out = []
    for r in rows:
        quizzes = [q.id for q in registry.QUESTIONS.values() if q.lesson == r["number"]]
        drills = [e.id for e in registry.EXERCISES.values() if e.lesson == r["number"]]
        if quizzes or drills:
            out.append((r["number"], r["title"], _notebook_of(r["stem"], root), quizzes, drills))
    return Index(out)


# ----------------------------------------------------------------------------- the drills' references


def lora_linear(x, W, A, B, alpha, r, rslora=False):
    """A LoRA linear layer without bias. x: (..., d_in); W: (d_out, d_in); A: (r, d_in); B: (d_out, r).
    Returns x Wᵀ + s · x Aᵀ Bᵀ, s = alpha/r (alpha/sqrt(r) if RSLORA), shape (..., d_out); B·A never formed."""
    scale = alpha / math.sqrt(r) if rslora else alpha / r
    return x @ W.T + scale * ((x @ A.T) @ B.T)


def causal_attention(q, k, v):
    """Scaled dot-product attention with a causal mask. q, k, v: (batch, heads, seq, d).
    Scores q kᵀ / sqrt(d); -inf above the diagonal (position i sees j <= i); softmax; times v. Returns (batch, heads, seq, d)."""
    import torch

    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    seq = q.shape[-2]
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=q.device), diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


def top_p_probs(logits, temperature, top_p):
    """The distribution sampling draws from. logits: (vocab,) or (batch, vocab); temperature > 0; 0 < top_p <= 1.
    softmax(logits / temperature), then only the smallest set of most likely tokens whose probabilities add up
    to at least top_p (always the most likely one), renormalised; 0 elsewhere. Same shape as logits."""
    import torch

    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the more likely tokens
    keep_sorted = before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def dpo_mean_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """DPO's loss, as written on a whiteboard. Inputs: (B,) sequence log-probabilities; returns a float:
    mean over pairs of -log sigma(beta · ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)))."""
    import torch.nn.functional as F

    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return float(-F.logsigmoid(beta * margin).mean())


def mean_pass_at_k(n, correct, k):
    """pass@k over problems: N samples per problem, CORRECT[i] of them right for problem i. Returns the mean
    over problems of the unbiased 1 - C(n - c, k) / C(n, k) (1.0 when n - c < k)."""
    def one(c):
        return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)

    return sum(one(c) for c in correct) / len(correct)

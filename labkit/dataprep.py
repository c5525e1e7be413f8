"""Preparing fine-tuning data: duplicates, leaks and wrong answers, each found or made by a few lines.

- Exact duplicates after normalisation: two rows are the same when their texts are equal once case,
  Unicode forms and runs of whitespace are made alike; a hash of the normalised text finds them in one
  pass (``normalise``, ``text_hash``, ``exact_dedup``). Near-duplicates (one word or value changed) need
  MinHash, which lesson 07 runs with the ``datasketch`` library (``shingles`` gives it its word n-grams).
- Contamination: the share of a held-out text's word n-grams that also occur in the training data, the
  check benchmark reports run (GPT-3 used 13-grams, Llama 2 counted overlapping tokens): a row copied
  into training scores 1.0 (``words``, ``ngrams``, ``ngram_overlap``, ``contaminated``).
- Label noise: a share of rows whose answer is replaced by a wrong one in the same format, a label
  swapped for another label or one value in the answer changed (``wrong_answer``, ``add_noise``).
- A verifier: a program that accepts or rejects a model-written answer without the right one, by
  recomputing the value where a rule gives it (``verify``).

Rows are the course's instruction examples, ``{"task", "instruction", "input", "output"}``
(labkit.data); ``question`` is the text that identifies one (instruction and input).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata

from . import guard
from .corpus import money, pick_risk

LABELS = {"classify": ("application", "memo", "payslip", "receipt", "statement"),
          "risk": ("Risk: low", "Risk: medium", "Risk: high")}


def question(row: dict) -> str:
    """The text an example asks: its instruction and input (what a test item and a training row share)."""
    return row["instruction"] + ("\n" + row["input"] if row.get("input") else "")


# ----------------------------------------------------------------------------- exact duplicates

def normalise(text: str) -> str:
    """TEXT with the differences that do not change its meaning removed: Unicode compatibility forms
    (NFKC: a non-breaking space is a space), case (casefold) and runs of whitespace (one space, none at
    the ends). "Risk:  HIGH\\n" -> "risk: high"."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hash(text: str) -> str:
    """A short fingerprint of normalise(TEXT): equal for texts that differ only in case and spacing."""
    return hashlib.sha1(normalise(text).encode("utf-8")).hexdigest()[:16]


def exact_dedup(texts: list[str]) -> list[int]:
    """The indices of TEXTS to keep: the first of each group whose normalised texts are equal, in order.

    One pass with a set of hashes: O(len(texts)). [a, A, b, a ] -> [0, 2].
    """
    seen: set[str] = set()
    keep = []
    for i, text in enumerate(texts):
        h = text_hash(text)
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return keep


# ----------------------------------------------------------------------------- n-gram overlap

def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: "Income: $5,000" -> ["income", "5", "000"]."""
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of N consecutive words of TEXT (words()); a text shorter than N words is one n-gram."""
    w = words(text)
    if len(w) < n:
        return {tuple(w)} if w else set()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def shingles(text: str, n: int = 5) -> list[bytes]:
    """TEXT's word n-grams as bytes, the input MinHash hashes (datasketch's MinHash.update_batch)."""
    return sorted(" ".join(g).encode("utf-8") for g in ngrams(text, n))


def ngram_overlap(texts: list[str], reference: list[str], n: int = 8) -> list[float]:
    """For each of TEXTS, the share of its n-grams that occur anywhere in REFERENCE (the training data).

    1.0: every n-gram is in the training data (a copied row); 0.0: none is. Returns one float per text
    (0.0 for a text with no words). Texts that share a template share some n-grams, so read the whole
    distribution before choosing a threshold (``contaminated``).
    """
    n = guard.positive_int("n", n, "8 or 13", about="words per n-gram")
    seen = set().union(*(ngrams(t, n) for t in reference)) if reference else set()
    out = []
    for text in texts:
        grams = ngrams(text, n)
        out.append(len(grams & seen) / len(grams) if grams else 0.0)
    return out


def contaminated(texts: list[str], reference: list[str], n: int = 8, threshold: float = 0.8) -> list[bool]:
    """Is each of TEXTS contaminated: are at least THRESHOLD of its n-grams in REFERENCE? (one bool each)"""
    threshold = guard.fraction("threshold", threshold, "0.8", about="the share of n-grams", closed=True)
    return [share >= threshold for share in ngram_overlap(texts, reference, n)]


# ----------------------------------------------------------------------------- label noise

def wrong_answer(row: dict, rng: random.Random, pool: list[dict]) -> str:
    """A wrong answer for ROW in the right format: another label (classify, risk), else one value of the
    answer changed: a number moved by 5-50% (or by 1-9 when it is small), or a name taken from another
    row of POOL with the same instruction. Never equal to ROW's own output."""
    out = row["output"]
    if row["task"] in LABELS:
        return rng.choice([label for label in LABELS[row["task"]] if label != out])
    numbers = list(re.finditer(r"\d[\d,]*\d|\d", out))
    if numbers:
        m = rng.choice(numbers)
        return out[:m.start()] + _moved(m.group(), rng, money=out[m.start() - 1:m.start()] == "$") + out[m.end():]
    others = [r["output"] for r in pool if r["instruction"] == row["instruction"] and r["output"] != out]
    if not others:
        raise ValueError(f"no other answer to swap in for {out!r}: give a POOL with more rows of its question.")
    return rng.choice(others)


def _moved(number: str, rng: random.Random, money: bool) -> str:
    """NUMBER ("1,500" or "30") moved to a different value >= 0, written as before ($ amounts with commas)."""
    x = int(number.replace(",", ""))
    step = rng.randint(1, 9) if x < 100 else max(1, round(x * rng.uniform(0.05, 0.5)))
    y = x + step if x - step < 0 or rng.random() < 0.5 else x - step
    return f"{y:,}" if money or "," in number else str(y)


def add_noise(rows: list[dict], rate: float, seed: int = 0, pool: list[dict] | None = None) -> tuple[list[dict], list[int]]:
    """ROWS with round(RATE * len(ROWS)) answers made wrong (wrong_answer), the rows chosen at random;
    POOL (default ROWS) holds the rows whose names may be swapped in.

    Returns (noisy rows, a copy; the indices whose answer was changed, sorted). The other rows are
    unchanged; the same SEED gives the same rows.
    """
    rate = guard.fraction("rate", rate, "0.1 or 0.3", about="the share of answers made wrong")
    rng = random.Random(seed)
    flipped = sorted(rng.sample(range(len(rows)), k=round(rate * len(rows))))
    noisy = [dict(r) for r in rows]
    for i in flipped:
        noisy[i]["output"] = wrong_answer(rows[i], rng, rows if pool is None else pool)
    return noisy, flipped


# ----------------------------------------------------------------------------- a verifier for model-written answers

def verify(row: dict, answer: str) -> bool:
    """Does a program accept ANSWER to ROW's question, without knowing the right answer?

    dti and risk: the value is recomputed from the amounts in the input (the course's own rules); extract:
    the answer is JSON with three values, each copied from the input; qa: the answer is copied from the
    input; classify: only the format (one of the labels) can be checked. A verifier that accepts a wrong
    answer (a copied amount that is not the total) lets it through: measure what it keeps.
    """
    task, doc = row["task"], row["input"]
    if task == "classify":
        return answer in LABELS["classify"]
    if task in ("dti", "risk"):
        income, debts = _amount(doc, "Monthly income"), _amount(doc, "Monthly debts")
        if income is None or debts is None:
            return False
        if task == "dti":
            return answer == f"The debt-to-income ratio is {money(debts)} / {money(income)} = {round(100 * debts / income)}%."
        credit = _amount(doc, "Credit score")
        return credit is not None and answer == "Risk: " + pick_risk(debts / income, credit)
    if task == "extract":
        try:
            values = json.loads(answer)
        except ValueError:
            return False
        return isinstance(values, dict) and len(values) == 3 and all(isinstance(v, str) and v in doc for v in values.values())
    return bool(answer.strip()) and answer in doc


def _amount(doc: str, field: str) -> int | None:
    """The whole number after "FIELD: " in DOC ("Monthly income: $5,000" -> 5000), or None."""
    m = re.search(rf"{re.escape(field)}: \$?([\d,]+)", doc)
    return int(m.group(1).replace(",", "")) if m else None

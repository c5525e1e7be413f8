"""The course's datasets: instruction examples, preference pairs, held-out general text.

Every dataset is generated deterministically by ``labkit.corpus`` from a fixed seed per split, saved
as small JSONL files under ``labkit/assets/data/`` (``python -m labkit.data`` rewrites them) and
loaded as ``datasets.Dataset``. Train and evaluation splits use different seeds and are checked to
share no example (``tests/test_data.py``).

Instruction examples have the seed's format: ``{"task", "instruction", "input", "output"}``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from . import corpus
from .chat import prompt_completion
from .corpus import money

DATA_DIR = Path(__file__).resolve().parent / "assets" / "data"

# One seed per split: the generators never share a random stream between train and eval.
SEEDS = {"train": 1, "eval": 2, "test": 3}
SIZES = {"train": 1200, "eval": 200, "test": 200}

TASKS = ("extract", "classify", "risk", "dti", "qa")

# The seed's first example: the mortgage debt-to-income question.
DTI_EXAMPLE = {
    "task": "dti",
    "instruction": "Calculate the debt-to-income ratio for this mortgage applicant.",
    "input": "Monthly income: $5,000\nMonthly debts: $1,500",
    "output": "The debt-to-income ratio is $1,500 / $5,000 = 30%.",
}

DOC_TYPES = {"mortgage_application": "application", "pay_slip": "payslip", "bank_statement": "statement",
             "loan_memo": "memo", "receipt": "receipt"}


def _strip_restatements(text: str) -> str:
    """Drop the machine-readable record line: the model must find the values in the document itself."""
    return "\n".join(ln for ln in text.split("\n") if not ln.startswith("Record:"))


def _extract(rng: random.Random) -> dict:
    if rng.random() < 0.6:
        text, a = corpus.mortgage_application(rng)
        fields = {"name": a["name"], "income": money(a["income"]), "debts": money(a["debts"])}
        what = "the applicant's name, monthly income and monthly debts"
    else:
        text, a = corpus.pay_slip(rng)
        fields = {"employee": a["name"], "employer": a["employer"], "net": money(a["net"])}
        what = "the employee, the employer and the net pay"
    return {"task": "extract", "instruction": f"Extract {what} from this document as JSON.",
            "input": _strip_restatements(text), "output": json.dumps(fields)}


def _classify(rng: random.Random) -> dict:
    kind = rng.choice(list(DOC_TYPES))
    gen = getattr(corpus, kind)
    text = _strip_restatements(gen(rng)[0])
    labels = sorted(set(DOC_TYPES.values()))
    return {"task": "classify",
            "instruction": f"What kind of document is this? Answer with one word: {', '.join(labels)}.",
            "input": text, "output": DOC_TYPES[kind]}


def risk_row(rng: random.Random) -> dict:
    a = corpus.applicant(rng)
    pct = round(100 * a["dti"])
    text = (f"Borrower: {a['name']}\nMonthly income: {money(a['income'])}\nMonthly debts: {money(a['debts'])}\n"
            f"Credit score: {a['credit']}\nDebt-to-income ratio: {pct}%")
    return {"task": "risk", "instruction": "Rate the risk of this loan as low, medium or high.",
            "input": text, "output": f"Risk: {a['risk']}"}


def _dti(rng: random.Random) -> dict:
    a = corpus.applicant(rng)
    pct = round(100 * a["debts"] / a["income"])
    return {"task": "dti", "instruction": DTI_EXAMPLE["instruction"],
            "input": f"Monthly income: {money(a['income'])}\nMonthly debts: {money(a['debts'])}",
            "output": f"The debt-to-income ratio is {money(a['debts'])} / {money(a['income'])} = {pct}%."}


def _qa(rng: random.Random) -> dict:
    kind = rng.randrange(3)
    if kind == 0:
        text, a = corpus.bank_statement(rng)
        return {"task": "qa", "instruction": "Who is the account holder?", "input": _strip_restatements(text),
                "output": a["name"]}
    if kind == 1:
        text, a = corpus.receipt(rng)
        return {"task": "qa", "instruction": "What was the total?", "input": text, "output": money(a["total"])}
    text, a = corpus.loan_memo(rng)
    return {"task": "qa", "instruction": "What is the borrower's credit score?", "input": text,
            "output": str(a["credit"])}


GENERATORS = {"extract": _extract, "classify": _classify, "risk": risk_row, "dti": _dti, "qa": _qa}


def split_key(row: dict) -> str:
    """What must never be shared between splits: the question (instruction + input, or prompt, or text)."""
    return json.dumps([row.get("instruction"), row.get("input"), row.get("prompt"), row.get("text")])


def make_instructions(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """N instruction examples, task families in turn (extract, classify, risk, dti, qa, ...).

    Examples whose question is in EXCLUDE (another split's keys) or already drawn are skipped, so the
    splits stay disjoint and no question repeats within a split.
    """
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[dict] = []
    while len(out) < n:
        ex = GENERATORS[TASKS[len(out) % len(TASKS)]](rng)
        if split_key(ex) not in seen:
            seen.add(split_key(ex))
            out.append(ex)
    return out


# ----------------------------------------------------------------------------- formats

def user_message(example: dict) -> str:
    return example["instruction"] + ("\n\n" + example["input"] if example.get("input") else "")


def plain_text(example: dict, with_answer: bool = True) -> str:
    """The example as plain text for a base model, no chat template: "instruction\ninput\nAnswer: output".

    with_answer=False gives the prompt only, ending in "Answer:", for the model to continue.
    """
    prompt = example["instruction"] + "\n" + example["input"] + "\nAnswer:"
    return prompt + " " + example["output"] if with_answer else prompt


def to_messages(example: dict) -> list[dict]:
    """The example as chat messages (user asks, assistant answers)."""
    return [{"role": "user", "content": user_message(example)},
            {"role": "assistant", "content": example["output"]}]


def to_prompt_completion(example: dict, tokenizer) -> dict:
    """The example as {"prompt", "completion"} strings, both from the tokenizer's own chat template.

    prompt + completion is exactly what the template renders for the whole conversation (minus any
    whitespace after the final turn end), so training on it matches what the model sees when asked;
    see ``labkit.chat.split``.
    """

    return prompt_completion(tokenizer, user_message(example), example["output"])


def answer_format_ok(task: str, text: str) -> bool:
    """Is TEXT a well-formed answer for TASK (whatever its values)?"""
    text = text.strip()
    if task == "extract":
        try:
            return isinstance(json.loads(text), dict)
        except ValueError:
            return False
    if task == "classify":
        return text in DOC_TYPES.values()
    if task == "risk":
        return re.fullmatch(r"Risk: (low|medium|high)", text) is not None
    if task == "dti":
        return re.fullmatch(r"The debt-to-income ratio is \$[\d,]+ / \$[\d,]+ = \d+%\.", text) is not None
    if task == "qa":
        return len(text) > 0 and "\n" not in text
    raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}.")


# ----------------------------------------------------------------------------- preferences

def _bad_answer(rng: random.Random, ex: dict) -> str:
    """A rejected answer: plausible-looking but wrong, unhelpful or in the wrong format."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.choice(["I don't know.", "I cannot help with that.", "Please ask someone else."])
    if kind == 1 and ex["task"] in ("extract", "qa", "dti"):
        other = corpus.applicant(rng)
        wrong = ex["output"]
        for old in re.findall(r"\$[\d,]+\d|\b\d{3}\b", wrong) or []:
            wrong = wrong.replace(old, money(rng.randrange(100, 9999)) if old.startswith("$") else str(rng.randrange(300, 850)), 1)
        names = re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", wrong)
        for nm in names[:1]:
            wrong = wrong.replace(nm, other["name"])
        if wrong != ex["output"]:
            return wrong
    return ex["output"].upper() + " " + ex["output"].upper()


def make_preferences(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """Preference pairs {"prompt", "chosen", "rejected", "task"}: chosen is the correct answer."""
    rng = random.Random(seed)
    out = []
    for ex in make_instructions(n, seed + 100, exclude):
        out.append({"task": ex["task"], "prompt": user_message(ex), "chosen": ex["output"],
                    "rejected": _bad_answer(rng, ex)})
    return out


def make_general_text(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    rng = random.Random(seed)
    seen, out = set(exclude or ()), []
    while len(out) < n:
        row = {"text": corpus.general_text(rng)}
        if split_key(row) not in seen:
            seen.add(split_key(row))
            out.append(row)
    return out


def make_domain_text(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": corpus.domain_document(rng)} for _ in range(n)]


# ----------------------------------------------------------------------------- intents (encoder task)

N_TRAIN_TEMPLATES = 4

INTENTS = ("card_arrived", "card_missing", "transfer_done", "transfer_failed", "wants_loan", "no_loan")

_OPEN = ["", "Hi, ", "Hello, ", "Good morning. ", "Quick question: ", "Hey there. ", "Dear bank, ", "Sorry to bother you, but "]
_CLOSE = ["", " Thanks.", " Thank you!", " Please advise.", " Cheers.", " Regards."]
_WHEN = ["yesterday", "last week", "on Monday", "this morning", "two days ago", "on Friday", "last month"]
_CARD = ["card", "new card", "debit card", "replacement card", "credit card"]
_TRANSFER = ["transfer", "payment", "wire", "bank transfer"]
_THING = ["mortgage", "car loan", "personal loan", "home loan", "loan"]

_T = {
    "card_arrived": [
        "My {card} arrived {when}.", "I received my {card} {when}, all good.", "The {card} you sent came {when}.",
        "I got the {card} {when} and it works.", "Just confirming the {card} has arrived.",
        "The {card} reached me {when}.", "I have my {card} now, it came {when}."],
    "card_missing": [
        "My {card} has not arrived yet.", "I still haven't received my {card}.", "The {card} you sent never came.",
        "I did not get the {card} you posted {when}.", "Where is my {card}? It has not reached me.",
        "No {card} has arrived since you sent it {when}.", "I am still waiting for the {card}, it never arrived."],
    "transfer_done": [
        "The {transfer} of {amount} went through {when}.", "My {transfer} to Sam arrived {when}.",
        "I can see the {transfer} of {amount} was completed.", "The {transfer} I made {when} has reached my landlord.",
        "Just confirming the {amount} {transfer} was received.", "The {transfer} worked {when}, thanks."],
    "transfer_failed": [
        "The {transfer} of {amount} did not go through.", "My {transfer} to Sam never arrived.",
        "The {transfer} I made {when} was rejected.", "I sent {amount} {when} but the {transfer} failed.",
        "The {amount} {transfer} has not reached my landlord.", "The {transfer} bounced {when}, what happened?"],
    "wants_loan": [
        "I would like to apply for a {thing}.", "Can I get a {thing} of {amount}?",
        "I want to borrow {amount} with a {thing}.", "How do I apply for a {thing}?",
        "I am interested in taking out a {thing}.", "Please send me a {thing} application."],
    "no_loan": [
        "I no longer want the {thing}.", "Please cancel my {thing} application.",
        "I do not want to borrow {amount} after all.", "Stop my {thing} request, I changed my mind.",
        "I am not interested in a {thing} any more.", "Withdraw the {thing} application I sent {when}."],
}


def _intent(rng: random.Random, templates: str) -> dict:
    label = rng.choice(INTENTS)
    pool = _T[label][:N_TRAIN_TEMPLATES] if templates == "train" else _T[label][N_TRAIN_TEMPLATES:]
    body = rng.choice(pool).format(card=rng.choice(_CARD), transfer=rng.choice(_TRANSFER), thing=rng.choice(_THING),
                                        when=rng.choice(_WHEN), amount=f"${rng.randrange(50, 5000):,}")
    text = rng.choice(_OPEN) + body + rng.choice(_CLOSE)
    return {"text": text, "label": label}


def make_intents(n: int, seed: int, templates: str, exclude: set[str] | None = None) -> list[dict]:
    """N customer messages {"text", "label"} for intent classification (lesson 02's encoder task).

    templates="train" draws from the first four phrasings of each intent, "heldout" from the others:
    evaluation asks for new phrasings of the same intents, where a frozen encoder's features are
    not enough (negation: "arrived" vs "has not arrived").
    """
    rng = random.Random(seed)
    seen, out = set(exclude or ()), []
    while len(out) < n:
        row = _intent(rng, templates)
        if split_key(row) not in seen:
            seen.add(split_key(row))
            out.append(row)
    return out


# ----------------------------------------------------------------------------- files and loading

def _builders() -> dict:
    files: dict[str, list[dict]] = {}
    held: dict[str, set[str]] = {"instructions": set(), "preferences": set(), "general": set()}
    # Evaluation splits first; train then skips every question they hold.
    for split in ("test", "eval", "train"):
        s, n = SEEDS[split], SIZES[split]
        made = {
            "instructions": make_instructions(n, 1000 + s, held["instructions"]),
            "general": make_general_text(n // 4, 3000 + s, held["general"]),
        }
        made["preferences"] = make_preferences(n // 2, 2000 + s, held["instructions"])
        for kind, rows in made.items():
            files[f"{kind}_{split}.jsonl"] = rows
            held[kind] |= {split_key(r) for r in rows}
            if kind == "preferences":
                held["instructions"] |= {split_key({"instruction": r["prompt"].split("\n\n")[0], "input": r["prompt"].split("\n\n", 1)[1] if "\n\n" in r["prompt"] else ""}) for r in rows}
    files["domain_eval.jsonl"] = make_domain_text(100, 4002)
    held_intents: set[str] = set()
    for split, n, templates in (("test", 300, "heldout"), ("eval", 300, "heldout"), ("train", 480, "train")):
        files[f"intents_{split}.jsonl"] = make_intents(n, 5000 + SEEDS[split], templates, held_intents)
        held_intents |= {split_key(r) for r in files[f"intents_{split}.jsonl"]}
    return files


def write_all(folder: Path = DATA_DIR) -> list[Path]:
    """(Re)write every JSONL file of the course; deterministic, so git shows no diff."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in _builders().items():
        path = folder / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        tmp.replace(path)
        written.append(path)
    return written


def read_jsonl(name: str) -> list[dict]:
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `python -m labkit.data` to regenerate the course data.")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load(kind: str, split: str = "train", task: str | None = None, n: int | None = None):
    """A course dataset as a datasets.Dataset.

    kind: 'instructions', 'preferences', 'general', 'domain' (only 'eval') or 'intents';
    split: 'train', 'eval' or 'test'; task: keep one task family; n: the first N rows.
    """
    from datasets import Dataset

    kinds = ("instructions", "preferences", "general", "domain", "intents")
    if kind not in kinds:
        raise ValueError(f"Unknown dataset kind {kind!r}; choose one of {kinds}.")
    if split not in SEEDS:
        raise ValueError(f"Unknown split {split!r}; choose one of {tuple(SEEDS)}.")
    rows = read_jsonl(f"{kind}_{split}.jsonl")
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}.")
        rows = [r for r in rows if r.get("task") == task]
    if n is not None:
        rows = rows[:n]
    return Dataset.from_list(rows)


if __name__ == "__main__":
    for p in write_all():
        print(p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p)

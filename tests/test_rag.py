"""labkit.rag: the fact collection, prompts, and MiniLM retrieval with in-place document updates."""

import pytest

from labkit import rag


def test_collection_is_deterministic_and_questions_point_to_their_document():
    docs = rag.make_collection(n=5, seed=0)
    assert docs == rag.make_collection(n=5, seed=0) and docs != rag.make_collection(n=5, seed=1)
    assert len({d["id"] for d in docs}) == 5
    for d in docs:
        assert d["manager"] in d["text"] and d["fee"] in d["text"]
    qs = rag.make_questions(docs, "test")
    assert len(qs) == 10 and all(q["answer"] in next(d["text"] for d in docs if d["id"] == q["doc_id"]) for q in qs)
    train = rag.make_questions(docs, "train")
    assert {q["question"] for q in train}.isdisjoint({q["question"] for q in qs})  # paraphrases
    with pytest.raises(ValueError, match="wording 'x'"):
        rag.make_questions(docs, "x")
    with pytest.raises(ValueError, match="n must be"):
        rag.make_collection(n=0)


def test_update_fact_rewrites_the_text():
    doc = rag.make_collection(n=1, seed=0)[0]
    new = rag.update_fact(doc, "fee", "$99")
    assert "$99" in new["text"] and doc["fee"] not in new["text"] and new["id"] == doc["id"]
    assert doc["fee"] in doc["text"]  # the original is untouched
    with pytest.raises(ValueError, match="Unknown fact 'age'"):
        rag.update_fact(doc, "age", "3")


def test_prompts_and_reader_pairs(base):
    _, tok = base
    doc = rag.make_collection(n=1)[0]
    msg = rag.rag_message(doc, "Who?")
    assert msg.startswith(rag.RAG_INSTRUCTION) and doc["text"] in msg and msg.endswith("Question: Who?")
    assert rag.few_shot_message([{"question": "A?", "answer": "x"}], "B?") == "Question: A?\nAnswer: x\n\nQuestion: B?"
    pairs = rag.reader_training_pairs(tok, 20, seed=1)
    assert len(pairs) == 20 and pairs == rag.reader_training_pairs(tok, 20, seed=1)
    for p in pairs:
        answer = p["completion"][1:-len("<|end|>")]
        assert answer in p["prompt"]  # the answer is always in the passage: the reader learns to copy
    assert pairs[0]["prompt"].endswith("<|assistant|>")


@pytest.mark.slow
def test_retriever_finds_the_right_note_and_sees_updates():
    docs = rag.make_collection(n=12, seed=0)
    index = rag.Retriever()
    index.add(docs)
    qs = rag.make_questions(docs, "test")
    assert sum(index.search(q["question"])[0][0]["id"] == q["doc_id"] for q in qs) / len(qs) >= 0.9
    new = rag.update_fact(docs[3], "fee", "$77")
    index.replace(new)
    hit, score = index.search(rag.WORDINGS["test"]["fee"].format(city=docs[3]["city"]))[0]
    assert hit["fee"] == "$77" and -1 <= score <= 1
    with pytest.raises(ValueError, match="already in the index"):
        index.add([docs[0]])
    with pytest.raises(ValueError, match="k must be"):
        index.search("x", k=0)
    with pytest.raises(ValueError, match="no document 'nope'"):
        index.replace({"id": "nope", "text": "x"})

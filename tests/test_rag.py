"""labkit.rag: the fact collection, prompts, and MiniLM retrieval with in-place document updates."""

import pytest
import torch

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


def test_answer_leads_are_the_passages_own_words_before_each_value(base):
    """One source: every note writes rag.ANSWER_LEADS[kind] immediately before its value, so a led answer
    ("managed by Ana Ruiz") is a copy of the passage from its first word."""
    _, tok = base
    for doc in rag.make_collection(n=12, seed=3):
        for kind in rag.KINDS:
            assert rag.lead_answer(kind, doc[kind]) in doc["text"]
            assert rag.answer_value(rag.lead_answer(kind, doc[kind]), kind) == doc[kind]
            assert rag.answer_value(doc[kind], kind) == doc[kind], "a bare value stays as it is"
    assert rag.answer_value("costs $5", "manager") == "costs $5", "a lead counts only for its own kind"
    led = rag.reader_training_pairs(tok, 20, seed=1, lead=True)
    bare = rag.reader_training_pairs(tok, 20, seed=1)
    assert [p["prompt"] for p in led] == [p["prompt"] for p in bare]
    for p, b in zip(led, bare):
        value = b["completion"][1:-len("<|end|>")]
        answer = p["completion"][1:-len("<|end|>")]
        assert answer.endswith(value) and answer != value and answer in p["prompt"]
    with pytest.raises(ValueError, match="Unknown fact 'age'"):
        rag.lead_answer("age", "3")
    with pytest.raises(ValueError, match="Unknown fact 'age'"):
        rag.answer_value("3", "age")


def test_reader_and_fact_pairs_follow_each_hub_style_models_template(hub_model):
    """Lesson 15's SFT pairs with another model: the template's own prompt and turn end (never the bundled
    model's), BOS once in what the lesson counts as prompt tokens, and short enough that sft.train's
    default max_length (256) never cuts a completion (ChatML's default system turn makes them longest)."""
    from labkit import chat, models, sft

    kind, folder = hub_model
    tok = models.load_tokenizer(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    gen_prompt = chat.render_prompt(tok, "QQ_7").split("QQ_7")[-1]
    doc = rag.make_collection(n=1)[0]
    pairs = rag.reader_training_pairs(tok, 40, seed=1) + [rag.sft_pair(tok, q["question"], q["answer"])
                                                          for q in rag.make_questions([doc], "train")]
    for p in pairs:
        answer = chat.clean(tok, p["completion"])
        assert p["completion"] == chat.completion(tok, answer) and "<|end|>" not in p["completion"]
        assert p["prompt"].endswith(gen_prompt)
        f = sft.tokenize_example(tok, p["prompt"], p["completion"])
        assert len(f["input_ids"]) < 256
        trained = [i for i, lab in zip(f["input_ids"], f["labels"]) if lab != -100]
        assert answer in tok.decode(trained)
    prompt = rag.chat_prompt(tok, rag.rag_message(doc, "Who manages it?"))
    ids = chat.encode(tok, prompt)
    if kind == "gemma-style":  # the template writes <bos> and tok(prompt) would add a second one
        assert ids.count(tok.bos_token_id) == 1 and len(tok(prompt)["input_ids"]) == len(ids) + 1
    else:
        assert ids == tok(prompt)["input_ids"]


def test_top_k_ranks_by_cosine_similarity_best_first():
    docs = torch.tensor([[10.0, 0.0], [0.6, 0.8], [0.1, 0.9], [-0.5, 0.5]])
    query = torch.tensor([0.6, 0.8])
    # the long first document wins by dot product (6.0) but points elsewhere: cosine 0.6
    assert rag.top_k(query, docs, 2).tolist() == [1, 2]
    assert rag.top_k(query, docs, 4).tolist() == [1, 2, 0, 3]
    assert rag.top_k(query.unsqueeze(0), docs, 2).tolist() == [[1, 2]]  # (Q, D) -> (Q, k)
    assert rag.top_k(torch.tensor([[-1.0, 1.0], [1.0, 0.0]]), docs, 1).tolist() == [[3], [0]]


def test_top_k_matches_a_brute_force_ranking_and_ignores_lengths():
    g = torch.Generator().manual_seed(0)
    queries, docs = torch.randn(4, 16, generator=g), torch.randn(30, 16, generator=g)
    cos = torch.stack([torch.stack([torch.dot(q, d) / (q.norm() * d.norm()) for d in docs]) for q in queries])
    expected = [sorted(range(30), key=lambda j: -cos[i, j].item())[:5] for i in range(4)]
    assert rag.top_k(queries, docs, 5).tolist() == expected
    scaled = docs * torch.rand(30, 1, generator=g).mul(100).add(0.01)
    assert rag.top_k(queries * 7, scaled, 5).tolist() == expected
    assert rag.top_k(queries, docs, 5).dtype == torch.long


@pytest.mark.parametrize("query, docs, k, match", [
    (torch.zeros(3), torch.zeros(5, 3), 0, "k must be an integer between 1 and 5"),
    (torch.zeros(3), torch.zeros(5, 3), 6, "k must be"),
    (torch.zeros(3), torch.zeros(5, 3), 2.0, "k must be"),
    (torch.zeros(4), torch.zeros(5, 3), 1, "same D"),
    (torch.zeros(2, 2, 3), torch.zeros(5, 3), 1, r"query_emb must be \(Q, D\)"),
])
def test_top_k_rejects_bad_shapes_and_k(query, docs, k, match):
    with pytest.raises(ValueError, match=match):
        rag.top_k(query, docs, k)


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
    assert hit["fee"] == "$77" and hit["id"] == docs[3]["id"]
    # the ranking is rag.top_k's on the stored vectors, and the scores are cosine similarities
    query = qs[0]["question"]
    hits = index.search(query, k=3)
    best = rag.top_k(index.embed([query])[0], index.vectors, 3).tolist()
    assert [d["id"] for d, _ in hits] == [index.docs[i]["id"] for i in best]
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    with pytest.raises(ValueError, match="already in the index"):
        index.add([docs[0]])
    with pytest.raises(ValueError, match="k must be"):
        index.search("x", k=0)
    with pytest.raises(ValueError, match="no document 'nope'"):
        index.replace({"id": "nope", "text": "x"})


def test_copy_probe_shows_the_bundled_model_copies_after_the_passages_own_words(base):
    model, tok = base
    docs = rag.make_collection(n=12, seed=0)
    got = rag.copy_probe(model, tok, docs)
    assert list(got) == list(rag.COPY_CUES)
    own, label = got["the passage's own words: 'The <city> branch is managed by'"], got["a label: 'Manager:'"]
    assert own >= 0.75 and label <= 0.25, got  # why lesson 15's led reader copies: a cue that recurs
    one = rag.copy_probe(model, tok, docs[:2], {"fee": ("fee", "\nA replacement card at the {city} branch costs")})
    fee_cue = "the passage's own words: 'A replacement card at the <city> branch costs'"
    assert set(one) == {"fee"} and one["fee"] == 1.0 and got[fee_cue] >= 0.5, (one, got)  # measured 0.58
    with pytest.raises(ValueError, match="at least one note"):
        rag.copy_probe(model, tok, [])
    with pytest.raises(ValueError, match="fact kind must be one of"):
        rag.copy_probe(model, tok, docs[:1], {"x": ("city", "\nCity:")})


def test_described_questions_name_no_city_and_only_notes_told_apart_by_their_history():
    docs = rag.make_collection(seed=0)
    assert all(d["opening"] in d["text"] for d in docs)
    qs = rag.make_questions(docs, "described")
    unique = [d for d in docs if [x["opening"] for x in docs].count(d["opening"]) == 1]
    assert len(qs) == 2 * len(unique) < 2 * len(docs)  # this collection has notes that share a history
    for q in qs:
        doc = next(d for d in docs if d["id"] == q["doc_id"])
        assert doc["city"] not in q["question"] and doc["opening"] in q["question"] and q["answer"] == doc[q["kind"]]


def test_a_shorter_collection_is_a_prefix_of_the_whole_one():
    """The shipped fact adapter learned make_collection(seed=0); lesson 15 with N_DOCS < 30 asks a prefix."""
    whole = rag.make_collection(seed=0)
    assert rag.make_collection(n=7, seed=0) == whole[:7]
    rag._check_shipped_facts(whole[:7])
    with pytest.raises(ValueError, match="give FT_STEPS a positive number"):
        rag._check_shipped_facts(rag.make_collection(n=3, seed=1))


def test_change_facts_gives_new_values_and_rewrites_each_note_once():
    docs = rag.make_collection(n=6, seed=0)
    changed = rag.change_facts(docs, 4, seed=0)
    assert [c["changed"] for c in changed] == ["fee", "manager", "fee", "manager"]
    for old, new in zip(docs, changed):
        kind = new["changed"]
        assert new[kind] != old[kind] and new[kind] in new["text"] and old[kind] not in new["text"]
        other = rag.KINDS[1 - rag.KINDS.index(kind)]
        assert new[other] == old[other] and new["id"] == old["id"]
    assert rag.change_facts(docs, 4, seed=0) == changed and docs == rag.make_collection(n=6, seed=0)
    with pytest.raises(ValueError, match="n must be"):
        rag.change_facts(docs, 7)


def test_score_answers_reads_the_value_of_led_and_bare_answers():
    qs = [{"answer": "Ana Ruiz", "kind": "manager"}, {"answer": "$12", "kind": "fee"}, {"answer": "$5", "kind": "fee"}]
    got = rag.score_answers(["managed by Ana Ruiz", "$12", "costs $50"], qs)
    assert got["right"] == [True, True, False] and got["share"] == pytest.approx(2 / 3)
    assert got["manager"] == 1.0 and got["fee"] == 0.5
    assert "fee" not in rag.score_answers(["Ana Ruiz"], qs[:1])
    with pytest.raises(ValueError, match="2 answers for 3 questions"):
        rag.score_answers(["a", "b"], qs)


def test_prompt_cost_counts_prompt_tokens_as_the_model_sees_them(base):
    from labkit import chat

    model, tok = base
    doc = rag.make_collection(n=1)[0]
    short = [rag.chat_prompt(tok, "Who manages the branch?")] * 3
    long = [rag.chat_prompt(tok, rag.rag_message(doc, "Who manages the branch?"))] * 3
    a, b = rag.prompt_cost(model, tok, short, repeats=1), rag.prompt_cost(model, tok, long, repeats=1)
    assert a["tokens"] == len(chat.encode(tok, short[0])) and b["tokens"] == len(chat.encode(tok, long[0]))
    assert b["tokens"] > 3 * a["tokens"] and a["read_ms"] > 0 and b["read_ms"] > 0
    assert tok.padding_side == "right" and not model.training  # left as it found them
    with pytest.raises(ValueError, match="at least one prompt"):
        rag.prompt_cost(model, tok, [])


@pytest.mark.slow
def test_recall_at_k_counts_the_questions_whose_note_is_among_the_k_best():
    docs = rag.make_collection(seed=0)
    index = rag.Retriever()
    index.add(docs)
    for wording in ("test", "described"):
        qs = rag.make_questions(docs, wording)
        ranked = [[d["id"] for d, _ in index.search(q["question"], k=5)] for q in qs]
        expected = {k: sum(q["doc_id"] in r[:k] for q, r in zip(qs, ranked)) / len(qs) for k in (1, 3, 5)}
        assert rag.recall_at_k(index, qs, (5, 1, 3)) == pytest.approx(expected)
    assert rag.recall_at_k(index, rag.make_questions(docs, "test"), (1,))[1] == 1.0  # the city names the note
    assert rag.recall_at_k(index, rag.make_questions(docs, "described"), (1,))[1] < 0.5  # a year does not
    with pytest.raises(ValueError, match="at least one question"):
        rag.recall_at_k(index, [], (1,))


@pytest.mark.slow
def test_the_shipped_fact_adapter_memorised_its_trained_wording(base, load_script):
    """Lesson 15's closed-book fine-tune, measured here rather than read from its scores.json: the adapter has
    the script's settings, the trained wording is answered (the script recorded every fact), and each score
    scores.json reports (all, per fact kind, both wordings) is what this run measures, within one answer."""
    import copy
    import json

    model, tok = base
    docs = rag.make_collection(seed=rag.FACT_COLLECTION_SEED)
    path = rag.fact_adapter_dir()
    report = json.loads((path / "scores.json").read_text())
    config = json.loads((path / "adapter_config.json").read_text())
    assert {k: report[k] for k in rag.FACT_SETTINGS} == rag.FACT_SETTINGS
    assert (config["r"], config["lora_alpha"]) == (report["r"], report["alpha"])
    assert report["notes"] == len(docs) and report["collection_seed"] == rag.FACT_COLLECTION_SEED
    tuned, how = rag.fact_adapter(copy.deepcopy(model), tok, docs, steps=0)
    assert "shipped fact adapter" in how and "scripts/train_fact_adapter.py" in how
    assert f"{report['steps']} steps" in how
    exact = load_script("train_fact_adapter").exact
    for wording, key in (("train", "trained_wording"), ("test", "new_wording")):
        got = exact(tuned, tok, rag.make_questions(docs, wording))
        for part in ("all", *rag.KINDS):
            share = 1 / (len(docs) if part != "all" else 2 * len(docs))
            assert got[part] == pytest.approx(report[key][part], abs=share + 1e-9), (wording, part, got)
    assert report["trained_wording"]["all"] >= 0.95 > report["new_wording"]["all"]


@pytest.mark.slow
def test_fact_adapter_script_writes_a_loadable_adapter_and_its_scores(tmp_path, load_script):
    import json

    from labkit import adapters, models

    out = tmp_path / "adapter"
    report = load_script("train_fact_adapter").main(["--steps", "2", "--out", str(out), "--threads", "1"])
    assert report["steps"] == 2 and report["notes"] == 30 and report["train_examples"] == 60
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "scores.json"]
    saved = json.loads((out / "scores.json").read_text())
    assert saved["steps"] == 2 and set(saved["new_wording"]) == {"all", *rag.KINDS}
    model, _ = models.load_base(device="cpu")
    assert adapters.load(model, out) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"], "no temporary folder may be left"


def test_a_live_fact_adapter_for_another_model_says_so(hub_model, monkeypatch):
    """Any Hub model: FT_STEPS = 0 trains live (models.shipped_or_live) with its own template and targets."""
    from labkit import models

    monkeypatch.setattr(models, "LIVE_STEPS", 2)  # the behaviour, not the training, is under test
    _, folder = hub_model
    model, tok = models.load_base(folder, device="cpu")
    tuned, how = rag.fact_adapter(model, tok, rag.make_collection(n=2), steps=0, model=str(folder))
    assert "trained here" in how and "is not the bundled model" in how and "FT_STEPS" in how

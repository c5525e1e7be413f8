"""The bundled tokenizer gives a word one id wherever it stands, and round-trips any text."""

import random

import pytest


@pytest.fixture(scope="module")
def tok():
    from labkit import models

    return models.load_tokenizer()


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("before", [" ", '"', "\n", ": ", ', "'])
def test_a_name_has_one_id_wherever_it_stands(tok, before):
    ref = _ids(tok, "Applicant: Linda Garcia")[-2:]
    assert _ids(tok, f"x{before}Linda Garcia")[-2:] == ref


def test_digits_are_single_tokens(tok):
    pieces = [tok.decode([i]) for i in _ids(tok, "$4,200")]
    assert pieces == ["$", "4", ",", "2", "0", "0"]


@pytest.mark.parametrize("seed", range(5))
def test_decode_round_trips_text_with_quotes_and_newlines(tok, seed):
    rng = random.Random(seed)
    alphabet = list('abc XYZ"\n\n  ,.:$0123{}é') + ["Linda", " Garcia"]
    text = "".join(rng.choice(alphabet) for _ in range(200))
    assert tok.decode(_ids(tok, text)) == text


def test_chat_template_marks_the_assistant_reply(tok):
    msgs = [{"role": "user", "content": "Who is the account holder?"},
            {"role": "assistant", "content": "Linda Garcia"}]
    enc = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
    trained = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(trained).strip() == "Linda Garcia<|end|>"
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>")


def test_the_prompt_is_a_token_prefix_of_prompt_plus_answer(tok):
    """The generation prompt must tokenise the same alone and with its answer, for every example;
    otherwise SFT trains on a context the model never sees at inference."""
    from labkit import data

    for ex in data.load("instructions", "eval"):
        pc = data.to_prompt_completion(ex, tok)
        whole = tok.apply_chat_template(data.to_messages(ex), tokenize=False)
        assert whole.rstrip("\n") == pc["prompt"] + pc["completion"]
        p_ids, ids = tok(pc["prompt"])["input_ids"], tok(pc["prompt"] + pc["completion"])["input_ids"]
        assert ids[: len(p_ids)] == p_ids, ex["instruction"]

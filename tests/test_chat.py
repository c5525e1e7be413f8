"""What lesson 00 prints about a model comes from that model: chat.facts, models.is_bundled, and a copy probe
that does not depend on how a tokenizer decodes a leading space."""

import pytest

from labkit import chat, corpus, evaluate, models

# what each tokenizer and template really do (tests/hub_models.py builds them that way)
EXPECTED = {
    "bundled": dict(bos="<|endoftext|>", tokenizer_adds_bos=False, template_writes_bos=False,
                    document_start=["<|endoftext|>"], turn_end="<|end|>", answer_prefix=" "),
    "llama-chatml": dict(bos=None, tokenizer_adds_bos=False, template_writes_bos=False, document_start=[],
                         turn_end="<|im_end|>", answer_prefix="", generation_prompt="<|im_end|>\n<|im_start|>assistant\n"),
    "gpt2": dict(bos="<|endoftext|>", tokenizer_adds_bos=False, template_writes_bos=False,
                 document_start=["<|endoftext|>"], turn_end="<|endoftext|>", generation_prompt="\nAssistant:"),
    "gemma-style": dict(bos="<bos>", tokenizer_adds_bos=True, template_writes_bos=True, document_start=["<bos>"],
                        turn_end="<end_of_turn>", generation_prompt="<end_of_turn>\n<start_of_turn>model\n"),
}


@pytest.fixture(scope="module", params=list(EXPECTED))
def loaded(request, hub_models):
    kind = request.param
    lm, tok = models.load_base(None if kind == "bundled" else hub_models[kind], device="cpu")
    return kind, lm, tok


def test_facts_are_the_tokenizers_and_templates_own(loaded):
    kind, lm, tok = loaded
    f = chat.facts(tok, lm)
    for key, value in EXPECTED[kind].items():
        assert f[key] == value, (kind, key, f[key])
    assert f["chat_template"] and f["eos"] == tok.eos_token
    assert f["stop_tokens"] == tok.convert_ids_to_tokens(chat.stop_token_ids(tok, lm))
    assert f["turn_end"] in f["stop_tokens"]
    # the generation prompt is what a rendered prompt really ends with
    assert chat.render_prompt(tok, "Hello").endswith(f["generation_prompt"])


def test_facts_without_a_chat_template(hub_models):
    _, tok = models.load_base(hub_models["gpt2"], device="cpu")
    tok.chat_template = None
    f = chat.facts(tok)
    assert f["chat_template"] is False and f["turn_end"] is None and f["generation_prompt"] is None
    assert f["stop_tokens"] == ["<|endoftext|>"] and f["document_start"] == ["<|endoftext|>"]


def test_is_bundled(hub_models):
    assert models.is_bundled("bundled") and models.is_bundled(None)
    assert models.is_bundled(models.BASE_MODEL_DIR) and models.is_bundled(str(models.BASE_MODEL_DIR) + "/")
    assert not models.is_bundled(hub_models["gpt2"])
    assert not models.is_bundled("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not models.is_bundled("/no/such/folder")


class _StripsLeadingSpace:
    """The bundled tokenizer, decoding as Llama 2's and Mistral's do: a leading space of the decoded text
    is dropped (their decoder ends with Strip(start=1))."""

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)

    def decode(self, ids, **kwargs):
        text = self._tok.decode(ids, **kwargs)
        return text[1:] if text.startswith(" ") else text

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_the_generated_copy_probe_does_not_depend_on_a_decoded_leading_space(base):
    model, tok = base
    probe = corpus.copy_probe(12, seed=12345)
    plain = evaluate.copy_probe_score(model, tok, probe, generate=True)
    # the model card's copy probe scores 1.0 (200 restatements); on these 12 it copies every one too
    assert plain["all"] == 1.0 and all(plain["verdicts"]), plain
    assert evaluate.copy_probe_score(model, _StripsLeadingSpace(tok), probe, generate=True) == plain
    assert evaluate.copy_probe_score(model, tok, probe, generate=False) == plain

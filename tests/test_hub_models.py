"""The Hub-style fixture models (tests/hub_models.py) are what they claim to be: loadable offline, real
tokenizers of 8k tokens, each family's template and special-token conventions, cached builds, seeded weights."""

import json
import os

import pytest
import torch
from jinja2.exceptions import TemplateError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import hub_models as hm

USER = [{"role": "user", "content": "What is the risk for Linda Garcia?"}]
CHAT = USER + [{"role": "assistant", "content": "Low risk."}]
SYSTEM = [{"role": "system", "content": "Answer in one line."}] + CHAT
ARCH = {"llama-chatml": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "gemma-style": "GemmaForCausalLM"}
# what follows the generation prompt in the rendered conversation: the answer plus the template's turn end
COMPLETION = {"llama-chatml": "Low risk.<|im_end|>\n", "gpt2": " Low risk.<|endoftext|>",
              "gemma-style": "Low risk.<end_of_turn>\n"}
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def load(path):
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)


def render(tok, messages, gen):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def test_every_folder_loads_offline_as_a_hub_model(hub_model):
    kind, path = hub_model
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".jinja")) for f in files), files  # template in tokenizer_config
    assert json.loads((path / "tokenizer_config.json").read_text())["chat_template"]
    tok, lm = load(path)
    assert type(lm).__name__ == ARCH[kind] and json.loads((path / "config.json").read_text())["architectures"] == [
        ARCH[kind]]
    positions = lm.config.n_positions if kind == "gpt2" else lm.config.max_position_embeddings
    assert positions == hm.MAX_POSITIONS
    assert lm.config.num_hidden_layers == 2 and lm.config.hidden_size == 64
    assert sum(p.numel() for p in lm.parameters()) < 1_000_000  # tiny: every lesson must run on a 2-core CPU
    ids = tok.apply_chat_template(USER, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = lm(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tok))


def test_real_bpe_of_8k_tokens_with_leading_space_tokens(hub_model):
    kind, path = hub_model
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) >= 8192 and tok.vocab_size >= 8192
    assert json.loads((path / "config.json").read_text())["vocab_size"] == len(tok)
    assert tok.convert_ids_to_tokens(tok(" Garcia", add_special_tokens=False)["input_ids"]) == ["ĠGarcia"]
    text = "Applicant: Linda Garcia\nMonthly income: $4,200"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    digits = tok.convert_ids_to_tokens(tok(" 4200", add_special_tokens=False)["input_ids"])
    assert (digits == ["Ġ", "4", "2", "0", "0"]) if kind != "gpt2" else (len(digits) < 5)  # GPT-2 merges numbers


def test_prompt_is_a_prefix_and_the_completion_is_answer_plus_turn_end(hub_model):
    kind, path = hub_model
    tok = AutoTokenizer.from_pretrained(path)
    prompt, full = render(tok, USER, True), render(tok, CHAT, False)
    assert full.startswith(prompt) and full[len(prompt):] == COMPLETION[kind]
    assert "{% generation" not in tok.chat_template


def test_llama_chatml_is_smollm2s_template_without_bos(hub_models):
    tok, lm = load(hub_models["llama-chatml"])
    assert render(tok, USER, True) == (SMOL_SYSTEM + "<|im_start|>user\nWhat is the risk for Linda Garcia?<|im_end|>\n"
                                       "<|im_start|>assistant\n")
    assert render(tok, USER, False) == SMOL_SYSTEM + "<|im_start|>user\nWhat is the risk for Linda Garcia?<|im_end|>\n"
    assert render(tok, SYSTEM, True) == (
        "<|im_start|>system\nAnswer in one line.<|im_end|>\n<|im_start|>user\nWhat is the risk for Linda Garcia?"
        "<|im_end|>\n<|im_start|>assistant\nLow risk.<|im_end|>\n<|im_start|>assistant\n")
    assert tok.chat_template == hm.CHATML_TOOLS_TEMPLATE  # SmolLM2's, plus Qwen2.5's tool branches
    for conv, gen in ((USER, True), (USER, False), (SYSTEM, True), (SYSTEM, False)):  # no tools: SmolLM2's exactly
        assert render(tok, conv, gen) == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen,
                                                                 chat_template=hm.CHATML_TEMPLATE)
    assert tok.bos_token is None and tok.bos_token_id is None and lm.config.bos_token_id is None
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    text = render(tok, USER, True)
    assert tok(text)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]  # adds nothing
    ids = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert lm.generation_config.eos_token_id == ids
    assert all(t in tok.all_special_tokens for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"))


def test_gpt2_has_conv1d_modules_no_pad_token_and_a_plain_text_template(hub_models):
    from transformers.pytorch_utils import Conv1D

    tok, lm = load(hub_models["gpt2"])
    block = lm.transformer.h[0]
    for mod in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
        assert isinstance(mod, Conv1D) and not isinstance(mod, torch.nn.Linear)
    assert block.attn.c_attn.weight.shape == (64, 3 * 64)  # (in, out): the transpose of nn.Linear's
    assert block.mlp.c_fc.weight.shape == (64, 4 * 64)
    assert tok.pad_token is None and tok.pad_token_id is None and lm.generation_config.pad_token_id is None
    assert tok.bos_token == tok.eos_token == tok.unk_token == "<|endoftext|>" and tok.all_special_tokens == [
        "<|endoftext|>"]
    assert tok.eos_token_id == len(tok) - 1 == lm.config.eos_token_id == lm.generation_config.eos_token_id
    assert tok.convert_ids_to_tokens(tok("Linda")["input_ids"]) == ["Linda"]  # add_prefix_space False
    assert render(tok, USER, True) == "User: What is the risk for Linda Garcia?\nAssistant:"
    assert render(tok, SYSTEM, True) == ("Answer in one line.\n\nUser: What is the risk for Linda Garcia?\n"
                                         "Assistant: Low risk.<|endoftext|>Assistant:")
    ids = tok(render(tok, CHAT, False), add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1  # eos is the turn end, once


def test_gemma_style_bos_in_template_and_tokenizer_and_no_system_role(hub_models):
    tok, lm = load(hub_models["gemma-style"])
    assert render(tok, USER, True) == ("<bos><start_of_turn>user\nWhat is the risk for Linda Garcia?<end_of_turn>\n"
                                       "<start_of_turn>model\n")
    assert render(tok, CHAT, False) == (
        "<bos><start_of_turn>user\nWhat is the risk for Linda Garcia?<end_of_turn>\n"
        "<start_of_turn>model\nLow risk.<end_of_turn>\n")
    for gen in (True, False):
        with pytest.raises(TemplateError, match="System role not supported"):
            render(tok, SYSTEM, gen)
    bos = tok.bos_token_id
    assert tok.bos_token == "<bos>" and tok("Hello")["input_ids"][0] == bos
    assert tok("Hello", add_special_tokens=False)["input_ids"][0] != bos
    naive = tok(render(tok, USER, True))["input_ids"]
    assert naive[:2] == [bos, bos]  # the trap: the template's <bos> plus the tokenizer's
    assert tok.apply_chat_template(USER, add_generation_prompt=True)[:2] != [bos, bos]
    assert lm.generation_config.eos_token_id == tok.convert_tokens_to_ids(["<eos>", "<end_of_turn>"])
    assert (tok.pad_token, tok.padding_side, lm.config.num_key_value_heads) == ("<pad>", "left", 1)


def test_weights_are_random_and_deterministic_in_seed(hub_model, tmp_path):
    kind, path = hub_model
    again = load_file(hm.build(kind, tmp_path / "s0", seed=0) / "model.safetensors")
    other = load_file(hm.build(kind, tmp_path / "s1", seed=1) / "model.safetensors")
    cached = load_file(path / "model.safetensors")
    assert again.keys() == cached.keys() == other.keys()
    assert all(torch.equal(again[k], cached[k]) for k in cached)
    matrices = [k for k in cached if cached[k].dim() == 2]
    assert matrices and all(not torch.equal(other[k], cached[k]) for k in matrices)
    assert all(cached[k].std() > 0 for k in matrices)
    assert (tmp_path / "s0" / "tokenizer.json").read_text() == (path / "tokenizer.json").read_text()


def test_build_refuses_an_existing_folder_and_an_unknown_kind(tmp_path):
    with pytest.raises(FileExistsError):
        hm.build("gpt2", tmp_path)
    with pytest.raises(ValueError, match="mistral"):
        hm.build("mistral", tmp_path / "m")


class FakeBuild:
    """A fast stand-in for build_all that counts its calls and, when told to, stops half-way."""

    def __init__(self):
        self.calls, self.fail = 0, False

    def __call__(self, root, seed=0):
        self.calls += 1
        for kind in hm.KINDS[:1] if self.fail else hm.KINDS:
            (root / kind).mkdir(parents=True)
            (root / kind / "config.json").write_text("{}")
        if self.fail:
            raise KeyboardInterrupt


@pytest.fixture
def fake_build(monkeypatch):
    fake = FakeBuild()
    monkeypatch.setattr(hm, "build_all", fake)
    return fake


def test_cache_is_reused_and_rebuilt_when_the_hash_changes(fake_build, tmp_path, monkeypatch):
    first = hm.cached(tmp_path)
    assert fake_build.calls == 1 and set(first) == set(hm.KINDS)
    assert all((p / "config.json").is_file() for p in first.values())
    assert hm.cached(tmp_path) == first and fake_build.calls == 1  # reused, not rebuilt
    monkeypatch.setattr(hm, "content_hash", lambda: "0123456789abcdef")
    second = hm.cached(tmp_path)
    assert fake_build.calls == 2 and second["gpt2"].parent.name == "0123456789abcdef" != first["gpt2"].parent.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first["gpt2"].parent.name, "0123456789abcdef"])


def test_an_interrupted_build_leaves_no_folder(fake_build, tmp_path):
    fake_build.fail = True
    with pytest.raises(KeyboardInterrupt):
        hm.cached(tmp_path)
    assert list(tmp_path.iterdir()) == []
    fake_build.fail = False
    assert (hm.cached(tmp_path)["gpt2"] / "config.json").is_file()


def test_a_build_that_loses_the_race_keeps_the_winners_folder(fake_build, tmp_path, monkeypatch):
    """Two processes: the other one renamed its build into place while ours was building."""
    final = tmp_path / hm.content_hash()
    real = fake_build.__call__

    def racing(root, seed=0):
        real(root, seed)
        (final / "gpt2").mkdir(parents=True)
        (final / "gpt2" / "winner").write_text("")

    monkeypatch.setattr(hm, "build_all", racing)
    paths = hm.cached(tmp_path)
    assert (paths["gpt2"] / "winner").is_file() and [p.name for p in tmp_path.iterdir()] == [final.name]


def test_content_hash_follows_library_versions(monkeypatch):
    import transformers

    before = hm.content_hash()
    assert before == hm.content_hash()
    monkeypatch.setattr(transformers, "__version__", "0.0.0")
    assert hm.content_hash() != before

"""labkit.llamacpp: llama.cpp itself (the prebuilt libllama of node-llama-cpp's npm package, through ctypes)
runs lesson 17's GGUF files with the same greedy tokens as transformers; the prompt llama.cpp builds from the
file's template equals transformers' when the text is normalised as the tokenizer does, and the mistakes
learners report (llama.cpp's built-in guess, no template) change the prompt and the answers; the Ollama
template renders what the chat template renders.

These tests skip only where the runtime cannot be installed (not Linux x86-64, glibc < 2.34, or no npm);
where `make llamacpp` could install it and has not, they fail and say so."""

import copy
import ctypes
import json
import platform
import re
import shutil

import pytest

from labkit import chat, data, llamacpp, models, ship

_WHY = llamacpp.unavailable()
if _WHY and "not installed" in _WHY and shutil.which("npm"):
    _WHY = None  # installable: the runtime tests below fail with the reason instead of skipping
needs_runtime = pytest.mark.skipif(_WHY is not None, reason=f"llama.cpp cannot be installed here: {_WHY}")


@pytest.fixture(scope="module")
def runtime():
    why = llamacpp.unavailable()
    if why:
        pytest.fail(f"{why} (npm is here, so `make llamacpp` can install it)")
    return llamacpp.library()


@pytest.fixture(scope="module")
def sft(base, tmp_path_factory):
    """The bundled model with the course's shipped SFT adapter merged, its tokenizer, and GGUF files F16, Q8_0."""
    model, tok = base
    folder = tmp_path_factory.mktemp("sft")
    path, _ = ship.adapter_for("sft", model, tok, 0, folder, model="bundled", seed=0)
    merged = ship.merge(ship.load_adapters(copy.deepcopy(model), {"sft": path}))
    files = {}
    for kind in ("F16", "Q8_0"):
        files[kind] = ship.write_gguf(merged, tok, folder / f"m-{kind}.gguf", kind)
    return merged, tok, files


def _held_out(n=16):
    rows = [r for r in data.read_jsonl("instructions_eval.jsonl") if r["task"] in ("classify", "risk", "qa")][:n]
    return [data.user_message(r) for r in rows], [r["output"] for r in rows]


# ----------------------------------------------------------------------------- the binding itself


def test_structures_have_llama_h_s_sizes_and_the_library_s_defaults_read_back_sensibly(runtime):
    # sizes from gcc on llama.h of the same release (sizeof): a field added or dropped shifts every later one
    assert ctypes.sizeof(llamacpp.ModelParams) == 80 and ctypes.sizeof(llamacpp.ContextParams) == 160
    assert ctypes.sizeof(llamacpp.Batch) == 56
    mp, cp = runtime.llama_model_default_params(), runtime.llama_context_default_params()
    assert (mp.n_gpu_layers, mp.vocab_only, mp.use_extra_bufts, mp.kv_overrides) == (-1, False, True, None)
    assert (cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max) == (512, 2048, 512, 1)
    assert (cp.yarn_ext_factor, cp.type_k, cp.embeddings, cp.ctx_other) == (-1.0, 1, False, None)  # type_k 1: F16
    assert runtime.llama_version().decode().startswith(llamacpp.LLAMA_CPP_RELEASE.lstrip("v").split("-")[0])


def test_unavailable_says_why_in_one_line(tmp_path):
    assert "make llamacpp" in llamacpp.unavailable(tmp_path)
    meta = llamacpp.lib_dir(tmp_path) / "_nlcBuildMetadata.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"buildOptions": {"llamaCpp": {"release": "b1234"}}}))
    why = llamacpp.unavailable(tmp_path)
    assert "b1234" in why and llamacpp.LLAMA_CPP_RELEASE in why and "\n" not in why
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        meta.write_text(json.dumps({"buildOptions": {"llamaCpp": {"release": llamacpp.LLAMA_CPP_RELEASE}}}))
        assert llamacpp.unavailable(tmp_path) is None


# ----------------------------------------------------------------------------- the same tokens as transformers


@needs_runtime
@pytest.mark.parametrize("kind", ["F16", "Q8_0"])
def test_llama_cpp_greedy_tokens_equal_transformers_and_stop_at_the_turn_end(runtime, sft, kind):
    merged, tok, files = sft
    users, outputs = _held_out()
    ref = llamacpp.reference(merged, tok, users, 8)
    with llamacpp.load(files[kind]) as lm:
        got = llamacpp.compare(lm, ref, tok, users, 8, ways=[llamacpp.TOKENS, llamacpp.NORMALISED],
                               references=outputs)
        assert lm.is_end(chat.stop_token_ids(tok)[0])  # the file's eos is the template's turn end
    for way in (llamacpp.TOKENS, llamacpp.NORMALISED):
        r = got[way]
        assert r["same_prompt"] == r["same_answer"] == r["n"] == 16, (way, r)
        assert r["stopped"] == 16  # every answer ended with the turn end, inside 8 tokens
    assert got[llamacpp.TOKENS]["texts"] == ref["texts"]
    assert sum(t == o for t, o in zip(ref["texts"], outputs)) >= 12  # the shipped adapter really answers


@needs_runtime
def test_the_mistakes_change_the_prompt_and_the_answers(runtime, sft):
    merged, tok, files = sft
    users, outputs = _held_out(8)
    ref = llamacpp.reference(merged, tok, users, 8)
    with llamacpp.load(files["F16"]) as lm:
        assert llamacpp.prompt_ways(lm, tok) == [llamacpp.TOKENS, llamacpp.TEMPLATE, llamacpp.NORMALISED,
                                                 llamacpp.BUILTIN, llamacpp.BARE]  # no BOS added: no "BOS twice"
        name, text = lm.builtin_render([{"role": "user", "content": "Hi"}])
        assert name == "phi3" and text.endswith("<|assistant|>\n")  # the template's own ends "<|assistant|>"
        got = llamacpp.compare(lm, ref, tok, users, 8, references=outputs)
        with pytest.raises(ValueError, match="unknown way"):
            llamacpp.prompt_ids(lm, "Hi", "a typo")
    for way in (llamacpp.TEMPLATE, llamacpp.BUILTIN, llamacpp.BARE):
        assert got[way]["same_prompt"] == 0 and got[way]["same_answer"] <= 1, (way, got[way])
        assert got[way]["exact"] < got[llamacpp.NORMALISED]["exact"] == 8


@needs_runtime
def test_llama_cpp_s_default_pre_tokenizer_splits_text_differently(runtime, sft, tmp_path):
    merged, tok, files = sft
    other = shutil.copy(files["F16"], tmp_path / "default.gguf")
    llamacpp.set_metadata(other, {"tokenizer.ggml.pre": "default"})  # what labkit's exporter wrote at first
    text = "Monthly income: $4,300"
    with llamacpp.load(other) as lm:
        default = lm.tokenize(text, add_special=False)
    with llamacpp.load(files["F16"]) as lm:
        assert lm.meta("tokenizer.ggml.pre") == "refact" and lm.chat_template == tok.chat_template
        assert lm.tokenize(text, add_special=False) == tok(text, add_special_tokens=False)["input_ids"] != default


def test_pre_tokenizer_names_llama_cpp_s_regex_for_each_tokenizer(base, hub_models):
    assert ship.pre_tokenizer(base[1]) == "refact"  # digits one by one, then GPT-2's regex
    assert ship.pre_tokenizer(models.load_base(str(hub_models["gpt2"]), device="cpu")[1]) == "gpt-2"
    tok = copy.deepcopy(base[1])
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="convert_hf_to_gguf"):
        ship.pre_tokenizer(tok)


def test_set_metadata_keeps_every_tensor_and_other_key(sft, tmp_path):
    merged, tok, files = sft
    path = shutil.copy(files["Q8_0"], tmp_path / "c.gguf")
    before = ship.read_gguf(path)
    assert llamacpp.set_metadata(path, {"tokenizer.chat_template": None}) == {
        "tokenizer.chat_template": (tok.chat_template, None)}
    after = ship.read_gguf(path)
    assert set(after["metadata"]) == set(before["metadata"]) - {"tokenizer.chat_template"}
    for name, (kind, a) in before["tensors"].items():
        assert after["tensors"][name][0] == kind and (after["tensors"][name][1] == a).all()
    assert not (tmp_path / "c.gguf.tmp").exists()


# ----------------------------------------------------------------------------- Ollama and llama-server


def _go(template, system, prompt, response=""):
    """A tiny stand-in for Go's text/template, enough for ollama_template's output."""
    if system:
        template = re.sub(r"\{\{ if \.System \}\}(.*?)\{\{ else \}\}.*?\{\{ end \}\}", r"\1", template, flags=re.S)
    else:
        template = re.sub(r"\{\{ if \.System \}\}.*?\{\{ else \}\}(.*?)\{\{ end \}\}", r"\1", template, flags=re.S)
    return (template.replace("{{ .System }}", system or "").replace("{{ .Prompt }}", prompt)
            .replace("{{ .Response }}", response))


@pytest.mark.parametrize("kind", ["bundled", "llama-chatml", "gemma-style"])
def test_the_ollama_template_writes_what_the_chat_template_writes(base, hub_models, kind):
    tok = base[1] if kind == "bundled" else models.load_base(str(hub_models[kind]), device="cpu")[1]
    go = llamacpp.ollama_template(tok)
    bos = tok.bos_token if chat.tokenizer_adds_bos(tok) else ""
    end, prefix = chat.turn_end(tok), chat.answer_prefix(tok)
    assert bos + _go(go, None, "Hi there") == chat.render_prompt(tok, "Hi there") + end
    assert bos + _go(go, None, "Hi", prefix + "Yes") == chat.render_prompt(tok, "Hi") + prefix + "Yes" + end
    if kind != "gemma-style":
        assert _go(go, "Be brief.", "Hi") == chat.render_prompt(tok, "Hi", system="Be brief.") + end
    else:  # Gemma's template refuses a system message: no {{ .System }} branch; Ollama adds BOS itself
        assert ".System" not in go and "<bos>" not in go


def test_the_commands_name_the_real_file_the_template_and_the_stop_strings(base, tmp_path):
    tok = base[1]
    path = tmp_path / "my dir" / "m-Q8_0.gguf"
    text = llamacpp.commands(path, tok, "Is 3 > 2?", name="labkit-sft", max_new_tokens=8)
    assert f"FROM {path.resolve()}\n" in text and f"-m '{path.resolve()}'" in text
    assert 'PARAMETER stop "<|end|>"' in text and "ollama run labkit-sft 'Is 3 > 2?'" in text
    body = json.loads(re.search(r"/completion -d '(.*)'", text).group(1))
    assert body["prompt"] == llamacpp.normalizer(tok)(chat.render_prompt(tok, "Is 3 > 2?")) and body["n_predict"] == 8


@needs_runtime
def test_a_chatml_tokenizer_without_normalizer_needs_nothing_but_the_file(runtime, hub_models, tmp_path):
    from test_ship import _random_lora

    model, tok = models.load_base(str(hub_models["llama-chatml"]), device="cpu")
    merged = ship.merge(_random_lora(model))
    path = ship.write_gguf(merged, tok, tmp_path / "c.gguf", "F32")
    users, _ = _held_out(6)
    ref = llamacpp.reference(merged, tok, users, 6)
    with llamacpp.load(path) as lm:
        assert llamacpp.prompt_ways(lm, tok) == [llamacpp.TOKENS, llamacpp.TEMPLATE, llamacpp.BUILTIN, llamacpp.BARE]
        got = llamacpp.compare(lm, ref, tok, users, 6, ways=[llamacpp.TOKENS, llamacpp.TEMPLATE, llamacpp.BUILTIN])
        assert lm.builtin_render([{"role": "user", "content": "Hi"}])[0] == "chatml"
    assert got[llamacpp.TOKENS]["same_answer"] == got[llamacpp.TEMPLATE]["same_prompt"] == 6
    assert got[llamacpp.TEMPLATE]["same_answer"] == 6
    assert got[llamacpp.BUILTIN]["same_prompt"] == 0  # llama.cpp's ChatML has no SmolLM default system turn

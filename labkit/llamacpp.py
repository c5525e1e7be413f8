"""llama.cpp itself, from Python, without compiling it: a ctypes binding to the prebuilt libllama.

The library comes from node-llama-cpp's npm package for Linux x86-64 (built on Ubuntu 22.04, it needs
glibc 2.34; Debian 12 has 2.36, Colab 2.35): `make llamacpp` (a dependency of `make install`) runs
`npm install` once into ~/.cache/labkit/llama.cpp; nothing here touches the network afterwards.
The structures and signatures below are those of llama.h at the llama.cpp release the package was
built from (LLAMA_CPP_RELEASE, read back from the package's build metadata and checked at load).

    m = llamacpp.load("model-F16.gguf")               # llama_model_load_from_file + llama_init_from_model
    ids = m.tokenize(m.render([{"role": "user", "content": "Hi"}]))   # the file's template, the file's vocab
    new = m.greedy(ids, max_new_tokens=16)            # llama_decode + llama.cpp's greedy sampler
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import shlex
import subprocess
from ctypes import POINTER, c_bool, c_char_p, c_float, c_int, c_int32, c_size_t, c_uint32, c_void_p
from pathlib import Path

from .chat import (
    clean,
    encode,
    render_prompt,
    stop_strings,
    stop_token_ids,
    TemplateError,
    tokenizer_adds_bos,
    turn_end,
)

NPM_PACKAGE = "@node-llama-cpp/linux-x64"
NPM_VERSION = "3.22.1"            # the pin: one exact version, installed by `make llamacpp`
LLAMA_CPP_RELEASE = "v0.5.0"      # the llama.cpp release inside it (bins/linux-x64/_nlcBuildMetadata.json)
CACHE = Path(os.environ.get("LABKIT_LLAMA_CPP", Path.home() / ".cache" / "labkit" / "llama.cpp"))


def lib_dir(cache=None) -> Path:
    """The folder holding libllama and the ggml libraries inside the npm install at CACHE."""
    return Path(cache or CACHE) / "node_modules" / NPM_PACKAGE / "bins" / "linux-x64"


def install(cache=None, npm: str = "npm") -> Path:
    """npm-install the pinned package into CACHE (about 11 MB down, 29 MB on disk); returns lib_dir."""
    cache = Path(cache or CACHE)
    if unavailable(cache):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(cache), "--save-exact", "--no-audit", "--no-fund",
                        "--loglevel=error", f"{NPM_PACKAGE}@{NPM_VERSION}"], check=True)
    if unavailable(cache):
        raise RuntimeError(unavailable(cache))
    return lib_dir(cache)


def unavailable(cache=None) -> str | None:
    """None when the prebuilt llama.cpp is installed and usable here; otherwise why not, in one line."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the prebuilt llama.cpp is for Linux x86-64; this is {platform.system()} {platform.machine()}"
    libc, version = platform.libc_ver()
    if libc == "glibc" and tuple(int(x) for x in version.split(".")[:2]) < (2, 34):
        return f"the prebuilt llama.cpp needs glibc 2.34; this machine has {version}"
    meta = lib_dir(cache) / "_nlcBuildMetadata.json"
    if not meta.exists():
        return f"llama.cpp is not installed in {Path(cache or CACHE)}: run `make llamacpp` (npm, once, about 11 MB)"
    release = json.loads(meta.read_text())["buildOptions"]["llamaCpp"]["release"]
    if release != LLAMA_CPP_RELEASE:
        return (f"{meta} is llama.cpp {release}; this binding matches {LLAMA_CPP_RELEASE} "
                f"({NPM_PACKAGE}@{NPM_VERSION}): run `make llamacpp` again")
    return None


# ----------------------------------------------------------------------------- llama.h, as ctypes

class ModelParams(ctypes.Structure):  # struct llama_model_params (80 bytes)
    _fields_ = [("devices", c_void_p), ("tensor_buft_overrides", c_void_p), ("n_gpu_layers", c_int32),
                ("split_mode", c_int), ("load_mode", c_int), ("lazy_mode", c_int), ("main_gpu", c_int32),
                ("tensor_split", c_void_p), ("progress_callback", c_void_p), ("progress_callback_user_data", c_void_p),
                ("kv_overrides", c_void_p), ("vocab_only", c_bool), ("check_tensors", c_bool),
                ("use_extra_bufts", c_bool), ("no_host", c_bool), ("no_alloc", c_bool), ("load_mtp", c_bool)]


class ContextParams(ctypes.Structure):  # struct llama_context_params (160 bytes)
    _fields_ = [(n, c_uint32) for n in ("n_ctx", "n_batch", "n_ubatch", "n_seq_max", "n_rs_seq", "n_outputs_max",
                                        "n_outputs_max_per_seq")] + \
               [("n_threads", c_int32), ("n_threads_batch", c_int32)] + \
               [(n, c_int) for n in ("ctx_type", "rope_scaling_type", "pooling_type", "attention_type",
                                     "flash_attn_type")] + \
               [(n, c_float) for n in ("rope_freq_base", "rope_freq_scale", "yarn_ext_factor", "yarn_attn_factor",
                                       "yarn_beta_fast", "yarn_beta_slow")] + \
               [("yarn_orig_ctx", c_uint32), ("defrag_thold", c_float), ("cb_eval", c_void_p),
                ("cb_eval_user_data", c_void_p), ("type_k", c_int), ("type_v", c_int), ("abort_callback", c_void_p),
                ("abort_callback_data", c_void_p)] + \
               [(n, c_bool) for n in ("embeddings", "offload_kqv", "no_perf", "op_offload", "swa_full",
                                      "kv_unified")] + \
               [("samplers", c_void_p), ("n_samplers", c_size_t), ("ctx_other", c_void_p)]


class Batch(ctypes.Structure):  # struct llama_batch (56 bytes)
    _fields_ = [("n_tokens", c_int32), ("token", POINTER(c_int32)), ("embd", c_void_p), ("pos", c_void_p),
                ("n_seq_id", c_void_p), ("seq_id", c_void_p), ("logits", c_void_p)]


class ChatMessage(ctypes.Structure):  # struct llama_chat_message
    _fields_ = [("role", c_char_p), ("content", c_char_p)]


class SamplerChainParams(ctypes.Structure):
    _fields_ = [("no_perf", c_bool)]


LOG_CALLBACK = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)  # ggml_log_callback
_SIGNATURES = {  # name: (return type, argument types), as declared in llama.h / ggml-backend.h
    "llama_version": (c_char_p, []),
    "llama_log_set": (None, [LOG_CALLBACK, c_void_p]),
    "llama_backend_init": (None, []),
    "llama_model_default_params": (ModelParams, []),
    "llama_context_default_params": (ContextParams, []),
    "llama_model_load_from_file": (c_void_p, [c_char_p, ModelParams]),
    "llama_init_from_model": (c_void_p, [c_void_p, ContextParams]),
    "llama_model_free": (None, [c_void_p]),
    "llama_free": (None, [c_void_p]),
    "llama_model_get_vocab": (c_void_p, [c_void_p]),
    "llama_model_chat_template": (c_char_p, [c_void_p, c_char_p]),
    "llama_model_meta_val_str": (c_int32, [c_void_p, c_char_p, c_char_p, c_size_t]),
    "llama_vocab_bos": (c_int32, [c_void_p]),
    "llama_vocab_eos": (c_int32, [c_void_p]),
    "llama_vocab_get_add_bos": (c_bool, [c_void_p]),
    "llama_vocab_is_eog": (c_bool, [c_void_p, c_int32]),
    "llama_vocab_n_tokens": (c_int32, [c_void_p]),
    "llama_tokenize": (c_int32, [c_void_p, c_char_p, c_int32, POINTER(c_int32), c_int32, c_bool, c_bool]),
    "llama_token_to_piece": (c_int32, [c_void_p, c_int32, c_char_p, c_int32, c_int32, c_bool]),
    "llama_chat_apply_template": (c_int32, [c_char_p, POINTER(ChatMessage), c_size_t, c_bool, c_char_p, c_int32]),
    "llama_chat_builtin_templates": (c_int32, [POINTER(c_char_p), c_size_t]),
    "llama_batch_get_one": (Batch, [POINTER(c_int32), c_int32]),
    "llama_decode": (c_int32, [c_void_p, Batch]),
    "llama_get_memory": (c_void_p, [c_void_p]),
    "llama_memory_clear": (None, [c_void_p, c_bool]),
    "llama_sampler_chain_default_params": (SamplerChainParams, []),
    "llama_sampler_chain_init": (c_void_p, [SamplerChainParams]),
    "llama_sampler_chain_add": (None, [c_void_p, c_void_p]),
    "llama_sampler_init_greedy": (c_void_p, []),
    "llama_sampler_sample": (c_int32, [c_void_p, c_void_p, c_int32]),
    "llama_sampler_free": (None, [c_void_p]),
}
_lib = None
_quiet = LOG_CALLBACK(lambda level, text, data: None)  # kept alive for the process: llama.cpp holds the pointer


def library(cache=None):
    """libllama, loaded once, with its functions typed, its CPU backend loaded and its logs silenced."""
    global _lib
    if _lib is not None:
        return _lib
    if unavailable(cache):
        raise RuntimeError(unavailable(cache))
    folder = lib_dir(cache)
    ggml = ctypes.CDLL(str(folder / f"libggml.{LLAMA_CPP_RELEASE}.so"), mode=ctypes.RTLD_GLOBAL)
    base = ctypes.CDLL(str(folder / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(folder / f"libllama.{LLAMA_CPP_RELEASE}.so"))
    for name, (res, args) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    base.ggml_log_set.argtypes = [LOG_CALLBACK, c_void_p]
    base.ggml_log_set(_quiet, None)
    lib.llama_log_set(_quiet, None)
    ggml.ggml_backend_load_all_from_path.argtypes = [c_char_p]
    ggml.ggml_backend_load_all_from_path(str(folder).encode())  # the CPU variant that suits this processor
    lib.llama_backend_init()
    _lib = lib
    return lib


class Model:
    """A GGUF file loaded by llama.cpp, with one context (N_CTX tokens) and llama.cpp's greedy sampler."""

    def __init__(self, path, n_ctx: int = 512, threads: int | None = None, repack: bool = False, cache=None):
        lib = self.lib = library(cache)
        self.path = Path(path)
        mp = lib.llama_model_default_params()
        mp.use_extra_bufts = repack  # CPU weight repacking off by default (COURSE.md: it crashed on Q8_0 once)
        self.model = lib.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise ValueError(f"llama.cpp {LLAMA_CPP_RELEASE} could not load {self.path}.")
        cp = lib.llama_context_default_params()
        threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count() or 1
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, cp)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise ValueError(f"llama.cpp could not make a context of {n_ctx} tokens for {self.path}.")
        self.n_ctx = n_ctx
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.sampler = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        lib.llama_sampler_chain_add(self.sampler, lib.llama_sampler_init_greedy())

    def close(self):
        if getattr(self, "ctx", None):
            self.lib.llama_sampler_free(self.sampler)
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)
            self.ctx = None

    __del__ = close
    __enter__, __exit__ = (lambda self: self), (lambda self, *exc: self.close())

    # -- what the file says
    def meta(self, key: str) -> str | None:
        """A metadata value of the file as text (llama_model_meta_val_str), None when absent."""
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode()

    @property
    def chat_template(self) -> str | None:
        """The chat template stored in the file (tokenizer.chat_template), None when it has none."""
        t = self.lib.llama_model_chat_template(self.model, None)
        return t.decode() if t else None

    bos = property(lambda self: self.lib.llama_vocab_bos(self.vocab), doc="the BOS id (-1: none)")

    adds_bos = property(lambda self: bool(self.lib.llama_vocab_get_add_bos(self.vocab)),
                        doc="Does llama.cpp's tokenizer put BOS in front of a text (tokenizer.ggml.add_bos_token)?")

    def is_end(self, token: int) -> bool:  # end of generation: eos, eot and the like
        return bool(self.lib.llama_vocab_is_eog(self.vocab, int(token)))

    # -- text <-> tokens
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """llama.cpp's tokenizer on TEXT; add_special: BOS when the file says so; parse_special: markers such
        as <|end|> in TEXT become their one special token (as in a chat prompt), not their characters."""
        raw = text.encode()
        n = len(raw) + 8
        out = (c_int32 * n)()
        got = self.lib.llama_tokenize(self.vocab, raw, len(raw), out, n, add_special, parse_special)
        return list(out[:got])  # a text never has more tokens than bytes (+ BOS/EOS)

    def piece(self, token: int) -> str:
        """The text of one token, special tokens included."""
        buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_token_to_piece(self.vocab, int(token), buf, len(buf), 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def detokenize(self, tokens) -> str:
        return "".join(map(self.piece, tokens))

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """MESSAGES as the prompt text the file's chat template writes (with the file's BOS and EOS texts),
        rendered by Jinja as llama-server --jinja does."""
        from transformers.utils.chat_template_utils import render_jinja_template

        template = self.chat_template
        if not template:
            raise ValueError(f"{self.path.name} holds no chat template (tokenizer.chat_template).")
        special = {"bos_token": self.piece(self.bos) if self.bos >= 0 else "",
                   "eos_token": self.piece(self.lib.llama_vocab_eos(self.vocab))}
        out = render_jinja_template([messages], chat_template=template, add_generation_prompt=add_generation_prompt,
                                    **special)
        return out[0][0] if isinstance(out, tuple) else out[0]

    def builtin_render(self, messages: list[dict], add_generation_prompt: bool = True) -> tuple[str, str]:
        """MESSAGES through llama.cpp's C API llama_chat_apply_template: no Jinja, it GUESSES a built-in format from
        words in the file's template (what --no-jinja does, and older releases did by default). Returns
        (the name it matched, the prompt text); raises ValueError when it recognises no format."""
        tmpl = (self.chat_template or "").encode()
        msgs = (ChatMessage * len(messages))(*[ChatMessage(m["role"].encode(), m["content"].encode())
                                              for m in messages])
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.lib.llama_chat_apply_template(tmpl, msgs, len(messages), add_generation_prompt, buf, len(buf))
        if n < 0:
            raise ValueError("llama.cpp's built-in templates recognise none in this file's template.")
        text = buf.raw[:n].decode()
        return self._builtin_match(msgs, len(messages), add_generation_prompt, text), text

    def _builtin_match(self, msgs, n_msg, add_generation_prompt, text) -> str:
        """The name of the built-in format that writes TEXT (llama_chat_builtin_templates, each tried)."""
        names = (c_char_p * 128)()
        count = self.lib.llama_chat_builtin_templates(names, 128)
        buf = ctypes.create_string_buffer(1 << 16)
        for name in names[:min(count, 128)]:
            n = self.lib.llama_chat_apply_template(name, msgs, n_msg, add_generation_prompt, buf, len(buf))
            if n >= 0 and buf.raw[:n].decode() == text:
                return name.decode()
        return "a built-in format"

    # -- generation
    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """llama.cpp's greedy continuation of PROMPT_IDS (token ids, used as given: no BOS added): at most
        MAX_NEW_TOKENS new tokens, stopping after the first end-of-generation token (kept)."""
        if len(prompt_ids) + max_new_tokens > self.n_ctx:
            raise ValueError(f"{len(prompt_ids)} prompt + {max_new_tokens} new tokens exceed n_ctx = {self.n_ctx}.")
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        tokens = (c_int32 * len(prompt_ids))(*prompt_ids)
        batch = self.lib.llama_batch_get_one(tokens, len(prompt_ids))
        out = []
        while len(out) < max_new_tokens:
            if self.lib.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            t = self.lib.llama_sampler_sample(self.sampler, self.ctx, -1)
            out.append(int(t))
            if self.is_end(t):
                break
            one = (c_int32 * 1)(t)
            batch = self.lib.llama_batch_get_one(one, 1)
        return out


load = Model  # llamacpp.load("model.gguf"): the file in llama.cpp


# ----------------------------------------------------------------------------- llama.cpp beside transformers

def transformers_greedy(model, tok, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy continuation of each prompt (token ids, one at a time: no padding), cut after
    the first stop token (chat.stop_token_ids: the turn end, EOS), which is kept, as llama.cpp keeps it."""
    import torch

    stop = stop_token_ids(tok, model)
    device = next(model.parameters()).device
    out = []
    for ids in prompt_ids:
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            new = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                 else stop[0])[0, len(ids):].tolist()
        cut = next((i + 1 for i, t in enumerate(new) if t in stop), len(new))
        out.append(new[:cut])
    return out


TOKENS, TEMPLATE = "transformers' tokens", "the file's template, text as typed"
NORMALISED = "the file's template, text normalised"
BUILTIN, BARE, DOUBLE_BOS = "llama.cpp's built-in guess", "no template", "BOS twice"


def prompt_ways(lm: Model, tok) -> list[str]:
    """The ways of building a prompt that `compare` tries: transformers' own token ids, then llama.cpp's
    tokenizer on the text of the file's template (normalised first when TOK has a normalizer), then mistakes
    learners report: llama.cpp's guess of a built-in format, no template, and BOS twice where there is a BOS."""
    ways = [TOKENS, TEMPLATE] + ([NORMALISED] if normalizer(tok) else []) + [BUILTIN, BARE]
    return ways + ([DOUBLE_BOS] if lm.adds_bos and lm.bos >= 0 else [])


def prompt_ids(lm: Model, user: str, way: str, normalise=None) -> list[int]:
    """The prompt tokens llama.cpp gets for the user message USER when its prompt is built WAY (prompt_ways,
    except transformers' tokens); NORMALISE: a text normalizer (see `normalizer`) for NORMALISED."""
    messages = [{"role": "user", "content": user}]
    if way == BARE:
        return lm.tokenize(user)                      # what `llama-cli -p TEXT` or a bare {{ .Prompt }} sends
    if way == BUILTIN:
        return lm.tokenize(lm.builtin_render(messages)[1])
    if way not in (TEMPLATE, NORMALISED, DOUBLE_BOS):
        raise ValueError(f"unknown way {way!r}.")
    text = lm.render(messages)
    if way == NORMALISED:
        text = normalise(text)
    bos = lm.piece(lm.bos) if lm.bos >= 0 else None
    ids = lm.tokenize(text, add_special=not (bos and text.startswith(bos)))  # BOS once: chat.encode's rule
    return [lm.bos] + ids if way == DOUBLE_BOS else ids


def reference(model, tok, users: list[str], max_new_tokens: int) -> dict:
    """transformers' side of `compare`: each user message of USERS rendered by TOK's chat template, encoded with
    BOS exactly once (chat.encode), answered greedily. Returns {"prompts", "answers" (token ids), "texts"}."""

    prompts = [encode(tok, render_prompt(tok, u)) for u in users]
    answers = transformers_greedy(model, tok, prompts, max_new_tokens)
    return {"prompts": prompts, "answers": answers, "texts": [clean(tok, tok.decode(a)) for a in answers]}


def compare(lm: Model, ref: dict, tok, users: list[str], max_new_tokens: int, ways: list[str] | None = None,
            references: list[str] | None = None) -> dict:
    """llama.cpp's (LM) greedy answers to USERS beside transformers' (REF, from `reference`), its prompt built
    each WAY (prompt_ways). Returns {way: {"same_prompt": k, "same_answer": k, "stopped": k (answers ended
    by an end-of-generation token), "exact": k (texts equal to REFERENCES, or None), "n", "texts"}}."""

    out = {}
    for way in ways or prompt_ways(lm, tok):
        prompts = ref["prompts"] if way == TOKENS else [prompt_ids(lm, u, way, normalizer(tok)) for u in users]
        got = [lm.greedy(p, max_new_tokens) for p in prompts]
        texts = [clean(tok, lm.detokenize(a)) for a in got]
        out[way] = {"same_prompt": sum(p == q for p, q in zip(prompts, ref["prompts"])),
                    "same_answer": sum(a == b for a, b in zip(got, ref["answers"])),
                    "stopped": sum(bool(a) and lm.is_end(a[-1]) for a in got),
                    "exact": sum(t == r.strip() for t, r in zip(texts, references)) if references else None,
                    "n": len(users), "texts": texts}
    return out


# ----------------------------------------------------------------------------- the tokenizer in the file

def normalizer(tok):
    """TOK's text normalizer (a function str -> str), or None. GGUF has no field for one: llama.cpp tokenizes
    the text as it comes, so a client must normalise it first or the model sees other tokens."""
    norm = tok.backend_tokenizer.normalizer
    return None if norm is None else norm.normalize_str


def set_metadata(path, values: dict) -> dict:
    """Re-write the GGUF file PATH with string metadata VALUES ({key: text}; None removes the key), as
    gguf's gguf_new_metadata.py does. Returns {key: (old, new)}."""
    import gguf

    path = Path(path)
    reader = gguf.GGUFReader(str(path))
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), reader.fields["general.architecture"].contents())
    changed = {}
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        value, kind = field.contents(), field.types[0]
        if field.name in values:
            changed[field.name] = (value, values[field.name])
            value, kind = values[field.name], gguf.GGUFValueType.STRING
        if value is not None:
            writer.add_key_value(field.name, value, kind,
                                 sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for key in set(values) - set(changed):
        changed[key] = (None, values[key])
        if values[key] is not None:
            writer.add_key_value(key, values[key], gguf.GGUFValueType.STRING)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:
            writer.write_tensor_data(t.data)
    finally:
        writer.close()
    del reader
    os.replace(tmp, path)
    return changed


# ----------------------------------------------------------------------------- serving the file elsewhere

def ollama_template(tok) -> str:
    """TOK's chat template as an Ollama TEMPLATE (Go template syntax): the template rendered around
    placeholder messages, each placeholder replaced by {{ .System }}, {{ .Prompt }}; then {{ .Response }}
    and the turn end. A template that refuses a system message gets no {{ .System }} branch."""

    sys_, user = "\x00SYSTEM\x00", "\x00PROMPT\x00"
    plain = render_prompt(tok, user).replace(user, "{{ .Prompt }}")
    try:
        with_sys = render_prompt(tok, user, system=sys_).replace(user, "{{ .Prompt }}").replace(sys_, "{{ .System }}")
    except TemplateError:
        with_sys = None
    head = f"{{{{ if .System }}}}{with_sys}{{{{ else }}}}{plain}{{{{ end }}}}" if with_sys else plain
    bos = tok.bos_token if tokenizer_adds_bos(tok) else None
    head = head.replace(bos, "") if bos else head  # Ollama adds BOS itself when the tokenizer does: not twice
    return head + "{{ .Response }}" + turn_end(tok)


def commands(path, tok, user: str, name: str = "labkit-model", max_new_tokens: int = 64) -> str:
    """The shell commands that serve the GGUF file PATH with Ollama (a Modelfile with the template and the stop
    strings) and with llama.cpp's llama-server, then ask it USER, greedily."""

    path = Path(path).resolve()
    stops = "".join(f"PARAMETER stop {json.dumps(s)}\n" for s in stop_strings(tok))
    lines = ["# Ollama: a Modelfile with the chat template spelled out (without it Ollama may send the bare text)",
             f"cat > Modelfile <<'EOF'\nFROM {path}\nTEMPLATE \"\"\"{ollama_template(tok)}\"\"\"\n{stops}"
             "PARAMETER temperature 0\nEOF",
             f"ollama create {name} -f Modelfile",
             f"ollama run {name} {shlex.quote(user)}", "",
             "# llama.cpp's server, an OpenAI-style API on port 8080 (--jinja: the file's template; -c 0: its context)",
             f"llama-server -m {shlex.quote(str(path))} --jinja -c 0 --temp 0 &"]
    norm = normalizer(tok)
    if norm is None:
        body = {"messages": [{"role": "user", "content": user}], "max_tokens": max_new_tokens, "temperature": 0}
        lines.append(f"curl -s localhost:8080/v1/chat/completions -d {shlex.quote(json.dumps(body))}")
    else:  # the server cannot normalise: send the prompt text normalised, as the tokenizer would
        body = {"prompt": norm(render_prompt(tok, user)), "n_predict": max_new_tokens, "temperature": 0}
        lines[4:4] = ["# (this tokenizer normalises text, which Ollama cannot: it answers as llama.cpp on raw text)"]
        lines += ["# this tokenizer normalises text, which GGUF cannot record: send the prompt text normalised "
                  "(and undo it in the answer: its decoder does)",
                  f"curl -s localhost:8080/completion -d {shlex.quote(json.dumps(body))}"]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m labkit.llamacpp: install (what `make llamacpp` runs)
    print(f"llama.cpp {LLAMA_CPP_RELEASE} ({NPM_PACKAGE}@{NPM_VERSION}) in {install()}")

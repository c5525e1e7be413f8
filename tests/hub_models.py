"""Hub-style fixture models, built locally in seconds: random weights, real tokenizers, never downloaded.

    python tests/hub_models.py OUT_DIR     # build all three into OUT_DIR/<kind> and print the paths

Each folder is what a Hub chat model looks like on disk (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json holding the chat template) and loads with
``AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)`` and ``AutoTokenizer.from_pretrained(path)``
offline. The weights are random (seeded), so these models check behaviour (templates, labels, stop tokens,
that a lesson runs to its end), never quality. The three kinds differ where real models differ:

``llama-chatml``  LlamaForCausalLM (grouped-query attention: 4 query heads, 2 key/value heads) with ChatML
                  exactly as SmolLM2-135M-Instruct ships it: a default system turn when the conversation has
                  none, ``<|im_start|>role\\n...<|im_end|>\\n`` per turn, ``<|im_start|>assistant\\n`` as the
                  generation prompt, no ``{% generation %}`` markers. No BOS token (as Qwen2.5); eos
                  ``<|im_end|>``, pad ``<|endoftext|>``; the tokenizer adds no special tokens; digits are
                  split one by one (as SmolLM2's tokenizer does). Its template also has Qwen2.5's tool
                  support (``CHATML_TOOLS_TEMPLATE``), which changes nothing for a conversation without tools.
``gpt2``          GPT2LMHeadModel: attention ``c_attn``/``c_proj`` and MLP ``c_fc``/``c_proj`` are transformers'
                  ``Conv1D`` (weight stored (in, out)). GPT-2's tokenizer conventions: ``<|endoftext|>`` is bos,
                  eos and unk and the last id of the vocabulary, there is NO pad token, add_prefix_space False,
                  numbers are merged like words. GPT-2 ships no chat template; this one is plain text whose role
                  markers are ordinary tokens: an optional system message as a first paragraph,
                  ``User: ...\\n`` per user turn, ``Assistant: ...<|endoftext|>`` per assistant turn (eos is the
                  turn end, as in DialoGPT-style fine-tunes), and ``Assistant:`` as the generation prompt, so a
                  completion starts with a space (`` answer<|endoftext|>``).
``gemma-style``   GemmaForCausalLM (multi-query attention: 1 key/value head; embeddings scaled by sqrt(hidden))
                  with Gemma's template verbatim: ``{{ bos_token }}`` first,
                  ``<start_of_turn>user\\n...<end_of_turn>\\n``, the assistant shown as ``model``, contents
                  trimmed, generation prompt ``<start_of_turn>model\\n``, and it RAISES on a system message
                  (and on roles that do not alternate). Like Gemma's tokenizer it ALSO adds ``<bos>`` when
                  encoding with add_special_tokens=True, so tokenising a rendered prompt naively gives two BOS
                  tokens; and it pads on the left (GemmaTokenizer's default). Its tokens are byte-level BPE
                  with ``Ġword`` like the others (real Gemma uses ``▁word`` with byte fallback), so its
                  tokenizer_class is the generic one: transformers 5 rebuilds a ``GemmaTokenizer`` from vocab
                  and merges with its own ``▁`` pipeline and would ignore ours.

The tokenizers are real byte-level BPEs (GPT-2-style ``Ġword`` tokens), trained with the ``tokenizers``
library to 8,192 tokens on the course corpus (``labkit.corpus.pretraining_document``). That corpus is templated
and has few distinct words: on its own a BPE stops at 2,146 tokens once every word is whole (4,930 when
numbers are merged as GPT-2 does). The rest of the vocabulary is filled honestly with *invented* text in the
course's style: registers and directories of generated names, places and words (built from syllables, drawn
with a Zipf-like skew so that some are common), with account numbers, amounts and dates. See
``training_text``.

``cached()`` builds all three once into ``<repo>/.cache/hub_models/<hash>/`` (gitignored) and reuses them while
the hash of this file, ``labkit/corpus.py`` and the transformers/tokenizers/torch versions stays the same.
Builds are atomic (a temporary folder renamed into place), so two pytest processes or an interrupted build
never leave a half-written folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("llama-chatml", "gpt2", "gemma-style")
VOCAB_SIZE = 8192
MAX_POSITIONS = 1024  # Qwen-style tool prompts (JSON schemas) of lesson 12 need more than 512
CACHE = ROOT / ".cache" / "hub_models"

# ----------------------------------------------------------------------------- chat templates (Jinja source)

# SmolLM2-135M-Instruct's template, character for character.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The same ChatML with Qwen2.5's tool support (tools in the system turn, <tool_call> in the assistant's turn,
# results as <tool_response> in a user turn), Qwen2.5's branches verbatim; without tools it renders exactly as
# CHATML_TEMPLATE (tests/test_hub_models.py checks it), so lessons without tools see SmolLM2's template.
CHATML_TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' }}{%- endif %}"
    "{{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>\" }}{%- for tool in tools %}{{- \"\\n\" }}"
    "{{- tool | tojson }}{%- endfor %}{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function "
    "name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}{%- endif %}"
    "{% for message in messages %}{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}{{- '<|im_start|>' + message['role'] }}"
    "{%- if message['content'] %}{{- '\\n' + message['content'] }}{%- endif %}{%- for tool_call in message['tool_calls'] %}"
    "{%- if tool_call['function'] is defined %}{%- set tool_call = tool_call['function'] %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call['name'] }}{{- '\", \"arguments\": ' }}"
    "{{- tool_call['arguments'] | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{% elif message['role'] == 'tool' %}{%- if (loop.index0 == 0) or (messages[loop.index0 - 1]['role'] != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}{{- '\\n<tool_response>\\n' }}{{- message['content'] }}"
    "{{- '\\n</tool_response>' }}{%- if loop.last or (messages[loop.index0 + 1]['role'] != 'tool') %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{% else %}{% if loop.first and messages[0]['role'] != 'system' and not tools %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma (2 and 1.1 instruction-tuned) template, character for character.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

# GPT-2 has no chat template; this plain-text one is ours (see the module docstring).
GPT2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Per kind: special tokens (in id order, from 0, unless at_end), the tokenizer's roles for them, the template.
SPECS = {
    "llama-chatml": dict(
        special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], at_end=False, split_digits=True,
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, extra=["<|im_start|>", "<|im_end|>"],
        stop=["<|im_end|>", "<|endoftext|>"], template=CHATML_TOOLS_TEMPLATE, add_bos=False,
        tokenizer_class="PreTrainedTokenizerFast",  # what Llama 3 ships; SmolLM2 says GPT2Tokenizer (see below)
    ),
    "gpt2": dict(
        special=["<|endoftext|>"], at_end=True, split_digits=False,
        bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>", extra=[],
        stop=["<|endoftext|>"], template=GPT2_TEMPLATE, add_bos=False, tokenizer_class="GPT2Tokenizer",
    ),
    "gemma-style": dict(
        special=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], at_end=False,
        split_digits=True, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
        extra=["<start_of_turn>", "<end_of_turn>"], stop=["<eos>", "<end_of_turn>"], template=GEMMA_TEMPLATE,
        add_bos=True, tokenizer_class="PreTrainedTokenizerFast", padding_side="left",
    ),
}
# Why llama-chatml is not "GPT2Tokenizer" like SmolLM2: transformers 5 rebuilds a class that has its own
# __init__ (GPT2Tokenizer, GemmaTokenizer, ...) from the vocabulary and merges with that class's pipeline and
# keeps only the post-processor of tokenizer.json, which would drop the digit splitting. For the gpt2 kind the
# GPT2Tokenizer pipeline is exactly the one trained, so it says GPT2Tokenizer as GPT-2 does.

# ----------------------------------------------------------------------------- training text

_ONSETS = "b c d f g h j k l m n p r s t v w y z br cr dr fr gr pr tr st sh ch th bl cl fl gl pl sl sk sp qu".split()
_VOWELS = "a e i o u a e i o ai ea ee oo ou ie ay".split()
_CODAS = [""] * 6 + "n r l s t m nd rt ck ld ng x".split()
_TRADES = ["Foods", "Clinic", "Works", "Bakery", "Logistics", "Bank", "Farms", "Motors", "Books", "Hotel"]


def _invented(rng: random.Random, n: int) -> list[str]:
    """N distinct invented capitalised words of two or three syllables ("Brealdo", "Quiestan")."""
    out: set[str] = set()
    while len(out) < n:
        syl = rng.randint(2, 3)
        word = "".join((rng.choice(_ONSETS) if i or rng.random() < 0.85 else "") + rng.choice(_VOWELS)
                       + rng.choice(_CODAS) for i in range(syl))
        out.add(word.capitalize())
    return sorted(out)


def _skewed(rng: random.Random, words: list[str]) -> str:
    """Half the draws Zipf-like (the first words are common), half uniform."""
    if rng.random() < 0.5:
        return words[min(int(rng.paretovariate(1.0)) - 1, len(words) - 1)]
    return rng.choice(words)


def _register(rng: random.Random, first: list[str], last: list[str], places: list[str], nouns: list[str]) -> str:
    """A course-style document about invented people: a branch register with accounts, jobs and sales."""
    from labkit.corpus import money

    rows = [rng.choice(["CUSTOMER REGISTER", "Branch directory", "Member list"]) + f" - {_skewed(rng, places)}"]
    for _ in range(rng.randrange(3, 9)):
        name = f"{_skewed(rng, first)} {_skewed(rng, last)}"
        r = rng.random()
        if r < 0.4:
            rows.append(f"{name}, {rng.randrange(1, 999)} {_skewed(rng, places)} Road, account "
                        f"{rng.randrange(10**7, 10**8)}, balance {money(rng.randrange(10, 99999))}")
        elif r < 0.7:
            rows.append(f"{name} works at {_skewed(rng, last)} {rng.choice(_TRADES)} in {_skewed(rng, places)} "
                        f"as a {_skewed(rng, nouns)}er.")
        else:
            rows.append(f"The {_skewed(rng, nouns)} of {name} was sold in {_skewed(rng, places)} for "
                        f"{money(rng.randrange(5, 5000))} on {rng.randrange(1, 29)}/{rng.randrange(1, 13)}/"
                        f"{rng.randrange(1990, 2026)}.")
    return "\n".join(rows)


@functools.lru_cache(maxsize=1)
def training_text(n_course: int = 4000, n_invented: int = 3000, seed: int = 0) -> tuple[str, ...]:
    """The BPE's training documents: N_COURSE course documents, then N_INVENTED registers of invented names.

    About 2.5 MB. The course documents alone give 2,146 tokens (every word whole; digits split); with the
    registers a BPE finds 19,227 (23,540 merging numbers) seen twice or more, so the 8,192 cap is reached with
    room to spare. About 1.1k of the 8,192 are used by course text; the rest are pieces of invented names.
    """
    from labkit import corpus

    rng = random.Random(seed)
    first, last, places = _invented(rng, 1000), _invented(rng, 2500), _invented(rng, 600)
    nouns = [w.lower() for w in _invented(rng, 1500)]
    docs = [corpus.pretraining_document(rng) for _ in range(n_course)]
    docs += [_register(rng, first, last, places, nouns) for _ in range(n_invented)]
    return tuple(docs)


# ----------------------------------------------------------------------------- tokenizer

@functools.cache
def _trained(kind: str) -> str:
    """The trained tokenizer of KIND as tokenizer.json text (cached: the weights' seed does not change it)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    spec = SPECS[kind]
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if spec["split_digits"] else byte_level)
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t in spec["special"]]
    n_special = len(specials)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - n_special if spec["at_end"] else VOCAB_SIZE,
        special_tokens=[] if spec["at_end"] else specials, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    if spec["at_end"]:  # GPT-2: <|endoftext|> is the last id, in the BPE's vocabulary and an added token
        tok.add_special_tokens(specials)
        data = json.loads(tok.to_str())
        for t in data["added_tokens"]:
            data["model"]["vocab"].setdefault(t["content"], t["id"])
        tok = Tokenizer.from_str(json.dumps(data))
    if tok.get_vocab_size(with_added_tokens=False) != VOCAB_SIZE:
        raise RuntimeError(f"{kind}: the BPE reached {tok.get_vocab_size()} tokens, not {VOCAB_SIZE}; "
                           f"training_text() needs more varied text")
    if spec["add_bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


def _tokenizer_files(kind: str, folder: Path) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json (the chat template inside, as most Hub models ship it)."""
    spec = SPECS[kind]
    text = _trained(kind)
    (folder / "tokenizer.json").write_text(text)
    added = json.loads(text)["added_tokens"]
    ids = {t["content"]: t["id"] for t in added}
    config = {
        "add_bos_token": spec["add_bos"],
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(t["id"]): {k: t[k] for k in
                                                ("content", "lstrip", "normalized", "rstrip", "single_word",
                                                 "special")} for t in added},
        "additional_special_tokens": spec["extra"],
        "bos_token": spec["bos"],
        "chat_template": spec["template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": spec["eos"],
        "model_max_length": MAX_POSITIONS,
        "tokenizer_class": spec["tokenizer_class"],
        "unk_token": spec["unk"],
    }
    if spec["pad"] is not None:  # GPT-2's tokenizer_config has no pad_token at all
        config["pad_token"] = spec["pad"]
    if not spec["extra"]:
        del config["additional_special_tokens"]
    if "padding_side" in spec:
        config["padding_side"] = spec["padding_side"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return ids


# ----------------------------------------------------------------------------- model

def _model(kind: str, ids: dict[str, int]):
    """A randomly initialised model of KIND (call torch.manual_seed first) and its generation config."""
    from transformers import GenerationConfig

    spec = SPECS[kind]
    bos = ids.get(spec["bos"]) if spec["bos"] else None
    eos, pad = ids[spec["eos"]], ids.get(spec["pad"]) if spec["pad"] else None
    stop = [ids[t] for t in spec["stop"]]
    if kind == "llama-chatml":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
                          rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                          bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
        lm = LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=MAX_POSITIONS, n_embd=64, n_layer=2, n_head=4,
                         bos_token_id=bos, eos_token_id=eos)
        lm = GPT2LMHeadModel(cfg)
    elif kind == "gemma-style":
        from transformers import GemmaConfig, GemmaForCausalLM

        cfg = GemmaConfig(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                          max_position_embeddings=MAX_POSITIONS, hidden_activation="gelu_pytorch_tanh",
                          tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
        lm = GemmaForCausalLM(cfg)
    else:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    gen = GenerationConfig(bos_token_id=bos, eos_token_id=stop if len(stop) > 1 else stop[0], pad_token_id=pad)
    return lm, gen


def build(kind: str, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Build the fixture model KIND into FOLDER (created; it must not exist yet) and return its path.

    Written into a temporary sibling folder first and renamed into place, so FOLDER is complete or absent.
    SEED sets the random weights; the tokenizer does not depend on it.
    """
    import torch

    if kind not in SPECS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; build() writes a new folder (remove it first)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        ids = _tokenizer_files(kind, tmp)
        torch.manual_seed(seed)
        lm, gen = _model(kind, ids)
        lm.generation_config = gen
        lm.save_pretrained(tmp, safe_serialization=True)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp and the weights' writer make them private (0700/0600)
            path.chmod(0o755 if path.is_dir() else 0o644)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def build_all(root: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Build every kind into ROOT/<kind>; returns {kind: path}."""
    return {kind: build(kind, Path(root) / kind, seed=seed) for kind in KINDS}


# ----------------------------------------------------------------------------- cache

def content_hash() -> str:
    """What a build depends on: this file, the course corpus, and the transformers/tokenizers/torch versions."""
    import tokenizers
    import torch
    import transformers

    h = hashlib.sha256()
    for path in (Path(__file__).resolve(), ROOT / "labkit" / "corpus.py"):
        h.update(path.read_bytes())
    for version in (transformers.__version__, tokenizers.__version__, torch.__version__):
        h.update(version.encode() + b"\0")
    return h.hexdigest()[:16]


def cached(root: str | os.PathLike | None = None) -> dict[str, Path]:
    """{kind: path} of all fixture models under ROOT/<content_hash()>/, built once and then reused.

    ROOT defaults to <repo>/.cache/hub_models. A build goes into a temporary folder renamed into place: when
    two processes build at once, the first rename wins and the other's copy is discarded.
    """
    root = Path(root) if root is not None else CACHE
    final = root / content_hash()
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        try:
            build_all(tmp)
            tmp.chmod(0o755)
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished first
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {kind: final / kind for kind in KINDS}


if __name__ == "__main__":
    import time

    if len(sys.argv) != 2:
        sys.exit("usage: python tests/hub_models.py OUT_DIR")
    for kind in KINDS:
        start = time.perf_counter()
        path = build(kind, Path(sys.argv[1]) / kind)
        print(f"{kind}\t{path}")
        print(f"{kind}: built in {time.perf_counter() - start:.1f} s", file=sys.stderr)

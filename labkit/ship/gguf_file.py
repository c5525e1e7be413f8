"""GGUF, llama.cpp's file format, written with the gguf package: tensors (q/k permuted as llama.cpp expects),
the tokenizer and chat template, read back and checked tensor by tensor against the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..chat import stop_token_ids, tokenizer_adds_bos
from .merging import has_adapter_layers


GGUF_TYPES = ("F32", "F16", "Q8_0")
# the largest |GGUF - original| a tensor can have, relative to its largest |value|: F16 rounds to 11
# significant bits; Q8_0 rounds x / d to an integer code (d = block max / 127), half a step, and stores d
# in float16, which moves a code of up to 127 by 127·d·2^-11 more
GGUF_BOUNDS = {"F32": 0.0, "F16": 2 ** -11, "Q8_0": 1 / 254 + 2 ** -11}


# ----------------------------------------------------------------------------- GGUF (llama.cpp's file format)

def _check_llama(model):
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise ValueError(f"labkit's GGUF exporter covers Llama-architecture models (model_type 'llama'); this one is "
                         f"{getattr(cfg, 'model_type', type(model).__name__)!r}. For other families use llama.cpp's own "
                         "converter: python convert_hf_to_gguf.py MODEL_FOLDER --outtype f16 (or q8_0).")
    if has_adapter_layers(model):
        raise ValueError("merge the adapter first (labkit.ship.merge): GGUF holds plain weights.")


def permute_qk(w, n_head: int):
    """llama.cpp's row order for q_proj / k_proj (its convert_hf_to_gguf.py 'permute'): transformers
    rotates the two halves of each head's dimensions, llama.cpp rotates interleaved pairs.
    w: (n_head * head_dim, hidden) -> the same shape, rows reordered."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model) -> dict:
    """{gguf name: (transformers name, float32 numpy array as GGUF stores it)} for a Llama MODEL.

    Names come from llama.cpp's own table (gguf.get_tensor_name_map), e.g.
    model.layers.0.self_attn.q_proj.weight -> blk.0.attn_q.weight; q and k rows are permuted
    (permute_qk); a tied lm_head is left out (llama.cpp then reuses token_embd).
    """
    import gguf

    _check_llama(model)
    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    out = {}
    for hf_name, t in model.state_dict().items():
        if tied and hf_name == "lm_head.weight" or "rotary_emb" in hf_name:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no llama.cpp name for tensor {hf_name!r}.")
        a = t.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            a = permute_qk(a, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            a = permute_qk(a, cfg.num_key_value_heads)
        out[name] = (hf_name, a)
    return out


# llama.cpp splits text before BPE with a regex chosen by the NAME in tokenizer.ggml.pre (llama-vocab.cpp):
# "gpt-2": GPT-2's regex (transformers' ByteLevel with use_regex); "refact": every digit alone, then GPT-2's.
def pre_tokenizer(tok) -> str:
    """The tokenizer.ggml.pre name whose regex splits text as TOK's own pre-tokenizer does (byte-level BPE)."""
    pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex")) for s in steps]
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "refact"
    raise ValueError(f"no llama.cpp pre-tokenizer known here for {kinds}; llama.cpp's convert_hf_to_gguf.py "
                     "identifies it by tokenizing a test text (get_vocab_base_pre).")


def _vocab(writer, tok, vocab_size: int):
    """The tokenizer as llama.cpp's "gpt2" (byte-level BPE) vocabulary: tokens, types, merges, ids."""
    import gguf

    data = json.loads(tok.backend_tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise ValueError(f"the GGUF exporter writes byte-level BPE tokenizers; this one is {data['model']['type']}.")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    special = set(tok.all_special_ids) | {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.CONTROL if i in special else
                     gguf.TokenType.UNUSED if i not in by_id else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tok))  # the regex llama.cpp splits text with before BPE: the tokenizer's own
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    if tok.bos_token_id is not None:
        writer.add_bos_token_id(tok.bos_token_id)
    writer.add_add_bos_token(tokenizer_adds_bos(tok))
    writer.add_eos_token_id(stop_token_ids(tok)[0])  # the template's turn end first: where llama.cpp stops
    if tok.pad_token_id is not None:
        writer.add_pad_token_id(tok.pad_token_id)
    if getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)


def write_gguf(model, tok, path, tensor_type: str = "F16") -> Path:
    """Write a merged Llama MODEL with its tokenizer TOK to the GGUF file PATH; returns PATH.

    tensor_type: "F16", "Q8_0" (8-bit blocks of 32 with one float16 scale each; a matrix whose rows
    are not whole blocks stays F16) or "F32". Norm weights (1-D) stay F32, as llama.cpp writes them.
    Hyperparameters come from MODEL.config; the file is written to PATH.tmp and renamed.
    """
    import gguf
    import numpy as np

    if tensor_type not in GGUF_TYPES:
        raise ValueError(f"tensor_type must be one of {GGUF_TYPES}; got {tensor_type!r}.")
    tensors = gguf_tensors(model)
    cfg = model.config
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(Path(getattr(cfg, "_name_or_path", "") or "model").name or "model")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = getattr(cfg, "rope_parameters", None) or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                     "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[tensor_type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _vocab(w, tok, cfg.vocab_size)
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    for name, (_, a) in tensors.items():
        if a.ndim == 1 or tensor_type == "F32":
            w.add_tensor(name, a.astype(np.float32))
        elif tensor_type == "Q8_0" and a.shape[-1] % block == 0:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a.astype(np.float16))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    os.replace(tmp, path)
    return path


def read_gguf(path) -> dict:
    """{"tensors": {name: (type name, float32 array in GGUF's shape)}, "metadata": {key: value}} of
    the GGUF file PATH, read back with gguf's GGUFReader (quantised tensors dequantised)."""
    import gguf
    import numpy as np

    r = gguf.GGUFReader(str(path))
    tensors = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape))  # GGUF lists dimensions fastest-first
        tensors[t.name] = (t.tensor_type.name, np.asarray(a, dtype=np.float32).reshape(shape))
    meta = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                              "tokenizer.ggml.token_type"):
            continue
        value = field.contents()
        meta[key] = value
    meta["tokenizer.ggml.tokens.count"] = len(r.fields["tokenizer.ggml.tokens"].data)
    return {"tensors": tensors, "metadata": meta}


def check_gguf(path, model) -> dict:
    """Compare every tensor of the GGUF file PATH with MODEL's own (the safetensors it was saved from).

    Returns {"tensors": n, "missing": names in one but not the other, "worst": (name, max |GGUF - model|
    relative to the tensor's max |value|), "by_type": {type: worst relative difference}}, each within
    GGUF_BOUNDS[type]: F16 keeps 11 significant bits (2^-11 = 4.9e-4), Q8_0 rounds each entry to a
    step of 1/127 of its block's max |value| with a float16 scale (1/254 + 2^-11 = 4.4e-3).
    """
    import numpy as np

    ours = gguf_tensors(model)
    back = read_gguf(path)["tensors"]
    missing = sorted(set(ours) ^ set(back))
    by_type, worst = {}, ("", 0.0)
    for name, (_, a) in ours.items():
        if name not in back:
            continue
        kind, b = back[name]
        if b.shape != a.shape:
            raise ValueError(f"{name}: GGUF holds shape {b.shape}, the model {a.shape}.")
        rel = float(np.abs(b - a).max() / max(float(np.abs(a).max()), 1e-12))
        by_type[kind] = max(by_type.get(kind, 0.0), rel)
        if rel > worst[1]:
            worst = (name, rel)
    return {"tensors": len(back), "missing": missing, "worst": worst, "by_type": by_type}

"""Shipping a fine-tuned model: merge, reload without peft, 4-bit bases, many adapters, combinations, GGUF.

    merged = ship.merge(peft_model)                         # a plain transformers model, adapter folded in
    ship.save_merged(merged, tok, "my_model")               # safetensors + tokenizer, written atomically
    ship.reload_without_peft("my_model", prompts)           # a fresh process that never imports peft
    ship.merge_4bit(base_4bit, "adapter", how="dequantize") # QLoRA: merge into 16/32-bit weights, not 4-bit
    ship.combine(pm, ["a", "b"], [1.0, 1.0], "ties", density=0.5)   # peft's add_weighted_adapter, checked
    ship.write_gguf(merged, tok, "model.gguf", "Q8_0")      # llama.cpp's format, with the gguf package

Every comparison here is between two models on the same input: `max_logit_difference` for the logits
(batch, seq, vocab), labkit.evaluate.answer for greedy answers. Merging is exact up to float rounding (about
1e-4 on logits of size ~20 in float32); a 16-bit save rounds each weight to 8 (bfloat16) or 11 (float16)
significant bits, which moves logits by 1e-2 to 1; re-quantising a merged weight to 4 bits rounds W + ΔW
to the NF4 grid again, whose steps are larger than most entries of a LoRA update (requantization_error).

One file per idea (the names below are all re-exported here, so `ship.merge` etc. work as before):
    merging.py        adapters to ship; merge, save atomically, reload without peft (reload_child.py)
    qlora_merge.py    a 4-bit base: merge into dequantised weights, and what re-quantising costs
    many_adapters.py  one adapter per row of a batch, checked against one at a time
    combining.py      peft's add_weighted_adapter: linear, TIES, DARE
    gguf_file.py      llama.cpp's file format, written and checked tensor by tensor
"""

from .merging import (  # adapters to ship; merge, save, reload without peft
    train_adapter,
    adapter_for,
    load_adapters,
    merge,
    has_adapter_layers,
    save_merged,
    folder_size,
    RELOAD_CHILD,
    reload_without_peft,
    max_logit_difference,
    logit_agreement,
    lora_config_for,
)
from .qlora_merge import (  # a 4-bit base: merge into dequantised weights
    dequantize,
    merge_4bit,
    requantization_error,
    weight_bytes,
)
from .many_adapters import (  # one adapter per row of a batch
    mixed_lora_linear,
    mixed_answers,
    answers_one_adapter_at_a_time,
    mixed_logits_difference,
    op_counts,
)
from .combining import (  # add_weighted_adapter: linear, TIES, DARE
    COMBINATIONS,
    NEEDS_DENSITY,
    SIGN_METHODS,
    combine,
    combination_error,
)
from .gguf_file import (  # llama.cpp's file format
    GGUF_TYPES,
    GGUF_BOUNDS,
    permute_qk,
    gguf_tensors,
    write_gguf,
    read_gguf,
    check_gguf,
    pre_tokenizer,
)

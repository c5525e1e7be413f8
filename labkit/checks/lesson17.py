"""Lesson 17 (ship it): merging a LoRA update into a Linear or a Conv1D weight by hand, one layer of a
mixed batch from scratch, and interview questions on shipping fine-tuned models."""

from __future__ import annotations

import random

import torch
from torch import nn

from labkit import lora, ship
from labkit.check import Case, exercise, question, randn, tensor

LESSON = "17"


# ---------------------------------------------------------------------------------------------
# merge_into_weight(W, A, B, alpha, r, fan_in_fan_out): the stored weight after merging


def _merge_reference(W, A, B, alpha, r, fan_in_fan_out):
    from transformers.pytorch_utils import Conv1D

    if fan_in_fan_out:  # GPT-2's Conv1D: W stored (in, out)
        base = Conv1D(W.shape[1], W.shape[0]).to(W.dtype)
    else:
        base = nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=W.dtype)
    with torch.no_grad():
        base.weight.copy_(W)
        layer = lora.LoRALinear(base, r=r, alpha=alpha)
        layer.A.copy_(A)
        layer.B.copy_(B)
        layer.merge()
    return base.weight.detach()


def _merge_inputs(rng_or_seed, d_in, d_out, r, alpha, fan_in_fan_out, dtype=torch.float32):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    shape = (d_in, d_out) if fan_in_fan_out else (d_out, d_in)
    return {"W": randn(rng, *shape, dtype=dtype, scale=0.2), "A": randn(rng, r, d_in, dtype=dtype, scale=0.3),
            "B": randn(rng, d_out, r, dtype=dtype, scale=0.3), "alpha": alpha, "r": r,
            "fan_in_fan_out": fan_in_fan_out}


def _merge_public():
    return [Case(_merge_inputs(1, 8, 6, 2, 4, False), "an nn.Linear weight (6, 8), r=2"),
            Case(_merge_inputs(2, 8, 12, 4, 8, True), "a GPT-2 Conv1D weight stored (in, out) = (8, 12), r=4",
                 hint="Conv1D stores W transposed, (in, out); B @ A is (out, in), so add its transpose"),
            Case(_merge_inputs(3, 10, 10, 2, 16, True), "a square Conv1D weight (10, 10)",
                 hint="a square weight takes B @ A without complaint: only the transpose makes it right")]


def _merge_hidden(rng):
    cases = []
    for _ in range(5):
        r = rng.choice([1, 2, 4, 8])
        cases.append(Case(_merge_inputs(rng, rng.randint(2, 30), rng.randint(2, 30), r, rng.choice([1, r, 2 * r, 16]),
                                        rng.random() < 0.5)))
    cases.append(Case(_merge_inputs(rng, 12, 12, 4, 8, True, dtype=torch.float64), "float64, Conv1D, square",
                      hint="keep the input dtype"))
    return cases


exercise(id="merge_into_weight", lesson=LESSON, title="Merging a LoRA update into a Linear or a Conv1D weight",
         signature="merge_into_weight(W, A, B, alpha, r, fan_in_fan_out)",
         reference=_merge_reference, public=_merge_public, hidden=_merge_hidden,
         compare=tensor(rtol=1e-5, atol=1e-6),
         hint="return a NEW tensor: W + (alpha / r) · B @ A for an nn.Linear (W is (out, in)); for a Conv1D "
              "(fan_in_fan_out=True, W is (in, out)) the update is transposed first")


# ---------------------------------------------------------------------------------------------
# mixed_lora_linear(x, W, b, adapters, adapter_names): one layer of a mixed batch


def _mixed_inputs(rng_or_seed, batch, seq, d_in, d_out, ranks: dict, names, bias=True):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    adapters = {n: (randn(rng, r, d_in, scale=0.3), randn(rng, d_out, r, scale=0.3), rng.choice([0.5, 1.0, 2.0]))
                for n, r in ranks.items()}
    return {"x": randn(rng, batch, seq, d_in), "W": randn(rng, d_out, d_in, scale=0.2),
            "b": randn(rng, d_out) if bias else None, "adapters": adapters, "adapter_names": list(names)}


def _mixed_public():
    return [Case(_mixed_inputs(1, 3, 2, 8, 6, {"risk": 2, "classify": 2}, ["risk", "classify", "risk"]),
                 "3 rows, two adapters"),
            Case(_mixed_inputs(2, 4, 3, 8, 8, {"risk": 4}, ["__base__", "risk", "__base__", "__base__"], bias=False),
                 "rows for the plain base model ('__base__'), no bias",
                 hint="'__base__' rows get x W^T + b only; b is None for a layer without bias"),
            Case(_mixed_inputs(3, 2, 4, 6, 5, {"a1": 1, "a2": 3}, ["a2", "a2"]), "every row through one adapter, "
                 "the other unused, ranks differ", hint="each adapter has its own A, B and scaling")]


def _mixed_hidden(rng):
    cases = []
    for _ in range(5):
        k = rng.randint(1, 3)
        ranks = {f"task{i}": rng.choice([1, 2, 4]) for i in range(k)}
        batch = rng.randint(1, 6)
        names = [rng.choice(list(ranks) + ["__base__"]) for _ in range(batch)]
        cases.append(Case(_mixed_inputs(rng, batch, rng.randint(1, 4), rng.randint(2, 16), rng.randint(2, 16), ranks,
                                        names, bias=rng.random() < 0.7)))
    return cases


exercise(id="mixed_lora_linear", lesson=LESSON, title="One layer of a mixed batch: each row through its own adapter",
         signature="mixed_lora_linear(x, W, b, adapters, adapter_names)",
         reference=ship.mixed_lora_linear, public=_mixed_public, hidden=_mixed_hidden,
         compare=tensor(rtol=1e-4, atol=1e-5),
         hint="y = x W^T + b for every row; then, for each adapter, the rows i with adapter_names[i] == name get "
              "+ scaling · x[i] A^T B^T, and '__base__' rows get nothing more")


# ---------------------------------------------------------------------------------------------
# Interview questions

question(id="q17_requantize", lesson=LESSON, kind="choice", answer_hash="8d893f5cf7b060dbcbbea75b",
         text="After QLoRA training you call merge_and_unload() on the model whose base is loaded in 4-bit NF4. "
              "What do you get?",
         choices=("an exact merge: W_nf4 + (alpha/r)·B·A, kept in 16 bits, ready for saving",
                  "W + ΔW rounded to NF4 again: only what the 4-bit grid can hold of the update",
                  "an error: peft refuses to merge an adapter into a quantised 4-bit layer"),
         feedback={"a": "peft merges into the layer it finds: a 4-bit layer stores NF4 codes, so the sum is quantised "
                        "again, not kept in 16 bits. The right way dequantises the base first.",
                   "c": "peft merges without an error; it only warns (section 2 prints the warning), which is why the "
                        "wrong merge is easy to ship."},
         hint="what does a 4-bit layer store after the merge, and how large is one NF4 step next to a LoRA update?")

question(id="q17_merged_size_gb", lesson=LESSON, kind="number", rtol=0.03, answer_hash="f46233d22d7c1450404e609b",
         text="A 7-billion-parameter model (bfloat16) has a LoRA adapter of 40 million parameters. You merge it and "
              "save the merged model in bfloat16. About how many GB (1e9 bytes) are its weights? (3% tolerance)",
         hint="what does merging add to the number of parameters?")

question(id="q17_cat_rank", lesson=LESSON, kind="number", rtol=0.001, answer_hash="086ecb946fd60be8035e58b8",
         text="You combine two LoRA adapters of rank 8 with add_weighted_adapter(..., combination_type='cat'). "
              "What is the rank of the new adapter?",
         hint="cat stacks the A matrices (and the B matrices) of the adapters")

question(id="q17_exact_combination", lesson=LESSON, kind="choice", answer_hash="e37c1c17d9ab6e2f1f54ab78",
         text="Which add_weighted_adapter combination_type gives exactly w1·ΔW1 + w2·ΔW2, with ΔW = (alpha/r)·B·A?",
         choices=("linear: it combines the A's and the B's with the weights", "ties, with density=1.0", "cat"),
         feedback={"a": "combining the A's and the B's separately multiplies out to cross terms B1·A2 and B2·A1 that "
                        "no one trained: not the weighted sum (section 4's ΔW column).",
                   "b": "TIES, even keeping every entry, elects a sign per entry and combines the A's and the B's "
                        "separately: the cross terms remain."},
         hint="expand (B1 + B2)(A1 + A2)")

question(id="q17_mixed_rows", lesson=LESSON, kind="choice", answer_hash="9ebec1ae50977ca2574a0511",
         text="A mixed batch is generated with adapter_names=['risk', 'classify', '__base__', 'risk']. In each adapted "
              "layer, which rows does the risk adapter's A and B compute on?",
         choices=("rows 0 and 3 only", "every row, its update multiplied by 0 where another adapter is named",
                  "rows 0, 2 and 3: '__base__' rows take the first adapter"),
         feedback={"b": "peft gathers each adapter's rows out of the batch and adds the result back to those rows only; "
                        "it does not run every adapter on every row (section 3 counts the row reads and writes).",
                   "c": "'__base__' means no adapter at all: those rows get the base layer's output only."},
         hint="in each adapted layer, which rows does a name in adapter_names select, and what does '__base__' name?")

question(id="q17_gguf_qk", lesson=LESSON, kind="choice", answer_hash="f419f52a78ebacd8d213fb5e",
         text="Converting a Llama checkpoint from transformers to GGUF permutes the rows of q_proj and k_proj. Why?",
         choices=("to compress the two matrices better, by putting similar rows next to each other",
                  "llama.cpp's RoPE pairs interleaved dimensions, transformers' the two halves of a head",
                  "GGUF stores matrices transposed, and q and k are the only ones the converter must fix by hand"),
         feedback={"a": "reordering rows changes no size: GGUF's compression is the tensor type (F16, Q8_0), and only "
                        "q and k are permuted.",
                   "c": "GGUF keeps each matrix's (out, in) layout, and a transposition would apply to every matrix; "
                        "only q and k are reordered, for the rotary embedding."},
         hint="which dimensions does rotate_half pair up?")

question(id="q17_many_tasks_gb", lesson=LESSON, kind="number", rtol=0.02, answer_hash="efad095937bc97917be50e72",
         text="One 7B base model in bfloat16 (14 GB) serves 20 tasks, each with its own LoRA adapter of 40 MB, in mixed "
              "batches. How many GB of weights does the server hold? (2% tolerance; 1 GB = 1000 MB)",
         hint="one copy of the base, plus every adapter")

question(id="q17_gguf_gibberish", lesson=LESSON, kind="choice", answer_hash="cacd70b53f593748ece8808d",
         text="Your fine-tuned model answers well in transformers; exported to GGUF, it answers gibberish in "
              "llama-server. Given transformers' prompt token ids, llama.cpp answers exactly as transformers does. "
              "Where is the fault?",
         choices=("the weights: Q8_0 quantisation erased what fine-tuning changed, so re-export the file in F16",
                  "the sampler: llama-server samples at a temperature where transformers decoded greedily",
                  "the prompt: the server's template or tokenization gives other ids; compare prompt token ids"),
         feedback={"a": "with the same prompt tokens the file gives transformers' answers, so its weights are right; "
                        "section 5's table shows the same file answering well or badly depending on the prompt alone.",
                   "b": "sampling changes some word choices; it does not turn every answer into gibberish, and every "
                        "row of section 5's table decodes greedily, yet the wrong prompts still go wrong."},
         hint="the same file, the same greedy decoding: what else differs between the two runs?")

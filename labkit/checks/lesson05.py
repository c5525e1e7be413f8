"""Lesson 05 (QLoRA): the memory estimate of full, LoRA and QLoRA fine-tuning; quizzes."""

from __future__ import annotations

from labkit import memory
from labkit.check import Case, exercise, mapping, number, question

LESSON = "05"


# ---------------------------------------------------------------------------------------------
# estimate_memory(n_params, method, lora_params) -> dict of bytes

_KEYS = ("weights", "gradients", "optimizer_states", "adapters", "quant_constants", "total")


def _memory_reference(n_params, method, lora_params):
    return memory.estimate_memory(n_params, method, lora_params=lora_params)


exercise(id="memory_estimate", lesson=LESSON, title="What fits: memory for full, LoRA and QLoRA fine-tuning",
         signature="estimate_memory(n_params, method, lora_params)",
         reference=_memory_reference,
         public=lambda: [Case({"n_params": 7_000_000_000, "method": "full", "lora_params": None}, "full fine-tuning",
                              hint="bf16 weights and gradients (2 + 2 bytes), AdamW m and v in fp32 (8 bytes) and an "
                                   "fp32 master copy (4 bytes): 16 bytes per parameter"),
                         Case({"n_params": 7_000_000_000, "method": "lora", "lora_params": 4_194_304}, "LoRA",
                              hint="frozen bf16 weights; only the adapters have gradients (bf16) and AdamW states (fp32)"),
                         Case({"n_params": 7_000_000_000, "method": "qlora", "lora_params": 4_194_304}, "QLoRA",
                              hint="weights in 4 bits, constants double-quantised (bits_per_parameter(64, True) - 4 "
                                   "bits each), bf16 adapters")],
         hidden=lambda rng: [Case({"n_params": rng.randint(10**6, 7 * 10**10),
                                   "method": (m := rng.choice(["full", "lora", "qlora"])),
                                   "lora_params": None if m == "full" else rng.randint(10**4, 10**8)})
                             for _ in range(5)],
         compare=mapping(_KEYS, number(rtol=1e-6, atol=2.0), optional_zero=("activations",)),
         hint="bytes, with keys weights, gradients, optimizer_states, adapters, quant_constants and total "
              "(unused parts are 0)")


# ---------------------------------------------------------------------------------------------
# Quizzes

question(id="q05_weights_7b_gb", lesson=LESSON, kind="number", rtol=0.02, answer_hash="073446358262b09a5dedfed6",
         text="How many GB (10^9 bytes) do the weights of a 6.74-billion-parameter model take in NF4 with "
              "blocksize 64 and double quantisation, constants included? (2% tolerance)",
         hint="bits_per_parameter(64, True) bits per weight, 8 bits per byte")

question(id="q05_what_trains", lesson=LESSON, kind="choice", answer_hash="31a661abe7f8a6cd0ffb57b9",
         text="In a QLoRA run, which tensors does the optimizer update?",
         choices=("the NF4 weights: dequantised, updated, then quantised again each step",
                  "the LoRA adapters and also the absmax constants of every 4-bit block",
                  "only the LoRA adapters; the 4-bit weights and constants stay frozen"),
         feedback={"a": "The 4-bit weights never change: gradients flow through their dequantised values to the "
                        "adapters, and re-quantising after every step would add fresh rounding error each time.",
                   "b": "The absmax constants are part of the frozen 4-bit storage and get no gradient; "
                        "print_trainable_parameters counts the adapters only."})

question(id="q05_paged", lesson=LESSON, kind="choice", answer_hash="db9c94aa0eb283fbafc4e22f",
         text='What does optim="paged_adamw_8bit" give that optim="adamw_8bit" does not?',
         choices=("optimizer states that can move to CPU memory when GPU memory spikes",
                  "optimizer states stored in 8 bits instead of 32, a quarter the size",
                  "frozen weights streamed in from CPU memory, one layer at a time, on demand"),
         feedback={"b": "Both keep 8-bit states: that is the '8bit' in both names. Paging is about where the "
                        "states live, not their size.",
                   "c": "Paging moves optimizer states only; the weights stay on the GPU. Streaming weights from "
                        "CPU memory is offloading (e.g. FSDP's CPU offload), another tool."})

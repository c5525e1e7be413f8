"""Lesson 03 (PEFT methods on a real pretrained encoder): DoRA's weight from scratch; quizzes on what each
method trains and what LoRA saves."""

from __future__ import annotations

import random

import torch

from labkit import lora
from labkit.check import Case, exercise, question, randn, tensor

LESSON = "03"


# ---------------------------------------------------------------------------------------------
# dora_weight(W, A, B, magnitude, scaling): magnitude * (W + scaling B A) / its row norms


def _dora_inputs(rng_or_seed, d_out, d_in, r, scaling, dtype=torch.float32, trained=True):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    W = randn(rng, d_out, d_in, dtype=dtype, scale=0.3)
    B = randn(rng, d_out, r, dtype=dtype, scale=0.3) if trained else torch.zeros(d_out, r, dtype=dtype)
    magnitude = W.norm(dim=1) * (1 + 0.5 * randn(rng, d_out, dtype=dtype).abs()) if trained else W.norm(dim=1)
    return {"W": W, "A": randn(rng, r, d_in, dtype=dtype, scale=0.3), "B": B, "magnitude": magnitude,
            "scaling": scaling}


exercise(id="dora_weight", lesson=LESSON, title="DoRA's weight: a length and a direction per row",
         signature="dora_weight(W, A, B, magnitude, scaling)",
         reference=lora.dora_weight,
         public=lambda: [Case(_dora_inputs(1, 6, 8, 2, 2.0, trained=False), "at peft's init: B = 0, magnitude = ||W||_row",
                              hint="with B = 0 and magnitude = the row norms of W, the result is W itself"),
                         Case(_dora_inputs(2, 6, 8, 2, 2.0), "after training: B and the magnitudes moved"),
                         Case(_dora_inputs(3, 10, 4, 3, 0.5), "more rows than columns, scaling 0.5",
                              hint="the norm is over each ROW of the (d_out, d_in) matrix: dim=1")],
         hidden=lambda rng: [Case(_dora_inputs(rng, rng.randint(2, 24), rng.randint(2, 24), rng.choice([1, 2, 4, 8]),
                                               rng.choice([0.5, 1.0, 2.0, 4.0]))) for _ in range(4)]
         + [Case(_dora_inputs(rng, 7, 5, 2, 2.0, dtype=torch.float64), "float64 inputs",
                 hint="keep the input dtype: no .float() on the way")],
         compare=tensor(rtol=1e-4, atol=1e-5),
         hint="V = W + scaling * B @ A; return magnitude[:, None] * V / V.norm(dim=1, keepdim=True)")


# ---------------------------------------------------------------------------------------------
# Quizzes

question(id="q03_prompt_params", lesson=LESSON, kind="number", answer_hash="6d70bc24a19acd73e634a74d",
         text="Prompt tuning puts 8 trainable virtual-token embeddings in front of every input. MiniLM's hidden "
              "size is 384. How many trainable numbers does that adapter have (the classification head not counted)?",
         hint="one embedding vector of the hidden size per virtual token")

question(id="q03_lora_memory", lesson=LESSON, kind="choice", answer_hash="dc9bf06e0f067c81ce8fc57a",
         text="Lesson 03's table splits the memory of one training step into weights, gradients with AdamW's states "
              "and activations. Against full fine-tuning, which part does LoRA shrink?",
         choices=("the activations: with the encoder frozen, the backward pass stops early and keeps almost nothing",
                  "the gradients and AdamW's two states, which only the trainable parameters need",
                  "the weights: LoRA stores each adapted matrix as the low-rank product B·A instead of W"),
         hint="what do gradients and optimizer states exist for? And does the backward pass still run through every layer?",
         feedback={"a": "the gradient must still flow back through every frozen layer to reach the A and B of the first "
                        "layers, so the activations are kept: compare the two rows' activation column",
                   "c": "the frozen W stays as it is and A and B are added beside it: the weights column is a little "
                        "larger for LoRA, not smaller"})

question(id="q03_head_only", lesson=LESSON, kind="choice", answer_hash="9055cc24bbbdfd28161920eb",
         text="Trained to convergence, a linear head on the frozen encoder gets every training message right and still "
              "misses many held-out ones, where LoRA gets them all. Why does the head alone fall short?",
         choices=("the head has too few parameters: a few thousand numbers cannot hold six intents and their phrasings",
                  "it was stopped too early: more optimisation steps on the same head would close the gap to LoRA",
                  "the frozen encoder puts new phrasings next to another intent's, and a head only draws boundaries "
                  "in that space",
                  "the tokenizer drops short words such as \"not\", so the encoder never sees a negation at all"),
         hint="look at what the head trained to convergence does on the training messages, and at the cosine "
              "similarities the lesson prints with the adapter off and on",
         feedback={"a": "the same head fits every training message, so it can hold six intents; what it cannot do is "
                        "carry that over to phrasings the frozen encoder places next to another intent",
                   "b": "the head trained to convergence already fits every training message; more steps cannot "
                        "change the vectors the frozen encoder gives the held-out ones",
                   "d": "\"not\" is a token of MiniLM's vocabulary and reaches the encoder; the problem is where the "
                        "frozen encoder puts the whole message, next to its opposite"})

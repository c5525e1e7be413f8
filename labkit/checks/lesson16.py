"""Lesson 16 (scaling out): the per-rank loss that makes data parallelism train like one process, and
what the ZeRO stages split."""

from __future__ import annotations


import torch

from labkit import scale
from labkit.check import Case, as_rng, exercise, question, tensor

LESSON = "16"


def _ranks(rng_or_seed, counts):
    """One tensor of per-token losses per rank, with COUNTS[k] trained tokens on rank k (losses 0.5-6)."""
    rng = as_rng(rng_or_seed)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    return {"token_losses": [0.5 + 5.5 * torch.rand(n, generator=g) for n in counts]}


def _public():
    return [Case({"token_losses": [torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])]},
                 "two ranks with as many trained tokens",
                 hint="with equal counts the answer is each rank's own mean; the cases below tell the two apart"),
            Case({"token_losses": [torch.tensor([4.0]), torch.tensor([1.0, 1.0, 1.0])]},
                 "one rank with 1 trained token, the other with 3",
                 hint="divide each rank's SUM by the trained tokens of ALL ranks (4 here), not by its own count, "
                      "then multiply by the number of ranks: DDP divides the summed gradients by it"),
            Case(_ranks(1, [5, 31, 12, 7]), "four ranks, 5 to 31 trained tokens (short and long answers)",
                 hint="the mean of the values you return must be the mean over all 55 token losses")]


exercise(id="rank_losses", lesson=LESSON, title="The per-rank loss that makes DDP train like one process",
         signature="rank_losses(token_losses)",
         reference=scale.rank_losses,
         public=_public,
         hidden=lambda rng: [Case(_ranks(rng, [rng.randint(0 if k else 1, 40) for k in range(rng.randint(2, 8))]))
                             for _ in range(5)],
         compare=tensor(rtol=1e-5, atol=1e-6),
         hint="T = trained tokens on all ranks, N = number of ranks; rank k returns token_losses[k].sum() / T * N "
              "(a rank with no trained token returns 0); torch.stack the N values")

question(id="q16_naive_weights", lesson=LESSON, kind="choice", answer_hash="c63e5e91575c422c6601fc5e",
         text="Two ranks of a data-parallel SFT step: rank 0 holds four short answers (20 trained tokens), rank 1 "
              "four long ones (70). Each rank takes the mean of its own token losses and DDP averages the two "
              "gradients. Compared with the mean over all 90 tokens, whose tokens count for more?",
         choices=("rank 1's: it holds more tokens, so its mean carries more of the batch",
                  "rank 0's: each of its tokens weighs 1/40 instead of 1/90, each of rank 1's 1/140",
                  "neither: averaging the two gradients gives every token the weight 1/90"),
         feedback={"a": "a rank's mean divides by its own count, so the more tokens a rank holds the less each one "
                        "weighs; averaging the two means gives both ranks the same total weight",
                   "c": "that is what dividing each rank's summed loss by the global count (90) gives; the mean of "
                        "the two means weighs a token 1/(2 x its rank's count)"},
         hint="write the naive loss as (1/2)(sum_0 / 20 + sum_1 / 70) and read off each token's factor")

question(id="q16_zero_for_lora", lesson=LESSON, kind="choice", answer_hash="f8182898db22a18a30ac0f2c",
         text="You fine-tune a 70B model with LoRA on 8 GPUs and it does not fit with DDP. Which strategy lowers "
              "the memory on each GPU the most?",
         choices=("ZeRO-2: it splits the gradients and the optimizer states over the 8 GPUs",
                  "DDP with more gradient accumulation steps and a smaller micro-batch",
                  "ZeRO-3 / FSDP: it splits the frozen base weights over the 8 GPUs as well"),
         feedback={"a": "with LoRA the gradients and optimizer states belong to the adapter, a fraction of a percent "
                        "of the parameters; the frozen base weights fill the GPU and ZeRO-2 leaves them whole on each",
                   "b": "a smaller micro-batch shrinks only the activations; DDP still keeps every weight of the 70B "
                        "base model on every GPU"},
         hint="which part of the training state is large for LoRA, and which stage is the first to split it?")

"""Lesson 02 (LoRA fine-tuning with peft): peft's "trainable params" line, computed by hand."""

from __future__ import annotations

import random

import torch
from torch import nn

from labkit import lora
from labkit.check import Case, exercise, text

LESSON = "02"


class TiedLM(nn.Module):
    """An embedding and an output head that share one weight (as many LMs do), plus a block."""

    def __init__(self, vocab, hidden):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.block = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.head.weight = self.embed.weight


def _mlp(rng_or_seed, widths, lora_r=None, freeze=()):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    torch.manual_seed(rng.randrange(2**31))
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    if lora_r:
        linear_names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        lora.inject_lora(model, rng.sample(linear_names, rng.randint(1, len(linear_names))), r=lora_r, alpha=2 * lora_r)
    for name, p in model.named_parameters():
        if name in freeze:
            p.requires_grad_(False)
    return model


def _tied(rng_or_seed, vocab, hidden, with_lora):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    torch.manual_seed(rng.randrange(2**31))
    model = TiedLM(vocab, hidden)
    if with_lora:
        lora.inject_lora(model, ["block.0", "block.2"], r=2, alpha=4)
    return model


exercise(id="trainable_summary", lesson=LESSON, title="peft's trainable-parameters line",
         signature="trainable_summary(model)",
         reference=lora.trainable_summary,
         public=lambda: [Case({"model": _mlp(1, [16, 32, 8])}, "every parameter trainable"),
                         Case({"model": _mlp(2, [16, 32, 8], lora_r=4)}, "LoRA on some layers (the rest frozen)",
                              hint="trainable: parameters with requires_grad; all params: every parameter, adapters included"),
                         Case({"model": _tied(3, 50, 16, with_lora=True)}, "an embedding tied to the output head",
                              hint="a weight shared by two modules counts once: model.parameters() yields it once")],
         hidden=lambda rng: [Case({"model": _mlp(rng, [rng.randint(2, 40) for _ in range(rng.randint(2, 4))],
                                                 lora_r=rng.choice([None, 1, 2, 8]))}) for _ in range(3)]
         + [Case({"model": _tied(rng, rng.randint(10, 100), rng.randint(4, 24), with_lora=rng.random() < 0.5)})],
         compare=text(),
         hint='the format is "trainable params: 1,234 || all params: 5,678 || trainable%: 21.7323" '
              "(thousands separators, 4 decimals)")

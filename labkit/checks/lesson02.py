"""Lesson 02 (fine-tuning with peft): peft's target matching and its "trainable params" line, computed by
hand; quizzes on the learning rate against the rank, reloading an adapter, and a diverged run."""

from __future__ import annotations

import random

import torch
from torch import nn

from labkit import lora
from labkit.check import Case, exercise, mapping, question, text

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


# ---------------------------------------------------------------------------------------------
# matched_layers(names, target_modules): which layers a target_modules list adapts, and which targets
# match nothing (peft only complains when NOTHING matches)

_LLAMA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_GPT2 = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _llama_names(layers):
    return [f"model.layers.{i}.{'self_attn' if p in _LLAMA[:4] else 'mlp'}.{p}" for i in range(layers) for p in _LLAMA] + ["lm_head"]


def _gpt2_names(layers):
    return [f"transformer.h.{i}.{p}" for i in range(layers) for p in _GPT2] + ["lm_head"]


def _names_list():
    def compare(got, exp, case=None):
        if not isinstance(got, list) or not all(isinstance(x, str) for x in got):
            return "expected a list of str"
        if got != exp:
            return ("not the right names (adapted in the order of NAMES, unmatched in the order of TARGET_MODULES; "
                    "a target matches a name equal to it or ending with '.' + target, nothing else)")
        return None

    return compare


def _typo(name):
    return name[:-2] + name[-1] if len(name) > 3 else name + "x"


def _match_hidden(rng):
    cases = []
    for _ in range(4):
        names = _llama_names(rng.randint(1, 3)) if rng.random() < 0.6 else _gpt2_names(rng.randint(1, 3))
        pool = sorted({n.rsplit(".", 1)[-1] for n in names} | {".".join(n.split(".")[-2:]) for n in names})
        targets = rng.sample(pool, rng.randint(1, 3))
        if rng.random() < 0.6:
            targets.append(_typo(rng.choice(pool)))
        cases.append(Case({"names": names, "target_modules": targets}, f"targets {targets}"))
    return cases


exercise(id="matched_layers", lesson=LESSON, title="Which layers does target_modules adapt?",
         signature="matched_layers(names, target_modules)",
         reference=lora.matched_layers,
         public=lambda: [Case({"names": _llama_names(2), "target_modules": ["q_proj", "v_proj"]},
                              "a 2-layer Llama, q_proj and v_proj"),
                         Case({"names": _llama_names(2), "target_modules": ["q_proj", "v_prj"]},
                              "the same with a typo: v_prj",
                              hint="a target that matches no name goes into 'unmatched'; the others still adapt"),
                         Case({"names": _gpt2_names(2), "target_modules": ["c_proj"]},
                              "GPT-2, c_proj (the attention's and the MLP's share that name)",
                              hint="'c_proj' matches every name that ends with '.c_proj'"),
                         Case({"names": _gpt2_names(2), "target_modules": ["mlp.c_proj", "proj"]},
                              "a dotted target, and a target that is only part of a name",
                              hint="'proj' is not a whole dotted component of 'q_proj': it must follow a '.'")],
         hidden=_match_hidden,
         compare=mapping(("adapted", "unmatched"), _names_list()),
         hint='return {"adapted": [names adapted, in NAMES\' order], "unmatched": [targets that match no name]}')


# ---------------------------------------------------------------------------------------------
# Quizzes

question(id="q02_rank_lr", lesson=LESSON, kind="choice", answer_hash="a6653e5cd56aa0af60f09b1c",
         text="A LoRA run at r=8, alpha=16 and lr 3e-3 works well. You raise the rank to r=32 with alpha=64 "
              "(alpha = 2r, so alpha/r stays 2). What should you expect to do with the learning rate?",
         choices=("keep it: with alpha = 2r the scale alpha/r is fixed, so the update and the best learning rate are the same at every rank",
                  "raise it: a larger rank spreads the update over more parameters, so each of them needs a bigger step to learn as much",
                  "check it again, likely lower: at a fixed alpha/r the update still grows with r, and the sweep's r=32 "
                  "diverged where r=2 did not"),
         hint="lesson 01, section 6: how does ‖B·A‖ grow with r? Then lesson 02's sweep at the largest learning rate",
         feedback={"a": "alpha/r fixes the scale, not the update's size: ‖B·A‖ itself grows like √r (lesson 01), "
                        "and in the sweep the same learning rate that r=2 handled made r=32 diverge",
                   "b": "more parameters make the update larger at the same step, not smaller: the sweep's larger ranks "
                        "broke at learning rates the small rank took"})

question(id="q02_reload", lesson=LESSON, kind="choice", answer_hash="954db3fe9df3cc7fa60d3dde",
         text="You trained a LoRA adapter and saved it with save_pretrained (adapter_config.json and "
              "adapter_model.safetensors). What do you need on another machine to get the fine-tuned model back?",
         choices=("the adapter folder alone: it holds the fine-tuned weights",
                  "the same base model, and PeftModel.from_pretrained(base, folder) to put the adapter on it",
                  "the adapter folder and the Trainer's optimizer state, without which the adapter cannot load"),
         hint="what numbers does the adapter file hold, and what does W' = W + (alpha/r)·B·A need besides them?",
         feedback={"a": "the folder holds only the config and A and B, r·(d_in + d_out) numbers per layer; W' = W + "
                        "(alpha/r)·B·A needs the base model's W",
                   "c": "the optimizer state (AdamW's moments) is needed only to continue training; loading and using "
                        "the adapter needs the base model and the adapter folder"})

question(id="q02_diverged", lesson=LESSON, kind="choice", answer_hash="bf3418d40b3bf1e42839268e",
         text="At rank 32 a sweep ends with training loss 1.23 at lr 1e-3, 0.64 at 3e-3 and 4.08 at 1e-2, and the "
              "1e-2 run's general-text perplexity is thousands of times the base model's. What happened at 1e-2?",
         choices=("it learned fastest: a higher learning rate always learns faster, and forgetting is the price",
                  "it diverged: the steps overshoot, the loss rises instead of falling and the model loses what it knew",
                  "it needed more steps: a high learning rate starts slowly and would overtake 3e-3 later"),
         hint="compare the 1e-2 run's loss with the 3e-3 run's: which is lower?",
         feedback={"a": "its loss is higher than at 3e-3, so it learned less, not faster: past a point a larger "
                        "learning rate makes training worse",
                   "c": "a run whose loss rose while its perplexity on general text exploded is not warming up; more "
                        "steps at that learning rate move the weights further from the base model"})

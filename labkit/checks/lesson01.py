"""Lesson 01 (LoRA from scratch): the forward pass, the scaling, parameter counts, merging, the smallest
rank for an error; four quizzes."""

from __future__ import annotations

import torch
from torch import nn

from labkit import lora, lowrank
from labkit.check import Case, exercise, integer, number, question, randn, tensor

LESSON = "01"


# ---------------------------------------------------------------------------------------------
# lora_forward(x, W, b, A, B, alpha, r): y = x W^T + b + (alpha / r) x A^T B^T


def _layer(W, b, A, B, alpha, r) -> lora.LoRALinear:
    base = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, dtype=W.dtype)
    layer = lora.LoRALinear(base, r=r, alpha=alpha)
    with torch.no_grad():
        base.weight.copy_(W)
        if b is not None:
            base.bias.copy_(b)
        layer.A.copy_(A)
        layer.B.copy_(B)
    return layer


def _lora_forward_reference(x, W, b, A, B, alpha, r):
    with torch.no_grad():
        return _layer(W, b, A, B, alpha, r)(x)


def _forward_inputs(rng_or_seed, batch_shape, d_in, d_out, r, alpha, bias=True, dtype=torch.float32):
    import random

    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    return {"x": randn(rng, *batch_shape, d_in, dtype=dtype), "W": randn(rng, d_out, d_in, dtype=dtype, scale=0.2),
            "b": randn(rng, d_out, dtype=dtype) if bias else None,
            "A": randn(rng, r, d_in, dtype=dtype, scale=0.3), "B": randn(rng, d_out, r, dtype=dtype, scale=0.3),
            "alpha": alpha, "r": r}


def _lora_forward_public():
    return [Case(_forward_inputs(1, (3,), 8, 6, 2, 4), "a batch of 3 vectors"),
            Case(_forward_inputs(2, (2, 5), 16, 8, 4, 8), "a batch of 2 sequences of 5 tokens",
                 hint="x has any number of leading dimensions: x @ W.T works for all of them"),
            Case(_forward_inputs(3, (4,), 8, 8, 4, 16, bias=False), "no bias (b is None)",
                 hint="b is None for a layer without bias: add it only when it is given")]


def _lora_forward_hidden(rng):
    cases = []
    for _ in range(4):
        r = rng.choice([1, 2, 4, 8])
        cases.append(Case(_forward_inputs(rng, tuple(rng.randint(1, 4) for _ in range(rng.randint(1, 2))),
                                          rng.randint(3, 24), rng.randint(3, 24), r, rng.choice([r, 2 * r, 16, 1]),
                                          bias=rng.random() < 0.7)))
    cases.append(Case(_forward_inputs(rng, (2, 3), 12, 10, 4, 8, dtype=torch.float64), "float64 inputs",
                      hint="keep the input dtype: no .float() on the way"))
    return cases


exercise(id="lora_forward", lesson=LESSON, title="The LoRA forward pass",
         signature="lora_forward(x, W, b, A, B, alpha, r)",
         reference=_lora_forward_reference, public=_lora_forward_public, hidden=_lora_forward_hidden,
         compare=tensor(rtol=1e-4, atol=1e-5),
         hint="y = x W^T + b + (alpha / r) · x A^T B^T; A is (r, d_in) and B is (d_out, r)")


# ---------------------------------------------------------------------------------------------
# lora_scaling(alpha, r, rslora): alpha / r, or alpha / sqrt(r)


def _scaling_reference(alpha, r, rslora):
    layer = lora.LoRALinear(nn.Linear(1, 1, device="meta"), r=r, alpha=alpha, rslora=rslora)
    return layer.scaling


exercise(id="lora_scaling", lesson=LESSON, title="alpha/r and rsLoRA's alpha/sqrt(r)",
         signature="lora_scaling(alpha, r, rslora)",
         reference=_scaling_reference,
         public=lambda: [Case({"alpha": 16, "r": 8, "rslora": False}, "plain LoRA"),
                         Case({"alpha": 16, "r": 8, "rslora": True}, "rsLoRA",
                              hint="rsLoRA divides by the square root of r")],
         hidden=lambda rng: [Case({"alpha": rng.choice([1, 8, 16, 32, 0.5]), "r": rng.choice([1, 2, 4, 16, 64]),
                                   "rslora": rng.random() < 0.5}) for _ in range(6)],
         compare=number(rtol=1e-9),
         hint="scaling = alpha / r for LoRA, alpha / sqrt(r) for rsLoRA")


# ---------------------------------------------------------------------------------------------
# count_lora_params(model, r, target_modules) on a Llama-shaped model built on the meta device


class _Block(nn.Module):
    def __init__(self, hidden, inter, kv):
        super().__init__()
        self.self_attn = nn.Module()
        for name, (d_in, d_out) in {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
                                    "o_proj": (hidden, hidden)}.items():
            setattr(self.self_attn, name, nn.Linear(d_in, d_out, bias=False))
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.mlp.up_proj = nn.Linear(hidden, inter, bias=False)
        self.mlp.down_proj = nn.Linear(inter, hidden, bias=False)
        self.input_layernorm = nn.LayerNorm(hidden)


class TinyLlama(nn.Module):
    """A Llama-shaped stack of Linear layers (no forward): model.layers[i].self_attn.q_proj, ..."""

    def __init__(self, hidden, inter, layers, vocab, kv=None):
        super().__init__()
        # _weight skips Embedding's normal_ init, which on the meta device first imports torch._refs (~3 s).
        self.embed_tokens = nn.Embedding(vocab, hidden, _weight=torch.empty(vocab, hidden))
        self.layers = nn.ModuleList(_Block(hidden, inter, kv or hidden) for _ in range(layers))
        self.lm_head = nn.Linear(hidden, vocab, bias=False)


def _meta_llama(*args, **kwargs) -> TinyLlama:
    with torch.device("meta"):
        return TinyLlama(*args, **kwargs)


def _count_public():
    return [Case({"model": _meta_llama(64, 172, 2, 100), "r": 4, "target_modules": ["q_proj", "v_proj"]},
                 "a 2-layer model, q_proj and v_proj"),
            Case({"model": _meta_llama(4096, 11008, 32, 32000), "r": 8, "target_modules": ["q_proj", "v_proj"]},
                 "Llama-2-7B's shapes on the meta device (no memory)",
                 hint="on the meta device weights have shapes but no values: use in_features and out_features"),
            Case({"model": _meta_llama(48, 128, 3, 50, kv=16), "r": 2,
                  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
                 "every Linear of the blocks, k and v narrower than q (grouped-query attention)",
                 hint="each layer has its own d_in and d_out: sum r * (in_features + out_features) layer by layer")]


_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def _count_hidden(rng):
    cases = []
    for _ in range(4):
        hidden = rng.choice([16, 32, 64, 96])
        model = _meta_llama(hidden, rng.choice([2, 3, 4]) * hidden, rng.randint(1, 5), rng.randint(20, 300),
                            kv=rng.choice([hidden, hidden // 2, hidden // 4]))
        targets = rng.sample(_TARGETS, rng.randint(1, 4))
        cases.append(Case({"model": model, "r": rng.choice([1, 2, 4, 8, 16]), "target_modules": targets},
                          f"targets {targets}",
                          hint="match a module when the last part of its name is in target_modules"))
    return cases


exercise(id="lora_param_count", lesson=LESSON, title="Counting LoRA's trainable parameters",
         signature="count_lora_params(model, r, target_modules)",
         reference=lora.count_lora_params, public=_count_public, hidden=_count_hidden, compare=integer(),
         hint="for every nn.Linear whose name ends with a target: r * (in_features + out_features)")


# ---------------------------------------------------------------------------------------------
# lora_merge(W, A, B, alpha, r) -> W + (alpha / r) B A, without touching W


def _merge_reference(W, A, B, alpha, r):
    layer = _layer(W, None, A, B, alpha, r)
    layer.merge()
    return layer.base.weight.detach()


def _merge_inputs(rng_or_seed, d_in, d_out, r, alpha, dtype=torch.float32):
    x = _forward_inputs(rng_or_seed, (1,), d_in, d_out, r, alpha, bias=False, dtype=dtype)
    return {k: x[k] for k in ("W", "A", "B", "alpha", "r")}


exercise(id="lora_merge", lesson=LESSON, title="Merging an adapter into W",
         signature="lora_merge(W, A, B, alpha, r)",
         reference=_merge_reference,
         public=lambda: [Case(_merge_inputs(4, 8, 6, 2, 4), "W (6, 8), r=2"),
                         Case(_merge_inputs(5, 32, 16, 8, 8), "W (16, 32), r=8, alpha=r")],
         hidden=lambda rng: [Case(_merge_inputs(rng, rng.randint(2, 40), rng.randint(2, 40), r, rng.choice([1, r, 2 * r])))
                             for r in (rng.choice([1, 2, 4, 8]) for _ in range(4))],
         compare=tensor(rtol=1e-5, atol=1e-6),
         hint="return a NEW tensor W + (alpha / r) · B @ A; B @ A has W's shape (d_out, d_in)")


# ---------------------------------------------------------------------------------------------
# smallest_rank(delta_w, max_error): the smallest r whose best rank-r approximation errs by at most max_error


def _spectrum_case(rng_or_seed, d_out, d_in, decay, gap_rank=None, description="", hint=None):
    """A (d_out, d_in) matrix U diag(s) V^T with singular values s_i = decay^i (times noise), and a max_error
    halfway between the errors of two neighbouring ranks, so no rounding can decide the answer."""
    import random

    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    n = min(d_out, d_in)
    U, _ = torch.linalg.qr(torch.randn(d_out, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d_in, n, generator=g, dtype=torch.float64))
    s = torch.tensor([decay ** i * (1 + 0.2 * rng.random()) for i in range(n)], dtype=torch.float64).sort(descending=True).values
    dw = ((U * s) @ V.T).float()
    errors = lowrank.error_curve(dw, range(1, n + 1))   # errors[i]: rank i + 1
    # a rank k whose error and the next rank's are well apart (and not ~0), so float32 cannot flip the answer
    clear = [k for k in range(1, n) if errors[k - 1] - errors[k] > 0.01 and errors[k] > 0.001] or [1]
    k = gap_rank if gap_rank is not None else rng.choice(clear)
    max_error = round((errors[k - 1] + errors[k]) / 2, 4)   # between rank k and rank k + 1: the answer is k + 1
    return Case({"delta_w": dw, "max_error": max_error}, description or f"a {d_out}x{d_in} update", hint=hint)


exercise(id="smallest_rank", lesson=LESSON, title="Choosing a rank: the smallest r within an error",
         signature="smallest_rank(delta_w, max_error)",
         reference=lowrank.smallest_rank,
         public=lambda: [_spectrum_case(1, 12, 10, 0.6, gap_rank=3, description="a 12x10 update, fast-decaying spectrum"),
                         _spectrum_case(2, 16, 24, 0.9, gap_rank=9, description="a 16x24 update, slowly decaying",
                                        hint="the error of rank r uses the singular values AFTER the r-th"),
                         _spectrum_case(3, 8, 8, 0.3, gap_rank=1, description="nearly rank 1",
                                        hint="the smallest answer is 1: rank 0 is no adapter at all")],
         hidden=lambda rng: [_spectrum_case(rng, rng.randint(4, 30), rng.randint(4, 30), rng.choice([0.3, 0.6, 0.8, 0.95]))
                             for _ in range(5)],
         compare=integer(),
         hint="torch.linalg.svdvals gives s; rank r's relative error is sqrt(sum of s_i^2 for i > r) / sqrt(sum of all s_i^2)")


# ---------------------------------------------------------------------------------------------
# Quizzes

question(id="q01_all_linear_r8", lesson=LESSON, kind="number", answer_hash="ee822b5f8b6fb7afbcc26529",
         text="Llama-2-7B has 32 decoder layers, hidden size 4096 and MLP size 11008 (q, k, v, o: 4096x4096; "
              "gate and up: 4096 -> 11008; down: 11008 -> 4096). How many trainable parameters does LoRA "
              "with r=8 on all seven of these projections add? (an exact integer)",
         hint="r · (d_in + d_out) per projection, 7 projections per layer, 32 layers")

question(id="q01_merge_cost", lesson=LESSON, kind="choice", answer_hash="31f0343bf9c6bf79d215007f",
         text="After merge(), what does a forward pass of the LoRA model cost compared with the base model?",
         choices=("r·(d_in + d_out) extra multiply-adds per token in each adapted layer",
                  "exactly what the base model costs: the same shapes, other numbers",
                  "less than the base model, because the adapted layers are low-rank"),
         hint="after merging, where does B·A live?",
         feedback={"a": "that is the unmerged adapter's cost: x·Aᵀ·Bᵀ runs beside the layer until you merge; merging "
                        "adds B·A into W and the two thin products are gone",
                   "c": "merging adds a low-rank matrix to W, but W' = W + (alpha/r)·B·A is a full matrix of W's shape: "
                        "the layer does exactly the work it did before"})

question(id="q01_b_zero", lesson=LESSON, kind="choice", answer_hash="3800a36e6afb36307f08a2e5",
         text="Why is B initialised to zeros (and A at random) rather than both at random?",
         choices=("to halve the adapter's memory, since a matrix of zeros is stored for free",
                  "so that neither A nor B gets a gradient at the first step, which keeps training stable",
                  "so that B·A = 0 and training starts exactly from the base model"),
         hint="what does the adapted layer compute before the first step?",
         feedback={"a": "a tensor of zeros takes exactly as much memory as any other tensor of its shape; B is "
                        "(d_out, r) floats either way",
                   "b": "B does get a gradient at step 0 (it is x·Aᵀ times the upstream gradient, and A is random); only "
                        "A's gradient is zero at first, because it goes through B"})

question(id="q01_rslora_growth", lesson=LESSON, kind="choice", answer_hash="d17da76223b9765d5261aa14",
         text="With A at peft's init and B random (no structure), how does the size ‖B·A‖ of LoRA's unscaled update "
              "grow with the rank r, and so what does rsLoRA's scaling alpha/√r do?",
         choices=("‖B·A‖ grows like r, so alpha/√r still lets the scaled update grow like √r",
                  "‖B·A‖ grows like √r, so alpha/√r keeps the scaled update about the same size at every rank",
                  "‖B·A‖ stays the same at every r, so alpha/√r makes the scaled update shrink as r grows"),
         hint="each entry of B·A is a sum of r products of independent random numbers; read section 6's table",
         feedback={"a": "a sum of r independent random terms grows like √r, not r: in section 6's table ‖B·A‖ only "
                        "doubles when r goes up four times",
                   "c": "more terms in each entry's sum make it larger: section 6's ‖B·A‖ column rises with r"})

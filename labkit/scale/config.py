"""The training configuration: a dataclass (TrainConfig) read from a YAML file (load_config; the course's is
labkit/assets/configs/sft_lora.yaml) and checked up front (check_config), with what to change when it cannot run."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
import yaml

from .. import adapters, data, models
from ..data import DATA_DIR
from ..models import ASSETS
from ..train import check_lr, check_steps


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

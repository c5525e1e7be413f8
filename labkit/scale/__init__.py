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
model's own dropout is off (labkit.train.disable_dropout(model, keep="lora_dropout"): GPT-2 has p = 0.1), so they also compute the same
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

One file per idea (all names re-exported here, so `scale.train` etc. work as before):
    config.py   TrainConfig, load_config, check_config: the configuration and its checks
    batches.py  the global batch split across ranks, and the loss normalised over it
    run.py      train (one process or a launched group) and train_step
"""

from .config import (  # TrainConfig, read from YAML and checked
    CONFIG_DIR,
    DEFAULT_CONFIG,
    NORMALISATIONS,
    PRECISIONS,
    ConfigError,
    TrainConfig,
    FIELDS,
    check_keys,
    load_config,
    check_config,
    data_path,
    accumulation_steps,
)
from .batches import (  # the same global batch everywhere; the loss normalised over it
    load_pairs,
    supervised_tokens,
    micro_batches,
    uneven_batch,
    normalisation_check,
    rank_losses,
    most_uneven_step,
)
from .run import (  # train and train_step
    process_device,
    check_fsdp_device,
    lora_targets,
    train_step,
    train,
)

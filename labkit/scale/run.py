"""The training run: `train` on this process, one of a launched group or alone; `train_step` is one optimizer
step of it. accelerate's Accelerator does the distributed part (gloo on CPUs, NCCL on GPUs, DDP or FSDP, bf16
autocast, no_sync while accumulating); the adapter is saved atomically by rank 0 only."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path

from .. import adapters, atomic, env, models, sft
from ..train import disable_dropout, epoch_order
from .batches import load_pairs, micro_batches, supervised_tokens
from .config import accumulation_steps, check_config, ConfigError, TrainConfig


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

    picked = env.pick_device(device)
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

    return adapters.check_targets(model, cfg.target_modules) if cfg.target_modules else adapters.targets(model)


def _load_model(cfg: TrainConfig, device: str, accelerator):
    import torch

    dtype = "bfloat16" if cfg.precision == "bf16" else "float32"
    if cfg.load_in_4bit:
        from .. import qlora  # imports bitsandbytes (and patches it): only when the run quantises

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
        dropout_off = disable_dropout(model, keep="lora_dropout")
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
               "config": dataclasses.asdict(cfg), "versions": env.versions(("torch", "transformers", "peft", "accelerate", "bitsandbytes"))}
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

"""LoRA in bf16 vs QLoRA in 4-bit NF4 on one CUDA GPU: peak memory of loading and of a training step,
and training speed, for a Llama-architecture model of about 1.1B parameters with random weights.

    python scripts/gpu_qlora.py                  # on a CUDA machine: writes bench/gpu_qlora.{json,md}
    python scripts/gpu_qlora.py --smoke --out /tmp/x   # a tiny model, runs anywhere (CPU) in seconds

Nothing is downloaded: the model is built from a config (TinyLlama-1.1B's shapes) with random
weights, saved as safetensors to a temporary folder and loaded back with from_pretrained, in bf16
and in NF4 with double quantisation (bf16 compute), exactly as a Hub model would be. Random weights
train and use memory like real ones of the same shape; only the loss values mean nothing.
Each configuration then gets LoRA adapters (rank --r on every linear layer the model has,
labkit.adapters.targets) and --steps training
steps of AdamW (after 2 warm-up steps); the QLoRA run is repeated with bitsandbytes' paged 8-bit
AdamW. Memory is torch.cuda.max_memory_allocated (what PyTorch allocated, not what nvidia-smi
shows, which adds the CUDA context and the allocator's cache). Lesson 05 shows the markdown table.

--smoke runs the same code on a tiny model (on CPU when there is no GPU) to test the script; its
results are marked smoke and lesson 05 ignores them.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# TinyLlama-1.1B's shapes: 1,100,048,384 parameters.
CONFIG_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
CONFIG_SMOKE = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
RUNS = (("LoRA, bf16 weights", "bf16", "adamw"),
        ("QLoRA, NF4 + double quant", "nf4", "adamw"),
        ("QLoRA, NF4 + paged 8-bit AdamW", "nf4", "paged_adamw_8bit"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, any device: tests the script")
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_qlora.json/.md (default bench/)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10; smoke 2)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 4; smoke 2)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 512; smoke 32)")
    p.add_argument("--r", type=int, default=16, help="LoRA rank on every linear layer")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in every run")
    args = p.parse_args(argv)
    if args.out is None:
        if args.smoke:
            p.error("--smoke needs --out (smoke results must not land in bench/)")
        args.out = ROOT / "bench"
    for name, smoke, real in (("steps", 2, 10), ("batch", 2, 4), ("seq", 32, 512)):
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else real)
    for name in ("steps", "batch", "seq", "r"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def versions() -> dict:
    import torch

    from labkit import env

    out = env.versions(("torch", "transformers", "peft", "bitsandbytes", "accelerate"))
    out["cuda"] = torch.version.cuda
    out["python"] = platform.python_version()
    return out


def build_random_model(config: dict, folder: Path, device: str, seed: int = 0) -> int:
    """Save a Llama with random weights (bf16, safetensors) to FOLDER; return its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**config), dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    del model
    return n


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device):
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _gb(device, peak=True):
    import torch

    if device != "cuda":
        return None
    return (torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / 1e9


def run_one(folder: Path, weights: str, optim: str, args, device: str) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from labkit import adapters, memory, qlora

    compute = "bfloat16" if device == "cuda" else "float32"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=False,
                  device_map={"": 0 if device == "cuda" else "cpu"})
    if weights == "nf4":
        kwargs["quantization_config"] = qlora.bnb_config(compute, double_quant=True, device=device)
    _reset_peak(device)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    _sync(device)
    load_s = time.perf_counter() - t0
    out = {"weights": weights, "optimizer": optim, "load_s": load_s, "load_peak_gb": _gb(device),
           "loaded_gb": _gb(device, peak=False), "model_bytes": memory.footprint(model)["total"]}
    # LoRA on every linear layer the model has (adapters.targets), in both runs
    if weights == "nf4":
        model = qlora.prepare_qlora(model, r=args.r, alpha=2 * args.r, gradient_checkpointing=args.grad_ckpt)
    else:
        if args.grad_ckpt:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        model = get_peft_model(model, adapters.config("lora", model, r=args.r, alpha=2 * args.r))
    params = [p for p in model.parameters() if p.requires_grad]
    out["trainable_params"] = sum(p.numel() for p in params)
    out["target_modules"] = sorted(model.peft_config["default"].target_modules)
    if optim == "adamw":
        opt = torch.optim.AdamW(params, lr=1e-4)
    else:
        import bitsandbytes as bnb

        opt = bnb.optim.PagedAdamW8bit(params, lr=1e-4)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    model.train()
    losses, times = [], []
    for step in range(2 + args.steps):
        if step == 2:
            _reset_peak(device)
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen).to(model.device)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if step >= 2:
            times.append(time.perf_counter() - t0)
            losses.append(loss.item())
    step_s = sorted(times)[len(times) // 2]
    out.update(train_peak_gb=_gb(device), step_s=step_s, tokens_per_s=args.batch * args.seq / step_s,
               loss_first=losses[0], loss_last=losses[-1])
    del model, opt, params
    _reset_peak(device)
    return out


def markdown(res: dict) -> str:
    def fmt(x, spec):
        return "n/a" if x is None else format(x, spec)

    head = (f"GPU: {res['gpu']} · {res['date']} · torch {res['versions']['torch']}, transformers "
            f"{res['versions']['transformers']}, peft {res['versions']['peft']}, bitsandbytes "
            f"{res['versions']['bitsandbytes']}, CUDA {res['versions']['cuda']}\n\n"
            f"Model: Llama architecture, {res['n_params']:,} parameters, random weights; LoRA r={res['r']} on all "
            f"linear layers; batch {res['batch']} x {res['seq']} tokens; gradient checkpointing "
            f"{'on' if res['grad_ckpt'] else 'off'}; median of {res['steps']} steps."
            f"{' SMOKE RUN (tiny model): not a measurement.' if res['smoke'] else ''}\n\n")
    rows = ["| run | peak GB loading | GB after loading | peak GB training step | step s | tokens/s |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, r in res["runs"].items():
        rows.append(f"| {name} | {fmt(r['load_peak_gb'], '.2f')} | {fmt(r['loaded_gb'], '.2f')} | "
                    f"{fmt(r['train_peak_gb'], '.2f')} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} |")
    return head + "\n".join(rows) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from labkit import env

    env.quiet()
    for name in ("bitsandbytes", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", message=".*[Pp]aged optimizers are not supported on CPU.*")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda" and not args.smoke:
        sys.exit("No CUDA GPU visible: this script measures GPU memory. Use --smoke to test it on a CPU.")
    config = CONFIG_SMOKE if args.smoke else CONFIG_1B
    t_start = time.perf_counter()
    res = {"gpu": torch.cuda.get_device_name(0) if device == "cuda" else f"none (CPU: {platform.processor() or 'cpu'})",
           "device": device, "smoke": args.smoke,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "versions": versions(), "config": config, "r": args.r, "batch": args.batch, "seq": args.seq,
           "steps": args.steps, "grad_ckpt": args.grad_ckpt, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        res["n_params"] = build_random_model(config, Path(tmp), device)
        _reset_peak(device)
        for name, weights, optim in RUNS:
            print(f"{name} ...", flush=True)
            res["runs"][name] = run_one(Path(tmp), weights, optim, args, device)
    res["wall_s"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_qlora.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "gpu_qlora.md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {args.out / 'gpu_qlora.json'} and gpu_qlora.md in {res['wall_s']:.0f} s")
    return res


if __name__ == "__main__":
    main()

"""labkit.memory: bits per NF4 weight (checked against what bitsandbytes stores), the one-GPU estimate
behind the QLoRA paper's 65B-on-48GB headline, the per-GPU split of DDP / ZeRO / FSDP (the ZeRO paper's
figure), what fits where on real Llama shapes, and the bytes a loaded 4-bit model really stores."""

import logging

for _name in ("bitsandbytes", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_name).setLevel(logging.ERROR)  # the "kernels-community" line at import

import bitsandbytes.functional as bnbF  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit import memory  # noqa: E402


@pytest.fixture(scope="module")
def model_4bit():
    from labkit import env, qlora

    env.quiet()
    return qlora.load_4bit(device="cpu")


# ----------------------------------------------------------------------------- a 4-bit weight, one GPU

def test_bits_per_parameter():
    assert memory.bits_per_parameter() == 4.5
    assert memory.bits_per_parameter(double_quant=True) == 4 + 8 / 64 + 32 / (64 * 256)
    assert round(memory.bits_per_parameter(double_quant=True), 3) == 4.127
    assert memory.bits_per_parameter(128) == 4.25
    with pytest.raises(ValueError, match="blocksize"):
        memory.bits_per_parameter(blocksize=60)


@pytest.mark.parametrize("double_quant", [False, True])
def test_bits_per_parameter_equals_what_bitsandbytes_stores(double_quant):
    w = torch.randn(2048, 2048, generator=torch.Generator().manual_seed(5))
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                       compress_statistics=double_quant)
    stored = packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
    if double_quant:
        stored += state.state2.absmax.numel() * 4 + state.offset.numel() * 4
    bits = 8 * stored / w.numel()
    assert bits == pytest.approx(memory.bits_per_parameter(64, double_quant), abs=1e-5)


LLAMA_65B = dict(n_params=65.2e9, hidden=8192, intermediate=22016, layers=80)


def lora_params_all_linear(hidden, intermediate, layers, r):
    """Adapters r * (d_in + d_out) on q, k, v, o (hidden x hidden) and gate, up, down of a Llama."""
    return layers * r * (4 * 2 * hidden + 3 * (hidden + intermediate))


def test_qlora_headline_65b():
    """QLoRA paper: 16-bit fine-tuning of a 65B model needs more than 780 GB; QLoRA fits in 48 GB.
    Adapters as in the paper's 65B runs: r = 64 on all linear layers of LLaMA-65B, 0.80 B
    parameters (1.2% of the model; more than the 0.2-0.8% often quoted for smaller ranks)."""
    m = LLAMA_65B
    lora = lora_params_all_linear(m["hidden"], m["intermediate"], m["layers"], r=64)
    assert lora == 799_539_200
    act = dict(batch=1, seq_len=512, hidden=m["hidden"], layers=m["layers"])
    full = memory.estimate_memory(m["n_params"], "full", **act)
    assert full["total"] > 780e9
    assert full["weights"] + full["gradients"] + full["optimizer_states"] == 16 * m["n_params"]
    # the paper's 780 GB is 12 bytes per parameter: no fp32 master copy
    paper = memory.estimate_memory(65e9, "full", master_weights=False)
    assert paper["total"] == 780e9
    qlora = memory.estimate_memory(m["n_params"], "qlora", lora_params=lora, **act)
    assert qlora["total"] < 48e9  # and so under 48 GiB too
    assert 33e9 < qlora["weights"] + qlora["quant_constants"] < 34e9  # 65.2e9 x 4.127 / 8
    lora16 = memory.estimate_memory(m["n_params"], "lora", lora_params=lora, **act)
    assert qlora["total"] < lora16["total"] < full["total"]
    assert lora16["weights"] == 2 * m["n_params"] and lora16["adapters"] == 2 * lora


def test_estimate_memory_breakdown():
    keys = {"weights", "gradients", "optimizer_states", "adapters", "quant_constants", "activations", "total"}
    n, lora = 7_000_000_000, 40_000_000
    for method in memory.METHODS:
        out = memory.estimate_memory(n, method, lora_params=lora)
        assert set(out) == keys and out["activations"] == 0
        assert out["total"] == sum(v for k, v in out.items() if k != "total")
    q = memory.estimate_memory(n, "qlora", lora_params=lora)
    assert q["weights"] == n // 2 and q["adapters"] == 2 * lora and q["optimizer_states"] == 8 * lora
    assert q["quant_constants"] == pytest.approx(n * 0.127 / 8, rel=1e-3)
    no_dq = memory.estimate_memory(n, "qlora", lora_params=lora, double_quant=False)
    assert no_dq["quant_constants"] == n * 0.5 / 8
    f32 = memory.estimate_memory(n, "full", weight_bytes=4)
    assert f32["total"] == 16 * n  # fp32 needs no master copy
    with_ckpt = memory.estimate_memory(n, "full", hidden=4096, layers=32, seq_len=512)
    no_ckpt = memory.estimate_memory(n, "full", hidden=4096, layers=32, seq_len=512, grad_checkpointing=False)
    assert 0 < with_ckpt["activations"] < no_ckpt["activations"]
    assert memory.estimate_memory(n, "full", optimizer="adamw_8bit")["optimizer_states"] == 6 * n


def test_estimate_memory_errors_name_the_choices():
    with pytest.raises(ValueError, match="'full', 'lora', 'qlora'"):
        memory.estimate_memory(1e9, "dora")
    for bad in (0, -5, float("nan")):
        with pytest.raises(ValueError, match="n_params"):
            memory.estimate_memory(bad, "full")
    with pytest.raises(ValueError, match="lora_params"):
        memory.estimate_memory(1e9, "qlora")
    with pytest.raises(ValueError, match="'adamw', 'adamw_8bit', 'sgd'"):
        memory.estimate_memory(1e9, "full", optimizer="lion")
    with pytest.raises(ValueError, match="hidden and layers"):
        memory.estimate_memory(1e9, "full", hidden=4096)


# ----------------------------------------------------------------------------- per-GPU memory: DDP, ZeRO, FSDP

def test_per_gpu_memory_reproduces_the_zero_paper():
    """ZeRO (Rajbhandari et al. 2020), Figure 1: a 7.5B model, 64 GPUs, mixed-precision Adam (K = 12):
    DDP 120 GB, ZeRO-1 31.4 GB, ZeRO-2 16.6 GB, ZeRO-3 1.9 GB per GPU (weights, gradients, optimizer)."""
    got = {s: memory.per_gpu_memory(7.5e9, "full", s, 64, prefetch_layers=0)["total"] / 1e9 for s in memory.STRATEGIES}
    assert got == pytest.approx({"ddp": 120, "zero1": 31.4, "zero2": 16.6, "zero3": 1.9}, abs=0.06)


def test_per_gpu_memory_shards_what_each_strategy_says():
    kw = dict(lora_params=20e6, hidden=4096, layers=32, batch=1, seq_len=512)
    one = memory.estimate_memory(7e9, "lora", **kw)
    for s in memory.STRATEGIES:  # one GPU: nothing to shard, the estimate of lesson 05
        assert memory.per_gpu_memory(7e9, "lora", s, 1, **kw)["total"] == one["total"]
    eight = {s: memory.per_gpu_memory(7e9, "full", s, 8, hidden=4096, layers=32) for s in memory.STRATEGIES}
    assert eight["ddp"]["total"] > eight["zero1"]["total"] > eight["zero2"]["total"] > eight["zero3"]["total"]
    assert eight["zero3"]["activations"] == eight["ddp"]["activations"] > 0  # each GPU runs its own micro-batch
    assert eight["zero3"]["gathered"] > 0 == eight["zero2"]["gathered"]
    lora = {s: memory.per_gpu_memory(7e9, "lora", s, 8, **kw)["total"] for s in memory.STRATEGIES}
    assert lora["ddp"] - lora["zero2"] < 0.02 * lora["ddp"]  # LoRA's optimizer states and gradients are small
    assert lora["zero3"] < lora["ddp"] / 3  # the frozen weights dominate, and only ZeRO-3 / FSDP splits them
    with pytest.raises(ValueError, match="strategy must be one of"):
        memory.per_gpu_memory(7e9, "full", "zero4", 8)
    with pytest.raises(ValueError, match="n_gpus"):
        memory.per_gpu_memory(7e9, "full", "ddp", 0)


def test_memory_table_and_markdown():
    sizes = {"7B": {"n_params": 6.74e9, "lora_params": 40e6, "hidden": 4096, "layers": 32}}
    rows = memory.memory_table(sizes, gpus=(1, 2, 4, 8))
    assert len(rows) == 3 * 4 * 4
    md = memory.memory_markdown(rows, "7B")
    assert md.count("\n") == 1 + 12 and "ZeRO-3 / FSDP" in md and "✗" in md  # full fine-tune on 1 GPU: > 80 GB


# ----------------------------------------------------------------------------- what fits where

@pytest.fixture(scope="module")
def sizes():
    return memory.llama_sizes(r=64)


def test_llama_sizes_are_the_published_counts(sizes):
    assert sizes["7B"]["n_params"] == 6_738_415_616  # Llama-2-7B
    assert sizes["13B"]["n_params"] == 13_015_864_320
    assert sizes["65B"]["n_params"] == 65_285_660_672
    assert sizes["70B"]["n_params"] == 68_976_648_192
    assert sizes["65B"]["lora_params"] == 799_539_200  # as lora_params_all_linear computes by hand
    assert memory.llama_sizes(["7B"], r=8, target_modules=("q_proj", "v_proj"))["7B"]["lora_params"] == 4_194_304


def test_fit_table_reproduces_the_qlora_paper(sizes):
    rows = {(r["model"], r["method"]): r for r in memory.fit_table(sizes)}
    assert len(rows) == 15
    assert rows["65B", "full"]["total_gb"] > 780 and not any(rows["65B", "full"]["fits"].values())
    assert rows["65B", "qlora"]["total_gb"] < 48 and rows["65B", "qlora"]["fits"] == {16: False, 24: False, 48: True, 80: True}
    assert rows["7B", "qlora"]["fits"][16] and not rows["7B", "full"]["fits"][80]
    for model in sizes:
        totals = [rows[model, m]["total_gb"] for m in ("qlora", "lora", "full")]
        assert totals == sorted(totals)
    # the reserve counts: with 3 GB held back, 70B QLoRA (46.3 GB) no longer fits in 48 GB
    assert rows["70B", "qlora"]["fits"][48]
    tight = {(r["model"], r["method"]): r for r in memory.fit_table(sizes, reserve_gb=3.0)}
    assert not tight["70B", "qlora"]["fits"][48]
    longer = {(r["model"], r["method"]): r for r in memory.fit_table(sizes, seq_len=4096)}
    assert not longer["70B", "qlora"]["fits"][48]


def test_unknown_sizes_and_methods_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown model size '8B'.*'7B'"):
        memory.llama_sizes(["8B"])
    with pytest.raises(ValueError, match=r"method must be one of \('full', 'lora', 'qlora'\), got 'dora'"):
        memory.fit_table({}, methods=("dora",))


# ----------------------------------------------------------------------------- measured: a loaded model, an optimizer

def test_footprint_counts_what_is_stored(model_4bit, base):
    m4, _ = model_4bit
    fp = memory.footprint(m4)
    assert fp["quantized_params"] == 3_211_264  # 4 layers x (4 x 256 x 256 + 3 x 256 x 704)
    assert fp["weights_4bit"] == fp["quantized_params"] // 2
    bits = 8 * (fp["weights_4bit"] + fp["quant_constants"]) / fp["quantized_params"]
    assert bits == pytest.approx(memory.bits_per_parameter(64, double_quant=True), abs=1e-3)
    assert fp["total"] == sum(v for k, v in fp.items() if k not in ("total", "quantized_params"))
    # transformers' own figure leaves out the quantisation constants and codebooks
    assert m4.get_memory_footprint() == fp["total"] - fp["quant_constants"] - fp["codebooks"]
    full = memory.footprint(base[0])
    assert full["weights_4bit"] == 0 and full["total"] == base[0].get_memory_footprint()
    assert fp["total"] < full["total"] / 3.5


def test_optimizer_state_bytes():
    import bitsandbytes as bnb

    p = torch.nn.Parameter(torch.randn(64, 256))
    p.grad = torch.randn_like(p)
    adamw, adamw8 = torch.optim.AdamW([p], lr=1e-3), bnb.optim.AdamW8bit([p], lr=1e-3)
    assert memory.optimizer_state_bytes(adamw) == 0
    adamw.step()
    adamw8.step()
    assert memory.optimizer_state_bytes(adamw) == 8 * p.numel() + 4  # m and v in fp32, plus the step count
    assert 2 * p.numel() <= memory.optimizer_state_bytes(adamw8) < 3 * p.numel()  # 8-bit m, v + constants


def test_training_step_bytes_counts_each_kind_of_tensor():
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    m[0].requires_grad_(False)  # frozen: its input need not be saved for the backward pass
    got = {n: memory.training_step_bytes(m, lambda n=n: m(torch.randn(n, 8)).pow(2).sum()) for n in (2, 5)}
    for n, g in got.items():
        assert g["weights"] == (8 * 16 + 16 + 16 * 4 + 4) * 4 and g["gradients"] == (16 * 4 + 4) * 4
        assert g["optimizer"] == 2 * g["gradients"], "AdamW: two float32 states per trainable parameter"
        # saved for backward: the ReLU output (n x 16, also the second layer's input) and the output (n x 4)
        assert g["activations"] == n * (16 + 4) * 4
        assert g["total"] == sum(v for k, v in g.items() if k != "total")
    assert m.training, "the model's train/eval mode is restored"
    m.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        memory.training_step_bytes(m, lambda: m(torch.randn(2, 8)).sum())


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
def test_optimizer_states_says_what_is_8bit_and_what_is_paged():
    """bitsandbytes keeps tensors under 4,096 elements in float32 and, on a CPU, pages nothing (it falls back
    to ordinary memory); torch's AdamW is neither."""
    import bitsandbytes as bnb

    big, small = torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(8, 64))
    for p in (big, small):
        p.grad = torch.randn_like(p)
    paged = bnb.optim.PagedAdamW8bit([big, small], lr=1e-3)
    paged.step()
    got = memory.optimizer_states(paged)
    assert got["name"] == "bitsandbytes.PagedAdamW8bit" and got["paged_requested"] is True
    assert got["parameters"] == 2 and got["parameters_8bit"] == 1  # 8,192 elements: 8-bit; 512: float32
    assert got["paged_tensors"] == 0 and got["state_tensors"] == 4  # m and v of each
    assert got["bytes"] == memory.optimizer_state_bytes(paged)
    plain = torch.optim.AdamW([big], lr=1e-3)
    plain.step()
    got = memory.optimizer_states(plain)
    assert got["name"] == "torch.AdamW" and got["paged_requested"] is False and got["parameters_8bit"] == 0
    assert got["bytes"] == 8 * big.numel() + 4


def test_stored_bits_per_weight_is_what_bitsandbytes_keeps():
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(6))
    for double_quant in (False, True):
        packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
        bits = memory.stored_bits_per_weight(packed, state)
        # the formula leaves out the one offset per tensor: 32 bits over 262,144 weights
        extra = 32 / w.numel() if double_quant else 0
        assert bits == pytest.approx(memory.bits_per_parameter(64, double_quant) + extra, abs=1e-9)


def test_training_step_bytes_reads_the_optimizer_it_is_given():
    import bitsandbytes as bnb

    m = torch.nn.Linear(128, 64)
    opt = bnb.optim.AdamW8bit(m.parameters(), lr=1e-3)
    m(torch.randn(2, 128)).sum().backward()
    opt.step()
    with_opt = memory.training_step_bytes(m, lambda: m(torch.randn(2, 128)).sum(), opt)
    assert with_opt["optimizer"] == memory.optimizer_state_bytes(opt) < 2 * 4 * (128 * 64 + 64)

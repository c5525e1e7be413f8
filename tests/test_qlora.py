"""labkit.qlora: the bundled model in 4-bit NF4 through transformers + bitsandbytes on CPU, a QLoRA
run whose loss falls, the CPU protection that importing labkit.qlora installs (the bytes it stores and
what fits where: tests/test_memory.py)."""

import logging

for _name in ("bitsandbytes", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_name).setLevel(logging.ERROR)

import pytest  # noqa: E402
import torch  # noqa: E402

from labkit import data, evaluate, qlora, quant, train  # noqa: E402


@pytest.fixture(scope="module")
def model_4bit():
    from labkit import env

    env.quiet()
    return qlora.load_4bit(device="cpu")


@pytest.fixture(scope="module")
def texts():
    return [data.plain_text(r) for r in data.read_jsonl("instructions_train.jsonl")[:64]]


def test_load_4bit_quantizes_every_linear_in_nf4_with_double_quant(model_4bit, base):
    m4, _ = model_4bit
    layers = qlora.linear4bit_modules(m4)
    n_linear = sum(1 for _, m in base[0].named_modules() if isinstance(m, torch.nn.Linear)) - 1  # not lm_head
    assert len(layers) == n_linear == 28
    for _, layer in layers:
        state = layer.weight.quant_state
        assert state.quant_type == "nf4" and state.blocksize == 64 and state.nested
        assert layer.compute_dtype == torch.float32 and layer.support_avx512bf16_for_cpu is False


def test_4bit_weights_are_our_nf4_codes(model_4bit, base):
    """The codes transformers stored for a real weight are exactly labkit.quant's NF4 codes, and its
    double-quantised absmax constants come back as ours do (within the C kernel's rare near-ties)."""
    m4, _ = model_4bit
    layer = m4.model.layers[1].mlp.down_proj
    w = base[0].model.layers[1].mlp.down_proj.weight.detach()
    codes, absmax = quant.quantize_nf4(w)
    state = layer.weight.quant_state
    assert torch.equal(quant.unpack_4bit(layer.weight.data, w.numel()), codes)
    q, absmax2, offset = quant.double_quantize(absmax)
    assert torch.equal(absmax2, state.state2.absmax) and offset == pytest.approx(state.offset.item(), abs=0)
    assert (q != state.absmax).float().mean() < 0.01


def test_4bit_model_stays_close_to_the_original(model_4bit, base):
    m4, tok = model_4bit
    x = torch.tensor([tok("Applicant: Linda Garcia\nMonthly income: $4,200")["input_ids"]])
    cmp = qlora.compare_outputs(m4, base[0], x)
    assert set(cmp) == {"max_abs_logit_diff", "mean_abs_logit_diff", "kl", "top1_agreement"}
    assert 0 < cmp["max_abs_logit_diff"] < 3 and cmp["kl"] < 0.05 and cmp["top1_agreement"] >= 0.9
    assert qlora.compare_outputs(base[0], base[0], x)["kl"] == 0.0
    general = [r["text"] for r in data.read_jsonl("general_eval.jsonl")[:8]]
    ppl_4bit, ppl = evaluate.perplexity(m4, tok, general), evaluate.perplexity(base[0], tok, general)
    assert ppl_4bit != ppl and abs(ppl_4bit / ppl - 1) < 0.05  # close, and not always worse


@pytest.mark.slow
def test_qlora_trains_and_the_loss_falls(texts):
    m4, tok = qlora.load_4bit(device="cpu")
    with torch.no_grad():  # a no-grad eval forward: what would trigger bitsandbytes' CPU repacking
        m4.eval()(torch.tensor([[0, 1, 2, 3]]))
    model = qlora.prepare_qlora(m4, r=8, alpha=16)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = next(train.lm_batches(tok, texts, 4, 64))
    grads = qlora.lora_gradients(model, batch)
    assert all(grads[n] is not None and grads[n] > 0 for n in grads if "lora_B" in n)
    losses = train.finetune(model, tok, texts, steps=25, lr=3e-3, batch_size=8, max_tokens=96, seed=0)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:3]) / 3
    assert all(p.dtype == torch.uint8 for n, p in model.named_parameters() if "base_layer" in n and "weight" in n)


def _plain_4bit(folder):
    """A 4-bit model loaded as lesson 05 writes it: a BitsAndBytesConfig in the plain from_pretrained."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, device_map={"": "cpu"})


def _tokenizer(folder):
    from labkit import models

    tok = models.load_tokenizer(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def _repacked(model):
    return sum(bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
               for _, m in qlora.linear4bit_modules(model))


def _evaluate_then_lora_grads(model, tok, texts):
    """A no-grad forward in eval mode (an evaluation), then peft's QLoRA recipe and one backward pass:
    {lora_B name: gradient norm or None}."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    with torch.no_grad():
        model.eval()(torch.tensor([[0, 1, 2, 3]]))
    peft_model = get_peft_model(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False),
                                LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    grads = qlora.lora_gradients(peft_model, next(train.lm_batches(tok, texts, 2, 32)))
    return {n: g for n, g in grads.items() if "lora_B" in n}


def test_importing_qlora_keeps_a_plain_4bit_model_trainable_after_an_evaluation(texts):
    """With labkit.qlora imported, the plain from_pretrained gives Linear4bit layers whose CPU fast path is
    off: an evaluation repacks nothing, and every adapter gets a gradient afterwards."""
    from labkit import models

    m4 = _plain_4bit(models.resolve("bundled"))
    assert all(m.support_avx512bf16_for_cpu is False for _, m in qlora.linear4bit_modules(m4))
    tok = _tokenizer("bundled")
    grads = _evaluate_then_lora_grads(m4, tok, texts)
    assert _repacked(m4) == 0
    assert len(grads) == 28 and all(g is not None and g > 0 for g in grads.values())


@pytest.mark.filterwarnings("ignore:bitsandbytes.*gemv_4bit")  # the trap itself: no autograd kernel
def test_without_the_protection_an_evaluation_stops_the_gradients(texts, monkeypatch):
    """Why the protection exists: bitsandbytes' own default, on a CPU with AVX512-BF16, repacks every layer
    in an evaluation, and afterwards the adapters upstream of a repacked layer get no gradient;
    disable_cpu_repacking undoes it."""
    import bitsandbytes.functional as bnbF
    import bitsandbytes.nn.modules as modules

    from labkit import models

    if not bnbF.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes' repacking fast path never runs here")
    monkeypatch.setattr(modules, "has_avx512bf16", bnbF.has_avx512bf16)  # bitsandbytes' default back
    m4 = _plain_4bit(models.resolve("bundled"))
    tok = _tokenizer("bundled")
    grads = _evaluate_then_lora_grads(m4, tok, texts)
    # a repacked layer passes no gradient back: every adapter upstream of one gets none (or zero), silently
    assert _repacked(m4) == 28 and sum(not g for g in grads.values()) >= len(grads) // 2
    assert qlora.disable_cpu_repacking(m4) == 28 and _repacked(m4) == 0
    batch = next(train.lm_batches(tok, texts, 2, 32))
    grads = qlora.lora_gradients(m4, batch)
    assert all(grads[n] and grads[n] > 0 for n in grads if "lora_B" in n)


def test_bad_arguments_are_clear_errors(base):
    with pytest.raises(ValueError, match=r"compute_dtype must be one of .*'bfloat16'.*got 'bf8'"):
        qlora.bnb_config(compute_dtype="bf8")
    with pytest.raises(ValueError, match=r"quant_type must be one of \('nf4', 'fp4'\).*got 'int4'"):
        qlora.bnb_config(quant_type="int4")
    with pytest.raises(ValueError, match="double_quant"):
        qlora.bnb_config(double_quant="yes")
    with pytest.raises(ValueError, match="no 4-bit layers"):
        qlora.prepare_qlora(base[0])


def test_load_gpu_results(tmp_path):
    import json

    assert qlora.load_gpu_results(tmp_path / "missing.json") is None
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"device": "cpu", "smoke": True}))
    assert qlora.load_gpu_results(p) is None
    p.write_text(json.dumps({"device": "cuda", "smoke": False, "gpu": "H100"}))
    assert qlora.load_gpu_results(p)["gpu"] == "H100"


def test_double_quant_against_bitsandbytes_on_a_real_weight(base):
    from labkit import memory

    w = base[0].model.layers[1].mlp.down_proj.weight
    r = qlora.double_quant_against_bitsandbytes(w, 64)
    assert r["constants"] == w.numel() // 64 and r["offset"][0] == r["offset"][1] and r["absmax2_equal"]
    # bitsandbytes' CPU C kernel rounds a few near-midpoint constants the other way, never to a farther code
    assert 0.99 * r["constants"] <= r["codes_equal"] and r["neighbours"] == r["constants"] - r["codes_equal"]
    assert r["ours_never_farther"]
    assert r["bits_stored_without"] == 4.5
    assert r["bits_stored"] == pytest.approx(memory.bits_per_parameter(64, double_quant=True), abs=1e-3)


def test_gpu_results_are_read_from_bench_and_only_when_measured_on_cuda():
    assert qlora.GPU_RESULTS.parts[-2:] == ("bench", "gpu_qlora.json")
    found = qlora.load_gpu_results()
    assert found is None or (found["device"] == "cuda" and not found["smoke"])


def test_check_against_bitsandbytes_on_real_weights(base):
    layer = base[0].model.layers[0]
    for quant_type in ("nf4", "fp4"):
        for blocksize in (64, 128):
            r = qlora.check_against_bitsandbytes(layer.self_attn.q_proj.weight, blocksize, quant_type)
            assert r == {"codes_equal": True, "absmax_equal": True, "dequant_max_abs_diff": 0.0,
                         "rows_whole_blocks": True}
    # rows of 704 = 5.5 blocks of 128: codes still equal, bitsandbytes 0.50.2's CPU dequantize is off
    r = qlora.check_against_bitsandbytes(layer.mlp.down_proj.weight, 128)
    assert r["codes_equal"] and r["absmax_equal"] and not r["rows_whole_blocks"]
    with pytest.raises(ValueError, match=r"quant_type must be one of \('nf4', 'fp4'\).*'int4'"):
        qlora.check_against_bitsandbytes(layer.mlp.down_proj.weight, 64, "int4")


# ----------------------------------------------------------------------------- any model's own layers (Hub-style fixtures)

@pytest.fixture(scope="module")
def hub_pair(hub_model):
    """(kind, float32 model, 4-bit model, tokenizer) of each Hub-style fixture model."""
    from labkit import env, models

    env.quiet()
    kind, folder = hub_model
    lm, tok = models.load_base(str(folder), device="cpu")
    m4, _ = qlora.load_4bit(str(folder), device="cpu")
    return kind, lm, m4, tok


def test_linear_weights_are_what_bitsandbytes_quantises(hub_pair):
    """Every layer adapters.targets names is a Linear4bit in 4 bits (GPT-2's Conv1D too), holding W as
    (out, in) = linear_weights' shape, with exactly our NF4 codes; nothing else is quantised."""
    from labkit import adapters
    from labkit.lora import is_conv1d

    kind, lm, m4, _ = hub_pair
    weights = qlora.linear_weights(lm)
    assert {n.rsplit(".", 1)[-1] for n in weights} == set(adapters.targets(lm))
    assert [n for n, _ in qlora.linear4bit_modules(m4)] == list(weights)
    for name, w in weights.items():
        original, layer = lm.get_submodule(name), m4.get_submodule(name)
        if kind == "gpt2":
            assert is_conv1d(original) and tuple(w.shape) == tuple(original.weight.shape[::-1])
        assert tuple(layer.weight.quant_state.shape) == tuple(w.shape) == (layer.out_features, layer.in_features)
        assert torch.equal(quant.unpack_4bit(layer.weight.data, w.numel()), quant.quantize_nf4(w)[0]), name
        assert qlora.check_against_bitsandbytes(w, 64)["codes_equal"]


def test_block_layer_names_a_blocks_first_and_last_projection(hub_pair):
    kind, lm, _, _ = hub_pair
    names = list(qlora.linear_weights(lm))
    first, last = qlora.block_layer(names, 1, 0), qlora.block_layer(names, 1, -1)
    expected = {"gpt2": ("transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_proj")}.get(
        kind, ("model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"))
    assert (first, last) == expected
    with pytest.raises(ValueError, match=r"no layer of block 7 .* the blocks are \[0, 1\]"):
        qlora.block_layer(names, 7)
    with pytest.raises(ValueError, match="index 40 is out of range"):
        qlora.block_layer(names, 0, 40)


def test_prepare_qlora_targets_the_models_own_layers_and_trains(hub_pair):
    """Default targets come from the model; fan_in_fan_out is off on the 4-bit layers (GPT-2's float32
    Conv1D needs it on, the Linear4bit that replaced it must not have it); every lora_B gets a gradient."""
    import copy

    from labkit import adapters

    kind, lm, m4, tok = hub_pair
    model = qlora.prepare_qlora(copy.deepcopy(m4), r=2, alpha=4)
    cfg = model.peft_config["default"]
    assert set(cfg.target_modules) == set(adapters.targets(lm)) and cfg.fan_in_fan_out is False
    assert adapters.config("lora", lm).fan_in_fan_out is (kind == "gpt2")
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(wrapped) == len(qlora.linear4bit_modules(model)) == len(qlora.linear_weights(lm))
    texts = [data.plain_text(r) for r in data.read_jsonl("instructions_train.jsonl")[:8]]
    grads = qlora.lora_gradients(model, next(train.lm_batches(tok, texts, 2, 32)))
    assert all(grads[n] for n in grads if "lora_B" in n)
    with pytest.raises(ValueError, match="match no Linear"):
        qlora.prepare_qlora(copy.deepcopy(m4), target_modules=["q_prj"])


def test_the_protection_reaches_every_linear4bit_of_hub_style_models(hub_model):
    """Each fixture (llama-chatml's 172-wide MLP and gemma-style's 16-output k_proj would fail bitsandbytes'
    repacking outright; GPT-2's biased layers would fail the training step) loaded the plain way: nothing is
    repacked by an evaluation and every adapter trains."""
    kind, folder = hub_model
    m4 = _plain_4bit(str(folder))
    tok = _tokenizer(str(folder))
    texts = [data.plain_text(r) for r in data.read_jsonl("instructions_train.jsonl")[:8]]
    grads = _evaluate_then_lora_grads(m4, tok, texts)
    assert _repacked(m4) == 0 and grads and all(g is not None and g > 0 for g in grads.values()), kind

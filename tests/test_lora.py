"""labkit.lora against peft: same outputs, same counts, same summary line, clear errors."""

import copy
import math

import peft  # required packages: a broken import must fail here, not turn into a skip
import pytest
import torch
import transformers
from torch import nn

from labkit.lora import (LoRALinear, copy_from_peft, count_lora_params, inject_lora, load_from_peft,
                         merge_lora, trainable_summary, unmerge_lora)

SEED_LINE = "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 12)

    def forward(self, x):
        return self.proj(x)


def _peft_tiny(r=4, alpha=8, dropout=0.0, rslora=False):
    """(our LoRALinear, peft's LoRA layer) over the same base weights, peft's B random and nonzero."""
    torch.manual_seed(0)
    model = Tiny()
    ours = LoRALinear(copy.deepcopy(model.proj), r=r, alpha=alpha, dropout=dropout, rslora=rslora)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=rslora, target_modules=["proj"])
    pm = peft.get_peft_model(model, cfg)
    layer = pm.get_base_model().proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(std=0.5)
    copy_from_peft(ours, layer)
    return ours, layer


@pytest.fixture(scope="module")
def tiny_llama():
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    return model, ids


def _meta_llama(**overrides):
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA2_7B, **overrides}))


# 1. one layer --------------------------------------------------------------------------------


def test_one_layer_equals_peft():
    ours, theirs = _peft_tiny()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        out, ref = ours(x), theirs(x)
        assert (out - ours.base(x)).abs().max() > 1e-2  # the adapter really contributes
    assert out.shape == (3, 5, 12)
    assert (out - ref).abs().max().item() <= 1e-6


def test_dropout_matches_peft_in_training_mode():
    ours, theirs = _peft_tiny(dropout=0.3)
    ours.train(), theirs.train()
    x = torch.randn(4, 16)
    torch.manual_seed(7)
    out = ours(x)
    torch.manual_seed(7)
    ref = theirs(x)
    assert (out - ref).abs().max().item() <= 1e-6
    ours.eval()
    with torch.no_grad():  # eval mode: no dropout, so two calls agree
        assert torch.equal(ours(x), ours(x))


def test_shapes_init_and_frozen_base():
    torch.manual_seed(0)
    base = nn.Linear(256, 96)
    layer = LoRALinear(base, r=8, alpha=16)
    assert layer.A.shape == (8, 256) and layer.B.shape == (96, 8)
    assert layer.scaling == 2.0
    assert torch.count_nonzero(layer.B) == 0
    # kaiming_uniform(a=sqrt(5)) is uniform in +-1/sqrt(in_features): std = bound / sqrt(3)
    bound = 1 / math.sqrt(256)
    assert layer.A.abs().max() <= bound and layer.A.abs().max() > 0.9 * bound
    assert abs(layer.A.std().item() - bound / math.sqrt(3)) < 0.1 * bound
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["A", "B"]


# 2. whole model ------------------------------------------------------------------------------


def test_whole_llama_equals_peft(tiny_llama, capsys):
    model, ids = tiny_llama
    ours = inject_lora(copy.deepcopy(model), ["q_proj", "v_proj"], r=4, alpha=8)
    pm = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, lora_alpha=8,
                                                                   target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    assert load_from_peft(ours, pm) == 4  # q and v in each of 2 layers
    with torch.no_grad():
        base, out, ref = model(ids).logits, ours(ids).logits, pm(input_ids=ids).logits
    assert (out - base).abs().max() > 1e-4
    assert (out - ref).abs().max().item() <= 1e-6
    # same parameters trainable, same summary line
    ours_trainable = {n.replace(".A", ".lora_A.default.weight").replace(".B", ".lora_B.default.weight")
                      for n, p in ours.named_parameters() if p.requires_grad}
    peft_trainable = {n.removeprefix("base_model.model.") for n, p in pm.named_parameters() if p.requires_grad}
    assert ours_trainable == peft_trainable
    pm.print_trainable_parameters()
    assert trainable_summary(ours) == capsys.readouterr().out.strip()


def test_only_adapters_get_gradients(tiny_llama):
    model, ids = tiny_llama
    ours = inject_lora(copy.deepcopy(model), ["q_proj", "v_proj"], r=2, alpha=4).train()
    ours(ids, labels=ids).loss.backward()
    with_grad = {n for n, p in ours.named_parameters() if p.grad is not None}
    assert with_grad and all(n.endswith((".A", ".B")) for n in with_grad)
    # B = 0 at init, so A gets no gradient yet but B does
    assert all(p.grad.abs().sum() > 0 for n, p in ours.named_parameters() if n.endswith(".B"))


# 3. merge / unmerge --------------------------------------------------------------------------


def test_merge_unmerge_restores_weight_and_keeps_outputs():
    ours, _ = _peft_tiny()
    w0 = ours.base.weight.detach().clone()
    x = torch.randn(6, 16)
    with torch.no_grad():
        before = ours(x)
        ours.merge()
        assert ours.merged
        assert (ours.base.weight - w0 - ours.delta_weight()).abs().max() <= 1e-6
        merged = ours(x)
        ours.unmerge()
    assert not ours.merged
    assert (merged - before).abs().max().item() <= 1e-5
    assert (ours.base.weight - w0).abs().max().item() <= 1e-6


def test_merge_twice_and_unmerge_unmerged_raise():
    layer = LoRALinear(nn.Linear(4, 3), r=2, alpha=2)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


def test_zero_B_at_init_leaves_output_unchanged(tiny_llama):
    model, ids = tiny_llama
    layer = nn.Linear(16, 12)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.equal(LoRALinear(layer, r=4, alpha=32)(x), layer(x))
        ours = inject_lora(copy.deepcopy(model), ["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=32)
        assert torch.equal(ours(ids).logits, model(ids).logits)


def test_merge_lora_on_a_model(tiny_llama):
    model, ids = tiny_llama
    ours = inject_lora(copy.deepcopy(model), ["q_proj", "v_proj"], r=4, alpha=8)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if n.endswith(".B"):
                p.normal_(std=0.2)
        before = ours(ids).logits
        assert merge_lora(ours) == 4
        merged = ours(ids).logits
        assert unmerge_lora(ours) == 4
        after = ours(ids).logits
    assert (merged - before).abs().max().item() <= 1e-5
    assert (after - before).abs().max().item() <= 1e-5


# 4. counting on a meta-device 7B ---------------------------------------------------------------


def test_count_lora_params_llama2_7b_on_meta():
    model = _meta_llama()
    assert all(p.is_meta for p in model.parameters())
    assert count_lora_params(model, 8, ["q_proj", "v_proj"]) == 4_194_304
    assert count_lora_params(model, 16, ["q_proj", "v_proj"]) == 8_388_608
    assert count_lora_params(model, 8, ["q_proj", "k_proj", "v_proj", "o_proj"]) == 8_388_608
    # still meta after counting and after injecting: nothing was allocated
    inject_lora(model, ["q_proj", "v_proj"], r=8, alpha=16)
    assert all(p.is_meta for p in model.parameters())
    assert trainable_summary(model) == SEED_LINE
    assert count_lora_params(model, 8, ["q_proj", "v_proj"]) == 4_194_304  # works after injection too


@pytest.mark.parametrize("r, percent", [(8, "0.0622"), (16, "0.1243")])
def test_trainable_summary_equals_peft_on_meta_7b(r, percent, capsys):
    pm = peft.get_peft_model(_meta_llama(), peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]))
    pm.print_trainable_parameters()
    peft_line = capsys.readouterr().out.strip()
    line = trainable_summary(inject_lora(_meta_llama(), ["q_proj", "v_proj"], r=r, alpha=2 * r))
    assert line == peft_line
    assert line.endswith(f"trainable%: {percent}")
    assert line.startswith(f"trainable params: {count_lora_params(_meta_llama(), r, ['q_proj', 'v_proj']):,d} ")


# 5. bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    (dict(r=0, alpha=8), ["r=0", "positive integer"]),
    (dict(r=-1, alpha=8), ["r=-1", "positive integer"]),
    (dict(r=4, alpha=0), ["alpha=0", "> 0"]),
    (dict(r=4, alpha=8, dropout=1.0), ["dropout=1.0", "[0, 1)"]),
])
def test_bad_hyperparameters_name_value_and_valid_range(kwargs, words):
    with pytest.raises(ValueError) as err:
        LoRALinear(nn.Linear(4, 4), **kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="r=2.5"):
        LoRALinear(nn.Linear(4, 4), r=2.5, alpha=8)
    with pytest.raises(TypeError, match="Embedding"):
        LoRALinear(nn.Embedding(4, 4), r=2, alpha=8)


@pytest.mark.parametrize("targets", [["q_prj"], ["q_proj", "v_prj"]])
def test_unknown_target_module_lists_valid_names(tiny_llama, targets):
    model, _ = tiny_llama
    for fn in (lambda m: inject_lora(m, targets, r=4, alpha=8), lambda m: count_lora_params(m, 4, targets)):
        m = copy.deepcopy(model)
        with pytest.raises(ValueError) as err:
            fn(m)
        msg = str(err.value)
        assert "prj" in msg
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"):
            assert name in msg
        assert msg.count("q_proj") == 1  # deduplicated across layers; a matched target is not "unknown"
        assert not any(isinstance(x, LoRALinear) for x in m.modules())  # nothing half-injected


def test_matching_is_peft_rule_not_substring():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(4, 4)
            self.q_proj_extra = nn.Linear(4, 4)
            self.inner = nn.Sequential(nn.Linear(4, 4))

    m = inject_lora(M(), ["q_proj", "inner.0"], r=2, alpha=2)
    assert isinstance(m.q_proj, LoRALinear) and isinstance(m.inner[0], LoRALinear)
    assert type(m.q_proj_extra) is nn.Linear and not m.q_proj_extra.weight.requires_grad


# 6. rsLoRA -----------------------------------------------------------------------------------


def test_rslora_scaling_equals_peft():
    ours, theirs = _peft_tiny(r=16, alpha=8, rslora=True)
    assert ours.scaling == 8 / math.sqrt(16) == 2.0
    assert ours.scaling == pytest.approx(theirs.scaling["default"], rel=1e-12)
    assert LoRALinear(nn.Linear(4, 4), r=16, alpha=8).scaling == 0.5
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-6


# 5. GPT-2's Conv1D: W stored (in, out); peft's fan_in_fan_out=True ------------------------------


class TinyConv(nn.Module):
    def __init__(self, n_in=16, n_out=12):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.proj = Conv1D(n_out, n_in)  # weight (n_in, n_out): y = x W + b
        nn.init.normal_(self.proj.weight, std=0.2)
        nn.init.normal_(self.proj.bias, std=0.2)

    def forward(self, x):
        return self.proj(x)


def _peft_conv(n_in=16, n_out=12, r=4, alpha=8):
    """(our LoRALinear, peft's LoRA layer with fan_in_fan_out=True) over the same Conv1D, peft's B nonzero."""
    torch.manual_seed(0)
    model = TinyConv(n_in, n_out)
    ours = LoRALinear(copy.deepcopy(model.proj), r=r, alpha=alpha)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], fan_in_fan_out=True)
    layer = peft.get_peft_model(model, cfg).get_base_model().proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(std=0.5)
    copy_from_peft(ours, layer)
    return ours, layer


@pytest.fixture(scope="module")
def tiny_gpt2():
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    return model, ids


def test_conv1d_keeps_peft_shapes():
    ours, theirs = _peft_conv(n_in=16, n_out=12)
    assert ours.base.weight.shape == (16, 12) and ours.fan_in_fan_out
    assert (ours.in_features, ours.out_features) == (16, 12)
    assert ours.A.shape == theirs.lora_A["default"].weight.shape == (4, 16)
    assert ours.B.shape == theirs.lora_B["default"].weight.shape == (12, 4)
    assert ours.delta_weight().shape == (12, 16)  # B A in the notation's (d_out, d_in)


def test_conv1d_layer_equals_peft_fan_in_fan_out():
    ours, theirs = _peft_conv()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        out, ref = ours(x), theirs(x)
        assert (out - ours.base(x)).abs().max() > 1e-2  # the adapter really contributes
    assert out.shape == (3, 5, 12)
    assert (out - ref).abs().max().item() <= 1e-6


def test_conv1d_merge_adds_the_transposed_update_as_peft_does():
    # square, so that adding B A untransposed would fit the weight's shape and only the values tell
    ours, theirs = _peft_conv(n_in=12, n_out=12)
    assert (ours.delta_weight() - ours.delta_weight().T).abs().max() > 1e-3
    w0 = ours.base.weight.detach().clone()
    x = torch.randn(6, 12)
    with torch.no_grad():
        before = ours(x)
        ours.merge()
        assert (ours.base.weight - w0 - ours.delta_weight().T).abs().max() <= 1e-6
        theirs.merge()  # peft with fan_in_fan_out=True: its stored weight is ours
        assert (ours.base.weight - theirs.get_base_layer().weight).abs().max() <= 1e-6
        merged = ours(x)
        ours.unmerge()
        theirs.unmerge()
    assert (merged - before).abs().max().item() <= 1e-5
    assert (ours.base.weight - w0).abs().max().item() <= 1e-6


def test_whole_gpt2_equals_peft_fan_in_fan_out(tiny_gpt2, capsys):
    from labkit import adapters

    model, ids = tiny_gpt2
    targets = adapters.targets(model)
    assert targets == ["c_attn", "c_proj", "c_fc"]
    ours = inject_lora(copy.deepcopy(model), targets, r=4, alpha=8)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=True)
    pm = peft.get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    assert load_from_peft(ours, pm) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 blocks
    with torch.no_grad():
        base, out, ref = model(ids).logits, ours(ids).logits, pm(input_ids=ids).logits
    assert (out - base).abs().max() > 1e-4
    assert (out - ref).abs().max().item() <= 1e-5
    # counts: r * (in + out) per Conv1D, the same as peft's trainable parameters and summary line
    trainable, _ = pm.get_nb_trainable_parameters()
    assert count_lora_params(model, 4, targets) == trainable == 4 * 2 * (
        (32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    pm.print_trainable_parameters()
    assert trainable_summary(ours) == capsys.readouterr().out.strip()
    # merged into the Conv1D weights, the logits stay; unmerged, the weights come back
    with torch.no_grad():
        assert merge_lora(ours) == 8
        merged = ours(ids).logits
        assert unmerge_lora(ours) == 8
    assert (merged - ref).abs().max().item() <= 1e-5
    w = dict(ours.named_parameters())
    for name, p0 in model.named_parameters():
        mine = w.get(name) if name in w else w[name.replace(".weight", ".base.weight").replace(".bias", ".base.bias")]
        assert (mine - p0).abs().max() <= 1e-6, name


def test_block_layer_and_layer_shapes_speak_the_notation(tiny_llama, tiny_gpt2):
    from labkit.lora import block_layer, layer_shapes, needs_fan_in_fan_out

    llama, _ = tiny_llama
    gpt2, _ = tiny_gpt2
    assert block_layer(llama, "q_proj", 1)[0] == "model.layers.1.self_attn.q_proj"
    name, layer = block_layer(gpt2, "c_attn", 1)
    assert name == "transformer.h.1.attn.c_attn" and layer.weight.shape == (32, 96)
    assert block_layer(gpt2, "c_proj", 0)[0] == "transformer.h.0.attn.c_proj"  # the first of the block's two
    with pytest.raises(ValueError, match="no 'q_proj' layer in block 5.*0..1"):
        block_layer(llama, "q_proj", 5)
    # (d_out, d_in) for both layouts: GPT-2's fused c_attn maps 32 -> 3 x 32
    assert layer_shapes(gpt2, ["c_attn"]) == [(96, 32), (96, 32)]
    assert layer_shapes(llama, ["q_proj"]) == [(64, 64), (64, 64)]
    assert layer_shapes(llama, ["gate_proj"])[0] == (128, 64)
    assert needs_fan_in_fan_out(gpt2, ["c_attn"]) and not needs_fan_in_fan_out(llama, ["q_proj", "v_proj"])
    assert needs_fan_in_fan_out(inject_lora(copy.deepcopy(gpt2), ["c_fc"], r=2, alpha=4), ["c_fc"])


# ---------------------------------------------------------------------------------------------
# lesson 01's rsLoRA measurement, lesson 02's target matching, lesson 03's DoRA weight


def test_the_update_grows_like_sqrt_r_and_rslora_keeps_it_steady():
    from labkit.lora import scaled_update_norm

    raw = {r: scaled_update_norm(256, 256, r, alpha=r) for r in (1, 4, 16, 64)}   # scaling 1: B A itself
    plain = {r: scaled_update_norm(256, 256, r, alpha=16) for r in raw}
    rs = {r: scaled_update_norm(256, 256, r, alpha=16, rslora=True) for r in raw}
    for r in (4, 16, 64):
        assert raw[r] / raw[1] == pytest.approx(math.sqrt(r), rel=0.15)       # ||B A|| ~ sqrt(r)
        assert plain[r] / plain[1] == pytest.approx(1 / math.sqrt(r), rel=0.15)  # alpha/r damps it
        assert rs[r] / rs[1] == pytest.approx(1.0, rel=0.15)                  # alpha/sqrt(r) keeps it
    assert scaled_update_norm(256, 256, 8, 16, seed=3) == scaled_update_norm(256, 256, 8, 16, seed=3)


def test_matched_layers_is_peft_rule_and_names_the_typo(tiny_llama):
    from labkit.lora import matched_layers

    model, _ = tiny_llama
    names = [n for n, _ in model.named_modules()]
    got = matched_layers(names, ["q_proj", "v_prj"])
    pm = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj", "v_prj"]))
    adapted = [n for n, m in pm.get_base_model().named_modules() if hasattr(m, "lora_A")]
    assert got["adapted"] == adapted and got["unmatched"] == ["v_prj"], "peft adapts q_proj alone, silently"
    assert matched_layers(names, ["proj"]) == {"adapted": [], "unmatched": ["proj"]}
    assert matched_layers(names, "q_proj")["adapted"] == [n for n in names if n.endswith(".q_proj")]


@pytest.mark.parametrize("scaling", [2.0, 0.5])
def test_dora_weight_equals_peft_merged_dora(scaling):
    from labkit.lora import dora_weight

    torch.manual_seed(0)
    model = Tiny()
    r = 4
    pm = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=scaling * r, use_dora=True, target_modules=["proj"]))
    layer = pm.get_base_model().proj
    W = layer.get_base_layer().weight.detach().clone()
    m0 = layer.lora_magnitude_vector["default"].weight.detach().clone()
    torch.testing.assert_close(m0, W.norm(dim=1))                         # peft starts at ||W||_row
    torch.testing.assert_close(dora_weight(W, layer.lora_A["default"].weight, layer.lora_B["default"].weight, m0,
                                           scaling), W)                  # so an untrained DoRA layer is W
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(std=0.5)
        layer.lora_magnitude_vector["default"].weight.mul_(1.3)
    A, B = layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()
    m = layer.lora_magnitude_vector["default"].weight.detach().clone()
    x = torch.randn(5, 16)
    with torch.no_grad():
        out = pm(x)
        pm.merge_adapter()
        merged = layer.get_base_layer().weight.detach().clone()
    ours = dora_weight(W, A, B, m, scaling)
    torch.testing.assert_close(ours, merged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x @ ours.T + layer.get_base_layer().bias, out, rtol=1e-5, atol=1e-5)

"""labkit.adapters: checked peft configs for four methods, atomic saving, identical reloads."""

import copy

import pytest
import torch

from labkit import adapters


@pytest.fixture()
def fresh(base):
    return copy.deepcopy(base[0])


@pytest.mark.parametrize("r", [0, -4])
def test_a_rank_below_one_is_a_clear_error(fresh, r):
    with pytest.raises(ValueError, match=rf"r must be a positive integer .* got r={r}"):
        adapters.config("lora", fresh, r=r)


def test_an_unknown_target_names_itself_and_the_valid_choices(fresh):
    with pytest.raises(ValueError, match=r"\['v_prj'\] match no Linear \(or Conv1D\) layer.*valid names: q_proj, k_proj"):
        adapters.config("lora", fresh, target_modules=["q_proj", "v_prj"])


def test_an_unknown_method_lists_the_methods(fresh):
    with pytest.raises(ValueError, match="choose one of .*'lora', 'dora', 'ia3', 'prompt'"):
        adapters.config("qlora-ish", fresh)


@pytest.mark.parametrize("method", adapters.METHODS)
def test_every_method_trains_only_its_adapter(fresh, method):
    model = adapters.add(fresh, method, r=4, alpha=8)
    trainable, total = model.get_nb_trainable_parameters()
    assert 0 < trainable < 0.1 * total
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    key = {"lora": "lora_", "dora": "lora_", "ia3": "ia3_l", "prompt": "prompt_encoder"}[method]
    assert all(key in n for n in names), names[:3]
    assert adapters.trainable_line(model).startswith(f"trainable params: {trainable:,d} || all params: {total:,d}")


def _trained(fresh):
    model = adapters.add(fresh, "lora", r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    return model


def test_save_then_load_gives_identical_outputs(base, tmp_path):
    model = _trained(copy.deepcopy(base[0]))
    x = torch.tensor([[1, 5, 9, 200, 31, 7]])
    want = model(x).logits
    adapters.save(model, tmp_path / "adapter")
    again = adapters.load(copy.deepcopy(base[0]), tmp_path / "adapter")
    assert torch.equal(again(x).logits, want)
    assert not (base[0](x).logits == want).all(), "the adapter must change the outputs for this test to mean anything"


def test_an_interrupted_save_keeps_the_previous_adapter(base, tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    first = _trained(copy.deepcopy(base[0]))
    adapters.save(first, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    second = _trained(copy.deepcopy(base[0]))
    real = second.save_pretrained

    def half_then_crash(path, **kw):
        real(path, **kw)
        (tmp_path / "marker").write_text("saved half")
        for f in list(__import__("pathlib").Path(path).iterdir())[:1]:
            f.write_bytes(f.read_bytes()[:10])  # a truncated file, as a kill mid-write leaves
        raise KeyboardInterrupt("interrupted while saving")

    monkeypatch.setattr(second, "save_pretrained", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        adapters.save(second, target)
    assert (tmp_path / "marker").exists()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "marker"], "no temporary folder left behind"


def test_an_interrupted_first_save_leaves_nothing(base, tmp_path, monkeypatch):
    model = _trained(copy.deepcopy(base[0]))
    monkeypatch.setattr(model, "save_pretrained", lambda path, **kw: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        adapters.save(model, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_loading_from_a_folder_without_an_adapter_says_so(base, tmp_path):
    with pytest.raises(FileNotFoundError, match="No adapter at .*adapter_config.json is missing"):
        adapters.load(copy.deepcopy(base[0]), tmp_path / "nothing_here")


# GPT-2's Conv1D (weight stored (in, out)): every method must give what it gives on the equivalent nn.Linear


def test_an_adapter_keeps_the_models_mode_so_dropout_stays_off(hub_models, tmp_path):
    """GPT-2 has dropout 0.1: peft's wrapper starts in training mode, and a training loop that restores the
    mode it found left dropout on, so a saved and reloaded adapter did not give the trained logits."""
    from labkit import chat, data, models, sft

    lm, tok = models.load_base(hub_models["gpt2"], device="cpu")
    assert lm.config.resid_pdrop > 0 and not lm.training
    model = adapters.add(copy.deepcopy(lm), "lora", r=4, alpha=8)
    assert not model.training and not any(m.training for m in model.modules())
    assert model.peft_config["default"].fan_in_fan_out
    pairs = [data.to_prompt_completion(r, tok) for r in data.load("instructions", "train", task="classify")][:16]
    sft.train(model, tok, pairs, steps=2, lr=1e-2, batch_size=4, progress=False)
    assert not model.training
    x = torch.tensor([chat.encode(tok, pairs[0]["prompt"])])
    with torch.no_grad():
        want = model(x).logits
        assert torch.equal(model(x).logits, want)
        again = adapters.load(copy.deepcopy(lm), adapters.save(model, tmp_path / "gpt2_lora"))
        assert torch.equal(again(x).logits, want)
        assert (lm(x).logits - want).abs().max() > 1e-4


def _conv_and_linear(n_in=6, n_out=10):
    """A Conv1D and the nn.Linear that computes the same function (its weight is the Conv1D's transposed)."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(n_out, n_in)
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.bias)
    lin = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.T)
        lin.bias.copy_(conv.bias)
    return conv, lin


class _One(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.proj = layer

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "ia3-feedforward"])
def test_peft_on_conv1d_equals_peft_on_the_transposed_linear(method):
    """peft supports LoRA, DoRA and IA3 on Conv1D with fan_in_fan_out=True (labkit.adapters sets it): with
    the same adapter values, a Conv1D gives what the equivalent nn.Linear gives, merged or not."""
    from peft import IA3Config, LoraConfig, get_peft_model

    conv, lin = _conv_and_linear()
    x = torch.randn(4, 6)
    if method.startswith("ia3"):
        ff = ["proj"] if method == "ia3-feedforward" else []
        make = lambda fan: IA3Config(target_modules=["proj"], feedforward_modules=ff, fan_in_fan_out=fan)  # noqa: E731
    else:
        make = lambda fan: LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], fan_in_fan_out=fan,  # noqa: E731
                                      use_dora=method == "dora")
    pc, pl = get_peft_model(_One(conv), make(True)), get_peft_model(_One(lin), make(False))
    ours = dict(pl.named_parameters())
    with torch.no_grad():
        for name, p in pc.named_parameters():
            if p.requires_grad:
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(len(name)))
                assert ours[name].shape == p.shape, name  # same adapter shapes in both layouts
                ours[name].copy_(p)
        y = pl(x)
        assert (pc(x) - y).abs().max() <= 1e-5
        assert (pc(x) - conv(x)).abs().max() > 1e-3, "the adapter must change the output"
        pc.merge_adapter()
        assert (pc(x) - y).abs().max() <= 1e-4
        pc.unmerge_adapter()
        assert (pc.get_base_model().proj.get_base_layer().weight - conv.weight).abs().max() <= 1e-5


def _greedy_by_forward(model, ids, mask, n):
    """N greedy tokens by a full forward of MODEL at every step (no cache, no generate): the reference."""
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits          # (batch, n_virtual + len, vocab)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


@pytest.mark.parametrize("kind", ["gpt2", "llama-chatml"])
def test_generate_with_prompt_tuning_equals_greedy_forward_steps(hub_models, kind):
    """The virtual tokens go in once: generation equals step-by-step forwards of the peft model, whose
    forward prepends them, also on GPT-2 past 512 positions' worth of steps (peft 0.21's generate under
    transformers 5 re-prepends them at every step: 9 positions per step, and an IndexError on GPT-2)."""
    from labkit import models

    lm, tok = models.load_base(hub_models[kind], device="cpu")
    model = adapters.add(lm, "prompt", seed=0)
    with torch.no_grad():   # a trained-looking prompt: peft's random init is tiny next to the embeddings
        model.prompt_encoder["default"].embedding.weight.mul_(50)
    ids = torch.tensor([tok("The loan application was approved on Monday")["input_ids"]])
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None, top_k=None, top_p=None,
              temperature=None)
    fed = []   # how many positions the transformer body reads per call: all once, then one per step
    body = model.get_base_model().base_model

    def count(mod, args, kwargs):
        x = kwargs.get("inputs_embeds")
        x = x if x is not None else kwargs.get("input_ids", args[0] if args else None)
        fed.append(x.shape[1])

    hook = body.register_forward_pre_hook(count, with_kwargs=True)
    got = adapters.generate(model, ids, mask, max_new_tokens=6, min_new_tokens=6, **kw)
    hook.remove()
    n_virtual = model.active_peft_config.num_virtual_tokens
    assert fed == [n_virtual + ids.shape[1]] + [1] * 5
    assert got.shape == (1, ids.shape[1] + 6) and torch.equal(got[:, :ids.shape[1]], ids)
    assert torch.equal(got, _greedy_by_forward(model, ids, mask, 6))
    if kind == "gpt2":   # 60 steps x 9 re-prepended tokens run past GPT-2's 512 positions: must not crash
        assert adapters.generate(model, ids, mask, max_new_tokens=60, min_new_tokens=60, **kw).shape[1] == ids.shape[1] + 60


def test_generate_without_prompt_tuning_is_the_models_generate(hub_models):
    from labkit import models

    lm, tok = models.load_base(hub_models["gpt2"], device="cpu")
    model = adapters.add(lm, "lora", seed=0)
    ids = torch.tensor([tok("The loan application")["input_ids"]])
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id, top_k=None, top_p=None,
              temperature=None)
    assert torch.equal(adapters.generate(model, ids, torch.ones_like(ids), **kw),
                       model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw))


@pytest.mark.parametrize("kind, feedforward", [("gpt2", "mlp.c_proj"), ("llama-chatml", "mlp.down_proj")])
def test_ia3_scales_the_input_of_the_mlp_output_layer_only(hub_models, kind, feedforward):
    """IA3 rescales the FFN's inner activation: the input of the MLP's output layer (GPT-2's mlp.c_proj,
    not c_fc, and not attn.c_proj, whose name ends the same way); every other target scales its output."""
    from labkit import models

    lm, _ = models.load_base(hub_models[kind], device="cpu")
    model = adapters.add(lm, "ia3")
    layers = {name: mod for name, mod in model.named_modules() if hasattr(mod, "is_feedforward")}
    assert layers
    for name, mod in layers.items():
        assert mod.is_feedforward == name.endswith(feedforward), name
    n = sum(1 for name in layers if name.endswith(feedforward))
    assert n == lm.config.num_hidden_layers


def test_ia3_feedforward_is_empty_without_an_mlp_output_layer():
    assert adapters.ia3_feedforward(["c_attn"]) == [] and adapters.ia3_feedforward(["q_proj", "v_proj"]) == []

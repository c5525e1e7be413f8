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

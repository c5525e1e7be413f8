import shutil

import pytest
import torch

from labkit import models


def test_load_base_is_a_llama_under_limits(base):
    model, tok = base
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) <= 10_000_000
    assert (models.BASE_MODEL_DIR / "model.safetensors").stat().st_size <= 25 * 2**20
    assert not model.training
    assert tok.chat_template and "{% generation %}" in tok.chat_template


def test_load_base_from_a_local_folder_equals_bundled(base, tmp_path):
    model, tok = base
    model.save_pretrained(tmp_path / "copy")
    tok.save_pretrained(tmp_path / "copy")
    m2, t2 = models.load_base(str(tmp_path / "copy"), device="cpu")
    x = torch.tensor([tok("Applicant: Linda Garcia")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, m2(x).logits)


def test_missing_path_names_the_path_and_what_to_do(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(models.ModelLoadError) as err:
        models.load_base(str(missing))
    msg = str(err.value)
    assert str(missing) in msg and "MODEL=" in msg


def _copy_bundled(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(models.BASE_MODEL_DIR, dst)
    return dst


def test_truncated_weights_give_a_clear_error(tmp_path):
    dst = _copy_bundled(tmp_path)
    w = dst / "model.safetensors"
    w.write_bytes(w.read_bytes()[: 1000])
    with pytest.raises(models.ModelLoadError) as err:
        models.load_base(str(dst), device="cpu")
    assert str(dst) in str(err.value)


def test_missing_weights_file_is_named(tmp_path):
    dst = _copy_bundled(tmp_path)
    (dst / "model.safetensors").unlink()
    with pytest.raises(models.ModelLoadError, match="model.safetensors"):
        models.load_base(str(dst), device="cpu")


def test_corrupt_config_is_named(tmp_path):
    dst = _copy_bundled(tmp_path)
    (dst / "config.json").write_text("{not json")
    with pytest.raises(models.ModelLoadError, match="config.json"):
        models.load_base(str(dst), device="cpu")


def test_uncached_hub_id_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelLoadError, match="offline|cache"):
        models.load_base("labkit-test/definitely-not-cached-model", device="cpu")


def test_generate_is_deterministic_and_checks_arguments(base):
    model, tok = base
    a = models.generate(model, tok, "Once upon a time", max_new_tokens=12)
    b = models.generate(model, tok, "Once upon a time", max_new_tokens=12)
    assert a == b and len(a) > 0
    s1 = models.generate(model, tok, "Once upon a time", max_new_tokens=12, temperature=1.0, seed=1)
    s2 = models.generate(model, tok, "Once upon a time", max_new_tokens=12, temperature=1.0, seed=1)
    assert s1 == s2
    with pytest.raises(ValueError, match="temperature"):
        models.generate(model, tok, "x", temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        models.generate(model, tok, "x", max_new_tokens=0)


def test_base_model_is_fluent_on_both_kinds_of_text(base):
    """Greedy continuations are made of real words of the corpus, not byte soup."""
    import re

    from labkit import corpus

    model, tok = base
    vocab = set(w.lower() for w in re.findall(r"[A-Za-z]+", " ".join(
        corpus.pretraining_document(__import__("random").Random(s)) for s in range(3000))))
    for prompt in ("Once upon a time", "MORTGAGE APPLICATION\nApplicant:"):
        text = models.generate(model, tok, prompt, max_new_tokens=40)
        words = re.findall(r"[A-Za-z]+", text)
        assert len(words) >= 5, text
        known = sum(w.lower() in vocab for w in words) / len(words)
        assert known >= 0.9, (prompt, text)


def test_a_shipped_artefact_knob_means_a_live_run_for_any_other_model():
    from labkit import models

    assert models.shipped_or_live(0, "bundled", "SFT adapter", "SFT_STEPS") == (0, "")
    assert models.shipped_or_live(7, "someone/qwen", "SFT adapter", "SFT_STEPS") == (7, "")
    steps, note = models.shipped_or_live(0, "someone/qwen", "SFT adapter", "SFT_STEPS")
    assert steps == models.LIVE_STEPS > 0
    assert "'someone/qwen' is not the bundled model" in note and "SFT_STEPS" in note and str(steps) in note
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="SFT_STEPS must be 0"):
            models.shipped_or_live(bad, "bundled", "SFT adapter", "SFT_STEPS")

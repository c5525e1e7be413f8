import os

import pytest
import torch

from labkit import env


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_pick_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert env.pick_device("auto") == expected
    assert env.pick_device("cpu") == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda:x"])
def test_pick_device_rejects_unknown(bad):
    if bad.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a CUDA device string is valid here")
    with pytest.raises(ValueError, match="DEVICE"):
        env.pick_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is missing")
def test_pick_device_cuda_without_gpu_says_what_to_do():
    with pytest.raises(ValueError, match="auto"):
        env.pick_device("cuda")


def test_pick_dtype():
    assert env.pick_dtype("cpu") == torch.float32
    assert env.pick_dtype("cpu", "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        env.pick_dtype("cpu", "float8")


def test_seed_everything_makes_runs_repeat():
    env.seed_everything(123)
    a = torch.rand(5)
    env.seed_everything(123)
    b = torch.rand(5)
    env.seed_everything(124)
    c = torch.rand(5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_quiet_sets_offline_and_keeps_user_choice(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    env.quiet()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
    assert env.is_offline()


def test_quiet_online_leaves_offline_switch(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    env.quiet(offline=False)
    assert "HF_HUB_OFFLINE" not in os.environ


def test_colab_detection(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert env.is_colab() is False
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101")
    assert env.is_colab() is True


def test_describe_lists_versions_device_and_offline():
    import importlib.metadata as md
    import platform

    info = env.describe()
    assert info["python"] == platform.python_version()
    for key in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "lm-eval"):
        assert info[key] == md.version(key), key
    assert info["device"] == env.pick_device("auto")
    assert info["offline"] is env.is_offline() is True, "the suite runs offline"


def test_quiet_does_not_import_datasets_but_datasets_imported_later_is_quiet():
    import subprocess
    import sys

    code = ("import os, sys; [os.environ.pop(k, None) for k in ('DATASETS_VERBOSITY', 'HF_DATASETS_DISABLE_PROGRESS_BARS')]\n"
            "from labkit import env; env.quiet()\n"
            "assert 'datasets' not in sys.modules, 'quiet() imported datasets (pandas, pyarrow: ~100 MB per process)'\n"
            "import datasets, logging\n"
            "assert datasets.utils.logging.get_verbosity() == logging.ERROR, datasets.utils.logging.get_verbosity()\n"
            "assert not datasets.is_progress_bar_enabled()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_suite_is_offline_and_cannot_reach_the_network():
    import socket

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(OSError, match="must not reach the network"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)


def test_the_suite_never_writes_the_learners_progress_file():
    from pathlib import Path

    from labkit.check import progress_path

    assert progress_path() != Path.home() / ".labkit" / "progress.json"
    assert "labkit-test-progress-" in str(progress_path())


def test_the_suite_cannot_reach_the_network_but_this_machine_yes():
    """conftest's guard: a connection to another machine fails the test that opens it (192.0.2.1 is TEST-NET-1,
    reserved for documentation, so nothing is ever contacted), and conftest forces the offline variables."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        with pytest.raises(OSError, match="must not reach the network"):
            s.connect(("192.0.2.1", 443))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client.connect(server.getsockname())  # local connections (kernels, gloo) are allowed
    assert all(os.environ[k] == "1" for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))

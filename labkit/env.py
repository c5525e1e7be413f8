"""The environment: device and dtype choice, seeding, quiet offline defaults, Colab detection.

Call ``labkit.env.setup()`` at the top of every notebook: it makes the run offline, quiet and
reproducible, and returns the device it will use.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import warnings

QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
    "DATASETS_VERBOSITY": "error",  # read when datasets is first imported (quiet() does not import it)
    "TRL_EXPERIMENTAL_SILENCE": "1",  # trl.experimental (CPO, ORPO: lesson 10) warns on import otherwise
}


def quiet(offline: bool = True) -> None:
    """Offline, no progress-bar spam, no FutureWarning walls, no bitsandbytes banner.

    Environment variables are only set when the user has not set them already, except the
    offline switch, which `offline=False` leaves alone so that a Hub model can be downloaded.
    """
    for key, value in QUIET_ENV.items():
        if not offline and key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            continue
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    # LoraConfig(target_modules="all-linear") on GPT-2's Conv1D layers: peft sets fan_in_fan_out itself
    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False but the target module is `Conv1D`")
    # bitsandbytes on a CPU: lesson 05 prints what its paged optimizer does there (memory.optimizer_states)
    warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
    for name in ("bitsandbytes", "bitsandbytes.backends.cpu.ops", "bitsandbytes.cextension"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in ("transformers", "datasets", "peft", "trl", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # transformers is optional at this point
        pass
    datasets = sys.modules.get("datasets")  # not imported here: it pulls in pandas and pyarrow (~100 MB)
    if datasets is not None:
        try:
            datasets.utils.logging.set_verbosity_error()
            datasets.disable_progress_bars()
        except Exception:
            pass


def is_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def pick_device(device: str = "auto") -> str:
    """'auto' gives CUDA, then Apple MPS, then CPU; anything else is checked and returned.

    >>> pick_device("cpu")
    'cpu'
    """
    import torch

    choice = (device or "auto").lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"DEVICE={device!r} but no CUDA GPU is visible; use DEVICE='auto' or 'cpu'.")
    if choice == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"DEVICE={device!r} but Apple MPS is not available; use DEVICE='auto' or 'cpu'.")
    if not (choice == "cpu" or choice == "mps" or choice.startswith("cuda")):
        raise ValueError(f"Unknown DEVICE={device!r}; choose 'auto', 'cpu', 'cuda' or 'mps'.")
    return choice


def pick_dtype(device: str, dtype: str = "auto"):
    """'auto': bfloat16 on a GPU that supports it, else float16 on CUDA, float32 on CPU and MPS."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype != "auto":
        if dtype not in names:
            raise ValueError(f"Unknown dtype {dtype!r}; choose 'auto' or one of {sorted(names)}.")
        return names[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (and transformers' helper) so two runs give the same numbers."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        from transformers import set_seed

        set_seed(seed)
    except Exception:
        pass


def setup(device: str = "auto", seed: int = 0, offline: bool = True, threads: int | None = None) -> str:
    """Quiet offline defaults, a seed, and the device: the first call of every lesson."""
    quiet(offline=offline)
    import torch

    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    return pick_device(device)


PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "ipywidgets", "lm-eval")


def versions(packages=PACKAGES) -> dict:
    """{package: installed version, or None when it is not installed}."""
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def describe() -> dict:
    """Versions, device and offline state, for the welcome lesson and `labkit doctor`."""
    import platform

    info = {"python": platform.python_version(), **versions()}
    try:
        info["device"] = pick_device("auto")
    except Exception as exc:  # pragma: no cover - torch missing
        info["device"] = f"unavailable ({exc})"
    info["offline"] = is_offline()
    info["colab"] = is_colab()
    return info

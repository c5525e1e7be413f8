"""Loading models: the bundled base model, or any Hub id or local folder, the same way.

``load_base()`` is nothing more than the two ``from_pretrained`` calls a learner would write for a
Hub model; it adds a clear error when the path is missing or broken, and safe defaults
(safetensors only, never remote code).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .chat import document_start
from .env import is_offline, pick_device, pick_dtype

ASSETS = Path(__file__).resolve().parent / "assets"
BASE_MODEL_DIR = ASSETS / "base_model"
BUNDLED = "bundled"


class ModelLoadError(OSError):
    """A model path that is missing or broken, with what to do about it."""


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve(model: str | os.PathLike | None) -> str:
    """Turn MODEL (None/'bundled', a folder, or a Hub id) into what from_pretrained takes."""
    if model is None or str(model) == BUNDLED:
        return str(BASE_MODEL_DIR)
    name = str(model)
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if _looks_like_hub_id(name) and not name.startswith((".", "/", "~")):
        return name
    raise ModelLoadError(
        f"Model path {str(path)!r} does not exist. Pass MODEL='bundled' for the course's model, "
        f"a folder that holds config.json and model.safetensors, or a Hub id such as 'org/name'."
    )


LIVE_STEPS = 40  # the live run that stands in for a shipped artefact when MODEL is not the bundled model


def shipped_or_live(steps: int, model, what: str, knob: str) -> tuple[int, str]:
    """A lesson knob whose 0 means "the shipped WHAT": (steps to train live, a line saying what happens).

    STEPS > 0: train live for STEPS steps, whatever the model. STEPS == 0 and the bundled model: (0, "") and
    the shipped artefact is used. STEPS == 0 and any other model: no shipped artefact fits it, so
    (LIVE_STEPS, a line the lesson prints saying it trains live instead, and that KNOB sets the size).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{knob} must be 0 (the shipped {what}) or a positive number of steps; got {steps!r}.")
    if steps > 0 or is_bundled(model):
        return steps, ""
    return LIVE_STEPS, (f"MODEL={str(model)!r} is not the bundled model, so the shipped {what} does not fit it: "
                        f"training one live for {LIVE_STEPS} steps instead (set {knob} to choose the steps).")


def is_bundled(model: str | os.PathLike | None) -> bool:
    """Is MODEL the course's bundled model ('bundled', None, or a path to its folder)? Lessons use this to
    decide whether a shipped artifact of the bundled model (its card, an adapter, a sweep) applies."""
    if model is None or str(model) == BUNDLED:
        return True
    path = Path(str(model)).expanduser()
    return path.exists() and path.resolve() == BASE_MODEL_DIR.resolve()


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"Model path {str(path)!r} is not a folder; point MODEL at the folder that "
                             f"holds config.json and model.safetensors.")
    missing = [f for f in ("config.json", "tokenizer.json") if not (path / f).is_file()]
    weights = list(path.glob("*.safetensors"))
    if not weights:
        missing.append("model.safetensors")
    hint = ("reinstall the course (`make install`) or rebuild it with `python scripts/pretrain_base.py`"
            if path.resolve() == BASE_MODEL_DIR.resolve() else "save it again with save_pretrained()")
    if missing:
        raise ModelLoadError(f"Model folder {str(path)!r} is incomplete: missing {', '.join(missing)}; {hint}.")
    try:
        json.loads((path / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"Model folder {str(path)!r} has a corrupt config.json ({exc}); {hint}.") from None


def load_tokenizer(model: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    name = resolve(model)
    if Path(name).exists():
        _check_folder(Path(name))
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise ModelLoadError(f"Could not load the tokenizer from {name!r}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def load_base(model: str | os.PathLike | None = None, device: str = "auto", dtype: str = "auto", **kwargs):
    """Return (model, tokenizer) for MODEL: the bundled model by default, else a folder or Hub id.

    The model is in eval mode on the chosen device. Extra keyword arguments (e.g. a
    ``quantization_config``) go to ``AutoModelForCausalLM.from_pretrained``.
    """
    from transformers import AutoModelForCausalLM

    name = resolve(model)
    local = Path(name).exists()
    if local:
        _check_folder(Path(name))
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    tok = load_tokenizer(name)
    kwargs.setdefault("dtype", torch_dtype)
    kwargs["use_safetensors"] = True
    kwargs["trust_remote_code"] = False
    try:
        lm = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        if not local and is_offline():
            raise ModelLoadError(f"{name!r} is not in the local Hugging Face cache and the course runs offline "
                                 f"(HF_HUB_OFFLINE=1). Download it once with network access, or use MODEL='bundled'."
                                 ) from None
        raise ModelLoadError(f"Could not load model weights from {name!r}: {type(exc).__name__}: {first}. "
                             f"If this is the bundled model, reinstall the course (`make install`).") from None
    if "quantization_config" not in kwargs and "device_map" not in kwargs:
        lm.to(dev)
    lm.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return lm, tok


def generate(model, tok, prompt: str, max_new_tokens: int = 40, temperature: float = 0.0,
             seed: int = 0, stop_at_newline: bool = False) -> str:
    """Continue PROMPT (plain text, after the tokenizer's BOS if it has one); greedy when temperature is 0.

    Returns only the new text, without special tokens; stop_at_newline keeps its first line.
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")

    device = next(model.parameters()).device
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    start = document_start(tok)
    if start and ids[:1] != start:  # BOS once, and only where the tokenizer has one
        ids = start + ids
    ids = torch.tensor([ids], device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                             top_k=None, top_p=None, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    if stop_at_newline:
        text = text.split("\n")[0]
    return text


def model_card() -> dict:
    """The bundled model's card: the figures measured by scripts/pretrain_base.py."""
    return json.loads((BASE_MODEL_DIR / "model_card.json").read_text())

"""Loading Qwen2.5-VL (Hub id or local directory) with an optional LoRA adapter."""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import geometry


class ModelLoadError(RuntimeError):
    """A model or adapter that cannot be loaded, with what to do about it."""


@dataclass
class Loaded:
    model: object          # Qwen2_5_VLForConditionalGeneration, or a peft PeftModel around it
    processor: object      # Qwen2_5_VLProcessor
    name: str
    adapter: str | None
    device: str
    dtype: object


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, dtype=None):
    """bf16 on CUDA (what Qwen2.5-VL was trained in), float32 on CPU."""
    import torch

    if dtype is not None:
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def _hint(name: str) -> str:
    return (
        f"Could not load the model '{name}'. It is neither a local directory with a Qwen2.5-VL "
        "checkpoint nor in the Hugging Face cache, and it could not be downloaded. Fixes: pass a local "
        "directory (--model /path/to/Qwen2.5-VL-7B-Instruct); download it once while online "
        f"(`hf download {name}`) so it loads from the HF cache; or, to try the tools without weights, "
        "build a tiny random model: `python -m mgpo.tiny /tmp/tiny` and pass --model /tmp/tiny."
    )


def _from_pretrained(loader, name: str, **kwargs):
    """Local directory or HF cache first (no network), then the Hub unless offline."""
    if Path(name).is_dir():
        return loader(name, **kwargs)
    try:
        return loader(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        if _offline():
            raise
    return loader(name, **kwargs)


def load_model(
    model: str,
    adapter: str | None = None,
    *,
    device: str | None = None,
    dtype=None,
    min_pixels: int = geometry.MIN_PIXELS,
    max_pixels: int = geometry.MAX_PIXELS,
    attn_implementation: str = "sdpa",
    revision: str | None = None,
) -> Loaded:
    """Load a Qwen2.5-VL model and processor; put a LoRA adapter (Hub id or directory) on top.

    ``model`` is a Hub id (``Qwen/Qwen2.5-VL-7B-Instruct``) or a local directory; loading tries
    the local directory or the HF cache first, so it works offline. Raises :class:`ModelLoadError`
    with a fix when the model or adapter cannot be found.
    """
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    extra = {"revision": revision} if revision else {}
    if Path(model).exists() and not Path(model).is_dir():
        raise ModelLoadError(f"'{model}' is a file; pass the directory that holds config.json and the weights")
    try:
        config = _from_pretrained(AutoConfig.from_pretrained, model, **extra)
    except Exception as e:  # OSError, HTTP errors, offline errors …
        raise ModelLoadError(_hint(model) + f" ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if getattr(config, "model_type", None) != "qwen2_5_vl":
        raise ModelLoadError(
            f"'{model}' is a {getattr(config, 'model_type', 'unknown')} model; MGPO here runs Qwen2.5-VL checkpoints"
        )
    try:
        processor = _from_pretrained(
            AutoProcessor.from_pretrained, model, min_pixels=min_pixels, max_pixels=max_pixels, **extra
        )
        net = _from_pretrained(
            Qwen2_5_VLForConditionalGeneration.from_pretrained, model,
            dtype=torch_dtype, attn_implementation=attn_implementation, **extra,
        )
    except Exception as e:
        raise ModelLoadError(_hint(model) + f" ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    net.to(device).eval()
    if adapter:
        net = load_adapter(net, adapter)
    return Loaded(net, processor, model, adapter, device, torch_dtype)


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    return flag or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def resolve_adapter(adapter: str, revision: str | None = None) -> str:
    """A local directory holding the adapter: the path itself, else a snapshot of the Hub repo
    (from the HF cache first, downloaded only when missing and not offline)."""
    if Path(adapter).is_dir():
        return adapter
    from huggingface_hub import snapshot_download

    patterns = ["adapter_config.json", "adapter_model.*"]
    try:
        return snapshot_download(adapter, revision=revision, allow_patterns=patterns, local_files_only=True)
    except Exception:
        if _offline():
            raise
    return snapshot_download(adapter, revision=revision, allow_patterns=patterns)


@contextlib.contextmanager
def quiet_peft():
    """Silence the FutureWarning transformers 5.2x raises each time peft wraps a model (peft reads
    the deprecated ``is_gradient_checkpointing``): it is peft's, and says nothing to the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_adapter(model, adapter: str, adapter_name: str = "default", revision: str | None = None):
    """Wrap ``model`` with a LoRA adapter from a Hub id or a directory (peft). The adapter is
    resolved to local files before peft touches the model, so a failure leaves it unchanged."""
    from peft import PeftModel

    try:
        local = resolve_adapter(adapter, revision)
        if not (Path(local) / "adapter_config.json").is_file():
            raise FileNotFoundError("no adapter_config.json")
        with quiet_peft():
            wrapped = PeftModel.from_pretrained(model, local, adapter_name=adapter_name)
    except Exception as e:
        raise ModelLoadError(
            f"Could not load the LoRA adapter '{adapter}': it is not a local directory with "
            f"adapter_config.json, not in the HF cache, and could not be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None
    return wrapped.eval()

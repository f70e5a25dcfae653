"""Checkpoints: adapter + optimizer + scheduler + RNG + data position, written atomically.

Layout of ``OUT/checkpoint-000050/``::

    adapter/            peft ``save_pretrained`` (adapter_config.json, adapter_model.safetensors)
    optimizer.pt        AdamW state (LoRA parameters are identical on every process)
    scheduler.pt
    state.json          step, the config, the last metrics
    rank0.pt, rank1.pt  per process: data sampler position and the RNG states

A checkpoint is built in a hidden temporary folder and renamed into place once complete, so a
crash never leaves a half-written ``checkpoint-*``; only the newest ``keep_last`` are kept.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

_NAME = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``out_dir``, oldest first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(out_dir: str | Path) -> Path | None:
    found = checkpoints(out_dir)
    return found[-1][1] if found else None


def tmp_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f".checkpoint-{step:06d}.tmp"


def begin(out_dir: str | Path, step: int) -> Path:
    """(main process) A fresh temporary folder for checkpoint ``step``."""
    tmp = tmp_dir(out_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_main(tmp: Path, step: int, model, optimizer, scheduler, state: dict) -> None:
    """(main process) adapter, optimizer, scheduler and state.json."""
    model.save_pretrained(str(tmp / "adapter"), save_embedding_layers=False)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1, default=str))


def write_rank(tmp: Path, rank: int, sampler_state: dict) -> None:
    """(every process) its data position and RNG states."""
    torch.save({"sampler": sampler_state, "rng": rng_state()}, tmp / f"rank{rank}.pt")


def commit(out_dir: str | Path, step: int, keep_last: int) -> Path:
    """(main process) Rename the finished temporary folder into place; prune old checkpoints."""
    out = Path(out_dir)
    final = out / f"checkpoint-{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    tmp_dir(out, step).rename(final)            # atomic on one file system
    for _, old in checkpoints(out)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, rank: int, model, optimizer, scheduler) -> dict:
    """Restore a checkpoint into live objects; returns ``state.json`` plus this rank's sampler state."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"{path}: adapter weights do not fit this model ({len(unexpected)} unexpected keys); "
                           "resume with the same model and LoRA settings")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rank_file = path / f"rank{rank}.pt"
    if not rank_file.is_file():
        raise RuntimeError(f"{path} has no state for process {rank}: resume with the same number of processes")
    per_rank = torch.load(rank_file, weights_only=False)
    set_rng_state(per_rank["rng"])
    state = json.loads((path / "state.json").read_text())
    state["sampler"] = per_rank["sampler"]
    return state

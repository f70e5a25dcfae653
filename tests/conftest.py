"""Shared fixtures: a tiny random Qwen2.5-VL built once per test session, and test images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QWEN_FILES = ROOT / "tests" / "fixtures" / "qwen2.5-vl-7b-instruct"   # the released non-weight files
BOX_TEXT = '```json\n[\n    {"bbox_2d": [%d, %d, %d, %d], "label": "key image area"}\n]\n```'


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint (model + processor + chat template) on disk."""
    from mgpo.tiny import build

    return build(tmp_path_factory.mktemp("tiny") / "tiny-qwen2.5-vl", seed=0)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    """The tiny model loaded once (float32 on CPU) through the project's loader."""
    from mgpo.model import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def qwen_model_dir(tmp_path_factory) -> Path:
    """A random-weight Qwen2.5-VL at small dimensions with Qwen2.5-VL-7B-Instruct's own
    tokenizer (152,064-row vocabulary), chat template, processor and generation config."""
    from mgpo.tiny import build

    return build(tmp_path_factory.mktemp("qwen-files") / "qwen2.5-vl-real-files", seed=0, qwen_files=QWEN_FILES)


@pytest.fixture(scope="session")
def qwen_loaded(qwen_model_dir):
    """That checkpoint loaded through the project's loader (the paper's pixel limits)."""
    from mgpo.model import load_model

    return load_model(str(qwen_model_dir), device="cpu")


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture
def big_image() -> Image.Image:
    return noise_image(1600, 1200)


@pytest.fixture(scope="session")
def fake_release(tmp_path_factory) -> Path:
    """A playground release in the shipped layout (``mgpo.playground.release``): a tiny random
    Qwen2.5-VL with the playground's pixel budgets as "before RL", two real LoRA adapters with
    random B (so each changes the outputs) as "early" and "late", metrics.jsonl (one bad line),
    curves.png, summary.json and a model card."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model

    from mgpo.model import load_model
    from mgpo.playground.release import Checkpoint, write_index
    from mgpo.playground.world import Budgets
    from mgpo.tiny import build

    folder = tmp_path_factory.mktemp("release") / "playground"
    budgets = Budgets().engine()
    build(folder / "model", seed=0, **budgets)
    checkpoints = [Checkpoint("before RL", 0, None)]
    for k, (name, step) in enumerate([("early", 10), ("late", 30)]):
        loaded = load_model(str(folder / "model"), device="cpu", **budgets)
        torch.manual_seed(100 + k)
        cfg = LoraConfig(r=8, lora_alpha=32, init_lora_weights=False,
                         target_modules=r".*language_model.*\.(q_proj|v_proj|o_proj|down_proj)")
        out = folder / "adapters" / f"step-{step:04d}"
        get_peft_model(loaded.model, cfg).save_pretrained(out)
        checkpoints.append(Checkpoint(name, step, out))
    write_index(folder, checkpoints, default="late")
    rows = [{"step": s, "reward": s / 40, "valid_box": min(1.0, s / 20), "iou": s / 60, "kl": 0.01} for s in range(1, 31)]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:10]) + "\n{not json\n"
                                          + "\n".join(json.dumps(r) for r in rows[10:]) + "\n")
    curves = Image.new("RGB", (640, 360), "white")
    from PIL import ImageDraw

    ImageDraw.Draw(curves).line([(40 + 19 * i, 320 - 9 * i) for i in range(31)], fill=(255, 122, 0), width=4)
    curves.save(folder / "curves.png")
    summary = {"before": {m: {"accuracy": 0.25, "n": 16, "valid_box_ratio": 0.1, "mean_iou": 0.05} for m in ("direct", "mgpo")},
               "after": {m: {"accuracy": 0.75, "n": 16, "valid_box_ratio": 0.9, "mean_iou": 0.7} for m in ("direct", "mgpo")},
               "rl_curve": [{"step": 1, "reward": 0.0}], "seconds": {"rl": 12.5}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# fake playground release\n\nFor tests.\n")
    return folder

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


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture
def big_image() -> Image.Image:
    return noise_image(1600, 1200)

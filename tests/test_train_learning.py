"""LEARNING: the tiny random Qwen2.5-VL under the real loop (engine rollouts, two turns, LoRA,
GRPO with the paper's clip / KL / entropy coefficients) raises a learnable reward.

The reward is ``brevity`` (1 − final-turn tokens / max_new_tokens): a random byte-level model
stops early only by chance (``<|im_end|>`` is ~1 of 272 tokens), so the reward starts near 0, has
variance inside groups (some samples stop early), and is learnable by raising one logit. The
paper's accuracy reward is not learnable here: a random model never writes ``\\boxed{A}``.

LoRA also targets ``lm_head`` in this test: the tiny model's final RMSNorm bounds the hidden
state and its random ``lm_head`` rows are small (std 0.02), so adapters on the transformer blocks
alone cannot move one logit far enough in a few steps (measured: no rise in 13 steps).
"""

from __future__ import annotations

import json

import pytest
from conftest import noise_image

from train.config import LM_TARGETS, TrainConfig
from train.loop import Trainer


@pytest.mark.slow
def test_mean_reward_rises(tiny_model_dir, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    lines = []
    for i in range(4):
        noise_image(120 + 20 * i, 100, seed=i).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "question": f"What is shown in picture {i}?",
                                 "choices": ["a", "b", "c"], "answer": "A"}))
    (folder / "d.jsonl").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(model=str(tiny_model_dir), data=str(folder / "d.jsonl"), output_dir=str(tmp_path / "run"),
                      steps=16, group_size=8, prompts_per_step=2, micro_batch=16, max_new_tokens=8,
                      min_pixels=56 * 56, max_pixels=112 * 112, rewards={"brevity": 1.0}, lr=1e-2,
                      lora_r=8, lora_alpha=16, lora_targets=LM_TARGETS + "|lm_head",
                      save_every=0, tensorboard=True, progress=False)
    curve: list[float] = []
    Trainer(cfg, on_step=lambda s, m: curve.append(m["reward"])).run()
    print("reward curve:", " ".join(f"{r:.3f}" for r in curve))
    first, last = sum(curve[:4]) / 4, sum(curve[-4:]) / 4
    assert last > first + 0.25 and last > 0.35, curve
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 16

"""train.playground's RL stage: the "train" scenes it renders (no boxes), the trainer settings it
passes (the paper's MGPO at the playground's budgets, LoRA on the vision tower on request) and the RL
steps whose adapters it keeps."""

from __future__ import annotations

import json

import pytest

from train.playground import cards, rl, settings


def test_rl_data_has_questions_and_answers_but_no_boxes(tmp_path):
    from mgpo.playground.world import SPLITS, make_scene
    from train.data import load_items

    path = rl.write_rl_data(tmp_path, 2)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(recs) == 2
    for rec in recs:
        seed = int(rec["id"].split("-")[1])
        assert SPLITS["train"][0] <= seed < SPLITS["train"][1]
        scene = make_scene(seed)
        assert (rec["question"], rec["choices"], rec["answer"]) == (scene.question, scene.choices, scene.answer)
        assert set(rec) == {"image", "question", "choices", "answer", "id"}     # no ground-truth box
    items, report = load_items(str(path))
    assert len(items) == 2 and report.n_skipped == 0


def test_rl_config_is_the_papers_mgpo_with_playground_budgets(tmp_path):
    from mgpo.playground.world import Budgets

    cfg = settings.RecipeConfig.for_size("cpu")
    tc = rl.rl_config(cfg, tmp_path / "base", tmp_path / "d.jsonl", tmp_path / "rl").check()
    assert tc.mode == "mgpo" and tc.max_turns == 2 and tc.rewards == {"accuracy": 1.0}
    assert (tc.min_pixels, tc.max_pixels) == (cfg.budgets().engine()["min_pixels"], cfg.budgets().engine()["max_pixels"])
    assert cfg.overview == 280 and cfg.budgets() == Budgets.for_overview(280)   # the cpu recipe's world
    assert tc.temperature == cfg.rl_temperature and tc.steps == cfg.rl_steps
    # the paper's rollout temperature 1.0 (the shipped model's RL ran with it)
    assert cfg.rl_temperature == 1.0 and settings.RecipeConfig.for_size("gpu").rl_temperature == 1.0
    # the shipped RL decays its rate on a cosine (at a constant one it fell back late in 64 steps)
    assert tc.lr_schedule == cfg.rl_schedule == "cosine" and tc.lr == cfg.rl_lr
    assert "lr 0.001, cosine schedule, one on-policy update a step, with" in cards.release_card(cfg, {}, [])
    constant = settings.RecipeConfig.for_size("cpu", rl_schedule="constant")
    assert "lr 0.001, one on-policy update a step, with" in cards.release_card(constant, {}, [])
    # one on-policy update a step by default; --rl-mini-batches 4 is the paper's PPO epoch in 4 slices
    assert tc.mini_batches == cfg.rl_mini_batches == 1
    ppo = settings.RecipeConfig.for_size("cpu", rl_mini_batches=4)
    assert rl.rl_config(ppo, tmp_path / "base", tmp_path / "d.jsonl", tmp_path / "rl").check().mini_batches == 4
    assert "4 updates a step (one PPO epoch over the rollouts in 4 slices)" in cards.release_card(ppo, {}, [])
    for bad in (0, 3):                              # 16 prompts a step: 3 slices would split a group
        with pytest.raises(ValueError, match="rl_mini_batches must be at least 1 and divide prompts_per_step"):
            settings.RecipeConfig.for_size("cpu", rl_mini_batches=bad).check()
    # an interrupted RL stage resumes from its newest checkpoint (8 of them over a run)
    assert tc.resume and tc.save_every == cfg.rl_steps // 8
    assert tc.log_samples == 1                      # every step's rollouts in samples.jsonl
    # the cpu recipe's LoRA is on the vision tower's blocks too (--rl-vision); without it, the language model only
    assert tc.train_vision and "on the language model and the vision tower, 40 steps" in cards.release_card(cfg, {}, [])
    blind = settings.RecipeConfig.for_size("cpu", rl_vision=False)
    assert not rl.rl_config(blind, tmp_path / "base", tmp_path / "d.jsonl", tmp_path / "rl").check().train_vision
    assert "on the language model, 40 steps" in cards.release_card(blind, {}, [])
    with pytest.raises(ValueError, match="rl_schedule must be"):
        settings.RecipeConfig(rl_schedule="wavy").check()


def test_snapshot_steps_are_five_points_of_the_run():
    assert rl.snapshot_steps(64) == {8: "early", 16: "quarter", 32: "middle", 48: "three quarters", 64: "late"}
    assert rl.snapshot_steps(4) == {1: "early", 2: "middle", 3: "three quarters", 4: "late"}
    assert rl.snapshot_steps(1) == {1: "late"}
    assert rl.snapshot_steps(0) == {}

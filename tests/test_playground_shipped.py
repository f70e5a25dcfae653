"""The shipped playground release (``examples/playground``): the trained model itself.

These load the real weights the repository ships and check what its card promises: the layout
the app and the CLI read, the size, numbers that match its summary, the RL curve it was made
with, and — slow — that its checkpoints answer held-out scenes through the eval harness as
measured, and that MGPO RL from its base model raises the reward in a CI-sized run.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT

from mgpo.playground.release import Release

SHIPPED = ROOT / "examples" / "playground"
LATE_MGPO_20 = 1.00   # measured: the late checkpoint on the first 20 held-out test scenes (card: 0.995 on 200)


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


@pytest.fixture(scope="module")
def release() -> Release:
    return Release.load(SHIPPED)


def test_the_release_has_the_layout_the_app_reads_and_fits_the_size_budget(release):
    assert [c.name for c in release.checkpoints] == ["before RL", "early", "middle", "late"]
    assert release.default == "late" and release.checkpoints[0].adapter is None
    steps = [c.step for c in release.checkpoints]
    assert steps == sorted(steps) and steps[0] == 0
    weights = sum(p.stat().st_size for p in SHIPPED.rglob("*.safetensors"))
    assert weights <= 25 * 2**20
    assert release.curves is not None and release.metrics is not None


def test_the_card_reports_the_summarys_numbers(release):
    summary = release.summary
    card = (SHIPPED / "README.md").read_text()
    for when in ("before", "after"):
        for mode in ("direct", "mgpo"):
            s = summary[when][mode]
            assert f"| {when} RL | {mode} | {s['accuracy']:.3f} | {s['valid_box_ratio']:.3f} |" in card
    assert "binary accuracy reward only" in card
    # the card tells how the base was made, the continuations included, and never trained the task's question
    assert card.count("Then continued from that checkpoint") == 8 and "Never the task's question" in card
    # … and says that its `ask`/`where` wordings were MGPO's turn-1 template with the card's box as the target
    assert card.count("MGPO's turn-1 template itself") == 9
    recipe = json.loads((SHIPPED / "recipe.json").read_text())
    assert recipe["size"] == "cpu"
    rows = [json.loads(line) for line in (SHIPPED / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, recipe["rl_steps"] + 1))


def test_the_card_reports_the_rl_curve_and_the_after_rl_scores_hold(release):
    """The shipped RL curve (rollouts on training scenes) is the one in the card, whole; after RL the
    boxes stay valid, every covering box is read right, and held-out accuracy is no lower than
    before RL (measured: 0.965 -> 0.995, covering boxes 190 -> 199 of 200)."""
    curve = release.summary["rl_curve"]
    card = (SHIPPED / "README.md").read_text()
    assert "- reward: " + " ".join(f"{r['reward']:.2f}" for r in curve) in card
    after, before = release.summary["after"]["mgpo"], release.summary["before"]["mgpo"]
    assert min(after["valid_box_ratio"], before["valid_box_ratio"]) >= 0.95
    assert after["accuracy_after_hit"] == before["accuracy_after_hit"] == 1.0
    assert after["n"] == before["n"] == 200
    assert after["accuracy"] >= before["accuracy"] and after["hits"] >= before["hits"]
    assert release.summary["after"]["direct"]["accuracy"] <= 0.4                 # the detail needs the zoom


@pytest.mark.slow
def test_the_checkpoints_answer_held_out_scenes_as_measured(tmp_path, release):
    """The eval harness on held-out test scenes, as the README's command runs it."""
    from mgpo.eval.__main__ import main as eval_main

    def run(checkpoint: str, mode: str) -> dict:
        out = tmp_path / f"{checkpoint}-{mode}"
        assert eval_main(["--benchmark", "playground", "--limit", "20", "--model", str(SHIPPED),
                          "--checkpoint", checkpoint, "--mode", mode, "--out", str(out), "--no-progress"]) == 0
        return json.loads((out / "results.json").read_text())

    late = run("late", "mgpo")
    # the first 20 of the card's 200 test scenes: LATE_MGPO_20 right when it was measured (greedy)
    assert late["scores"]["overall"] >= LATE_MGPO_20 - 0.1 and late["behaviour"]["valid_box_ratio"] >= 0.95
    assert late["grounding"]["accuracy_after_hit"] == 1.0
    assert run("late", "direct")["scores"]["overall"] <= 0.4       # the detail needs the zoom


@pytest.mark.slow
def test_mgpo_rl_from_the_shipped_base_raises_the_reward_on_its_scenes(tmp_path):
    """The CPU recipe's RL stage, CI-sized (about 1.5 minutes on 2 cores): from the shipped
    base-skills model, 16 MGPO steps on the same 8 "train" scenes each step (8 prompts × 4 samples),
    temperature 1.0, lr 2e-3, the accuracy reward only. The base already answers most of them (it
    scores 0.965 held-out), so the room is small, but the reward rises, the valid boxes with it, and
    the rollouts' IoU with the hidden box that never reaches the reward (measured: reward
    0.86 → 0.95, valid boxes 0.95 → 1.00, IoU 0.85 → 0.95, first four steps against the last four;
    with 4 of the 8 scenes drawn a step, which scenes a step draws moves the reward more than RL)."""
    from train.playground.recipe import main

    out = tmp_path / "pg"
    shutil.copytree(SHIPPED / "model", out / "base")
    assert main(["--out", str(out), "--size", "cpu", "--stages", "rl", "--rl-steps", "16", "--rl-scenes", "8",
                 "--prompts-per-step", "8", "--group-size", "4", "--rl-lr", "2e-3", "--rl-schedule", "constant",
                 "--rl-temperature", "1.0", "--workers", "0"]) == 0
    curve = json.loads((out / "summary.json").read_text())["rl_curve"]
    assert len(curve) == 16 and all(0.0 <= r["reward"] <= 1.0 for r in curve)
    assert _mean(curve[-4:], "reward") >= _mean(curve[:4], "reward") + 0.05
    assert _mean(curve[-4:], "iou") > _mean(curve[:4], "iou")
    assert _mean(curve[-4:], "hit") > _mean(curve[:4], "hit")            # more boxes on the card (IoU ≥ 0.5)
    assert _mean(curve[-4:], "valid_box") >= max(0.95, _mean(curve[:4], "valid_box"))

"""The shipped playground release (``examples/playground``): the trained model itself.

These load the real weights the repository ships and check what its card promises: the layout
the app and the CLI read, the size, numbers that match its summary, and — slow — that the late
checkpoint answers held-out scenes through the eval harness as measured, that MGPO RL from its
base model raises reward and valid-box ratio within a CI-sized run, and that the app serves it.
"""

from __future__ import annotations

import json
import shutil

import pytest

from mgpo.playground.release import DEFAULT_RELEASE, Release

SHIPPED = DEFAULT_RELEASE


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


def test_the_card_reports_the_summarys_numbers_and_rl_helped(release):
    summary = release.summary
    card = (SHIPPED / "README.md").read_text()
    for when in ("before", "after"):
        for mode in ("direct", "mgpo"):
            s = summary[when][mode]
            assert f"| {when} RL | {mode} | {s['accuracy']:.3f} | {s['valid_box_ratio']:.3f} |" in card
    assert summary["after"]["mgpo"]["accuracy"] > summary["before"]["mgpo"]["accuracy"]
    assert "binary accuracy reward only" in card
    recipe = json.loads((SHIPPED / "recipe.json").read_text())
    assert recipe["size"] == "cpu"
    # every RL step of the curve is in the shipped metrics
    rows = [json.loads(line) for line in (SHIPPED / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, recipe["rl_steps"] + 1))


@pytest.mark.slow
def test_the_late_checkpoint_answers_held_out_scenes_as_measured(tmp_path):
    """The eval harness on held-out test scenes, as the README's command runs it."""
    from mgpo.eval.__main__ import main as eval_main

    def run(checkpoint: str, mode: str) -> dict:
        out = tmp_path / f"{checkpoint}-{mode}"
        assert eval_main(["--benchmark", "playground", "--limit", "16", "--model", str(SHIPPED),
                          "--checkpoint", checkpoint, "--mode", mode, "--out", str(out), "--no-progress"]) == 0
        return json.loads((out / "results.json").read_text())

    late = run("late", "mgpo")
    before = run("before RL", "mgpo")
    assert late["scores"]["overall"] >= 0.75 and late["behaviour"]["valid_box_ratio"] >= 0.9
    assert late["scores"]["overall"] > before["scores"]["overall"]
    assert run("late", "direct")["scores"]["overall"] <= 0.4       # the detail needs the zoom


@pytest.mark.slow
def test_mgpo_rl_from_the_shipped_base_raises_reward_and_valid_boxes(tmp_path):
    """The CPU recipe's RL stage, CI-sized: from the shipped base-skills model, a few MGPO steps
    on fresh "train" scenes with the accuracy reward only."""
    from train import playground as pg

    out = tmp_path / "pg"
    shutil.copytree(SHIPPED / "model", out / "base")
    assert pg.main(["--out", str(out), "--size", "cpu", "--stages", "rl", "--rl-steps", "10",
                    "--rl-scenes", "40", "--workers", "0"]) == 0
    curve = json.loads((out / "summary.json").read_text())["rl_curve"]
    assert len(curve) == 10
    first, last = curve[:4], curve[-4:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)   # noqa: E731
    assert mean(last, "reward") > mean(first, "reward")
    assert mean(last, "valid_box") >= mean(first, "valid_box")

"""The shipped playground release (``examples/playground``): the trained model itself.

These load the real weights the repository ships and check what its card promises: the layout
the app and the CLI read, the size, numbers that match its summary and meet the playground's
targets, the RL curve it was made with, and — slow — that its checkpoints answer held-out scenes
through the eval harness as measured, and that MGPO RL from its base model raises the rate of
boxes on the card in a CI-sized run.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT

from mgpo.playground.release import Release

SHIPPED = ROOT / "examples" / "playground"
# measured on the first 20 held-out test scenes (the card: 0.945 late, 0.255 before RL, on 200)
LATE_MGPO_20 = 0.95
BEFORE_MGPO_20 = 0.20
RL_STEPS = 8           # the slow RL test's steps


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


@pytest.fixture(scope="module")
def release() -> Release:
    return Release.load(SHIPPED)


def test_the_release_has_the_layout_the_app_reads_and_fits_the_size_budget(release):
    assert [c.name for c in release.checkpoints] == ["before RL", "early", "quarter", "middle", "three quarters", "late"]
    assert release.default == "late" and release.checkpoints[0].adapter is None
    steps = [c.step for c in release.checkpoints]
    assert steps == sorted(steps) and steps[0] == 0
    weights = sum(p.stat().st_size for p in SHIPPED.rglob("*.safetensors"))
    assert weights <= 25 * 10**6
    from safetensors import safe_open

    for c in release.checkpoints[1:]:                 # the adapters are stored in float16 (the size budget)
        with safe_open(str(c.adapter / "adapter_model.safetensors"), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    assert release.curves is not None and release.metrics is not None


def test_the_card_reports_the_summarys_numbers(release):
    summary = release.summary
    card = (SHIPPED / "README.md").read_text()
    for when in ("before", "after"):
        for mode in ("direct", "mgpo"):
            s = summary[when][mode]
            assert f"| {when} RL | {mode} | {s['accuracy']:.3f} | {s['valid_box_ratio']:.3f} |" in card
    assert "binary accuracy reward only" in card
    # the card tells how the base was made, the continuations included: every run's templates with their
    # system prompts and targets, and never a box as the target of MGPO's turn-1 template or the task's question
    assert card.count("Then continued from that checkpoint") == 2
    assert card.count("never a box as the target of MGPO's turn-1 template") == 3
    assert card.count("| skill | system prompt (one drawn per example) | prompt template | target |") == 3
    assert "MGPO's turn-1 template itself" not in card and "| ask |" not in card
    assert "the chat template's default (7 in 8) or MGPO's (1 in 8)" in card
    recipe = json.loads((SHIPPED / "recipe.json").read_text())
    assert recipe["size"] == "cpu"
    rows = [json.loads(line) for line in (SHIPPED / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, recipe["rl_steps"] + 1))


def test_the_card_reports_the_rl_curve_and_the_release_meets_the_playground_targets(release):
    """The shipped RL curve (rollouts on training scenes) is the one in the card, whole, and the
    summary's held-out numbers meet the targets RL was run for (200 TEST scenes, the checkpoint
    chosen on VAL): before RL MGPO accuracy ≤ 0.50; after ≥ 0.92 with ≥ 95 % valid boxes and ≥ 90 %
    on the card; direct answers ≤ 0.40 at every checkpoint; accuracy, valid boxes and hits higher at
    the last checkpoint than at the first and the base (measured: 0.255 -> 0.945, boxes on the card
    31 -> 199 of 200)."""
    curve = release.summary["rl_curve"]
    card = (SHIPPED / "README.md").read_text()
    assert "- reward: " + " ".join(f"{r['reward']:.2f}" for r in curve) in card
    after, before = release.summary["after"]["mgpo"], release.summary["before"]["mgpo"]
    assert after["n"] == before["n"] == 200
    assert before["accuracy"] <= 0.50
    assert after["accuracy"] >= 0.92 and after["valid_box_ratio"] >= 0.95 and after["hits"] >= 0.90 * after["n"]
    rows = release.summary["checkpoints"]
    assert len(rows) == 6 and [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert all(r["test"]["direct"]["accuracy"] <= 0.40 for r in rows)      # the detail needs the zoom
    for key in ("accuracy", "valid_box_ratio", "hits"):
        series = [r["test"]["mgpo"][key] for r in rows]
        assert series[-1] > series[1] > series[0], key
    # the release's default is the checkpoint chosen on VAL: the best VAL accuracy, then hits, then the later step
    chosen = max(rows, key=lambda r: (r["val"]["mgpo"]["accuracy"], r["val"]["mgpo"]["hits"], r["step"]))
    assert release.summary["selected"] == chosen["name"] == release.default


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
    assert run("late", "direct")["scores"]["overall"] <= 0.4       # the detail needs the zoom
    before = run("before RL", "mgpo")                               # the base mostly answers from the overview
    assert before["scores"]["overall"] <= min(0.5, BEFORE_MGPO_20 + 0.1)
    assert before["behaviour"]["valid_box_ratio"] < late["behaviour"]["valid_box_ratio"]


@pytest.mark.slow
def test_mgpo_rl_from_the_shipped_base_raises_the_boxes_on_the_card(tmp_path):
    """The CPU recipe's RL stage, CI-sized: from the shipped base-skills model, eight MGPO steps on
    the same 8 "train" scenes each step (8 prompts × 4 samples), temperature 1.0, the accuracy reward
    only, LoRA on the language model and the tower as the recipe trains it. The base boxes the card in
    about a quarter of its turn-1 samples and otherwise answers from the overview; the reward alone
    raises the share of valid boxes and of boxes on the card (IoU ≥ 0.5 with the hidden box, which
    never reaches the reward), and the reward with them (measured, steps 1-3 against 6-8: valid boxes
    0.17 -> 0.98, boxes on the card 0.14 -> 0.81, reward 0.30 -> 0.78)."""
    from train.playground.recipe import main

    out = tmp_path / "pg"
    shutil.copytree(SHIPPED / "model", out / "base")
    assert main(["--out", str(out), "--size", "cpu", "--stages", "rl", "--rl-steps", str(RL_STEPS), "--rl-scenes", "8",
                 "--prompts-per-step", "8", "--group-size", "4", "--rl-lr", "2e-3", "--rl-schedule", "constant",
                 "--rl-temperature", "1.0", "--workers", "0"]) == 0
    curve = json.loads((out / "summary.json").read_text())["rl_curve"]
    assert len(curve) == RL_STEPS and all(0.0 <= r["reward"] <= 1.0 for r in curve)
    first, last = curve[:3], curve[-3:]
    assert _mean(first, "valid_box") <= 0.6                            # the base boxes a minority of samples
    assert _mean(last, "hit") >= _mean(first, "hit") + 0.25            # more boxes on the card (IoU ≥ 0.5)
    assert _mean(last, "valid_box") >= _mean(first, "valid_box") + 0.25
    assert _mean(last, "reward") > _mean(first, "reward")

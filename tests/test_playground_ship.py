"""train.playground's ship stage: the release folder the app's Playground tab, the CLI and the
evaluator load, written from a recipe's output (base, RL snapshots, metrics, summary)."""

from __future__ import annotations

import json

import pytest
import torch

from train.playground import cards, recipe, rl, settings


def _recipe_out(tmp_path, fake_release, steps):
    """A recipe output folder as the stages leave it: base model, RL snapshots, metrics."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(fake_release / "model", out / "base")
    for step in rl.snapshot_steps(steps):
        shutil.copytree(fake_release / "adapters" / "step-0010", out / "rl" / "snapshots" / f"step-{step:04d}")
    rows = [{"step": s, "reward": s / steps, "valid_box": 0.5, "iou": 0.25} for s in range(1, steps + 1)]
    (out / "rl" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_ship_writes_a_release_the_tab_the_cli_and_the_evaluator_load(tmp_path, fake_release, capsys):
    from mgpo import infer
    from mgpo.eval.__main__ import main as eval_main
    from mgpo.playground.release import Release, resolve
    from mgpo.playground.world import Budgets, make_scene, split_seeds

    cfg = settings.RecipeConfig(rl_steps=10)
    out = _recipe_out(tmp_path, fake_release, 10)
    (out / "base" / "README.md").write_text(cards.base_card(settings.RecipeConfig(curriculum="cell:600:2e-3"), [{"loss": 0.5}]))
    after = {"accuracy": 0.75, "valid_box_ratio": 1.0, "n": 4, "hits": 3, "accuracy_after_hit": 1.0}
    ev = lambda acc: {"val": {"mgpo": {"accuracy": acc, "n": 2, "hits": 1}},   # noqa: E731
                      "test": {"mgpo": after, "direct": {"accuracy": 0.25, "n": 4}}}
    summary = {"before": {"mgpo": {"accuracy": 0.25, "valid_box_ratio": 0.5, "n": 4}}, "after": {"mgpo": after},
               "rl_curve": [{"step": 1, "reward": 0.5, "valid_box": 1.0, "hit": 0.5}],
               "checkpoints": [{"name": "before RL", "step": 0, **ev(0.5)}, {"name": "middle", "step": 5, **ev(1.0)}],
               "selected": "middle"}
    rel = Release.load(recipe.ship(cfg, out, tmp_path / "release", summary))
    assert [(c.name, c.step) for c in rel.checkpoints] == [
        ("before RL", 0), ("early", 1), ("quarter", 2), ("middle", 5), ("three quarters", 8), ("late", 10)]
    # the default is the checkpoint the eval stage chose on VAL scenes
    assert rel.default == "middle" and rel.checkpoints[0].adapter is None
    assert rel.curves is not None and rel.summary["after"]["mgpo"]["accuracy"] == 0.75
    card = (rel.folder / "README.md").read_text()
    assert "binary accuracy reward only" in card and "| after RL | mgpo | 0.750 | 1.000 | – | 3 | 1.000 |" in card
    assert "| middle **(chosen on VAL)** | 5 | 1.000 (2) | 0.750 | 1.000 | 3 of 4 | 0.250 (4) |" in card
    assert "boxes on the target, IoU ≥ 0.5 (analysis only): 0.500" in card
    # the card says what the skills stage trained (the same words as the base checkpoint's card) and
    # how to run the release through the CLI's own release reader
    story = cards.base_story(out / "base")      # the base checkpoint's own card
    assert "cell for 600 steps" in story and story in card
    # the release's model keeps that card: `--skills-from RELEASE/model` continues with its story
    assert cards.base_story(rel.model) == story
    assert "--model RELEASE --checkpoint late" in card
    assert not (tmp_path / "release.tmp").exists()
    # the adapters are stored in float16 (the size budget) and load into the float32 base as float32
    from safetensors.torch import load_file

    from mgpo.model import load_model

    src = load_file(str(out / "rl" / "snapshots" / "step-0005" / "adapter_model.safetensors"))
    half = load_file(str(rel.folder / "adapters" / "step-0005" / "adapter_model.safetensors"))
    assert set(half) == set(src) and {v.dtype for v in src.values()} == {torch.float32}
    assert {v.dtype for v in half.values()} == {torch.float16}
    assert all(torch.equal(half[k], src[k].half()) for k in src)
    net = load_model(str(rel.model), adapter=str(rel.folder / "adapters" / "step-0005"), device="cpu").model
    lora = {n: p for n, p in net.named_parameters() if "lora_" in n}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    key = next(k for k in src if "lora_B" in k)
    loaded = next(p for n, p in lora.items() if n.replace(".default", "") == key)
    assert torch.equal(loaded, half[key].float())
    # --model RELEASE: its model, its default (or named) checkpoint, its pixel budgets
    model, adapter, budgets = resolve(rel.folder, "quarter")
    assert model == str(rel.model) and adapter.endswith("step-0002") and budgets == Budgets().engine()
    scene = make_scene(split_seeds("test", 1)[0])
    png = tmp_path / "scene.png"
    scene.image.save(png)
    assert infer.main(["--model", str(rel.folder), "--image", str(png), "--question", scene.question,
                       "--choices", *scene.choices, "--json", "--max-new-tokens", "8"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["type"] == "turn_started" and events[0]["image_size"] == [224, 224]
    assert infer.main(["--model", str(rel.folder), "--checkpoint", "nope", "--image", str(png),
                       "--question", "q"]) == 3
    assert "no checkpoint 'nope'" in capsys.readouterr().err
    assert infer.main(["--model", str(rel.model), "--checkpoint", "early", "--image", str(png),
                       "--question", "q"]) == 2
    assert eval_main(["--benchmark", "playground", "--limit", "1", "--model", str(rel.folder), "--checkpoint", "middle",
                      "--max-new-tokens", "8", "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["protocol"]["adapter"].endswith("step-0005")
    assert results["protocol"]["max_pixels"] == Budgets().engine()["max_pixels"]


def test_ship_refuses_a_run_without_a_base_model(tmp_path):
    with pytest.raises(ValueError, match="no base-skills checkpoint"):
        recipe.ship(settings.RecipeConfig(), tmp_path / "empty", tmp_path / "release", {})

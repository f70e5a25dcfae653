"""The playground world drawn for a 280² overview (``Budgets.for_overview``): the same cards,
stripes and clutter on a larger scene, board slots whose coordinates begin with four different
digits, and that geometry carried by the benchmark, the recipe, a release and the app's service."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from mgpo import geometry
from mgpo.eval import open_benchmark
from mgpo.eval.__main__ import main as eval_cli
from mgpo.eval.datasets import DataError
from mgpo.playground import legibility
from mgpo.playground.release import Release, ReleaseError, apply_to_args, resolve
from mgpo.playground.world import Budgets, main as world_cli, make_layout, make_scene, split_seeds
from mgpo.service import PlaygroundModel
from train.playground import rl, settings

WIDE = Budgets.for_overview(280)


def test_the_280_world_draws_the_same_things_on_a_larger_scene():
    assert (WIDE.scene, WIDE.overview, WIDE.engine()) == (2560, 280, {"min_pixels": 112 * 112, "max_pixels": 280 * 280})
    assert Budgets.for_overview(224) == Budgets() and Budgets().scene == 2048 and Budgets().overview == 224
    with pytest.raises(ValueError, match="224 or 280"):
        Budgets.for_overview(300)
    wide, small = make_scene(3, budgets=WIDE), make_scene(3)
    assert wide.image.size == (2560, 2560) and wide.image.tobytes() != small.image.resize((2560, 2560)).tobytes()
    overview = geometry.prepare(wide.image, None, **WIDE.engine())
    assert overview.frame == (280, 280) and overview.visual_tokens == 100
    # a card, its stripes and the clutter's shapes are as big as in the 224 world: only the board grew
    assert wide.layout.scale == small.layout.scale == 1.0 and wide.layout.period == small.layout.period == 8
    assert wide.box[2] - wide.box[0] == small.box[2] - small.box[0] == 384
    assert make_scene(3, size=1280, budgets=WIDE).layout.scale == 0.5     # an explicit size still scales


def test_the_board_slots_of_the_280_world_start_with_four_different_digits():
    firsts = {}
    for side in (224, 280):
        b = Budgets.for_overview(side)
        starts = set()
        for seed in split_seeds("val", 60):
            x1, y1, x2, y2 = (round(v * side / b.scene) for v in make_layout(seed, budgets=b).cards[0].box)
            assert x2 - x1 == y2 - y1 == 42
            starts |= {x1, y1}
        firsts[side] = sorted(starts)
    assert firsts == {224: [0, 56, 112, 168], 280: [0, 70, 140, 210]}
    # what the 280 world is for: a coordinate's first digit (its first token) decides the row or column
    assert len({str(v)[0] for v in firsts[280]}) == 4 and len({str(v)[0] for v in firsts[224]}) == 3
    scene = make_scene(split_seeds("test", 1, 3)[0], budgets=WIDE)
    assert scene.cell() == (scene.box[1] // 640 + 1, scene.box[0] // 640 + 1)


def test_the_280_world_keeps_the_zoom_property():
    res = legibility.summary(split_seeds("test", 30), WIDE)
    ov, cr = res["overview"], res["crop"]
    assert ov["match_rate"] <= 0.45 and cr["match_rate"] >= 0.96     # 35 % / 100 % on the first 100 test scenes
    assert cr["min_separation"] > ov["max_separation"]


def test_the_benchmark_and_the_world_cli_draw_the_asked_geometry(tmp_path, capsys):
    bench = open_benchmark("playground", seed=2, limit=1, overview=280)
    item = next(iter(bench.items()))
    assert item.image.size == (2560, 2560) and "2560² scenes for a 280² overview" in bench.variant
    assert item.gt_box == make_scene(item.meta["seed"], budgets=WIDE).box
    assert "overview" not in open_benchmark("playground", seed=2, limit=1).variant   # the default world's name is kept
    with pytest.raises(DataError, match="224 or 280"):
        open_benchmark("playground", limit=1, overview=300)
    assert world_cli(["--seed", "3", "--overview", "280", "--out", str(tmp_path / "s.png")]) == 0
    assert "overview (280, 280) (100 tokens)" in capsys.readouterr().out


def test_the_recipe_renders_and_checks_its_geometry(tmp_path):
    cfg = settings.RecipeConfig.for_size("ci", overview=280)
    assert cfg.budgets() == WIDE
    rec = json.loads(rl.write_rl_data(tmp_path, 1, budgets=cfg.budgets()).read_text())
    from PIL import Image

    with Image.open(tmp_path / rec["image"]) as im:
        assert im.size == (2560, 2560)
    assert rl.rl_config(cfg, tmp_path / "b", tmp_path / "d.jsonl", tmp_path / "rl").max_pixels == 280 * 280
    with pytest.raises(ValueError, match="overview must be one of 224, 280"):
        settings.RecipeConfig.for_size("ci", overview=256).check()


def test_a_release_carries_its_world_to_the_evaluator_and_the_app(tmp_path, fake_release, capsys):
    assert Release.load(fake_release).overview == 224                  # written by write_index's default
    wide = tmp_path / "wide"
    shutil.copytree(fake_release, wide)
    index = json.loads((wide / "checkpoints.json").read_text())
    (wide / "checkpoints.json").write_text(json.dumps({**index, "overview": 280}))
    release = Release.load(wide)
    assert release.overview == 280 and release.budgets() == WIDE
    assert resolve(wide)[2] == {"min_pixels": 112 * 112, "max_pixels": 280 * 280}
    args = argparse.Namespace(model=str(wide), checkpoint="early", adapter=None, min_pixels=None, max_pixels=None,
                              overview=None)
    apply_to_args(args)
    assert (args.overview, args.max_pixels) == (280, 280 * 280) and args.adapter.endswith("step-0010")
    pg = PlaygroundModel(release)
    assert pg.scene(5).image.size == (2560, 2560) and pg.config().max_pixels == 280 * 280
    assert PlaygroundModel(Release.load(fake_release)).scene(5).image.size == (2048, 2048)
    # the evaluator scores a release in its own world unless told otherwise
    out = tmp_path / "ev"
    assert eval_cli(["--benchmark", "playground", "--limit", "1", "--model", str(wide), "--out", str(out),
                     "--max-new-tokens", "8", "--no-progress", "--device", "cpu", "--no-crop-only"]) == 0
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    assert protocol["max_pixels"] == 280 * 280 and "280² overview" in protocol["variant"]
    (wide / "checkpoints.json").write_text(json.dumps({**index, "overview": 300}))
    with pytest.raises(ReleaseError, match="overview"):
        Release.load(wide)
    capsys.readouterr()

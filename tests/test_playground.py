"""The playground world, its legibility property, its splits, and the ``playground`` benchmark
through the eval harness (scripted engine and tiny model). The base-skill examples have their own
file (test_playground_skill_examples.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from mgpo import geometry
from mgpo.engine import Engine, EngineConfig
from mgpo.eval import EvalConfig, evaluate, open_benchmark
from mgpo.eval.__main__ import main as eval_cli
from mgpo.eval.datasets import DataError
from mgpo.eval.scoring import iou
from mgpo.playground import legibility
from mgpo.playground.draw import CARD_ALPHA, render, stripe_ink
from mgpo.playground.world import (N_CARDS, PATTERNS, SPLITS, Budgets, board_slot, main as world_cli,
                                   make_scene, split_of, split_seeds)
from mgpo.prompts import LETTERS
from mgpo.scripted import ScriptedBackend

BUDGETS = Budgets()
WHOLE = (0, 0, 2048, 2048)


# ----- the world ----------------------------------------------------------------------------------

def test_same_seed_same_scene_other_seed_other_scene():
    a, b, c = make_scene(11), make_scene(11), make_scene(12)
    assert a.image.tobytes() == b.image.tobytes()
    assert (a.question, a.choices, a.answer, a.box, a.detail) == (b.question, b.choices, b.answer, b.box, b.detail)
    assert a.image.tobytes() != c.image.tobytes()


def test_scene_sizes_and_fed_budgets():
    s = make_scene(3)
    assert s.image.size == (2048, 2048) and s.image.mode == "RGB"
    assert BUDGETS.engine() == {"min_pixels": 112 * 112, "max_pixels": 224 * 224}
    EngineConfig(**BUDGETS.engine())  # the budgets are engine settings
    overview = geometry.prepare(s.image, None, **BUDGETS.engine())
    crop = geometry.prepare(s.image, s.box, **BUDGETS.engine())
    assert overview.frame == (224, 224) and overview.visual_tokens == 64
    assert crop.frame == (224, 224)
    with pytest.raises(ValueError, match="size"):
        make_scene(0, size=500)


@pytest.mark.parametrize("seed", split_seeds("test", 20))
def test_question_target_and_box_agree(seed):
    s = make_scene(seed)
    x1, y1, x2, y2 = s.box
    assert 0 <= x1 < x2 <= 2048 and 0 <= y1 < y2 <= 2048
    assert s.name == f"{s.target.colour} card" and s.name in s.question
    assert s.choices == list(PATTERNS) and s.choices[LETTERS.index(s.answer)] == s.detail
    assert s.question == f"Which way do the stripes on the {s.name} run?"
    assert N_CARDS == (1, 1) and len(s.layout.cards) == 1      # the task: one small target in the clutter
    lx1, ly1, lx2, ly2 = s.target.label
    sx1, sy1, sx2, sy2 = s.target.stripes
    assert x1 < lx1 < sx1 < sx2 < lx2 < x2 and y1 < ly1 < sy1 < sy2 < ly2 < y2   # the detail lies inside the GT box
    px = np.asarray(s.image)
    # a strip of the card body: the card's shade over what lies under it (translucent, CARD_ALPHA)
    under = np.asarray(render(replace(s.layout, cards=())))[y1 + 30:y2 - 30, x1 + 30:x1 + 60].reshape(-1, 3).astype(int)
    body = px[y1 + 30:y2 - 30, x1 + 30:x1 + 60].reshape(-1, 3).astype(int)
    assert np.abs(body - (CARD_ALPHA * np.array(s.target.shade) + (1 - CARD_ALPHA) * under)).max() <= 1.5
    ink = px[sy1:sy2, sx1:sx2].min()
    assert ink <= 75                                         # the stripes are printed on the label
    # the box is a valid box in the overview's model frame, on the 14-px lattice
    frame_box = geometry.to_frame(s.box, (224, 224), WHOLE)
    assert all(abs(v / 14 - round(v / 14)) < 1e-9 for v in frame_box)
    assert geometry.is_valid_box(tuple(int(v) for v in frame_box), 224, 224)
    # the named colour belongs to one card only
    assert [c.colour for c in s.layout.cards].count(s.target.colour) == 1


def test_answers_are_spread_over_letters_and_colours():
    scenes = [make_scene(s) for s in split_seeds("val", 40)]
    assert len({s.answer for s in scenes}) == 4
    assert max(sum(s.answer == letter for s in scenes) for letter in LETTERS[:4]) <= 18
    assert len({s.target.colour for s in scenes}) >= 6


def test_stripes_run_the_named_way_and_carry_the_same_ink_whatever_their_way():
    period = 8
    ink = {p: stripe_ink(p, 64, 64, period) for p in PATTERNS}
    inner = (slice(period, -period), slice(period, -period))      # inside the faded edge
    h, v = ink["horizontal"][inner], ink["vertical"][inner]
    assert np.allclose(h, h[:, :1]) and not np.allclose(h, h[:1, :])       # constant along a row
    assert np.allclose(v, v[:1, :]) and not np.allclose(v, v[:, :1])       # constant down a column
    r, f = ink["rising diagonal"], ink["falling diagonal"]
    assert np.allclose(r[10, 20], r[11, 19]) and np.allclose(f[10, 20], f[11, 21])
    # sinusoidal and faded: the same ink in total for every way and width (no low-frequency cue)
    totals = [stripe_ink(p, 64 + extra, 64, period).sum() / (64 + extra) for p in PATTERNS for extra in (0, 3)]
    assert max(totals) - min(totals) < 0.02 * max(totals)
    assert ink["horizontal"].min() >= 0 and ink["horizontal"].max() <= 1
    with pytest.raises(ValueError, match="stripe pattern"):
        stripe_ink("zigzag", 8, 8, period)


def test_legibility_window_equals_the_engines_full_resize():
    for seed in split_seeds("test", 2, 40):
        scene = make_scene(seed)
        assert legibility.measure(scene) == legibility.measure(scene, exact=True)


def test_stripes_are_illegible_in_the_overview_and_legible_in_the_crop():
    seeds = split_seeds("test", 100)
    res = legibility.summary(seeds)
    ov, cr = res["overview"], res["crop"]
    # a template reader that knows the card design: not far above chance (25 %) on the overview (42 %
    # on the first 100 test scenes, 38 % on the next 200 — from differences of under one grey level;
    # v4's quarter-side label: 34 % / 33 %; hard-edged stripes gave it 65 % — see draw.stripe_ink) ...
    assert ov["match_rate"] <= 0.45
    # ... and right on (nearly) every crop
    assert cr["match_rate"] >= 0.96
    # the four candidates look further apart in the worst crop than in the best overview
    assert cr["min_separation"] > ov["max_separation"]
    assert cr["median_separation"] > 3 * ov["median_separation"]


# ----- splits -------------------------------------------------------------------------------------

def test_splits_are_disjoint_and_held_out():
    ranges = sorted(SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    train = set(split_seeds("train", 5000)) | set(split_seeds("skills", 5000))
    held = set(split_seeds("test", 5000)) | set(split_seeds("val", 5000))
    assert not train & held
    assert split_seeds("test", 3, 7) == [SPLITS["test"][0] + k for k in (7, 8, 9)]
    assert {split_of(s) for s in split_seeds("test", 10)} == {"test"}
    with pytest.raises(ValueError, match="cannot take"):
        split_seeds("val", 10, SPLITS["val"][1] - SPLITS["val"][0] - 5)
    with pytest.raises(ValueError, match="unknown split"):
        split_seeds("dev", 1)


# ----- the benchmark through the harness ----------------------------------------------------------

BOX = '```json\n[\n    {"bbox_2d": [%d, %d, %d, %d], "label": "key image area"}\n]\n```'


def _far_box(box):
    """A valid 42-px box in the overview corner farthest from ``box`` (no overlap)."""
    x = 0 if box[0] >= 112 else 182
    y = 0 if box[1] >= 112 else 182
    return x, y, x + 42, y + 42


def test_playground_benchmark_scores_accuracy_and_iou_exactly(tmp_path):
    scenes = [make_scene(s) for s in split_seeds("test", 6)]
    true_box = [tuple(int(v) for v in geometry.to_frame(s.box, (224, 224), WHOLE)) for s in scenes]

    def shifted(b):   # half a card sideways: IoU exactly 1/3
        dx = 21 if b[2] + 21 <= 224 else -21
        return b[0] + dx, b[1], b[2] + dx, b[3]

    plan = [  # (turn-1 reply, final is right?)
        (BOX % true_box[0], True),
        (BOX % true_box[1], False),
        (BOX % shifted(true_box[2]), True),
        ("I cannot tell where to look.", True),
        (BOX % (0, 0, 10, 10), False),
        (BOX % _far_box(true_box[5]), False),
    ]
    crop_right = [True, False, True, False]    # the crop-only re-asks, in order of valid boxes

    def letter(k, right):
        a = scenes[k].answer
        return a if right else LETTERS[(LETTERS.index(a) + 1) % 4]

    def reply(sample, turn, message):
        text = "".join(c.get("text", "") for c in message["content"])
        if "And put the" in text:                      # crop-only re-ask (direct prompt)
            boxed = [0, 1, 2, 5][sample]
            return f"\\boxed{{{letter(boxed, crop_right[sample])}}}"
        if turn == 1:
            return plan[sample][0]
        return f"So the answer is \\boxed{{{letter(sample, plan[sample][1])}}}"

    engine = Engine(ScriptedBackend(reply), EngineConfig(**BUDGETS.engine()), name="scripted")
    bench = open_benchmark("playground", seed=0, limit=6)
    cfg = EvalConfig.of(benchmark="playground", out=str(tmp_path / "out"), limit=6, batch_size=6, **BUDGETS.engine())
    res = evaluate(engine, bench, cfg, progress=False)

    assert res["scores"]["n"] == 6 and res["scores"]["accuracy"] == pytest.approx(3 / 6)
    assert res["behaviour"]["valid_box_ratio"] == pytest.approx(4 / 6)
    g = res["grounding"]
    assert (g["n"], g["n_boxed"]) == (6, 4)
    assert g["mean_iou"] == pytest.approx((1 + 1 + 1 / 3 + 0) / 4)
    assert g["mean_iou_all"] == pytest.approx((1 + 1 + 1 / 3) / 6)
    assert g["hit_rate"] == pytest.approx(2 / 6) and g["hits"] == 2
    assert g["accuracy_after_hit"] == pytest.approx(1 / 2)      # items 0 (right) and 1 (wrong)
    assert g["accuracy_after_miss"] == pytest.approx(2 / 4)     # items 2, 3 right; 4, 5 wrong
    assert res["crop_only"]["accuracy"] == pytest.approx(2 / 4) and res["crop_only"]["accuracy_all"] == pytest.approx(2 / 6)
    rows = [json.loads(ln) for ln in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"scene-{s.seed}" for s in scenes]
    assert [tuple(r["gt_box"]) for r in rows] == [s.box for s in scenes]
    assert res["protocol"]["variant"].endswith(f"from seed {SPLITS['test'][0]}")
    assert "mean IoU with the hidden box" in (tmp_path / "out" / "results.md").read_text()
    # accuracy per board slot of the card: where grounding mistakes sit
    assert [r["meta"]["slot"] for r in rows] == ["row {}, column {}".format(*s.cell()) for s in scenes]
    slots = res["scores"]["tables"]["slot"]
    assert sum(t["n"] for t in slots.values()) == 6 and sum(t["correct"] for t in slots.values()) == 3
    assert all(sum(r["correct"] for r in rows if r["meta"]["slot"] == k) == t["correct"] for k, t in slots.items())
    # hits per slot, and the slot each miss's box went to instead (its centre's; no box for 3 and 4)
    name = "row {}, column {}".format
    assert [board_slot(b, (224, 224)) for b in true_box] == [s.cell() for s in scenes]
    went = {2: name(*board_slot(shifted(true_box[2]), (224, 224))), 3: "no box", 4: "no box",
            5: name(*board_slot(_far_box(true_box[5]), (224, 224)))}
    assert went[5] != rows[5]["meta"]["slot"]
    expected: dict[str, dict] = {}
    for k, r in enumerate(rows):
        e = expected.setdefault(r["meta"]["slot"], {"n": 0, "hits": 0, "missed_to": {}})
        e["n"] += 1
        e["hits"] += k in (0, 1)
        if k in went:
            e["missed_to"][went[k]] = e["missed_to"].get(went[k], 0) + 1
    assert g["slots"] == expected
    report = (tmp_path / "out" / "results.md").read_text()
    assert "| slot | n | hits | misses boxed in |" in report
    e = expected[rows[5]["meta"]["slot"]]
    assert f"| {rows[5]['meta']['slot']} | {e['n']} | {e['hits']} | " in report and f"{went[5]} (" in report
    # the crop the model got is the card itself when the box was right
    crops = [m for _, m in engine.backend.messages if "sub-image" in "".join(c.get("text", "") for c in m["content"])]
    assert crops and all(c["image"].size == (224, 224) for m in crops for c in m["content"] if c["type"] == "image")


def test_playground_benchmark_selects_test_seeds_and_refuses_bad_requests():
    bench = open_benchmark("playground", seed=5, limit=2)
    items = list(bench.items())
    assert [it.meta["seed"] for it in items] == split_seeds("test", 2, 5) and bench.total == 2
    assert items[0].gt_box == make_scene(items[0].meta["seed"]).box
    with pytest.raises(DataError, match="do not pass --data"):
        open_benchmark("playground", "somewhere")
    with pytest.raises(DataError, match="cannot take"):
        open_benchmark("playground", seed=10**9, limit=1)
    with pytest.raises(DataError, match="needs --data"):
        open_benchmark("vstar")
    val = open_benchmark("playground", seed=0, limit=2, split="val")
    assert [it.meta["seed"] for it in val.items()] == split_seeds("val", 2) and " val scenes " in val.variant
    with pytest.raises(DataError, match="test or val"):
        open_benchmark("playground", limit=1, split="train")   # RL's own scenes are not an evaluation


def test_playground_cli_with_the_tiny_model(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "pg"
    code = eval_cli(["--benchmark", "playground", "--seed", "2", "--limit", "2", "--model", str(tiny_model_dir),
                     "--out", str(out), "--max-new-tokens", "12", "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    p = res["protocol"]
    assert (p["benchmark"], p["min_pixels"], p["max_pixels"]) == ("playground", 112 * 112, 224 * 224)
    assert res["grounding"]["n"] == 2 and res["scores"]["n"] == 2
    rows = [json.loads(ln) for ln in (out / "items.jsonl").read_text().splitlines()]
    assert [r["meta"]["seed"] for r in rows] == split_seeds("test", 2, 2)
    assert eval_cli(["--benchmark", "playground", "--data", "x", "--out", str(tmp_path / "o")]) == 2
    assert eval_cli(["--benchmark", "vstar", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "do not pass --data" in err and "needs --data" in err and "Traceback" not in err


def test_world_cli_writes_scene_overview_and_crop(tmp_path, capsys):
    assert world_cli(["--seed", "3", "--split", "test", "--out", str(tmp_path / "s.png")]) == 0
    for name in ("s.png", "s.overview.png", "s.crop.png"):
        assert (tmp_path / name).is_file()
    assert "Which way do the stripes on the" in capsys.readouterr().out
    assert world_cli(["--size", "100", "--out", str(tmp_path / "t.png")]) == 2


def test_iou_is_plain_box_overlap():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 0, 10), (0, 0, 10, 10)) == 0.0


def test_cards_sit_in_distinct_board_slots_and_free_placement_still_works():
    from mgpo.playground.world import GRID, make_layout

    for seed in split_seeds("val", 20):
        layout = make_layout(seed, n_cards=(4, 7))
        slots = {(c.box[0] * GRID // layout.size, c.box[1] * GRID // layout.size) for c in layout.cards}
        assert len(slots) == len(layout.cards) >= 4 and layout.grid == GRID
        assert len({c.colour for c in layout.cards}) == len(layout.cards)
        free = make_layout(seed, grid=0, n_cards=(4, 7))
        assert free.grid == 0 and len(free.cards) >= 4
    with pytest.raises(ValueError, match="cannot hold"):
        make_layout(1, grid=2, n_cards=(5, 5))

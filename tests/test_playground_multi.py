"""Scenes with several cards, the question naming one, and MGPO with three turns: the benchmark's
scenes, the scores of the answer's box (boxes on another card counted), the release that says
its cards and turns, the CLI and app that follow it, and the recipe that trains and ships one."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from conftest import BOX_TEXT
from mgpo.engine import Engine
from mgpo.eval.datasets import DataError, open_benchmark
from mgpo.eval.scoring import grounding_scores, iou
from mgpo.playground.release import Release, ReleaseError, apply_to_args, write_index
from mgpo.scripted import ScriptedBackend

FRAME = 224                       # a 2048² scene's overview model frame under the playground budgets


def test_benchmark_scenes_with_several_cards_name_one_and_list_the_others():
    bench = open_benchmark("playground", seed=4, limit=3, cards=3)
    assert "3 cards a scene" in bench.variant
    items = list(bench.items())
    for it in items:
        others = it.meta["other_boxes"]
        assert len(others) == 2 and all(iou(o, it.gt_box) == 0.0 for o in others)   # three cards in three slots
        assert f"the {it.meta['category']} card" in it.question
    # the default world is one card: its scenes and its name stay as they were
    one = open_benchmark("playground", seed=4, limit=1)
    assert "cards" not in one.variant and "other_boxes" not in next(one.items()).meta
    for bad in (9, 0):
        with pytest.raises(DataError, match="from 1 to 8"):
            open_benchmark("playground", limit=1, cards=bad)


def test_the_world_cli_draws_a_scene_of_several_cards(tmp_path, capsys):
    from PIL import Image

    from mgpo.playground.world import COLOURS, main as world_cli, make_scene, split_seeds

    assert world_cli(["--seed", "3", "--split", "test", "--cards", "3", "--out", str(tmp_path / "s.png")]) == 0
    scene = make_scene(split_seeds("test", 1, 3)[0], n_cards=(3, 3))
    assert scene.question in capsys.readouterr().out and len({c.colour for c in scene.layout.cards}) == 3
    assert Image.open(tmp_path / "s.png").size == (2048, 2048)
    overview = Image.open(tmp_path / "s.overview.png").convert("RGB")
    for card in scene.layout.cards:   # each card's colour, of all the colours the nearest, sits at its place
        x1, y1 = (v * 224 // 2048 for v in card.box[:2])
        pixel = overview.getpixel((x1 + 2, y1 + 2))
        nearest = min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(pixel, COLOURS[c])))
        assert nearest == card.colour
    assert world_cli(["--cards", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert "from 1 to 8" in capsys.readouterr().err


def _row(boxes, correct=True, others=((0, 0, 100, 100),)):
    return {"gt_box": [500, 500, 600, 600], "correct": correct, "meta": {"other_boxes": [list(o) for o in others]},
            "boxes": [{"valid": v, "box_original": list(b), "box_model": [0, 0, 10, 10], "frame": [224, 224]}
                      for v, b in boxes]}


def test_the_answers_box_is_judged_and_boxes_on_another_card_are_counted():
    board = (0, 0, 2048, 2048)
    rows = [
        _row([(True, board), (True, (500, 500, 600, 600))]),           # board, then the asked card: a hit
        _row([(True, board), (True, (0, 0, 100, 100))], correct=False),  # board, then another card
        _row([(True, (500, 500, 600, 600)), (False, (0, 0, 1, 1))]),   # the card, then no usable box: its crop stays
        _row([(False, (0, 0, 1, 1))], correct=False),                  # no box at all
    ]
    g = grounding_scores(rows)
    assert (g["hits"], g["n_boxed"], g["wrong_card"], g["wrong_card_rate"]) == (2, 3, 1, 0.25)
    assert g["accuracy_after_hit"] == 1.0 and g["accuracy_after_miss"] == 0.0
    assert "wrong_card" not in grounding_scores([{**rows[0], "meta": {}}])     # one-card scenes: not counted


@pytest.fixture()
def three_card_release(fake_release, tmp_path):
    """The fake release, its index saying three cards a scene and three turns."""
    folder = tmp_path / "release"
    shutil.copytree(fake_release, folder)
    old = Release.load(folder)
    write_index(folder, old.checkpoints, old.default, overview=224, cards=3, max_turns=3)
    return folder


def test_a_release_says_its_cards_and_turns_and_the_command_lines_follow_it(three_card_release, fake_release):
    index = json.loads((three_card_release / "checkpoints.json").read_text())
    assert (index["cards"], index["max_turns"]) == (3, 3)
    rel = Release.load(three_card_release)
    assert (rel.cards, rel.max_turns) == (3, 3)
    plain = json.loads((fake_release / "checkpoints.json").read_text())
    assert "cards" not in plain and "max_turns" not in plain                 # the defaults are not written
    assert (Release.load(fake_release).cards, Release.load(fake_release).max_turns) == (1, 2)
    args = argparse.Namespace(model=str(three_card_release), checkpoint=None, adapter=None, min_pixels=None,
                              max_pixels=None, overview=None, cards=None, max_turns=None)
    apply_to_args(args)
    assert (args.overview, args.cards, args.max_turns) == (224, 3, 3)
    given = argparse.Namespace(**{**vars(args), "model": str(three_card_release), "cards": 1, "max_turns": 2})
    apply_to_args(given)
    assert (given.cards, given.max_turns) == (1, 2)                          # what was typed wins
    for key, bad, message in (("cards", 0, "from 1 to 8"), ("max_turns", 4, "must be 2"), ("max_turns", True, "must be 2")):
        broken = dict(index)
        broken[key] = bad
        (three_card_release / "checkpoints.json").write_text(json.dumps(broken))
        with pytest.raises(ReleaseError, match=message):
            Release.load(three_card_release)


def three_turn_reader(scene):
    """A stand-in model for a three-card ``scene``: turn 1 boxes the whole board, turn 2 the asked
    card inside that crop (the whole board again: the same frame), turn 3 answers."""
    card = tuple(round(v * FRAME / scene.image.width) for v in scene.box)

    def reply(sample, turn, message):
        if turn == 1:
            return "The cards are here. " + BOX_TEXT % (0, 0, FRAME, FRAME)
        if turn == 2:
            return "The asked card. " + BOX_TEXT % card
        return f"\\boxed{{{scene.answer}}}"

    return Engine(ScriptedBackend(reply, chunk=4), name="scripted three-turn reader")


def test_the_app_runs_a_three_turn_release_on_its_three_card_scenes(three_card_release):
    pytest.importorskip("gradio")
    from mgpo.service import PlaygroundModel, verdict
    from mgpo.playground.world import split_seeds
    from ui.playground import intro

    rel = Release.load(three_card_release)
    seed = split_seeds("test", 1, 3)[0]
    pg = PlaygroundModel(rel)
    scene = pg.scene(seed)
    assert len(scene.layout.cards) == 3 and pg.settings.max_turns == 3
    pg = PlaygroundModel(rel, engine=three_turn_reader(scene))
    events = [e for run, e in pg.events(scene, "before RL") if run == "mgpo"]
    boxes = [e for e in events if e.type == "box"]
    assert [e.turn for e in boxes] == [1, 2] and all(e.valid for e in boxes)
    assert [e.kind for e in events if e.type == "turn_started"] == ["grounding", "refine", "crop"]
    v = verdict(scene, next(e for e in events if e.type == "final"), boxes)
    assert v.right and v.iou > 0.9 and iou(boxes[0].box_original, scene.box) < 0.1   # judged on the answer's box
    text = intro(rel)
    assert "3 small cards of different colours" in text and "three turns" in text


def test_the_tab_tells_a_one_card_two_turn_release_as_before(fake_release):
    from ui.playground import intro

    text = intro(Release.load(fake_release))
    assert "one small coloured card" in text and "three turns" not in text


@pytest.mark.slow
def test_the_recipe_trains_evaluates_and_ships_three_turns_on_three_card_scenes(tmp_path):
    """The "ci" size end to end with ``--cards 3 --turns 3``: every stage carries the world and the
    turns — RL's scenes and metrics, the evaluator's protocol and report, the release's index and
    card. It checks the mechanics, not the learning."""
    from mgpo.playground.world import make_layout
    from train.playground import recipe, settings

    out = tmp_path / "pg"
    cfg = settings.RecipeConfig.for_size("ci", out=str(out), cards=3, turns=3, min_cards=3, max_cards=3)
    summary = recipe.run(cfg)
    records = [json.loads(line) for line in (out / "rl_data" / "train.jsonl").read_text().splitlines()]
    for rec in records:
        layout = make_layout(int(rec["id"].split("-")[1]), n_cards=(3, 3))
        assert len(layout.cards) == 3 and rec["image"].endswith("-c3.png")
        assert f"the {layout.cards[layout.target].colour} card" in rec["question"] and "box" not in json.dumps(rec)
    rows = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["hit"] and 0.0 <= r["wrong_card"] and r["hit"] + r["wrong_card"] <= 1.0 for r in rows)
    assert all("wrong_card" in r for r in summary["rl_curve"])
    results = json.loads((out / "eval" / "step-0000-test-mgpo" / "results.json").read_text())
    assert results["protocol"]["max_turns"] == 3 and "3 cards a scene" in results["protocol"]["variant"]
    assert "wrong_card_rate" in results["grounding"] and "wrong_card_rate" in summary["before"]["mgpo"]
    assert "boxes on another card (IoU ≥ 0.5)" in (out / "eval" / "step-0000-test-mgpo" / "results.md").read_text()
    items = [json.loads(line) for line in (out / "eval" / "step-0000-test-mgpo" / "items.jsonl").read_text().splitlines()]
    assert all(len(r["meta"]["other_boxes"]) == 2 and r["turns"] <= 3 for r in items)
    rel = Release.load(out / "release")
    assert (rel.cards, rel.max_turns) == (3, 3)
    card = (rel.folder / "README.md").read_text()
    assert "3 cards of different colours" in card and "three turns" in card and "(3 turns)" in card


# ----- the base skills a three-turn recipe trains ------------------------------------------------


def test_name_first_grounding_puts_the_image_after_the_name_and_boxes_the_same_card():
    from mgpo.playground.skill_prompts import NAME_FIRST_PROMPTS
    from mgpo.playground.skill_examples import scene_examples

    named = scene_examples(8, skills=("ground",), prompt="name-first", n_cards=(3, 3))
    plain = scene_examples(8, skills=("ground",), prompt="locate", n_cards=(3, 3))
    assert len(named) == 3 and [e.target for e in named] == [e.target for e in plain]
    for e in named:
        name = e.meta["name"]
        assert any(e.prompt == t.format(name=name) for t in NAME_FIRST_PROMPTS)
        assert e.prompt.index(name) < e.prompt.index("<image>") and e.prompt.count("<image>") == 1
        assert "Question:" not in e.prompt and "key image area" not in e.prompt   # never MGPO's template


def test_group_grounding_boxes_every_card_on_the_lattice():
    from mgpo import geometry
    from mgpo.playground.skill_prompts import GROUP_PROMPTS
    from mgpo.playground.skill_examples import scene_examples
    from mgpo.playground.world import make_scene

    for seed in (2, 9):
        (e,) = scene_examples(seed, skills=("group",), n_cards=(3, 3), simple=0.0)
        scene = make_scene(seed, n_cards=(3, 3), clutter=1.0)
        assert e.prompt in GROUP_PROMPTS and '"label": "cards"' in e.target
        x1, y1, x2, y2 = e.meta["box_model"]
        assert all(v % 14 == 0 for v in (x1, y1, x2, y2))
        for card in scene.layout.cards:
            c = geometry.to_frame(card.box, (FRAME, FRAME), (0, 0, scene.image.width, scene.image.width))
            assert x1 <= c[0] + 1e-6 and y1 <= c[1] + 1e-6 and c[2] <= x2 + 1e-6 and c[3] <= y2 + 1e-6
        # tight: every side touches a card
        boxes = [geometry.to_frame(c.box, (FRAME, FRAME), (0, 0, 2048, 2048)) for c in scene.layout.cards]
        assert x1 == round(min(b[0] for b in boxes)) and x2 == round(max(b[2] for b in boxes))


def test_zoom3_reads_in_the_third_turn_after_two_boxes_in_context(tiny_loaded):
    from mgpo.generation import QwenBackend
    from mgpo.playground.skill_prompts import ASK_QUESTIONS, ZOOM_QUESTIONS, trained_templates
    from mgpo.playground.skill_examples import scene_examples
    from mgpo.playground.world import PATTERNS, make_scene
    from mgpo.prompts import LETTERS, get_prompts, render
    from train.playground.skills import example_sequence

    prompts = get_prompts("mgpo")
    examples = scene_examples(5, skills=("zoom3",), n_cards=(3, 3), simple=0.0)
    scene = make_scene(5, n_cards=(3, 3), clutter=1.0)
    assert len(examples) == 3
    for e in examples:
        (t1, im1, r1), (t2, im2, r2) = e.context
        ask = next(q.format(name=e.meta["name"]) for q in ASK_QUESTIONS
                   if t1 == render(prompts, "grounding", q.format(name=e.meta["name"])))
        assert '"label": "cards"' in r1 and t2 == render(prompts, "refine", ask) and e.meta["name"] in r2
        assert im1[0].size == (FRAME, FRAME)
        card = next(c for c in scene.layout.cards if f"{c.colour} card" == e.meta["name"])
        assert iou(e.meta["region"], card.box) > 0.8                      # turn 3 shows the card, as the boxes said
        assert e.prompt.startswith("Based on the provided coordinates") and any(q in e.prompt for q in ZOOM_QUESTIONS)
        assert e.target == f"\\boxed{{{LETTERS[list(PATTERNS).index(card.detail)]}}}"
    # through the engine's assembly: three images, and only the last reply is learned
    backend = QwenBackend(tiny_loaded.model, tiny_loaded.processor)
    seq = example_sequence(backend, examples[0])
    assert len(seq.images) == 3
    learned = backend.tok.decode([t for t, m in zip(seq.token_ids, seq.loss_mask) if m])
    assert learned.startswith(examples[0].target) and "bbox_2d" not in learned
    rows = trained_templates(("group", "zoom3"), "locate")
    assert [r[0] for r in rows].count("group") == 4 and "never learned" in rows[-1][1]

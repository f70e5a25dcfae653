"""The name → card look-up harness (train/playground/lookup.py): its data, its perfect features
(train/playground/probe_features.py), its scoring and a short run on the tiny model."""

from __future__ import annotations

import json

import pytest

from train.playground import lookup, probe_features
from train.playground.lookup import LookupConfig, candidates, scene_items
from train.playground.probe_features import PerfectFeatures


def test_perfect_and_tower_scenes_ask_the_same_cards_with_the_same_prompts_and_classes():
    # perfect features never render the scene, but its examples (prompt, box, name) and per-token
    # classes must be the rendered scene's, or the two modes would not be comparable
    for seed in (3, 11):
        p_ex, p_cls, (slots, cards) = scene_items(seed, LookupConfig("m", "perfect", cards=3))
        t_ex, t_cls, t_slots = scene_items(seed, LookupConfig("m", "tower", cards=3))
        assert [(e.prompt, e.target) for e in p_ex] == [(e.prompt, e.target) for e in t_ex]
        assert p_cls == t_cls and (slots, cards) == t_slots
        # the 16 slots of the 280 world's board start at 0, 70, 140, 210; each card is boxed in its own
        assert len(slots) == 16 and {s[0] for s in slots} == {0, 70, 140, 210} == {s[1] for s in slots}
        assert [list(slots[k]) for k in cards] == [e.meta["box_model"] for e in p_ex] and len(set(cards)) == 3
        p_boxes = [slots[k] for k in cards]
        assert len(p_ex) == 3 and len({e.meta["name"] for e in p_ex}) == 3
        assert t_ex[0].images[0].size == (280, 280) and len(p_cls) == 100     # 10 × 10 merged tokens
        # each card covers the tokens inside its overview box, with its own colour class
        for box in p_boxes:
            x1, y1, x2, y2 = box
            inside = {(r, c) for r in range(10) for c in range(10)
                      if x1 <= c * 28 + 14 < x2 and y1 <= r * 28 + 14 < y2}
            classes = {k for k, r, c in p_cls if (r, c) in inside}
            assert len(inside) >= 1 and len(classes) == 1 and classes != {0}
        assert sum(k > 0 for k, _, _ in p_cls) == sum(
            sum(x1 <= c * 28 + 14 < x2 and y1 <= r * 28 + 14 < y2 for r in range(10) for c in range(10))
            for x1, y1, x2, y2 in p_boxes)


def test_every_slot_is_a_candidate_and_the_cards_slot_gives_the_trained_reply():
    cfg = LookupConfig("m", cards=3)
    examples, _, (slots, cards) = scene_items(5, cfg)
    rows = candidates(examples, slots, cfg)
    assert [len(r) for r in rows] == [16, 16, 16]
    for ex, row, k in zip(examples, rows, cards):
        assert row[k].target == ex.target                     # the scored right reply is the trained one
        assert all(c.prompt == ex.prompt and ex.meta["name"] in c.target for c in row)
        assert len({c.target for c in row}) == 16
    # with the label first, every candidate writes it first too
    cfg = LookupConfig("m", cards=3, label_first=True)
    examples, _, (slots, cards) = scene_items(5, cfg)
    for ex, row, k in zip(examples, candidates(examples, slots, cfg), cards):
        assert row[k].target == ex.target and ex.target.index('"label"') < ex.target.index('"bbox_2d"')
        assert all(c.target.index('"label"') < c.target.index('"bbox_2d"') for c in row)
    # adjacent: the colour word glued to the four numbers, no JSON; the candidates in the same format
    for sep in ("", " card: "):
        cfg = LookupConfig("m", cards=3, adjacent=True, adjacent_sep=sep)
        examples, _, (slots, cards) = scene_items(5, cfg)
        for ex, row, k in zip(examples, candidates(examples, slots, cfg), cards):
            colour = ex.meta["name"].split()[0]
            assert ex.target == colour + sep + ", ".join(str(v) for v in ex.meta["box_model"])
            assert row[k].target == ex.target and len({c.target for c in row}) == 16
            assert all(c.target.startswith(colour + sep) and "bbox_2d" not in c.target for c in row)
    for bad in (dict(adjacent=True, label_first=True), dict(weight_decay=-0.1), dict(adjacent_sep=" card "),
                dict(adjacent=True, adjacent_sep=" 1 ")):
        with pytest.raises(ValueError):
            LookupConfig("m", **bad).check()


def test_perfect_features_are_one_hots_as_large_as_a_token_embedding(tiny_loaded):
    import torch

    core = tiny_loaded.model
    f = PerfectFeatures.random(core, side=10)
    x = f([(1, 0, 0), (1, 0, 0), (2, 0, 0), (0, 3, 4)])
    assert x.shape == (4, core.config.text_config.hidden_size)
    assert torch.allclose(x[0], x[1])
    norm = core.get_input_embeddings().weight.detach().float().norm(dim=-1).mean()
    assert torch.allclose(x.norm(dim=-1), norm.expand(4), rtol=1e-4)
    # tokens that differ in colour only differ along the colour one-hots: (a - b) ⟂ position part
    d = x[0] - x[2]
    assert abs(float(d @ (x[3] - f([(0, 0, 0)])[0]))) < 1e-4 * float(norm) ** 2


def test_aligned_features_say_a_cards_colour_with_its_colour_words_live_embedding(tiny_loaded):
    import torch

    from mgpo.playground.world import COLOURS

    core, tok = tiny_loaded.model, tiny_loaded.processor.tokenizer
    f = PerfectFeatures.aligned(core, tok, side=10)
    p = PerfectFeatures.random(core, side=10)
    embed = core.get_input_embeddings().weight
    red = tok(" red", add_special_tokens=False)["input_ids"][0]
    k = sorted(COLOURS).index("red") + 1
    # only the colour part differs from the random code: a red token minus a no-card token at the
    # same place is the embedding of " red" less the random code's "none", each at 1/√3
    d = f([(k, 2, 3)])[0] - f([(0, 2, 3)])[0]
    expected = (embed[red].detach() - p.map[:, 0] * 3 ** 0.5) / 3 ** 0.5
    assert torch.allclose(d, expected.to(d.dtype), atol=1e-5)
    assert torch.allclose(f([(0, 2, 3)]), p([(0, 2, 3)]))
    # read live: training the embedding moves the features with it
    with torch.no_grad():
        embed[red] += 1.0
    try:
        assert torch.allclose(f([(k, 2, 3)])[0] - d - f([(0, 2, 3)])[0], torch.full_like(d, 3 ** -0.5), atol=1e-5)
    finally:
        with torch.no_grad():
            embed[red] -= 1.0


def test_question_first_moves_the_image_after_the_text_and_keeps_the_rest():
    base, cls, slots = scene_items(5, LookupConfig("m", cards=3))
    moved, cls2, slots2 = scene_items(5, LookupConfig("m", cards=3, question_first=1.0), held_out=True)
    assert (cls, slots) == (cls2, slots2)
    for a, b in zip(base, moved):
        assert a.prompt.startswith("<image>") and b.prompt.endswith("<image>") and b.prompt.count("<image>") == 1
        assert b.prompt == a.prompt[len("<image>"):] + "<image>" and a.target == b.target
    # a share mixes the training scenes, whole scenes at a time; VAL then asks in MGPO's order
    mixed = LookupConfig("m", cards=2, question_first=0.5)
    firsts = [[e.prompt.endswith("<image>") for e in scene_items(s, mixed)[0]] for s in range(40)]
    assert all(len(set(f)) == 1 for f in firsts) and 10 <= sum(f[0] for f in firsts) <= 30
    assert not any(e.prompt.endswith("<image>") for s in range(10) for e in scene_items(s, mixed, held_out=True)[0])
    with pytest.raises(ValueError, match="share"):
        LookupConfig("m", question_first=1.5).check()
    # the image again after the text: two images, the same overview, the same box and classes
    again, cls3, slots3 = scene_items(5, LookupConfig("m", cards=3, image_again=True))
    assert (cls3, slots3) == (cls, slots)
    for a, b in zip(base, again):
        assert b.prompt == a.prompt + "<image>" and len(b.images) == 2 and b.images[0] is b.images[1] is a.images[0]
        assert b.target == a.target


def test_refine_asks_in_mgpos_three_turn_middle_turn_after_a_whole_board_turn_1():
    from mgpo.playground.world import question
    from mgpo.prompts import get_prompts, render

    prompts = get_prompts("mgpo")
    base, cls, slots = scene_items(5, LookupConfig("m", cards=3))
    refine, cls2, slots2 = scene_items(5, LookupConfig("m", cards=3, refine=True))
    assert (cls2, slots2) == (cls, slots)
    for a, b in zip(base, refine):
        asked = question(a.meta["name"])
        assert asked == f"Which way do the stripes on the {a.meta['name']} run?"
        (t1_text, t1_images, t1_reply), = b.context
        # turn 1 (context): the overview in MGPO's turn-1 template around the task question, the board's box
        assert t1_text == render(prompts, "grounding", asked) and t1_images == (a.images[0],)
        assert '"bbox_2d": [0, 0, 280, 280]' in t1_reply
        # turn 2 (learned): the whole board's crop — the overview again — in the refine template → the card's box
        assert b.prompt == render(prompts, "refine", asked) and b.prompt.index("<image>") < b.prompt.index(asked)
        assert b.images == a.images and b.target == a.target
        assert probe_features.conversation_images(b) == [a.images[0]] * 2
        # every candidate reply keeps the conversation
        assert all(c.context == b.context and c.prompt == b.prompt for c in candidates([b], slots[0], LookupConfig("m"))[0])
    # the short wording: the same turn without the question after the crop; the name only in turn 1, before it
    short, cls4, slots4 = scene_items(5, LookupConfig("m", cards=3, refine=True, refine_repeat=False))
    assert (cls4, slots4) == (cls, slots)
    for a, b in zip(refine, short):
        assert b.context == a.context and b.target == a.target and b.prompt == lookup.SHORT_REFINE
        assert a.meta["name"] not in b.prompt and b.prompt.startswith(a.prompt.split("Question:")[0])
    with pytest.raises(ValueError, match="layout of its own"):
        LookupConfig("m", refine=True, image_again=True).check()


def test_clean_features_are_the_towers_least_squares_sum(tiny_loaded):
    import torch

    from mgpo.generation import QwenBackend

    backend = QwenBackend(tiny_loaded.model, tiny_loaded.processor)
    cfg = LookupConfig("m", "clean", cards=2, overview=224)
    seeds = range(40, 46)
    clean = PerfectFeatures.fitted(backend, lookup.tower_scenes(cfg, seeds), side=8)
    tower, fitted = [], []
    with torch.no_grad():
        for seed in seeds:
            examples, classes, _ = scene_items(seed, cfg)
            tower.append(backend.image_features([backend.feed_image(examples[0].images[0])]).float())
            fitted.append(clean(classes).float())
    y, f = torch.cat(tower), torch.cat(fitted)
    assert f.shape == y.shape == (6 * 64, tiny_loaded.model.config.text_config.hidden_size)
    # a least-squares fit with the mean among its directions: its residual is below the spread around the mean,
    # and orthogonal to every one-hot it was fitted on
    residual = y - f
    assert float((residual ** 2).sum()) < 0.5 * float(((y - y.mean(0)) ** 2).sum())
    x = torch.cat([clean.onehot(scene_items(s, cfg)[1], "cpu", torch.float32) for s in seeds])
    assert float((x.T @ residual).abs().max()) < 1e-3 * float(y.abs().max())


def test_the_patch_feeds_the_given_features_and_is_removed(tiny_loaded):
    import torch

    from mgpo.generation import QwenBackend
    from train.playground.skills import example_sequence, sft_loss

    backend = QwenBackend(tiny_loaded.model, tiny_loaded.processor)
    examples, classes, _ = scene_items(7, LookupConfig("m", cards=2, overview=224))
    seqs = [example_sequence(backend, examples[0])]
    f = PerfectFeatures.random(backend.core, side=8)
    with torch.no_grad():
        plain, _ = sft_loss(backend.core, backend, seqs)
        probe_features.patch_image_features(backend.core, f(classes))
        a, _ = sft_loss(backend.core, backend, seqs)
        probe_features.patch_image_features(backend.core, f([(0, 0, 0)] * len(classes)))
        b, _ = sft_loss(backend.core, backend, seqs)
        probe_features.unpatch(backend.core)
        again, _ = sft_loss(backend.core, backend, seqs)
    assert float(a) != float(b) and float(a) != float(plain)
    assert float(again) == pytest.approx(float(plain), abs=1e-6)


def test_a_short_run_learns_its_replies_and_logs_the_lookup(tiny_model_dir, tmp_path):
    out = tmp_path / "log.jsonl"
    cfg = LookupConfig(str(tiny_model_dir), "perfect", cards=2, overview=224, steps=12, batch=8, lr=3e-3,
                       eval_every=6, eval_scenes=3)
    log = lookup.run(cfg, out)
    assert [r["step"] for r in log] == [0, 6, 12]
    assert all(r["n"] == 6 and 0.0 <= r["lookup"] <= r["card"] <= 1.0 for r in log)
    assert log[-1]["loss"] < 0.85 * log[0]["loss"]         # held-out replies grow likelier (their format at least)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["config"]["features"] == "perfect" and lines[1:] == log


def test_the_cli_refuses_bad_settings_and_trains_a_fresh_model(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        lookup.main(["--model", str(tiny_model_dir), "--fresh", "wide"])
    assert "HIDDENxLAYERS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lookup.main(["--model", str(tiny_model_dir), "--cards", "9"])
    assert "cards must be 1 to 8" in capsys.readouterr().err
    out = tmp_path / "fresh.jsonl"
    assert lookup.main(["--model", str(tiny_model_dir), "--fresh", "32x1", "--overview", "224", "--cards", "2",
                        "--steps", "2", "--batch", "4", "--eval-every", "2", "--eval-scenes", "2",
                        "--image-again", "--score-refine", "--weight-decay", "0.1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["config"]["fresh"] == "32x1" and [r["step"] for r in rows[1:]] == [0, 2]
    assert rows[0]["config"]["image_again"] is True        # two images a prompt, features for both
    assert rows[0]["config"]["weight_decay"] == 0.1
    # VAL scored in the three-turn middle turn as well: its own scores beside the training layout's
    assert all(r["n_refine"] == r["n"] == 4 and 0.0 <= r["lookup_refine"] <= r["card_refine"] <= 1.0 for r in rows[1:])
    assert all(r["loss_refine"] != r["loss"] for r in rows[1:])

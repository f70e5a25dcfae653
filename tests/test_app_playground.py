"""The playground release folder (load, errors, index, drawing) and the app's Playground tab: a
scripted model that boxes the target card (box, crop, answer, IoU through the served app), the
tiny real Qwen2.5-VL with two LoRA checkpoints (switching really switches), and the app without
or with a broken release."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import app
from conftest import BOX_TEXT
from mgpo.engine import Engine
from mgpo.playground.release import (MODEL_COLOUR, TRUTH_COLOUR, Checkpoint, Release, ReleaseError, draw_boxes,
                                     summary_markdown, write_index)
from mgpo.playground.world import SPLITS, make_scene, split_seeds
from mgpo.scripted import ScriptedBackend
from test_app import PARKING, run_args, scripted_engine, serve

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

SEED = split_seeds("test", 1, 7)[0]
FRAME = 224                       # a 2048² scene's overview model frame under the playground budgets


def close(a, b, tol=60) -> bool:
    return sum(abs(x - y) for x, y in zip(a, b)) < tol


# ----- the release folder ----------------------------------------------------------------------


def test_release_loads_the_shipped_layout(fake_release):
    r = Release.load(fake_release)
    assert [(c.name, c.step) for c in r.checkpoints] == [("before RL", 0), ("early", 10), ("late", 30)]
    assert r.checkpoints[0].adapter is None
    assert r.checkpoint("late").adapter == fake_release / "adapters" / "step-0030"
    assert (r.checkpoint("early").adapter / "adapter_config.json").is_file()
    assert r.default == "late" and r.model == fake_release / "model"
    assert r.curves == fake_release / "curves.png" and r.summary["after"]["mgpo"]["accuracy"] == 0.75
    rows = r.metrics_rows()
    assert [row["step"] for row in rows] == list(range(1, 31))          # the bad line is skipped
    points = r.curve_points()
    assert {p["series"] for p in points} == {"reward", "valid_box", "iou"} and len(points) == 90
    with pytest.raises(ReleaseError, match="no checkpoint 'middle'.*'before RL', 'early', 'late'"):
        r.checkpoint("middle")
    index = json.loads((fake_release / "checkpoints.json").read_text())   # written by write_index
    assert [c["adapter"] for c in index["checkpoints"]] == [None, "adapters/step-0010", "adapters/step-0030"]


def _skeleton(folder: Path) -> Path:
    """A release with the files load() checks (no weights): model/config.json, one adapter."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    (folder / "adapters" / "a").mkdir(parents=True)
    (folder / "adapters" / "a" / "adapter_config.json").write_text("{}")
    index = {"default": "rl", "checkpoints": [{"name": "before RL", "step": 0, "adapter": None},
                                              {"name": "rl", "step": 5, "adapter": "adapters/a"}]}
    (folder / "checkpoints.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("case,message", [
    ("no folder", "no playground release at .*: the folder does not exist"),
    ("no model", "has no model: .*model should hold a Qwen2.5-VL checkpoint"),
    ("no index", "checkpoints.json is missing"),
    ("malformed index", "checkpoints.json is not valid JSON"),
    ("empty index", "must be an object with a non-empty \"checkpoints\" list"),
    ("adapter without config", r"checkpoint 2 \('rl'\): .*adapters/a is not a LoRA adapter folder \(no adapter_config.json\)"),
    ("unknown default", "the default checkpoint 'late' is not one of 'before RL', 'rl'"),
    ("repeated name", "checkpoint names repeat"),
    ("malformed summary", "summary.json is not valid JSON"),
])
def test_release_load_says_what_is_wrong(tmp_path, case, message):
    folder = _skeleton(tmp_path / "release")
    r = Release.load(folder)                                   # the skeleton itself is fine
    assert r.default == "rl" and r.curves is None and r.metrics_rows() == [] and r.summary is None
    index = json.loads((folder / "checkpoints.json").read_text())
    if case == "no folder":
        folder = tmp_path / "nowhere"
    elif case == "no model":
        shutil.rmtree(folder / "model")
    elif case == "no index":
        (folder / "checkpoints.json").unlink()
    elif case == "malformed index":
        (folder / "checkpoints.json").write_text('{"default": "rl", "checkpoints": [')
    elif case == "empty index":
        (folder / "checkpoints.json").write_text('{"checkpoints": []}')
    elif case == "adapter without config":
        (folder / "adapters" / "a" / "adapter_config.json").unlink()
    elif case == "unknown default":
        index["default"] = "late"
        (folder / "checkpoints.json").write_text(json.dumps(index))
    elif case == "repeated name":
        index["checkpoints"][1]["name"] = "before RL"
        (folder / "checkpoints.json").write_text(json.dumps(index))
    elif case == "malformed summary":
        (folder / "summary.json").write_text("{'accuracy': 0.5}")
    with pytest.raises(ReleaseError, match=message):
        Release.load(folder)


def test_write_index_stores_relative_adapter_paths_atomically(tmp_path):
    folder = _skeleton(tmp_path / "release")
    (folder / "checkpoints.json").unlink()
    adapter = folder / "adapters" / "a"
    write_index(folder, [Checkpoint("before RL", 0, None), Checkpoint("rl", 5, adapter)], default="rl")
    index = json.loads((folder / "checkpoints.json").read_text())
    assert index == {"default": "rl", "overview": 224,
                     "checkpoints": [{"name": "before RL", "step": 0, "adapter": None},
                                     {"name": "rl", "step": 5, "adapter": "adapters/a"}]}
    assert Release.load(folder).checkpoint("rl").adapter == adapter
    write_index(folder, [Checkpoint("rl", 5, Path("adapters/a"))], default="rl")   # relative to the folder
    assert json.loads((folder / "checkpoints.json").read_text())["checkpoints"][0]["adapter"] == "adapters/a"
    assert sorted(p.name for p in folder.iterdir()) == ["adapters", "checkpoints.json", "model"]   # no temp file left
    outside = _skeleton(tmp_path / "other") / "adapters" / "a"
    with pytest.raises(ReleaseError, match="is outside the release"):
        write_index(folder, [Checkpoint("rl", 5, outside)], default="rl")
    with pytest.raises(ReleaseError, match="is not a LoRA adapter folder"):
        write_index(folder, [Checkpoint("rl", 5, folder / "adapters" / "missing")], default="rl")
    with pytest.raises(ReleaseError, match="default checkpoint 'late'"):
        write_index(folder, [Checkpoint("rl", 5, adapter)], default="late")
    assert json.loads((folder / "checkpoints.json").read_text())["checkpoints"][0]["adapter"] == "adapters/a"


def test_draw_boxes_shows_the_truth_dashed_and_the_model_box_in_original_pixels():
    scene = make_scene(SEED)
    x1, y1, x2, y2 = scene.box
    dx, dy = (200 if x1 < 1024 else -200), (100 if y1 < 1024 else -100)   # towards the middle
    predicted = (x1 + dx, y1 + dy, x2 + dx, y2 + dy)
    img = draw_boxes(scene.image, scene.box, predicted)
    assert img.size == (1024, 1024) and scene.image.size == (2048, 2048)   # the scene itself is untouched
    s = 1024 / 2048
    top = [img.getpixel((int(x1 * s) + k, int(y1 * s) + 1)) for k in range(int((x2 - x1) * s))]
    green = [close(p, TRUTH_COLOUR) for p in top]
    assert green[1] and not all(green)                          # dashes: green with gaps
    assert close(img.getpixel((int((predicted[0] + predicted[2]) / 2 * s), int(predicted[3] * s) - 2)), MODEL_COLOUR)
    only_truth = draw_boxes(scene.image, scene.box, None)
    assert not close(only_truth.getpixel((int((predicted[0] + predicted[2]) / 2 * s), int(predicted[3] * s) - 2)),
                     MODEL_COLOUR)
    plain = draw_boxes(scene.image, None, None)
    assert not close(plain.getpixel((int(x1 * s) + 1, int(y1 * s) + 1)), TRUTH_COLOUR, 20)


def test_labels_of_boxes_that_coincide_do_not_cover_one_another():
    """Five checkpoints boxing the same card (what Compare shows when RL did not move the box):
    every label tab is drawn where no other tab lies, each in its checkpoint's colour."""
    from mgpo.playground.release import checkpoint_colour, draw_compare
    from mgpo.transcript import label_spot

    placed: list[tuple] = []
    for k in range(5):
        lx, ly = label_spot((300, 300, 420, 380), (110, 24), (1024, 1024), bool(k % 2), placed)
        placed.append((lx, ly, lx + 110, ly + 24))
    assert all(not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
               for i, a in enumerate(placed) for b in placed[i + 1:])
    assert placed[0] == (300, 276, 410, 300) and placed[1] == (300, 380, 410, 404)   # alone: as before
    # a box at the right edge: its second tab goes a row further out, still inside the image
    first = label_spot((960, 300, 1020, 380), (110, 24), (1024, 1024), False, [])
    second = label_spot((960, 300, 1020, 380), (110, 24), (1024, 1024), False, [(914, 276, 1024, 300)])
    assert (first, second) == ((914, 276), (914, 252))
    scene = make_scene(SEED)
    names = ["before RL", "early", "middle", "three quarters", "late"]
    img = draw_compare(scene.image, scene.box, [(n, scene.box) for n in names])
    s = img.width / scene.image.width
    x1, y1 = scene.box[0] * s, scene.box[1] * s
    found = {k for k in range(5) for y in range(int(max(0, y1 - 80)), int(y1)) for x in range(int(x1), int(x1) + 400, 3)
             if x < img.width and close(img.getpixel((x, y)), checkpoint_colour(k), 8)}
    assert {0, 2, 4} <= found            # the three tabs above the box all show


def test_summary_markdown_puts_each_kind_of_record_in_a_table():
    summary = {"before": {"mgpo": {"accuracy": 0.25, "mean_iou": None}},
               "after": {"mgpo": {"accuracy": 0.75, "mean_iou": 0.5}, "direct": {"accuracy": 0.3, "mean_iou": None}},
               "seconds": {"rl": 12.25}, "rl_curve": [{"step": 1}], "world": "v1"}
    md = summary_markdown(summary)
    lines = md.splitlines()
    assert lines[0] == "|  | accuracy | mean iou |"
    assert "| before · mgpo | 0.250 | – |" in lines and "| after · mgpo | 0.750 | 0.500 |" in lines
    assert "| seconds | 12.250 |" in lines and "| world | v1 |" in lines and "rl_curve" not in md
    assert summary_markdown(None) == "" and summary_markdown({}) == ""


# ----- the tab with a scripted model: box, crop, answer, IoU ------------------------------------


def card_boxer(scene, right: bool):
    """A stand-in model for ``scene``: boxes the target card (or a bad box), then answers."""
    frame_box = tuple(round(v * FRAME / scene.image.width) for v in scene.box)
    letter = scene.answer if right else "ABCD"[("ABCD".index(scene.answer) + 1) % 4]

    def reply(sample, turn, message):
        if turn == 1:
            return "The card is here. " + BOX_TEXT % (frame_box if right else (200, 200, 300, 300))
        return f"The stripes are clear. \\boxed{{{letter}}}"

    return Engine(ScriptedBackend(reply, chunk=4), name="scripted card boxer")


@pytest.fixture(scope="module")
def scripted_playground(fake_release):
    scene = make_scene(SEED)
    served = []

    def start(right: bool):
        pg = app.PlaygroundModel(Release.load(fake_release), engine=card_boxer(scene, right))
        demo = app.build_demo(scripted_engine(), playground=pg, examples=[])
        served.append(demo)
        return serve(demo)

    yield scene, start
    for demo in served:
        demo.close()


def test_playground_run_streams_the_box_the_crop_the_answer_and_the_iou(scripted_playground):
    scene, start = scripted_playground
    client = Client(start(right=True), verbose=False)
    job = client.submit(SEED, "before RL", api_name="/playground_run")
    status, scene_md, chat, boxes, crops, answer, result = job.result(timeout=60)
    statuses = [o[0] for o in job.outputs()]
    assert statuses[0].startswith("MGPO: turn 1") and any(s.startswith("MGPO: turn 2") for s in statuses)
    assert status.startswith("Done in ") and "Checkpoint **before RL** (step 0)" in status
    right = scene.choices["ABCD".index(scene.answer)]
    assert answer == f"{scene.answer} — {right}"
    assert result.startswith(f"✓ **Right**: the model answered **{scene.answer} — {right}**.")
    iou = float(result.split("IoU of its box with the hidden ")[1].split("**")[1])
    assert iou > 0.9                                              # the scripted box is the card's
    assert len(crops) == 1 and crops[0]["caption"].startswith("turn 2: ")
    titles = [(m.get("metadata") or {}).get("title") or "" for m in chat]
    titles = [t for t in titles if t]
    assert titles[0].startswith("Turn 1 · ") and titles[1].startswith("Cropping region (")
    # the answer is not sent before the run ends; the question and the choices are
    first = job.outputs()[0]
    assert scene.question in first[1] and all(c in first[1] for c in scene.choices)
    assert all(o[6] == {"__type__": "update"} for o in job.outputs()[:-1])   # the result line waits for the end
    img = Image.open(boxes).convert("RGB")
    assert img.size == (1024, 1024)
    s = 1024 / 2048
    x1, y1, x2, y2 = scene.box
    edge = [img.getpixel((int(x1 * s) + k, int(y2 * s) - 2)) for k in range(int((x2 - x1) * s))]
    assert any(close(p, MODEL_COLOUR) for p in edge)             # the model's box, drawn over the truth


def test_playground_run_says_wrong_and_no_usable_box(scripted_playground):
    scene, start = scripted_playground
    client = Client(start(right=False), verbose=False)
    status, _, _, boxes, crops, answer, result = client.predict(SEED, "before RL", api_name="/playground_run")
    assert status.startswith("Done in ") and crops == []
    wrong = "ABCD"[("ABCD".index(scene.answer) + 1) % 4]
    assert result.startswith(f"✗ **Wrong**: the model answered {wrong} — {scene.choices['ABCD'.index(wrong)]}; "
                             f"the answer is **{scene.answer} — ")
    assert "No usable box (" in result and "so no IoU" in result
    # bad seeds and checkpoints get a message, not a traceback
    out = client.predict(-5, "before RL", api_name="/playground_run")
    assert out[0].startswith("⚠️ A scene seed is a whole number") and out[6] == {"__type__": "update"}
    # the scripted stand-in has no network to put an adapter on: said, not crashed
    out = client.predict(SEED, "late", api_name="/playground_run")
    assert out[0].startswith("⚠️ ") and "LoRA" in out[0]


def test_new_scene_draws_a_held_out_seed_and_shows_it_without_the_answer(scripted_playground):
    scene, start = scripted_playground
    client = Client(start(right=True), verbose=False)
    lo, hi = SPLITS["test"]
    seeds = {int(client.predict(api_name="/playground_new")) for _ in range(3)}
    assert all(lo <= s < hi for s in seeds) and len(seeds) > 1
    status, md, chat, boxes, crops, answer, result = client.predict(SEED, api_name="/playground_scene")
    assert f"**Seed {SEED}** · a held-out test scene" in md and scene.question in md
    assert "(A)" in md and "answer" not in md.lower()
    assert (chat, crops, answer, result) == ([], [], "", "")
    _, md, *_ = client.predict(5, api_name="/playground_scene")
    assert "base-skills range" in md


# ----- the tab with the tiny real model and its LoRA checkpoints --------------------------------


def test_switching_checkpoints_switches_the_adapter(fake_release):
    import torch

    release = Release.load(fake_release)
    pg = app.PlaygroundModel(release)
    assert pg._runner is None                                   # nothing is loaded before the first run
    demo = app.build_demo(scripted_engine(), playground=pg, examples=[])
    url = serve(demo)
    try:
        client = Client(url, verbose=False)
        core = lambda: pg.runner.engine.backend.core              # noqa: E731
        ids = torch.tensor([[1, 2, 3, 4, 5, 6]])

        def hidden():
            with torch.no_grad():
                return core().model.language_model(input_ids=ids).last_hidden_state

        texts, states, letters = {}, {}, {}
        for name in ("before RL", "early", "late", "before RL"):
            status, _, chat, boxes, crops, answer, result = client.predict(SEED, name, api_name="/playground_run")
            letters[name] = answer.partition(" — ")[0] if " — " in answer else "—"   # "—": no answer given
            assert status.startswith("Done in ") and f"Checkpoint **{name}**" in status
            assert answer and result.startswith(("✓", "✗")) and Path(boxes).is_file()
            texts.setdefault(name, chat[1]["content"][0]["text"])
            assert chat[1]["content"][0]["text"] == texts[name]     # greedy: the same checkpoint, the same text
            states.setdefault(name, hidden())
            assert torch.allclose(states[name], hidden())
        assert len(set(texts.values())) == 3                       # each checkpoint writes its own turn 1
        assert not torch.allclose(states["before RL"], states["early"])
        assert not torch.allclose(states["early"], states["late"])
        names = pg.runner.adapters.loaded
        assert set(names) == {str(release.checkpoint("early").adapter), str(release.checkpoint("late").adapter)}
        assert pg.runner.engine.config.max_pixels == 224 * 224 and pg.runner.engine.config.max_new_tokens == 96
        # Compare checkpoints: every checkpoint on the same scene, each with the answer its own run gives
        status, image, gallery, table = client.predict(SEED, api_name="/playground_compare")
        assert status.startswith(f"Compared every checkpoint on seed {SEED}: ") and Path(image).is_file()
        rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("| ")]
        assert [r[0] for r in rows[1:]] == ["before RL", "early", "late"]
        assert {r[0]: r[4] for r in rows[1:]} == letters
        assert all(r[5] in ("✓ right", "✗ wrong") for r in rows[1:]) and rows[0][5] == "right?"
        assert len(gallery) <= 3 and all(c["caption"].split(" (step")[0] in letters for c in gallery)
    finally:
        demo.close()


# ----- the app without a release, with a broken one ---------------------------------------------


def tab_labels(demo) -> list[str]:
    return [c["props"].get("label") for c in demo.get_config_file()["components"] if c["type"] == "tabitem"]


def test_the_app_without_a_release_has_no_playground_tab(monkeypatch, tmp_path):
    demo = app.build_demo(scripted_engine(), examples=[])
    assert tab_labels(demo) == ["Ask"]
    assert not any("playground" in str(d.get("api_name")) for d in demo.get_config_file()["dependencies"])
    from mgpo import service

    assert service.load_playground(None, default=tmp_path / "no-release") is None
    assert service.load_playground(None) is None and service.load_playground("off", default=app.SHIPPED_RELEASE) is None


def test_a_broken_release_shows_its_error_in_the_tab_and_the_ask_tab_works(tmp_path):
    folder = _skeleton(tmp_path / "broken")
    (folder / "checkpoints.json").write_text("{")
    playground = app.load_playground(str(folder))
    assert isinstance(playground, ReleaseError)
    demo = app.build_demo(scripted_engine(), playground=playground, examples=[])
    assert tab_labels(demo) == ["Ask", "Playground"]
    page = str(demo.get_config_file())
    assert "The playground release could not be loaded" in page and "is not valid JSON" in page
    url = serve(demo)
    try:
        out = Client(url, verbose=False).predict(*run_args(handle_file(str(PARKING))), api_name="/run")
        assert out[0].startswith("Done in ") and out[4] == "A — LB MA 864"
    finally:
        demo.close()


def test_the_tab_shows_the_curves_the_metrics_and_the_summary(fake_release):
    demo = app.build_demo(scripted_engine(), playground=Release.load(fake_release), examples=[])
    config = demo.get_config_file()
    by_id = {c["props"].get("elem_id"): c for c in config["components"] if c["props"].get("elem_id")}
    assert by_id["pg-curves"]["type"] == "image"
    plot = by_id["pg-metrics"]["props"]
    assert (plot["x"], plot["y"], plot["color"]) == ("step", "value", "series")
    assert len(plot["value"]["data"]) == 90 and plot["value"]["data"][0] == [1, 0.025, "reward"]
    assert "| after · mgpo | 0.750 | 16 | 0.900 | 0.700 |" in by_id["pg-summary"]["props"]["value"]
    assert by_id["pg-checkpoint"]["props"]["value"] == "late"
    assert [c[1] for c in by_id["pg-checkpoint"]["props"]["choices"]] == ["before RL", "early", "late"]
    assert "fake playground release" in by_id["pg-card"]["props"]["value"]
    assert "license:" not in by_id["pg-card"]["props"]["value"]   # the front matter is not shown
    for c in config["components"]:                               # every input has a label
        if c["type"] in ("number", "radio", "textbox", "image"):
            assert c["props"].get("label"), c


def test_parse_args_and_make_app_find_the_release(tiny_model_dir, fake_release):
    assert app.parse_args(["--playground", "/r"], {}).playground == "/r"
    assert app.parse_args([], {"MGPO_PLAYGROUND": "/env"}).playground == "/env"
    assert app.parse_args([], {}).playground is None
    demo = app.make_app(app.AppConfig(model=str(tiny_model_dir), playground=str(fake_release)))
    assert tab_labels(demo) == ["Ask", "Playground"]
    demo = app.make_app(app.AppConfig(model=str(tiny_model_dir), playground="off"))
    assert tab_labels(demo) == ["Ask"]


def test_without_the_main_model_the_playground_tab_still_answers(tmp_path, fake_release):
    """Offline, the 7B cannot load: the page explains why and the playground model still runs."""
    demo = app.make_app(app.AppConfig(model=str(tmp_path / "no-such-model"), playground=str(fake_release)))
    assert tab_labels(demo) == ["Playground", "Ask"]
    page = str(demo.get_config_file())
    assert "the model could not be loaded" in page and "runs the small model" in page
    assert any(d.get("api_name") == "playground_run" for d in demo.get_config_file()["dependencies"])
    demo = app.make_app(app.AppConfig(model=str(tmp_path / "no-such-model"), playground="off"))
    assert tab_labels(demo) == [] and "the model could not be loaded" in str(demo.get_config_file())


def test_the_tab_says_what_the_base_was_trained_on(fake_release, tmp_path):
    """The intro reads the release's base card: taught boxes under MGPO's turn 1 (the `ask`
    wordings of earlier releases), or boxes only from referring prompts (the `refer` wordings of
    the shipped one), with MGPO's turn-2 reading where the base learned it."""
    import shutil

    from train.playground import cards, settings
    from ui.playground import BASE_NEVER_TURN1, BASE_READS_TURN2, BASE_TAUGHT_TURN1, BASE_UNKNOWN, base_note

    never = BASE_NEVER_TURN1.format(zoom=BASE_READS_TURN2)      # the shipped base also read MGPO's turn 2
    assert base_note(Release.load(app.SHIPPED_RELEASE)) == never
    folder = tmp_path / "rel"
    shutil.copytree(fake_release, folder)
    (folder / "model" / "README.md").unlink(missing_ok=True)
    assert base_note(Release.load(folder)) == BASE_UNKNOWN
    for wordings, skills, note in (("refer", "ground,zoom", never), ("refer", "ground", BASE_NEVER_TURN1.format(zoom="")),
                                   ("ask,locate", "ground,zoom", BASE_TAUGHT_TURN1)):
        cfg = settings.RecipeConfig(skill_prompt=wordings, curriculum=f"{skills}:10:1e-3")
        (folder / "model" / "README.md").write_text(cards.base_card(cfg, [{"loss": 0.5}]))
        assert base_note(Release.load(folder)) == note

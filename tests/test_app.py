"""The Gradio demo: events → components (no server), the served app through gradio_client with a
scripted engine (streaming, bad input, Stop, a full queue) and with the tiny real Qwen2.5-VL
(streaming, LoRA adapters, a model that cannot be loaded)."""

from __future__ import annotations

import json
import math
import socket
import struct
import time
import zlib
from concurrent.futures import wait
from pathlib import Path

import pytest
from PIL import Image

import app
from conftest import BOX_TEXT, noise_image
from mgpo import transcript
from mgpo.engine import Engine
from mgpo.scripted import ScriptedBackend

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARKING = ROOT / "examples" / "parking.jpg"
CHOICES = "LB MA 864\nLB MA 846\nLR MA 864\nKB MA 864\nThe blue car has no plate"
PLATE_BOX = (318, 585, 431, 670)   # the blue car's plate in parking.jpg's 1232×812 model frame


def text_of(message: dict) -> str:
    return " ".join(c.get("text", "") for c in message["content"] if c.get("type") == "text")


def scripted_reply(sample: int, turn: int, message: dict) -> str:
    """A stand-in model that reads its prompt: boxes the plate, then answers A (the baseline says B).
    A question starting with "slow" makes turn 1 long (for Stop); "badbox" gives an out-of-frame box
    in turn 1, "tiny" a too-small box in a third turn's look inside the crop."""
    text = text_of(message)
    if "within this sub-image" in text:     # a third turn's "refine" look inside the crop
        return "Closer still. " + BOX_TEXT % ((10, 10, 30, 30) if "tiny" in text else (100, 150, 420, 330))
    if "Out the coordinates" in text:      # MGPO turn 1 (grounding)
        if "slow" in text:
            return "Looking " + "very " * 200 + "carefully."
        box = (900, 700, 1400, 900) if "badbox" in text else PLATE_BOX
        return "The plate is on the blue car in the lower row. " + BOX_TEXT % box
    if "Output the coordinates" in text:   # the single-turn baseline
        return "The plate is too small to read; perhaps LB MA 846. \\boxed{B}"
    return "In the enlarged crop the plate reads LB MA 864, which is choice A. \\boxed{A}"


def scripted_engine(delay: float = 0.0, chunk: int = 3) -> Engine:
    return Engine(ScriptedBackend(scripted_reply, chunk=chunk, delay=delay), name="scripted stand-in")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(demo):
    _, url, _ = app.launch(demo, app.AppConfig(port=free_port()), block=False)
    return url


def run_args(image, question="What is the licence plate number of the blue car?", choices=CHOICES, *,
             max_turns=2, compare=False, min_pixels=200704, max_pixels=1003520, temperature=0.0,
             max_new_tokens=1024, box_rule="paper"):
    return (image, question, choices, max_turns, compare, min_pixels, max_pixels, temperature,
            max_new_tokens, box_rule)


def transcript_for(engine: Engine, question: str, mode_runs=("mgpo",), image=None) -> transcript.Transcript:
    image = image or Image.open(PARKING).convert("RGB")
    view = transcript.Transcript(image, question, CHOICES.splitlines())
    runner = app.Runner(engine)
    for run, event in runner.events(image, question, CHOICES, app.Settings(), compare="baseline" in mode_runs):
        view.apply(run, event)
    return view


# ----- events → components, no server ----------------------------------------------------------


def test_transcript_maps_a_zoom_run_to_steps_boxes_crops_and_answer():
    view = transcript_for(scripted_engine(), "What is the licence plate number of the blue car?", ("mgpo", "baseline"))
    titles = [m.get("metadata", {}).get("title") for m in view.messages if m.get("metadata")]
    assert titles[0] == "Turn 1 · find the key area on the full image"
    assert titles[1].startswith("Cropping region (")
    assert titles[2] == "Turn 2 · answer with the zoomed crop"
    assert titles[3] == "Baseline · Turn 1 · single turn, no zoom"
    assert view.messages[0]["role"] == "user" and "(A) LB MA 864" in view.messages[0]["content"]
    assert "```json" in view.messages[1]["content"]          # turn 1's text, JSON box included
    assert [m["metadata"].get("status") for m in view.messages if m.get("metadata", {}).get("title", "").startswith(("Turn", "Baseline · Turn"))] == ["done", None, None]
    assert view.answer("mgpo") == "A — LB MA 864" and view.answer("baseline") == "B — LB MA 846"
    assert view.messages[-1]["content"] == "**Baseline answer:** B — LB MA 846"

    # the crop is what the engine fed: its box maps the model-frame box back to original pixels
    (crop_img, caption), = view.gallery()
    crop = view.crops[0]
    assert crop_img.size == crop.fed_size and caption.startswith("turn 2: ")
    x1, y1, x2, y2 = crop.box_original
    bx1, by1, bx2, by2 = PLATE_BOX    # paper Eq. 3: x_ori = x / W_in · W_ori (floor / ceil outwards)
    assert crop.box_original == (math.floor(bx1 * 2400 / 1232), math.floor(by1 * 1600 / 812),
                                 math.ceil(bx2 * 2400 / 1232), math.ceil(by2 * 1600 / 812))
    assert "Cut " in view.messages[2]["content"] and f"{crop.fed_size[0]}×{crop.fed_size[1]}" in view.messages[2]["content"]

    # the box is drawn in turn 1's colour on the scaled-down original
    img = view.box_image()
    assert max(img.size) == transcript.DISPLAY_SIDE
    s = img.width / view.original.width
    edge = img.getpixel((int((x1 + x2) / 2 * s), int(y2 * s) - 1))
    assert sum(abs(a - b) for a, b in zip(edge, transcript.TURN_COLOURS[0])) < 60

    rows = view.stats()
    assert [r[:3] for r in rows] == [["MGPO", 1, "grounding"], ["MGPO", 2, "crop"], ["Baseline", 1, "direct"]]
    assert rows[0][3] == "1232×812" and rows[1][4] == crop.visual_tokens
    assert "One pass at the native 2400×1600 resolution" in view.summary()


def test_transcript_shows_a_refused_box_and_the_fallback_turn():
    view = transcript_for(scripted_engine(), "badbox: what does the plate say?")
    titles = [m["metadata"]["title"] for m in view.messages if m.get("metadata")]
    assert titles[1].startswith("No usable box: outside the image")
    assert titles[2] == "Turn 2 · answer from the full image (no usable box)"
    assert view.crops == [] and view.gallery() == []
    (_, event, shown), = view.boxes
    assert not event.valid and shown is not None                 # drawn where it pointed, clipped
    img = view.box_image()
    s = img.width / view.original.width
    assert img.getpixel((int((shown[0] + shown[2]) / 2 * s), int(shown[1] * s) + 1))[0] > 180   # red


@pytest.mark.parametrize("refine_box_ok", [True, False])
def test_transcript_of_a_three_turn_run_zooms_twice_or_keeps_the_first_crop(refine_box_ok):
    image = Image.open(PARKING).convert("RGB")
    question = "What is the plate?" if refine_box_ok else "tiny: what is the plate?"   # "tiny": a too-small box
    engine = scripted_engine()
    view = transcript.Transcript(image, question, CHOICES.splitlines())
    for run, event in app.Runner(engine).events(image, question, CHOICES, app.Settings(max_turns=3)):
        view.apply(run, event)
    titles = [m["metadata"]["title"] for m in view.messages if m.get("metadata")]
    assert titles[2] == "Turn 2 · look inside the crop and box again"
    assert titles[-1] == "Turn 3 · answer with the zoomed crop"
    first = view.crops[0].box_original
    if refine_box_ok:
        assert titles[3].startswith("Cropping region (") and len(view.crops) == 2
        second = view.crops[1].box_original           # inside the first crop, in original pixels
        assert first[0] <= second[0] < second[2] <= first[2] and first[1] <= second[1] < second[3] <= first[3]
        assert [e.turn for _, e, _ in view.boxes] == [1, 2]
    else:
        assert titles[3].startswith("No usable box: too small") and len(view.crops) == 1
        assert view.messages[-3]["content"].endswith("The next turn answers with the earlier crop.")
    assert view.answer("mgpo") == "A — LB MA 864"


def test_transcript_without_boxed_answer_says_so():
    engine = Engine(ScriptedBackend(["I do not know."]), name="x")
    view = transcript.Transcript(noise_image(400, 300), "What is it?")
    for event in engine.run(noise_image(400, 300), "What is it?"):
        view.apply("mgpo", event)
    assert view.answer("mgpo") == "no \\boxed{} answer in the model's reply"


def test_build_demo_labels_every_input_and_sets_the_queue():
    demo = app.build_demo(scripted_engine(), queue_size=5, concurrency=1)
    config = demo.get_config_file()
    inputs = [c for c in config["components"] if c.get("type") in ("image", "textbox", "slider", "checkbox", "number", "dropdown")]
    assert len(inputs) >= 12
    for c in inputs:
        assert c["props"].get("label"), f"{c['type']} {c['id']} has no label"
    assert demo._queue.max_size == 5
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"run", "stop", "load_adapter", "base_model"} <= names
    assert "MGPO" in config["title"]


def test_parse_args_reads_flags_over_environment():
    env = {"MGPO_MODEL": "/models/qwen", "MGPO_PORT": "9000", "MGPO_SHARE": "1", "GRADIO_SERVER_NAME": "0.0.0.0"}
    cfg = app.parse_args([], env)
    assert (cfg.model, cfg.port, cfg.share, cfg.host, cfg.adapter) == ("/models/qwen", 9000, True, "0.0.0.0", None)
    cfg = app.parse_args(["--model", "m", "--adapter", "a", "--port", "7000", "--host", "h"], env)
    assert (cfg.model, cfg.adapter, cfg.port, cfg.host) == ("m", "a", 7000, "h")
    assert app.parse_args([], {}).model == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_examples_are_large_small_files_with_valid_choices():
    items = json.loads((ROOT / "examples" / "examples.json").read_text())
    assert len(items) >= 4
    for it in items:
        path = ROOT / "examples" / it["image"]
        assert path.stat().st_size < 1_000_000
        with Image.open(path) as im:
            assert max(im.size) >= 2000
        assert it["question"].strip() and 2 <= len(it["choices"]) <= 5
        assert it["answer"] in "ABCDE"[: len(it["choices"])]
    assert [r[0] for r in app.load_examples()] == [str(ROOT / "examples" / it["image"]) for it in items]


def test_a_model_that_cannot_load_gives_an_explaining_page(tmp_path):
    demo = app.make_app(app.AppConfig(model=str(tmp_path / "no-such-model")))
    config = demo.get_config_file()
    text = json.dumps(config)
    assert "the model could not be loaded" in text
    assert "python -m mgpo.tiny" in text and "Could not load the model" in text
    assert "Traceback" not in text


# ----- the served app with a scripted engine ----------------------------------------------------


@pytest.fixture(scope="module")
def scripted_server():
    demo = app.build_demo(scripted_engine(delay=0.002), queue_size=16)
    url = serve(demo)
    yield url
    demo.close()


def test_client_streams_a_run_in_order(scripted_server):
    client = Client(scripted_server, verbose=False)
    job = client.submit(*run_args(handle_file(str(PARKING)), compare=True), api_name="/run")
    status, chat, boxes, crops, answer, baseline, stats, summary = job.result(timeout=60)
    outputs = job.outputs()
    statuses = [o[0] for o in outputs]
    first_turn2 = next(i for i, s in enumerate(statuses) if s.startswith("MGPO: turn 2"))
    assert statuses[0].startswith("MGPO: turn 1") and all(s.startswith("MGPO: turn 1") for s in statuses[:first_turn2])
    assert any(s.startswith("Baseline: turn 1") for s in statuses[first_turn2:])
    assert status.startswith("Done in ")
    assert (answer, baseline) == ("A — LB MA 864", "B — LB MA 846")
    assert chat[-1]["content"][0]["text"] == "**Baseline answer:** B — LB MA 846"
    assert len(crops) == 1 and crops[0]["caption"].startswith("turn 2: ")
    assert [row[2] for row in stats["data"]] == ["grounding", "crop", "direct"]
    # turn 1's text grows across updates before the turn is done
    turn1 = [o[1][1]["content"][0]["text"] for o in outputs if isinstance(o[1], list) and len(o[1]) > 1]
    assert len(turn1) >= 2 and turn1[0] != turn1[-1] and turn1[-1].startswith(turn1[0])


@pytest.mark.parametrize("case,message", [
    ("no image", "Add an image first"),
    ("text file", "not an image this program can read"),
    ("corrupt", "damaged or truncated"),
    ("huge", "is 9000×8000 = 72 MP; the limit is 67 MP"),
    ("gigantic", "too large to open safely"),
    ("empty question", "The question is empty"),
    ("too many choices", "at most 26 are supported"),
])
def test_bad_input_gets_a_specific_message_and_the_app_stays_up(scripted_server, tmp_path, case, message):
    client = Client(scripted_server, verbose=False)
    image, question, choices = handle_file(str(PARKING)), "What is the plate?", CHOICES
    if case == "no image":
        image = None
    elif case == "text file":
        (tmp_path / "notes.txt").write_text("not a picture")
        image = handle_file(str(tmp_path / "notes.txt"))
    elif case == "corrupt":
        data = PARKING.read_bytes()
        (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
        image = handle_file(str(tmp_path / "cut.jpg"))
    elif case in ("huge", "gigantic"):
        w, h = (9000, 8000) if case == "huge" else (40000, 40000)
        (tmp_path / "huge.png").write_bytes(png_header_only(w, h))
        image = handle_file(str(tmp_path / "huge.png"))
    elif case == "empty question":
        question = "   "
    elif case == "too many choices":
        choices = "\n".join(f"option {i}" for i in range(30))
    status, *rest = client.predict(*run_args(image, question, choices), api_name="/run")
    assert status.startswith("⚠️ ") and message in status
    assert "Traceback" not in status and rest[3] == {"__type__": "update"}   # the answer box is left alone
    out = client.predict(*run_args(handle_file(str(PARKING))), api_name="/run")
    assert out[4] == "A — LB MA 864"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` but carries one byte of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_stop_cancels_generation_and_frees_the_model(scripted_server):
    """Turn 1 of a "slow" question takes ~4 s; after cancelling it, the next request (which would
    wait behind it, one model run at a time) finishes at once."""
    client = Client(scripted_server, verbose=False)
    job = client.submit(*run_args(handle_file(str(PARKING)), "slow: what does the plate say?"), api_name="/run")
    deadline = time.time() + 20
    while len(job.outputs()) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(job.outputs()) >= 2, "no streamed update before cancelling"
    job.cancel()
    time.sleep(0.3)
    seen = len(job.outputs())
    t0 = time.perf_counter()
    out = Client(scripted_server, verbose=False).predict(*run_args(handle_file(str(PARKING))), api_name="/run")
    assert out[4] == "A — LB MA 864"
    assert time.perf_counter() - t0 < 3.0
    assert len(job.outputs()) == seen
    assert not any(str(o[0]).startswith("MGPO: turn 2") for o in job.outputs())


def test_twenty_concurrent_requests_complete_or_hear_the_queue_is_full():
    demo = app.build_demo(scripted_engine(delay=0.003), queue_size=3, concurrency=1)
    url = serve(demo)
    try:
        client = Client(url, verbose=False)
        jobs = [client.submit(*run_args(handle_file(str(PARKING))), api_name="/run") for _ in range(20)]
        done, not_done = wait([j.future if hasattr(j, "future") else j for j in jobs], timeout=90)
        assert not not_done, "a request hung"
        answered = full = 0
        for j in jobs:
            try:
                assert j.result(timeout=1)[4] == "A — LB MA 864"
                answered += 1
            except Exception as e:   # gradio_client raises QueueError("Queue is full! Please try again.")
                assert "queue is full" in str(e).lower(), repr(e)
                full += 1
        assert answered + full == 20 and answered >= 4 and full >= 1
    finally:
        demo.close()


# ----- the served app with the tiny real Qwen2.5-VL ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir):
    demo = app.make_app(app.AppConfig(model=str(tiny_model_dir), queue_size=8))
    url = serve(demo)
    yield url
    demo.close()


def test_client_against_the_tiny_model_streams_turns_and_ends_with_the_answer(tiny_server):
    client = Client(tiny_server, verbose=False)
    job = client.submit(*run_args(handle_file(str(PARKING)), max_new_tokens=24), api_name="/run")
    last = job.result(timeout=120)
    statuses = [o[0] for o in job.outputs()]
    assert statuses[0].startswith("MGPO: turn 1")
    turn2 = [i for i, s in enumerate(statuses) if s.startswith("MGPO: turn 2")]
    assert turn2 and all(not s.startswith("MGPO: turn 1") for s in statuses[turn2[0]:])
    assert last[0].startswith("Done in ")
    assert last[4]                                      # the answer box is filled (a random model's answer)
    assert last[1][-1]["content"][0]["text"].startswith("**MGPO answer:**")
    assert [row[1] for row in last[6]["data"]] == [1, 2] and last[6]["data"][0][5] > 1000   # prompt tokens


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with non-zero weights on the tiny model's language layers."""
    from peft import LoraConfig, get_peft_model

    from mgpo.model import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora") / "tiny-lora"
    get_peft_model(loaded.model, cfg).save_pretrained(out)
    return out


def test_adapters_switch_the_live_model(tiny_model_dir, tiny_adapter):
    import torch

    from mgpo.adapters import AdapterStore

    engine = Engine.from_pretrained(str(tiny_model_dir), device="cpu")
    adapters = AdapterStore(engine)
    core = engine.backend.core
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])

    def logits():
        with torch.no_grad():
            return core.model.language_model(input_ids=ids).last_hidden_state

    base = logits()
    assert adapters.load(str(tiny_adapter), visitor=False) == str(tiny_adapter)
    with adapters.use(str(tiny_adapter)):
        tuned = logits()
    assert not torch.allclose(base, tuned)
    with adapters.use(None):
        assert torch.allclose(base, logits())
    with adapters.use(str(tiny_adapter)):
        assert torch.allclose(tuned, logits())
    with pytest.raises(app.ModelLoadError, match="Could not load the LoRA adapter"):
        adapters.load("/no/such/adapter", visitor=False)

    # an adapter given at start (--adapter) is the page's default; "Use the base model" turns it off
    runner = app.Runner(Engine.from_pretrained(str(tiny_model_dir), device="cpu"), str(tiny_adapter))
    assert runner.adapter == str(tiny_adapter)
    core = runner.engine.backend.core
    with runner.adapters.use(str(tiny_adapter)):
        assert torch.allclose(tuned, logits())
    with runner.adapters.use(None):
        assert torch.allclose(base, logits())


def test_adapter_box_loads_a_listed_folder_and_refuses_unknown_ids(tiny_model_dir, tiny_adapter):
    demo = app.make_app(app.AppConfig(model=str(tiny_model_dir), queue_size=8, adapters=(str(tiny_adapter),),
                                      any_adapter=True))
    try:
        _adapter_box_checks(Client(serve(demo), verbose=False), tiny_adapter)
    finally:
        demo.close()


def _adapter_box_checks(client, tiny_adapter):
    header, note = client.predict("nobody/no-such-adapter", api_name="/load_adapter")
    assert note.startswith("⚠️ Could not load the LoRA adapter 'nobody/no-such-adapter'")
    assert header == {"__type__": "update"}                     # the header keeps the base model
    header, note = client.predict(str(tiny_adapter), api_name="/load_adapter")
    assert f"LoRA **{tiny_adapter}**" in header and "Loaded" in note
    out = client.predict(*run_args(handle_file(str(PARKING)), max_new_tokens=16), api_name="/run")
    assert out[0].startswith("Done in ")


def test_make_app_puts_the_start_adapter_in_the_header_or_explains_why_not(tiny_model_dir, tiny_adapter, tmp_path):
    page = str(app.make_app(app.AppConfig(model=str(tiny_model_dir), adapter=str(tiny_adapter))).get_config_file())
    assert f"LoRA **{tiny_adapter}**" in page and "tiny *random* test model" in page
    page = str(app.make_app(app.AppConfig(model=str(tiny_model_dir), adapter=str(tmp_path / "nope"))).get_config_file())
    assert "the model could not be loaded" in page and "Could not load the LoRA adapter" in page

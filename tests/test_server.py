"""``--server``: the engine over OpenAI-compatible chat-completions servers, through
``huggingface_hub``'s InferenceClient, against a loopback server (tests/openai_server.py: the
shipped playground release's default checkpoint, its LoRA merged into the base as a server loads a
model, served through transformers — vLLM cannot run on these CPU machines)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import ROOT

from mgpo.engine import Engine, EngineConfig, Request
from mgpo.playground.release import Release
from mgpo.playground.world import MAX_NEW_TOKENS, Budgets, make_scene, split_seeds
from mgpo.server import ServerBackend, ServerError, openai_message, parse_urls

from openai_server import ChatServer

RELEASE = ROOT / "examples" / "playground"
OVERVIEW = Release.load(RELEASE).overview             # the world the release was trained in
BUDGETS = Budgets.for_overview(OVERVIEW)
CONFIG = EngineConfig(max_turns=2, max_new_tokens=MAX_NEW_TOKENS, **BUDGETS.engine())
SCENES = split_seeds("test", 3, 40)


@pytest.fixture(scope="module")
def served_model(tmp_path_factory) -> str:
    """The release's default checkpoint as one model folder: its LoRA merged into the base."""
    import shutil

    from mgpo.model import load_model
    from mgpo.playground.release import resolve

    model, adapter, _ = resolve(RELEASE)
    out = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(model, out)
    load_model(model, adapter=adapter, device="cpu").model.merge_and_unload().save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def server(served_model):
    s = ChatServer(served_model, **BUDGETS.engine())
    yield s
    s.close()


@pytest.fixture(scope="module")
def local(served_model):
    return Engine.from_pretrained(served_model, config=CONFIG, device="cpu")


def requests():
    return [Request(s.image, s.question, s.choices, id=str(s.seed))
            for s in (make_scene(seed, budgets=BUDGETS) for seed in SCENES)]


def summary(events) -> list[dict]:
    """Per sample: every turn's text, every box (model frame and original pixels), every crop's
    region and size as fed, the final answer — and the streamed text of each turn."""
    out: dict[int, dict] = {}
    for e in events:
        d = out.setdefault(e.sample, {"texts": [], "boxes": [], "crops": [], "streamed": {}})
        if e.type == "text":
            d["streamed"][e.turn] = d["streamed"].get(e.turn, "") + e.text
        elif e.type == "turn_finished":
            d["texts"].append(e.text)
        elif e.type == "box":
            d["boxes"].append((e.box_model, e.box_original, e.valid))
        elif e.type == "crop":
            d["crops"].append((e.box_original, e.fed_size, e.image.tobytes()))
        elif e.type == "final":
            d["answer"] = (e.answer, e.letter, e.turns)
    return [out[k] for k in sorted(out)]


def backend(server_or_urls, **kw) -> ServerBackend:
    urls = server_or_urls.url if isinstance(server_or_urls, ChatServer) else server_or_urls
    return ServerBackend(urls, **{"timeout": 30.0, "backoff": 0.01, **kw})


def test_the_server_gives_the_in_process_boxes_crops_and_answers(server, local):
    remote = Engine(backend(server), CONFIG)
    want, got = summary(local.stream(requests())), summary(remote.stream(requests()))
    assert [g["answer"] for g in got] == [w["answer"] for w in want]
    assert [g["boxes"] for g in got] == [w["boxes"] for w in want] and all(w["boxes"] for w in want)
    assert [g["crops"] for g in got] == [w["crops"] for w in want]      # the same pixels, fed at the same size
    assert [g["texts"] for g in got] == [w["texts"] for w in want]
    for g in got:                                                       # deltas add up to each turn's text
        assert [g["streamed"][t] for t in sorted(g["streamed"])] == g["texts"]
    # what went over the wire: images at the engine's model frame, the crop in a user turn
    body = server.bodies[-1]
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user"] and body["temperature"] == 0.0
    assert body["max_tokens"] == MAX_NEW_TOKENS and body["stream"] is True
    crop_msg = body["messages"][3]["content"]
    assert [c["type"] for c in crop_msg].count("image_url") == 1
    # direct mode, too
    assert summary(remote.stream(requests(), mode="direct")) == summary(local.stream(requests(), mode="direct"))


def test_turn_one_stops_after_its_json_block(server, local):
    events = list(Engine(backend(server), CONFIG).stream(requests()[:1]))
    first, second = [e for e in events if e.type == "turn_finished"]
    assert first.stop == "box" and first.text.rstrip().endswith("```")
    assert first.new_tokens > 10                                      # streamed chunks: no usage on a cut stream
    assert second.stop == "eos" and second.prefill_tokens > 64 + 16 and second.new_tokens > 0   # the server's usage


def test_faults_are_retried_and_lose_nothing(server):
    clean = summary(Engine(backend(server), CONFIG).stream(requests()[:1]))
    server.hang = 4.0                                   # past the client's timeout, not a slow shared CPU
    server.faults = ["500", "drop", "timeout", "429"]
    before = server.requests
    got = summary(Engine(backend(server, timeout=3.0, retries=4), CONFIG).stream(requests()[:1]))
    server.faults, server.hang = [], 5.0
    assert got == clean                                 # the dropped stream's text was not passed on twice
    assert server.requests - before == len(clean[0]["texts"]) + 4


def test_a_server_that_keeps_failing_is_named_and_a_bad_request_is_not_retried(server):
    server.faults = ["500"] * 10
    t = time.perf_counter()
    with pytest.raises(ServerError, match=rf"{server.url}: no answer after 3 tries \(last: HTTP 500\)"):
        list(Engine(backend(server, retries=2), CONFIG).stream(requests()[:1]))
    assert time.perf_counter() - t < 10
    server.faults = ["400"]
    before = server.requests
    with pytest.raises(ServerError, match=r"refused the request \(HTTP 400\).*injected 400"):
        list(Engine(backend(server), CONFIG).stream(requests()[:1]))
    assert server.requests - before == 1
    server.faults = []
    with socket.socket() as s:                          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(ServerError, match=rf"{dead}: no answer after 2 tries"):
        list(Engine(backend(dead, retries=1), CONFIG).stream(requests()[:1]))
    with pytest.raises(ServerError, match="does not exist"):            # an unknown --server-model
        list(Engine(backend(server, model="nope"), CONFIG).stream(requests()[:1]))


def test_several_servers_share_the_rows_with_a_bound_in_flight(server, served_model):
    other = ChatServer(served_model, **BUDGETS.engine(), work_seconds=0.2)
    server.work_seconds = 0.2
    try:
        a, b = server.requests, other.requests
        server.in_flight_max = other.in_flight_max = 0
        be = backend([server.url, other.url], max_in_flight=1)
        got = summary(Engine(be, CONFIG).stream(requests(), 2))      # 3 scenes × 2 samples
        assert len(got) == 6 and all("answer" in g for g in got)
        assert server.requests > a and other.requests > b
        assert server.in_flight_max == other.in_flight_max == 1
    finally:
        server.work_seconds = 0.0
        other.close()


def test_urls_and_messages():
    assert parse_urls("http://a:8000, http://b:9/v1/ ,") == ["http://a:8000/v1", "http://b:9/v1"]
    assert parse_urls("http://a/v1/chat/completions") == ["http://a/v1"]
    for bad in ("", "a:8000", " , "):
        with pytest.raises(ValueError, match="--server"):
            parse_urls(bad)
    from PIL import Image

    img = Image.new("RGB", (56, 28), (255, 0, 0))
    msg = openai_message({"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Q"}]})
    assert msg["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert msg["content"][1] == {"type": "text", "text": "Q"}
    assert openai_message({"role": "assistant", "content": [{"type": "text", "text": "A"}]}) == {
        "role": "assistant", "content": "A"}


def test_eval_over_a_server_keeps_finished_items_and_resumes(server, served_model, tmp_path, capsys):
    from mgpo.eval.__main__ import main as eval_main

    args = ["--benchmark", "playground", "--limit", "4", "--batch-size", "2", "--seed", "40", "--no-progress",
            "--model", served_model, "--overview", str(OVERVIEW)]
    assert eval_main(args + ["--out", str(tmp_path / "local")]) == 0
    # the first batch (2 items × 3 requests: turn 1, turn 2, the crop alone) is answered, then the server fails
    server.faults = [None] * 6 + ["500"] * 100
    remote = args + ["--out", str(tmp_path / "remote"), "--server", server.url, "--server-retries", "1"]
    assert eval_main(remote) == 4
    err = capsys.readouterr().err
    assert server.url in err and "rerun the same command to resume" in err
    assert len((tmp_path / "remote" / "items.jsonl").read_text().splitlines()) == 2
    server.faults = []
    assert eval_main(remote) == 0
    local = [json.loads(x) for x in (tmp_path / "local" / "items.jsonl").read_text().splitlines()]
    served = [json.loads(x) for x in (tmp_path / "remote" / "items.jsonl").read_text().splitlines()]
    keys = ("id", "prediction", "correct", "boxes", "texts", "crop_only")
    assert [{k: r.get(k) for k in keys} for r in served] == [{k: r.get(k) for k in keys} for r in local]
    results = json.loads((tmp_path / "remote" / "results.json").read_text())
    assert results["protocol"]["model"] == "served:default"
    assert eval_main(remote + ["--adapter", "x"]) == 2                     # adapters are the server's
    assert "--lora-modules" in capsys.readouterr().err


def test_infer_and_the_app_answer_through_a_server(server, tmp_path, capsys):
    import app
    from mgpo import infer

    scene = make_scene(SCENES[0], budgets=BUDGETS)
    png = tmp_path / "scene.png"
    scene.image.save(png)
    base = ["--model", str(RELEASE), "--checkpoint", "before RL", "--image", str(png), "--question", scene.question,
            "--choices", *scene.choices, "--json"]
    assert infer.main(base + ["--server", server.url]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["type"] == "final" and events[-1]["letter"] in "ABCD"
    assert any(e["type"] == "text" for e in events) and any(e["type"] == "crop" for e in events)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert infer.main(base + ["--server", dead, "--server-retries", "0"]) == 4
    assert f"{dead}/v1: no answer after 1 tries" in capsys.readouterr().err
    # the app with --server: the Ask tab answers through the server, its text streaming into the page
    from gradio_client import Client, handle_file

    from test_app import run_args, serve

    demo = app.make_app(app.parse_args(["--server", server.url, "--playground", "off"]))
    try:
        client = Client(serve(demo), verbose=False)
        job = client.submit(*run_args(handle_file(str(png)), scene.question, "\n".join(scene.choices),
                                      max_new_tokens=MAX_NEW_TOKENS, **BUDGETS.engine()), api_name="/run")
        status, chat, boxes, crops, answer, *_ = job.result(timeout=120)
        assert status.startswith("Done in ") and answer[:1] in "ABCD" and len(crops) == 1
        turn1 = [o[1][1]["content"][0]["text"] for o in job.outputs() if isinstance(o[1], list) and len(o[1]) > 1]
        assert len(turn1) >= 2 and turn1[0] != turn1[-1]            # turn 1 grew over several updates
    finally:
        demo.close()

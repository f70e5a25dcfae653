"""The engine's turn logic with a scripted stand-in model (known outputs, no network)."""

import pytest
from PIL import Image

from mgpo import geometry
from mgpo.engine import Engine, EngineConfig, InputError, Request
from mgpo.images import ImageError
from mgpo.scripted import ScriptedBackend

from conftest import BOX_TEXT

IMG = Image.new("RGB", (4000, 3000), "gray")     # model frame 1148×868 (1271 visual tokens)
FRAME = geometry.model_frame(IMG.size)


def run(replies, question="What is the plate number?", choices=("LB MA 864", "LB MA 846"), **kw):
    backend = ScriptedBackend(replies)
    events = list(Engine(backend, EngineConfig(**kw)).run(IMG, question, list(choices) if choices else None))
    return backend, events


def types(events):
    out = []
    for e in events:
        if e.type == "text" and out and out[-1] == "text":
            continue
        out.append(e.type)
    return out


def test_valid_box_path():
    backend, events = run(["Looking at the car. " + BOX_TEXT % (100, 100, 300, 260) + " extra", "LB MA 864. \\boxed{A}"])
    assert types(events) == ["turn_started", "text", "turn_finished", "box", "crop", "turn_started", "text",
                             "turn_finished", "final"]
    t1 = events[0]
    assert t1.kind == "grounding" and t1.image_size == FRAME and t1.visual_tokens == 1271
    finished1 = next(e for e in events if e.type == "turn_finished")
    assert finished1.stop == "box" and finished1.text.endswith("```") and "extra" not in finished1.text
    box = next(e for e in events if e.type == "box")
    assert box.valid and box.box_model == (100, 100, 300, 260) and box.rule == "paper"
    assert box.box_original == geometry.to_region((100, 100, 300, 260), FRAME, (0, 0, 4000, 3000))
    crop = next(e for e in events if e.type == "crop")
    assert crop.box_original == box.box_original and crop.image.size == crop.fed_size
    assert crop.crop_size == (box.box_original[2] - box.box_original[0], box.box_original[3] - box.box_original[1])
    t2 = [e for e in events if e.type == "turn_started"][1]
    assert t2.kind == "crop" and t2.image_size == crop.fed_size
    assert t2.prompt.startswith("Based on the provided coordinates, return the sub-image:\n<image>\nQuestion:")
    final = events[-1]
    assert final.answer == "A" and final.letter == "A" and final.turns == 2
    assert final.visual_tokens == 1271 + crop.visual_tokens
    assert final.native_visual_tokens == geometry.native_visual_tokens(IMG.size)
    # the model saw: system + turn-1 (overview), then the crop
    (_, first), (_, second) = backend.messages
    assert first["content"][0]["image"].size == FRAME
    assert second["content"][1]["image"].size == crop.fed_size


@pytest.mark.parametrize(
    "turn1, reason",
    [
        ("I cannot tell.", "no box"),
        (BOX_TEXT % (300, 100, 100, 260), "reversed"),
        (BOX_TEXT % (100, 100, 5000, 260), "outside"),
        (BOX_TEXT % (100, 100, 110, 260), "too small"),
        ('```json\n[{"bbox_2d": [NaN, 1, 2, 3]}]\n```', "no box"),
        ('```json\n[{"bbox_2d": [1.5, -2, 300.2, 400]}]\n```', "negative"),
        ('```json\n[{"bbox_2d": [1, 2, 3e12, 400]}]\n```', "outside"),
        ("```json\n[{bbox_2d: oops}]\n```", "no box"),
    ],
)
def test_invalid_box_falls_back_to_the_original(turn1, reason):
    backend, events = run([turn1, "\\boxed{B}"])
    box = next(e for e in events if e.type == "box")
    assert not box.valid and reason in box.reason and box.box_original is None
    assert not any(e.type == "crop" for e in events)
    t2 = [e for e in events if e.type == "turn_started"][1]
    assert t2.kind == "fallback" and t2.image_size == FRAME
    assert t2.prompt.startswith("Not providing correct coordinates or invalid coordinate values")
    assert events[-1].letter == "B"


def test_box_rules_run_on_request_and_are_reported():
    _, events = run([BOX_TEXT % (1100, 800, 1160, 880), "\\boxed{A}"], box_rule="clamp")
    box = next(e for e in events if e.type == "box")
    assert box.valid and box.adjusted == ("clamped",) and box.rule == "clamp"
    _, events = run([BOX_TEXT % (500, 400, 510, 410), "\\boxed{A}"], box_rule="pad")
    box = next(e for e in events if e.type == "box")
    assert box.valid and box.adjusted == ("padded",)


def test_three_turns_crop_again_from_the_original():
    replies = [BOX_TEXT % (0, 0, 574, 434), "Closer. " + BOX_TEXT % (0, 0, 350, 280), "\\boxed{A}"]
    backend, events = run(replies, max_turns=3)
    kinds = [e.kind for e in events if e.type == "turn_started"]
    assert kinds == ["grounding", "refine", "crop"]
    boxes = [e for e in events if e.type == "box"]
    crops = [e for e in events if e.type == "crop"]
    assert len(boxes) == 2 and all(b.valid for b in boxes)
    # the second box was drawn on the first crop: it maps through the crop's region, inside it
    first, second = crops[0].box_original, crops[1].box_original
    assert first == (0, 0, 2000, 1500)
    assert second[0] >= first[0] and second[2] <= first[2] and second[2] - second[0] < first[2] - first[0]
    assert second == geometry.to_region((0, 0, 350, 280), boxes[1].frame, first)
    assert events[-1].turns == 3 and events[-1].letter == "A"


def test_refine_turn_may_answer_early():
    _, events = run([BOX_TEXT % (0, 0, 574, 434), "Clear enough: \\boxed{B}"], max_turns=3)
    assert events[-1].type == "final" and events[-1].turns == 2 and events[-1].letter == "B"


def test_invalid_refine_box_keeps_the_earlier_crop():
    _, events = run([BOX_TEXT % (0, 0, 574, 434), "no box", "\\boxed{A}"], max_turns=3)
    starts = [e for e in events if e.type == "turn_started"]
    assert [s.kind for s in starts] == ["grounding", "refine", "crop"]
    assert starts[2].image_size == starts[1].image_size


def test_direct_mode_is_one_turn_with_the_baseline_prompt():
    backend = ScriptedBackend([BOX_TEXT % (10, 10, 100, 100) + " \\boxed{B}"])
    events = list(Engine(backend).run(IMG, "Which?", ["x", "y"], mode="direct"))
    starts = [e for e in events if e.type == "turn_started"]
    assert len(starts) == 1 and starts[0].kind == "direct"
    assert "Output the coordinates of the key image area" in starts[0].prompt
    assert events[-1].letter == "B" and events[-1].turns == 1


def test_open_question_has_no_letter():
    _, events = run([BOX_TEXT % (0, 0, 574, 434), "It says STOP. \\boxed{STOP}"], choices=None)
    assert events[-1].answer == "STOP" and events[-1].letter is None
    assert "choices" not in [e for e in events if e.type == "turn_started"][1].prompt


def test_streamed_deltas_add_up_to_each_turn():
    _, events = run(["Thinking... " + BOX_TEXT % (10, 10, 300, 300), "Answer \\boxed{A}"])
    for turn in (1, 2):
        deltas = "".join(e.text for e in events if e.type == "text" and e.turn == turn)
        finished = next(e for e in events if e.type == "turn_finished" and e.turn == turn)
        assert deltas == finished.text and len([e for e in events if e.type == "text" and e.turn == turn]) > 3


def test_json_view_of_every_event():
    import json

    _, events = run([BOX_TEXT % (10, 10, 300, 300), "\\boxed{A}"])
    for e in events:
        d = e.to_dict()
        json.dumps(d)
        assert d["type"] == e.type and "image" not in d


@pytest.mark.parametrize(
    "question, choices, match",
    [("", None, "empty"), ("   \n", None, "empty"), ("x" * 5000, None, "limit"), (None, None, "empty"),
     ("ok", [str(i) for i in range(27)], "at most 26"),
     ("What is <|image_pad|> here?", None, "control tokens"), ("q", ["a", "b<|im_end|>"], "control tokens")],
)
def test_bad_requests_get_clear_errors(question, choices, match):
    engine = Engine(ScriptedBackend(["\\boxed{A}"]))
    with pytest.raises(InputError, match=match):
        list(engine.run(IMG, question, choices))


def test_bad_settings_get_clear_errors():
    engine = Engine(ScriptedBackend(["\\boxed{A}"]))
    with pytest.raises(InputError, match="max_turns"):
        list(engine.run(IMG, "q", max_turns=1))
    with pytest.raises(InputError, match="mode"):
        list(engine.run(IMG, "q", mode="zoom"))
    with pytest.raises(InputError, match="box rule"):
        list(engine.run(IMG, "q", box_rule="wide"))
    with pytest.raises(InputError, match="Qwen2.5-VL"):
        list(engine.run(Image.new("RGB", (5000, 10)), "q"))
    with pytest.raises(ImageError):
        list(engine.run(b"not an image", "q"))


def test_engine_stays_usable_after_an_error_and_after_cancel():
    backend = ScriptedBackend(["x" * 300 + BOX_TEXT % (10, 10, 300, 300), "\\boxed{A}"])
    engine = Engine(backend)
    with pytest.raises(InputError):
        list(engine.run(IMG, ""))
    stream = engine.run(IMG, "q")
    for e in stream:
        if e.type == "text":
            break
    stream.close()                     # the demo's Stop button
    events = list(Engine(ScriptedBackend([BOX_TEXT % (10, 10, 300, 300), "\\boxed{C}"])).run(IMG, "q", ["a", "b", "c"]))
    assert events[-1].letter == "C"


def test_batched_rollouts_with_groups():
    def reply(sample, turn, message):
        if turn == 1:
            return BOX_TEXT % (0, 0, 300, 300) if sample % 2 == 0 else "no idea"
        return "\\boxed{%s}" % "AB"[sample % 2]

    engine = Engine(ScriptedBackend(reply))
    requests = [Request(IMG, "q1", ["a", "b"], answer="A"), Request(Image.new("RGB", (800, 600)), "q2", ["a", "b"])]
    rollouts = engine.rollout(requests, group_size=3)
    assert [r.request for r in rollouts] == [0, 0, 0, 1, 1, 1] and [r.sample for r in rollouts] == list(range(6))
    for r in rollouts:
        assert len(r.token_ids) == len(r.loss_mask) == len(r.logprobs) == len(r.positions)
        assert r.final.letter == "AB"[r.sample % 2]
        assert r.valid_box == (r.sample % 2 == 0)
        assert r.kinds == ["grounding", "crop" if r.valid_box else "fallback"]
        assert len(r.images) == 2
        assert (r.crop_area is not None) == r.valid_box
        assert sum(r.loss_mask) == len(r.texts[0].encode()) + len(r.texts[1].encode()) + 2 - (r.valid_box)


def test_one_scripted_backend_serves_many_calls():
    engine = Engine(ScriptedBackend([BOX_TEXT % (10, 10, 300, 300), "\\boxed{B}"]))
    for _ in range(3):
        events = list(engine.run(IMG, "q", ["a", "b"]))
        assert [e.kind for e in events if e.type == "turn_started"] == ["grounding", "crop"]
        assert events[-1].letter == "B"

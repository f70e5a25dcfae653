"""The evaluation harness: loaders on fixture files in each public format (real JPEG / base64
images), exact scores from a scripted model whose right and wrong answers are chosen per item,
crop-only accuracy, resume after a crash, the CLI, and one run of the tiny real Qwen2.5-VL."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import BOX_TEXT, ROOT, noise_image

from mgpo import geometry
from mgpo.engine import Engine, EngineConfig
from mgpo.eval import DataError, EvalConfig, EvalError, evaluate, extract_letter, open_benchmark
from mgpo.eval.__main__ import main as cli
from mgpo.eval.datasets import split_vstar_text, vstar_order
from mgpo.eval.runner import ITEMS, load_rows
from mgpo.eval.scoring import benchmark_scores, cycle_accuracy, mme_category
from mgpo.prompts import LETTERS
from mgpo.scripted import ScriptedBackend

W, H = 640, 480            # fixture images; model frame (644, 476) at the paper's pixel limits
GOOD_BOX = (100, 100, 300, 300)   # valid in that frame
BAD_BOX = (0, 0, 10, 10)          # too small → fallback turn, no crop


def jpeg_bytes(seed: int, size=(W, H)) -> bytes:
    buf = io.BytesIO()
    noise_image(*size, seed=seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(seed))


# ----- fixture files in each exact public format ------------------------------------------------

OPTIONS = ["red", "blue", "green", "white"]


def make_vstar_folder(root: Path) -> Path:
    """V* pair form: category folders of sa_XXXX.jpg + sa_XXXX.json, options[0] correct."""
    for k, (cat, name) in enumerate([("direct_attributes", "sa_4690"), ("direct_attributes", "sa_4691"),
                                     ("relative_position", "sa_10"), ("relative_position", "sa_11")]):
        write_jpeg(root / cat / f"{name}.jpg", k)
        anno = {"target_object": ["cup"], "bbox": [[10, 20, 30, 40]],
                "question": f"What is the color of the cup number {k}?", "options": OPTIONS[k:] + OPTIONS[:k]}
        (root / cat / f"{name}.json").write_text(json.dumps(anno))
    return root


def make_vstar_jsonl(root: Path) -> Path:
    """V* test_questions.jsonl form (question_id int or string, the choices inside the text)."""
    rows = []
    for k, (cat, label) in enumerate([("direct_attributes", "B"), ("direct_attributes", "D"),
                                      ("relative_position", "A")]):
        write_jpeg(root / cat / f"sa_{k}.jpg", 10 + k)
        choices = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(OPTIONS if cat == "direct_attributes"
                                                                       else ["left", "right"]))
        rows.append({"image": f"{cat}/sa_{k}.jpg",
                     "text": f"Question {k}: what about the cup?\n{choices}\n"
                             "Answer with the option's letter from the given choices directly.",
                     "category": cat, "question_id": k if k else "q0", "label": label})
    (root / "test_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# HR-Bench plan: (index, question, category, cycle, answer letter); 3 questions, unequal cycles
HR_ROWS = [
    (0, "hr q1", "single", "c0", "A"), (1, "hr q1", "single", "c1", "B"),
    (2, "hr q1", "single", "c2", "C"), (3, "hr q1", "single", "c3", "D"),
    (4, "hr q2", "cross", "c0", "B"), (5, "hr q2", "cross", "c1", "C"),
    (6, "hr q2", "cross", "c2", "D"), (7, "hr q2", "cross", "c3", "A"),
    (8, "hr q3", "cross", "c0", "C"), (9, "hr q3", "cross", "c1", "D"),
]


def make_hrbench_tsv(path: Path, rows=HR_ROWS) -> Path:
    """hr_bench_4k.tsv layout: index, question, A-D, answer, category, cycle_category, image (base64)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "A", "B", "C", "D", "answer", "category", "cycle_category", "image"])
        for idx, q, cat, cycle, ans in rows:
            w.writerow([idx, q, "opt a", "opt b", "opt c", "opt d", ans, cat, cycle,
                        base64.b64encode(jpeg_bytes(idx)).decode()])
    return path


MME_ITEMS = [  # (Task, Subtask, Category, answer)
    ("Perception", "Monitoring", "Vehicle/attribute/color", "A"),
    ("Perception", "Monitoring", "Vehicle/attribute/orientation", "B"),
    ("Perception", "Diagram and Table", "diagram", "C"),
    ("Reasoning", "Diagram and Table", "diagram", "E"),
]


def make_mme_json(root: Path) -> Path:
    items = []
    for k, (task, sub, cat, gt) in enumerate(MME_ITEMS):
        write_jpeg(root / "imgs" / f"{k}.jpg", 20 + k)
        items.append({"Question_id": f"{task.lower()}/{sub}/{cat}/{k:04d}", "Image": f"imgs/{k}.jpg",
                      "Text": f"MME question {k}?", "Question Type": "Multiple Choice",
                      "Answer choices": [f"({L}) choice {L.lower()}" for L in "ABCDE"], "Ground truth": gt,
                      "Task": task, "Subtask": sub, "Category": cat})
    path = root / "MME_RealWorld.json"
    path.write_text(json.dumps(items, indent=1))
    return path


def make_mme_tsv(path: Path) -> Path:
    """mme_realworld_lite.tsv (VLMEvalKit layout): options as a Python list literal, base64 image."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "multi-choice options", "answer", "category", "l2-category", "image"])
        for k, (task, sub, cat, gt) in enumerate(MME_ITEMS):
            opts = repr([f"({L}) choice {L.lower()}" for L in "ABCDE"])
            w.writerow([100 + k, f"MME question {k}?", opts, gt, f"{task}/{sub}", cat,
                        base64.b64encode(jpeg_bytes(20 + k)).decode()])
    return path


def make_jsonl(root: Path) -> Path:
    rows = [{"image": "a.jpg", "question": "Which shape?", "choices": ["circle", "square"], "answer": "B",
             "category": "shapes"},
            {"image": "b.jpg", "question": "Which colour?", "choices": ["red", "blue", "green"], "answer": "green",
             "category": "colours", "id": "col-1"}]
    write_jpeg(root / "a.jpg", 30)
    write_jpeg(root / "b.jpg", 31)
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----- a scripted model that is right or wrong on purpose ---------------------------------------

class Planned:
    """Scripted replies per question: a box for turn 1, a final letter, a crop-only letter.

    The turn is read from the prompt it is asked with (grounding / sub-image / fallback / direct),
    so one backend serves the multi-turn run and the crop-only re-asks alike.
    """

    def __init__(self, plan: dict[str, dict], mgpo: bool = True, fail_after: int | None = None):
        self.plan = plan                 # question → {"box", "final", "crop"}
        self.mgpo = mgpo                 # in an MGPO run the direct prompt is only the crop-only re-ask
        self.fail_after = fail_after     # raise on the (n+1)-th grounding turn (a crash mid-run)
        self.grounding = 0
        self.crop_images: dict[str, tuple] = {}

    def _entry(self, text: str) -> tuple[str, dict]:
        for q, entry in self.plan.items():
            if q in text:
                return q, entry
        raise AssertionError(f"unplanned prompt: {text[:200]}")

    def __call__(self, sample: int, turn: int, message: dict) -> str:
        text = "".join(c.get("text", "") for c in message["content"])
        q, entry = self._entry(text)
        if "Out the coordinates" in text:                       # turn 1: grounding
            self.grounding += 1
            if self.fail_after is not None and self.grounding > self.fail_after:
                raise RuntimeError("injected crash")
            return "The key area:\n" + BOX_TEXT % entry.get("box", GOOD_BOX)
        if "Output the coordinates" in text:                    # the direct prompt
            if self.mgpo:
                image = next(c["image"] for c in message["content"] if c.get("type") == "image")
                self.crop_images[q] = image.size
                return f"Looking at the crop: \\boxed{{{entry.get('crop') or entry['final']}}}"
            return f"\\boxed{{{entry['final']}}}"
        return f"Reasoning step by step... the answer is \\boxed{{{entry['final']}}}"


def planned_engine(plan, mgpo: bool = True, **kw) -> tuple[Engine, Planned]:
    script = Planned(plan, mgpo, **kw)
    return Engine(ScriptedBackend(script), EngineConfig(), name="scripted"), script


def wrong(letter: str, n: int = 4) -> str:
    return LETTERS[(LETTERS.index(letter) + 1) % n]


def run(engine, bench, tmp_path, name="out", **kw) -> dict:
    cfg = EvalConfig.of(benchmark=bench.name, data=str(bench.path), out=str(tmp_path / name), **kw)
    return evaluate(engine, bench, cfg, progress=False)


def rows_of(tmp_path, name="out") -> list[dict]:
    return [json.loads(ln) for ln in (tmp_path / name / ITEMS).read_text().splitlines()]


# ----- pure scoring -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{C}", ("C", "boxed")),
    ("\\boxed{A} first, then \\boxed{(B)}", ("B", "boxed")),
    ("\\boxed{\\text{D}}", ("D", "boxed")),
    ("\\boxed{green}", ("C", "boxed_text")),
    ("\\boxed{Green.}", ("C", "boxed_text")),
    ("I think the answer is (B).", ("B", "phrase")),
    ("Answer: D", ("D", "phrase")),
    ("option A looks wrong; the answer is C", ("C", "phrase")),
    ("B", ("B", "bare")),
    ("(D).", ("D", "bare")),
    ("C. green", ("C", "bare")),
    ("A cat sits on the mat.", (None, None)),
    ("the answer is E", (None, None)),          # E is not among 4 choices
    ("\\boxed{purple}", (None, None)),
    ("", (None, None)),
])
def test_extract_letter(text, expected):
    assert extract_letter(text, ["red", "blue", "green", "white"]) == expected


def test_extract_letter_strict_reads_boxed_only():
    choices = ["red", "blue"]
    assert extract_letter("the answer is B", choices, strict=True) == (None, None)
    assert extract_letter("\\boxed{blue}", choices, strict=True) == ("B", "boxed_text")
    assert extract_letter("\\boxed{b}", choices, strict=True) == ("B", "boxed")


def _row(correct, **meta):
    return {"correct": correct, "meta": meta}


def test_hrbench_cycle_average_differs_from_plain_accuracy():
    rows = [_row(c, cycle_category=cy, split=sp) for c, cy, sp in [
        (1, "c0", "FSP"), (1, "c1", "FSP"), (0, "c2", "FSP"), (1, "c3", "FSP"),
        (1, "c0", "FCP"), (0, "c1", "FCP"), (0, "c2", "FCP"), (0, "c3", "FCP"),
        (0, "c0", "FCP"), (1, "c1", "FCP")]]
    overall, cycles = cycle_accuracy(rows)
    assert cycles == {"c0": pytest.approx(2 / 3), "c1": pytest.approx(2 / 3), "c2": 0.0, "c3": 0.5}
    assert overall == pytest.approx(float(Fraction(11, 24)))
    s = benchmark_scores("hrbench", rows)
    assert s["accuracy"] == 0.5 and s["overall"] == pytest.approx(11 / 24)
    assert s["FSP"] == pytest.approx(0.75) and s["FCP"] == pytest.approx(0.25)


def test_mme_category_key_follows_the_official_script():
    assert mme_category({"task": "Perception", "subtask": "Monitoring", "category": "Vehicle/attribute/color"}) \
        == "Perception/Monitoring/vehicle/attribute"
    assert mme_category({"task": "Reasoning", "subtask": "Diagram and Table", "category": "Diagram"}) \
        == "Reasoning/Diagram and Table/diagram"


# ----- loaders ----------------------------------------------------------------------------------

def test_vstar_folder_keeps_the_right_option_behind_its_letter(tmp_path):
    root = make_vstar_folder(tmp_path / "vstar")
    bench = open_benchmark("vstar", root)
    items = list(bench.items())
    assert bench.variant == "folder:direct_attributes+relative_position" and bench.total == 4
    assert [it.id for it in items] == ["direct_attributes/sa_4690", "direct_attributes/sa_4691",
                                       "relative_position/sa_10", "relative_position/sa_11"]
    for it in items:
        anno = json.loads((root / (it.id + ".json")).read_text())
        assert it.choices[LETTERS.index(it.answer)] == anno["options"][0]
        assert sorted(it.choices) == sorted(anno["options"])
        assert it.meta["category"] == it.id.split("/")[0]
        assert it.choices == [anno["options"][k] for k in vstar_order(it.id, 4)]
    assert len({it.answer for it in items}) > 1  # the answer is not always (A)
    assert [it.answer for it in open_benchmark("vstar", root).items()] == [it.answer for it in items]


def test_vstar_jsonl_form_is_preferred_and_parsed(tmp_path):
    root = make_vstar_jsonl(make_vstar_folder(tmp_path / "vstar"))
    bench = open_benchmark("vstar", root)
    items = list(bench.items())
    assert bench.variant == "jsonl:test_questions.jsonl:direct_attributes+relative_position"
    assert [it.id for it in items] == ["q0", "1", "2"]
    assert items[0].question == "Question 0: what about the cup?"
    assert items[0].choices == OPTIONS and items[2].choices == ["left", "right"]
    assert [it.answer for it in items] == ["B", "D", "A"]
    assert items[2].meta == {"category": "relative_position"}
    assert items[1].image == root / "direct_attributes" / "sa_1.jpg"
    # the file itself works too
    assert len(list(open_benchmark("vstar", root / "test_questions.jsonl").items())) == 3


def _vstar_pair(folder: Path, name: str, image_suffix: str = ".jpg", seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / (name + image_suffix)).write_bytes(jpeg_bytes(seed))
    (folder / (name + ".json")).write_text(json.dumps({"question": f"What is {name}?", "options": OPTIONS}))


def test_vstar_scores_the_official_categories_and_says_what_it_left_out(tmp_path):
    """The Hub folder also holds OCR/ and GPT4V-hard/ (images named 0.JPG): the official score is
    direct_attributes + relative_position; the rest is counted in the notes, read on request."""
    root = make_vstar_folder(tmp_path / "vstar")
    for k in range(3):
        _vstar_pair(root / "OCR", f"sa_{k}")
    for k in range(2):
        _vstar_pair(root / "GPT4V-hard", str(k), image_suffix=".JPG")
    bench = open_benchmark("vstar", root)
    assert bench.total == 4 and {it.meta["category"] for it in bench.items()} == {"direct_attributes",
                                                                                  "relative_position"}
    skipped = next(n for n in bench.notes if "not scored" in n)
    assert "GPT4V-hard (2 items)" in skipped and "OCR (3 items)" in skipped
    # 2 + 2 items is not the published 115 + 76: both counts are called out
    assert any("direct_attributes has 2 items, the published benchmark 115" in n for n in bench.notes)
    assert any("relative_position has 2 items, the published benchmark 76" in n for n in bench.notes)
    every = open_benchmark("vstar", root, categories="all")
    assert every.total == 9 and every.variant == "folder" and not any("not scored" in n for n in every.notes)
    hard = open_benchmark("vstar", root, categories="GPT4V-hard")
    assert [it.image.name for it in hard.items()] == ["0.JPG", "1.JPG"]
    with pytest.raises(DataError, match="none of the V. categories"):
        open_benchmark("vstar", root, categories="nope")
    # the jsonl form filters the same way
    jl = make_vstar_jsonl(tmp_path / "vjl")
    with (jl / "test_questions.jsonl").open("a") as f:
        f.write(json.dumps({"image": "direct_attributes/sa_0.jpg", "text": "Q?\n(A) a\n(B) b",
                            "category": "OCR", "question_id": "ocr0", "label": "A"}) + "\n")
    assert [it.id for it in open_benchmark("vstar", jl).items()] == ["q0", "1", "2"]


def test_vstar_full_official_layout_counts_191_without_a_count_note(tmp_path):
    root = tmp_path / "vstar"
    for cat, n in (("direct_attributes", 115), ("relative_position", 76)):
        for k in range(n):
            _vstar_pair(root / cat, f"sa_{k}", seed=k % 3)
    _vstar_pair(root / "OCR", "sa_0")
    bench = open_benchmark("vstar", root)
    assert bench.total == 191
    assert bench.notes == ["V*: not scored (not in the chosen categories): OCR (1 item); "
                           "the official V* score is over direct_attributes + relative_position"]


def test_split_vstar_text_rejects_text_without_choices():
    assert split_vstar_text("Q?\n(A) x\n(B) y") == ("Q?", ["x", "y"])
    with pytest.raises(DataError, match="no '\\(A\\) ...' choice lines"):
        split_vstar_text("What is it?")


def test_hrbench_tsv_is_streamed_with_base64_images(tmp_path):
    path = make_hrbench_tsv(tmp_path / "hr_bench_4k.tsv")
    bench = open_benchmark("hrbench", path)
    assert bench.variant == "hr_bench_4k" and bench.total is None
    stream = bench.items()
    first = next(stream)          # a generator: rows are read as they are asked for
    assert first.id == "0" and first.choices == ["opt a", "opt b", "opt c", "opt d"]
    assert first.meta == {"category": "single", "cycle_category": "c0", "split": "FSP"}
    assert first.image == jpeg_bytes(0)
    rest = list(stream)
    assert len(rest) == 9 and rest[-1].meta["split"] == "FCP" and rest[-1].answer == "D"


def test_hrbench_row_may_refer_to_an_earlier_rows_image(tmp_path):
    path = make_hrbench_tsv(tmp_path / "hr.tsv", HR_ROWS[:2])
    text = path.read_text().splitlines()
    last = text[-1].split("\t")
    text[-1] = "\t".join(last[:-1] + ["0"])          # VLMEvalKit's "same image as row 0"
    path.write_text("\n".join(text) + "\n")
    first, second = open_benchmark("hrbench", path).items()
    assert second.image == first.image == jpeg_bytes(0)


def test_repeated_ids_are_made_unique(tmp_path):
    write_jpeg(tmp_path / "a.jpg", 1)
    row = {"id": "same", "image": "a.jpg", "question": "Which shape?", "choices": ["x", "y"], "answer": "A"}
    (tmp_path / "d.jsonl").write_text((json.dumps(row) + "\n") * 2)
    bench = open_benchmark("jsonl", tmp_path / "d.jsonl")
    engine, _ = planned_engine({"Which shape?": {"final": "A"}})
    for _ in range(2):   # a rerun finds both rows done under the same ids
        assert run(engine, bench, tmp_path)["scores"]["n"] == 2
    assert [r["id"] for r in rows_of(tmp_path)] == ["same", "same#2"]


def test_mme_json_and_lite_tsv_read_the_same_items(tmp_path):
    js = list(open_benchmark("mme-realworld", make_mme_json(tmp_path)).items())
    tsv = list(open_benchmark("mme-realworld", make_mme_tsv(tmp_path / "mme_realworld_lite.tsv")).items())
    assert [it.choices for it in js] == [it.choices for it in tsv] == [[f"choice {c}" for c in "abcde"]] * 4
    assert [it.answer for it in js] == [it.answer for it in tsv] == ["A", "B", "C", "E"]
    assert [it.meta for it in js] == [it.meta for it in tsv]
    assert js[0].meta == {"task": "Perception", "subtask": "Monitoring", "category": "Vehicle/attribute/color"}
    assert js[0].image == tmp_path / "imgs" / "0.jpg" and tsv[0].image == jpeg_bytes(20)


@pytest.mark.parametrize("content, message", [
    ('{"image": "a.jpg", "question": "Q", "choices": ["x"]}\n', "missing field 'answer'"),
    ('{"image": "a.jpg", "question": "Q", "choices": ["x", "y"], "answer": "Z"}\n', "neither a letter"),
    ('{"image": "a.jpg", "question": " ", "choices": ["x"], "answer": "A"}\n', "question is empty"),
    ('not json\n', "data.jsonl:1: not valid JSON"),
])
def test_bad_jsonl_lines_say_where(tmp_path, content, message):
    (tmp_path / "data.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        open_benchmark("jsonl", tmp_path / "data.jsonl")


def test_bad_paths_and_headers_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_benchmark("vstar", tmp_path / "nope")
    with pytest.raises(DataError, match="no V\\* questions found"):
        open_benchmark("vstar", tmp_path)
    (tmp_path / "hr.tsv").write_text("index\tquestion\n0\tq\n")
    with pytest.raises(DataError, match="missing column"):
        list(open_benchmark("hrbench", tmp_path / "hr.tsv").items())
    with pytest.raises(DataError, match="unknown benchmark"):
        open_benchmark("mmmu", tmp_path)


# ----- exact scores through the engine ----------------------------------------------------------

def test_vstar_mgpo_scores_crop_only_and_protocol(tmp_path):
    bench = open_benchmark("vstar", make_vstar_folder(tmp_path / "vstar"))
    items = list(bench.items())
    # item 0 right (crop right), item 1 wrong (crop right), item 2 right (crop wrong),
    # item 3: invalid box → fallback turn, right, no crop-only
    plan = {
        items[0].question: {"final": items[0].answer, "crop": items[0].answer},
        items[1].question: {"final": wrong(items[1].answer), "crop": items[1].answer},
        items[2].question: {"final": items[2].answer, "crop": wrong(items[2].answer)},
        items[3].question: {"final": items[3].answer, "box": BAD_BOX, "crop": None},
    }
    engine, script = planned_engine(plan)
    res = run(engine, bench, tmp_path, batch_size=3, max_new_tokens=512)
    s = res["scores"]
    assert (s["n"], s["correct"], s["overall"]) == (4, 3, 0.75)
    assert s["tables"]["category"] == {
        "direct_attributes": {"n": 2, "correct": 1, "accuracy": 0.5},
        "relative_position": {"n": 2, "correct": 2, "accuracy": 1.0}}
    assert res["crop_only"] == {"n": 3, "correct": 2, "accuracy": pytest.approx(2 / 3), "accuracy_all": 0.5}
    assert res["behaviour"]["valid_box_ratio"] == 0.75 and res["behaviour"]["mean_turns"] == 2
    assert res["answers"] == {"boxed": 4} and res["errors"] == 0

    rows = rows_of(tmp_path)
    assert [r["id"] for r in rows] == [it.id for it in items]
    assert rows[3]["kinds"] == ["grounding", "fallback"] and rows[3]["crop_only"] is None
    assert rows[0]["kinds"] == ["grounding", "crop"]
    # the crop-only question saw exactly the first valid crop, prepared as turn 2 fed it
    for it, row in zip(items[:3], rows[:3]):
        box = tuple(row["boxes"][0]["box_original"])
        expected = geometry.prepare(noise_image(W, H), box).image.size
        assert row["crop_only"]["box_original"] == list(box)
        assert script.crop_images[it.question] == expected
    assert set(script.crop_images) == {it.question for it in items[:3]}
    # visual tokens: overview + crop, as the engine counted them
    x1, y1, x2, y2 = rows[0]["boxes"][0]["box_original"]
    assert rows[0]["visual_tokens"] == geometry.visual_tokens((644, 476)) + geometry.visual_tokens(
        geometry.model_frame((x2 - x1, y2 - y1)))

    p = res["protocol"]
    assert p["model"] == "scripted" and p["mode"] == "mgpo" and p["max_turns"] == 2
    assert (p["min_pixels"], p["max_pixels"]) == (geometry.MIN_PIXELS, geometry.MAX_PIXELS)
    assert p["decoding"]["greedy"] is True and p["decoding"]["max_new_tokens"] == 512
    assert p["items"] == 4 and p["crop_only"] is True and p["versions"]["torch"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["scores"] == s
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| accuracy (%) | 75.0 |" in md and "| relative_position | 2 | 2 | 100.0 |" in md
    assert "crop-only accuracy, 3 items with a valid crop (%) | 66.7 |" in md


def test_direct_mode_is_one_turn_with_the_baseline_prompt(tmp_path):
    bench = open_benchmark("jsonl", make_jsonl(tmp_path))
    plan = {"Which shape?": {"final": "B"}, "Which colour?": {"final": "A"}}
    engine, _ = planned_engine(plan, mgpo=False)
    res = run(engine, bench, tmp_path, mode="direct")
    rows = rows_of(tmp_path)
    assert [r["kinds"] for r in rows] == [["direct"], ["direct"]]
    assert [r["answer"] for r in rows] == ["B", "C"]            # "green" → C
    assert res["scores"]["overall"] == 0.5 and res["crop_only"] is None
    assert res["scores"]["tables"]["category"] == {"colours": {"n": 1, "correct": 0, "accuracy": 0.0},
                                                   "shapes": {"n": 1, "correct": 1, "accuracy": 1.0}}
    assert res["protocol"]["max_turns"] == 1 and res["protocol"]["crop_only"] is False
    sent = [m for _, m in engine.backend.messages]
    assert all("Output the coordinates" in "".join(c.get("text", "") for c in m["content"]) for m in sent)


def test_hrbench_cycle_averaged_scores_through_the_engine(tmp_path):
    right = {0: 1, 1: 1, 2: 0, 3: 1, 4: 1, 5: 0, 6: 0, 7: 0, 8: 0, 9: 1}
    # the scripted plan is keyed by question text, so each rotation gets its own wording
    rows = [(i, f"{q} (rotation {i})", c, cy, a) for i, q, c, cy, a in HR_ROWS]
    bench = open_benchmark("hrbench", make_hrbench_tsv(tmp_path / "hr_bench_8k.tsv", rows))
    plan = {q: {"final": a if right[i] else wrong(a)} for i, q, _, _, a in rows}
    engine, _ = planned_engine(plan, mgpo=False)
    res = run(engine, bench, tmp_path, batch_size=4, mode="direct")
    s = res["scores"]
    assert s["n"] == 10 and s["accuracy"] == 0.5
    assert s["overall"] == pytest.approx(11 / 24)
    assert s["FSP"] == pytest.approx(0.75) and s["FCP"] == pytest.approx(0.25)
    assert s["cycles"] == {"c0": pytest.approx(2 / 3), "c1": pytest.approx(2 / 3), "c2": 0.0, "c3": 0.5}
    assert s["tables"]["split"]["FSP"] == {"n": 4, "correct": 3, "accuracy": 0.75}
    assert "| accuracy, cycle-averaged (%) | 45.8 |" in (tmp_path / "out" / "results.md").read_text()


def test_mme_realworld_tables(tmp_path):
    bench = open_benchmark("mme-realworld", make_mme_json(tmp_path))
    items = list(bench.items())
    plan = {it.question: {"final": it.answer if k in (0, 3) else wrong(it.answer, 5)} for k, it in enumerate(items)}
    engine, _ = planned_engine(plan)
    res = run(engine, bench, tmp_path)
    t = res["scores"]["tables"]
    assert res["scores"]["overall"] == 0.5
    assert t["task"] == {"Perception": {"n": 3, "correct": 1, "accuracy": pytest.approx(1 / 3)},
                         "Reasoning": {"n": 1, "correct": 1, "accuracy": 1.0}}
    assert t["subtask"]["Perception/Monitoring"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert t["category"]["Perception/Monitoring/vehicle/attribute"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert set(t["category"]) == {"Perception/Monitoring/vehicle/attribute",
                                  "Perception/Diagram and Table/diagram", "Reasoning/Diagram and Table/diagram"}


def test_unreadable_image_is_an_error_row_not_a_crash(tmp_path):
    path = make_jsonl(tmp_path)
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    bench = open_benchmark("jsonl", path)
    engine, _ = planned_engine({"Which shape?": {"final": "B"}})
    res = run(engine, bench, tmp_path)
    rows = rows_of(tmp_path)
    assert "not an image" in rows[1]["error"] and rows[0]["error"] is None
    assert rows[0]["correct"] is True and rows[1]["correct"] is False
    assert res["errors"] == 1 and res["scores"]["overall"] == 0.5 and res["answers"] == {"boxed": 1, "error": 1}


def test_an_item_the_engine_refuses_does_not_sink_its_batch(tmp_path):
    path = make_jsonl(tmp_path)
    noise_image(3000, 10).save(tmp_path / "b.jpg")        # 300:1, beyond what the processor takes
    engine, script = planned_engine({"Which shape?": {"final": "B"}, "Which colour?": {"final": "C"}})
    res = run(engine, open_benchmark("jsonl", path), tmp_path, batch_size=2)
    rows = rows_of(tmp_path)
    assert rows[0]["correct"] is True and rows[0]["error"] is None
    assert "cannot be fed to Qwen2.5-VL" in rows[1]["error"] and res["errors"] == 1


# ----- resume ------------------------------------------------------------------------------------

def _stable(res: dict) -> dict:
    """results.json without what legitimately changes between runs (date, versions, latency)."""
    out = {k: v for k, v in res.items() if k not in ("protocol", "latency")}
    out["protocol"] = {k: v for k, v in res["protocol"].items() if k not in ("date", "versions")}
    return out


def test_resume_after_a_crash_gives_identical_results(tmp_path):
    bench = open_benchmark("mme-realworld", make_mme_json(tmp_path))
    items = list(bench.items())
    plan = {it.question: {"final": it.answer if k % 2 else wrong(it.answer, 5), "crop": it.answer}
            for k, it in enumerate(items)}

    whole, _ = planned_engine(plan)
    reference = run(whole, bench, tmp_path, name="whole", batch_size=2)

    crashing, _ = planned_engine(plan, fail_after=2)   # dies in the second batch
    with pytest.raises(RuntimeError, match="injected crash"):
        run(crashing, bench, tmp_path, batch_size=2)
    assert [r["id"] for r in rows_of(tmp_path)] == [it.id for it in items[:2]]
    with (tmp_path / "out" / ITEMS).open("a") as f:      # and a torn half line, as if killed mid-write
        f.write('{"id": "perception/Dia')

    again, script = planned_engine(plan)
    resumed = run(again, bench, tmp_path, batch_size=2)
    assert script.grounding == 2                        # only the unfinished items ran
    rows = rows_of(tmp_path)
    assert [r["id"] for r in rows] == [it.id for it in items]   # no duplicates, no torn line
    assert _stable(resumed) == _stable(reference)

    third, script = planned_engine(plan)                  # a finished run reruns nothing
    assert _stable(run(third, bench, tmp_path, batch_size=2)) == _stable(reference)
    assert script.grounding == 0 and len(rows_of(tmp_path)) == 4


def test_limit_then_resume_extends_the_run(tmp_path):
    bench = open_benchmark("vstar", make_vstar_jsonl(tmp_path))
    plan = {f"Question {k}:": {"final": "A"} for k in range(3)}
    engine, script = planned_engine(plan)
    assert run(engine, bench, tmp_path, limit=2)["protocol"]["items"] == 2
    res = run(engine, bench, tmp_path)
    assert res["protocol"]["items"] == 3 and script.grounding == 3 and len(rows_of(tmp_path)) == 3


def test_resume_refuses_a_different_protocol(tmp_path):
    bench = open_benchmark("jsonl", make_jsonl(tmp_path))
    engine, _ = planned_engine({"Which shape?": {"final": "B"}, "Which colour?": {"final": "C"}})
    run(engine, bench, tmp_path)
    with pytest.raises(EvalError, match="mode: was 'mgpo', now 'direct'"):
        run(engine, bench, tmp_path, mode="direct")
    with pytest.raises(EvalError, match="max_pixels"):
        run(engine, bench, tmp_path, max_pixels=500_000)
    cfg = EvalConfig(benchmark="jsonl", out=str(tmp_path / "out"), mode="direct")
    assert evaluate(engine, bench, cfg, progress=False, overwrite=True)["protocol"]["mode"] == "direct"


def test_load_rows_cuts_a_torn_tail(tmp_path):
    path = tmp_path / ITEMS
    path.write_text('{"id": "a", "correct": true}\n{"id": "b", "corr')
    assert list(load_rows(path)) == ["a"]
    assert path.read_text() == '{"id": "a", "correct": true}\n'


# ----- command line and the tiny real model -----------------------------------------------------

def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert cli(["--benchmark", "vstar", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    data = make_jsonl(tmp_path)
    assert cli(["--benchmark", "jsonl", "--data", str(data), "--out", str(tmp_path / "o"),
                "--model", str(tmp_path / "no-model")]) == 2
    assert "Could not load the model" in capsys.readouterr().err
    assert cli(["--benchmark", "jsonl", "--data", str(data), "--out", str(tmp_path / "o"),
                "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_tiny_model_end_to_end_through_the_cli(tmp_path, tiny_model_dir, capsys):
    root = make_vstar_jsonl(tmp_path / "vstar")
    out = tmp_path / "run"
    args = ["--benchmark", "vstar", "--data", str(root), "--model", str(tiny_model_dir), "--out", str(out),
            "--mode", "mgpo", "--batch-size", "2", "--max-new-tokens", "12", "--min-pixels", str(28 * 28 * 16),
            "--max-pixels", str(28 * 28 * 64), "--device", "cpu", "--no-progress"]
    assert cli(args) == 0
    assert "vstar mgpo:" in capsys.readouterr().out
    rows = rows_of(tmp_path, "run")
    assert [r["id"] for r in rows] == ["q0", "1", "2"]
    for r in rows:
        assert r["turns"] == 2 and len(r["texts"]) == 2 and r["kinds"][0] == "grounding"
        assert r["visual_tokens"] >= 2 * 16 and 0 < r["new_tokens"] <= 24
        assert r["correct"] == (r["pred"] == r["answer"])
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["model"] == str(tiny_model_dir) and res["protocol"]["max_pixels"] == 28 * 28 * 64
    assert res["scores"]["n"] == 3 and res["scores"]["correct"] == sum(r["correct"] for r in rows)
    # rerun: everything is already there; same results, nothing duplicated
    assert cli(args) == 0
    assert _stable(json.loads((out / "results.json").read_text())) == _stable(res)
    assert len(rows_of(tmp_path, "run")) == 3
    # another protocol in the same folder is refused before any weights load
    assert cli(args + ["--mode", "direct"]) == 2
    assert "different protocol (mode: was 'mgpo', now 'direct'" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_cli_run_resumes_to_identical_results(tmp_path, tiny_model_dir):
    """SIGKILL a real `python -m mgpo.eval` process mid-run, rerun it, compare with a clean run."""
    root = make_vstar_jsonl(tmp_path / "vstar")
    lines = [json.loads(x) for x in (root / "test_questions.jsonl").read_text().splitlines()]
    more = [dict(r, question_id=f"x{k}-{r['question_id']}") for k in range(2) for r in lines]
    (root / "test_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines + more))

    def args(out):
        return [sys.executable, "-m", "mgpo.eval", "--benchmark", "vstar", "--data", str(root), "--model",
                str(tiny_model_dir), "--out", str(out), "--batch-size", "1", "--max-new-tokens", "24",
                "--min-pixels", str(28 * 28 * 16), "--max-pixels", str(28 * 28 * 64), "--device", "cpu",
                "--no-progress"]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(args(tmp_path / "clean"), check=True, env=env, cwd=ROOT, capture_output=True)
    proc = subprocess.Popen(args(tmp_path / "killed"), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    items = tmp_path / "killed" / ITEMS
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if items.exists() and items.read_text().count("\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "results.json").exists()
    subprocess.run(args(tmp_path / "killed"), check=True, env=env, cwd=ROOT, capture_output=True)
    clean = json.loads((tmp_path / "clean" / "results.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert _stable(resumed) == _stable(clean)
    ids = [json.loads(x)["id"] for x in items.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 9


def test_the_evaluators_settings_hold_an_engine_config_checked_by_the_engines_rules():
    from mgpo.engine import EngineConfig

    cfg = EvalConfig.of(benchmark="jsonl", out="o", max_turns=3, min_pixels=3136, temperature=0.5, limit=4)
    assert cfg.limit == 4 and cfg.engine == EngineConfig(max_turns=3, min_pixels=3136, temperature=0.5)
    assert cfg.sampling().temperature == 0.5 and cfg.engine_settings()["min_pixels"] == 3136
    for bad, message in ((dict(max_turns=1), "MGPO needs max_turns ≥ 2"), (dict(box_rule="wide"), "unknown box rule"),
                         (dict(min_pixels=10), "784 ≤ min_pixels"), (dict(prompts="nope"), "unknown prompt set")):
        with pytest.raises(EvalError, match=message):
            EvalConfig.of(benchmark="jsonl", **bad).check()
    EvalConfig.of(benchmark="jsonl", mode="direct", max_turns=1).check()     # direct has one turn anyway

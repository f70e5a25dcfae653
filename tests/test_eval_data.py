"""The evaluation harness's readers and pure scoring: answer letters, each public benchmark format
(V*, HR-Bench, MME-RealWorld, JSONL) read into items, bad files refused with a clear message."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from eval_fixtures import (HR_ROWS, OPTIONS, jpeg_bytes, make_hrbench_tsv, make_mme_json, make_mme_tsv,
                           make_vstar_folder, make_vstar_jsonl, planned_engine, rows_of, run, write_jpeg)

from mgpo.eval import DataError, extract_letter, open_benchmark
from mgpo.eval.datasets import split_vstar_text, vstar_order
from mgpo.eval.scoring import benchmark_scores, cycle_accuracy, mme_category
from mgpo.prompts import LETTERS

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

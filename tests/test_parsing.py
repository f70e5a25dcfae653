import json
import random
import string

import pytest

from mgpo.parsing import answer_letter, complete_fenced_box, extract_boxed, find_bbox, parse_bbox

QWEN = '```json\n[\n    {"bbox_2d": [635, 260, 812, 424], "label": "key image area"}\n]\n```'


@pytest.mark.parametrize(
    "text, box",
    [
        (QWEN, (635, 260, 812, 424)),
        ("The plate is at the back.\n" + QWEN + "\nThat is all.", (635, 260, 812, 424)),
        ('```\n[{"bbox_2d": [1, 2, 30, 40]}]\n```', (1, 2, 30, 40)),                       # fence without tag
        ('[{"bbox_2d": [1, 2, 30, 40], "label": "x"}]', (1, 2, 30, 40)),                    # unfenced list
        ('here {"bbox_2d": [1, 2, 30, 40], "label": "x"} there', (1, 2, 30, 40)),           # single object
        ('```json\n{"bbox_2d": [5, 6, 70, 80]}\n```', (5, 6, 70, 80)),                      # fenced object
        ('[{"label": "a"}, {"bbox_2d": [1, 2]}, {"bbox_2d": [9, 8, 70, 60]}]', (9, 8, 70, 60)),  # first usable
        ('```json\n[{"bbox_2d": [1.6, 2.2, 30.0, 40.49]}]\n```', (2, 2, 30, 40)),           # floats round
        ('[{"bbox_2d": [-5, 2, 30, 40]}]', (-5, 2, 30, 40)),                                # kept; geometry refuses
        ('[{"bbox_2d": [300, 2, 30, 40]}]', (300, 2, 30, 40)),                              # reversed kept
        ('[{"bbox_2d": [1, 2, 3, 99999999999999999999]}]', (1, 2, 3, 99999999999999999999)),
        ('```json\n[\n  {"bbox_2d": [10, 20, 300, 400], "label": "a",}\n]\n```', (10, 20, 300, 400)),  # trailing comma
        ('```json\n[\n  {"bbox_2d": [10, 20, 300, 400], "label": "truncat', (10, 20, 300, 400)),        # truncated
    ],
)
def test_parse_bbox_accepts_what_qwen_emits(text, box):
    assert parse_bbox(text) == box


@pytest.mark.parametrize(
    "text",
    [
        "", "no box here", "```json\n[]\n```", '[{"bbox_2d": [1, 2, 3]}]', '[{"bbox_2d": "1,2,3,4"}]',
        '[{"bbox_2d": [NaN, 2, 3, 4]}]', '[{"bbox_2d": [Infinity, 2, 3, 4]}]', '[{"bbox_2d": [true, 2, 3, 4]}]',
        '[{"bbox_2d": [null, 2, 3, 4]}]', '[{"box": [1, 2, 3, 4]}]', "[" * 5000, "{" * 5000 + "}",
        '"bbox_2d": [1e999, 2, 3, 4]', '"bbox_2d": [1' + "0" * 6000 + ", 2, 3, 4]",
    ],
)
def test_parse_bbox_returns_none_on_unusable_text(text):
    assert parse_bbox(text) is None


def test_the_first_usable_fenced_block_wins_over_later_ones():
    text = '```json\n[{"label": "no box"}]\n```\n```json\n[{"bbox_2d": [1, 2, 300, 400]}]\n```\n' + QWEN
    match = find_bbox(text)
    assert match.box == (1, 2, 300, 400) and match.source == "fenced"
    assert text[: match.end].endswith("```") and "635" not in text[: match.end]


def test_complete_fenced_box_waits_for_the_closing_fence():
    partial = QWEN[:-3]
    assert complete_fenced_box(partial) is None
    assert complete_fenced_box(QWEN) == len(QWEN)
    assert complete_fenced_box("```json\n[]\n```") is None


def test_fuzz_parse_never_raises():
    rng = random.Random(1234)
    alphabet = string.printable + "{}[]\":,`-.eE" * 4 + "bbox_2d" * 3 + "é✓\x00"
    pieces = ["```json\n", "```", '{"bbox_2d": [', "]", "}", "[", ", ", "NaN", "-", "1e309", "12", "3.5", '"label"']
    for i in range(5000):
        if i % 2:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        else:
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        box = parse_bbox(text)
        assert box is None or (len(box) == 4 and all(isinstance(v, int) for v in box))
        extract_boxed(text)
        answer_letter(text)
        complete_fenced_box(text)


def test_fuzz_valid_boxes_round_trip():
    rng = random.Random(7)
    for _ in range(500):
        box = [rng.randint(-100, 5000) for _ in range(4)]
        body = json.dumps([{"bbox_2d": box, "label": "key image area"}], indent=rng.choice([None, 2, 4]))
        text = rng.choice(["", "Reasoning first. "]) + rng.choice(["```json\n%s\n```", "%s"]) % body
        assert parse_bbox(text) == tuple(box)


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so \\boxed{C}", "C"),
        ("\\boxed{A} then \\boxed{ B }", "B"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\text{(D) red}}", "\\text{(D) red}"),
        ("\\boxed{A} and an unclosed \\boxed{B", "A"),
        ("no answer", None),
        ("", None),
    ],
)
def test_extract_boxed_takes_the_last_complete_one(text, answer):
    assert extract_boxed(text) == answer


@pytest.mark.parametrize(
    "answer, n, letter",
    [("C", 5, "C"), ("(c)", 5, "C"), ("B. red", 5, "B"), ("\\text{D}", 5, "D"), ("E", 4, None),
     ("Cat", 5, None), (None, 5, None), ("", 5, None), (" (A) LB MA 864", 5, "A")],
)
def test_answer_letter(answer, n, letter):
    assert answer_letter(answer, n) == letter

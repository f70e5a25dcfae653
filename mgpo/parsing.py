"""Reading model text: the turn-1 box and the final ``\\boxed{}`` answer. Pure; never raises.

Qwen2.5-VL grounds in its native JSON format::

    ```json
    [
        {"bbox_2d": [635, 260, 812, 424], "label": "key image area"}
    ]
    ```

The paper takes the first fenced ``json`` block that loads as a non-empty list of objects and
the first object in it whose ``bbox_2d`` holds 4 integers. Models also emit an unfenced list,
a single object, a fence without the ``json`` tag, prose around it, or a truncated block; this
module accepts all of those, in that order of preference, and returns ``None`` for anything it
cannot read. Coordinates are returned as they were written (validity is geometry's business);
finite floats are rounded, booleans, NaN and infinities make a box unusable.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

Box = tuple[int, int, int, int]

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_BBOX_KEY = re.compile(
    r"[\"']bbox_2d[\"']\s*:\s*\[\s*([^\[\]]*?)\s*\]", re.DOTALL
)
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
_FOUR = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$")
_MAX_SCAN = 100_000  # characters; longer model output is read up to here
_MAX_STARTS = 2_000  # bare-JSON start positions tried before giving up


@dataclass(frozen=True)
class BoxMatch:
    """A parsed box and where its JSON ends in the text (to cut turn-1 text right after it)."""

    box: Box
    end: int       # index just past the block/value the box was read from
    source: str    # "fenced" | "json" | "regex"


def _coord(v) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return int(round(v))
    return None


def _number(token: str) -> int | None:
    try:
        return int(token) if re.fullmatch(r"-?\d+", token) else _coord(float(token))
    except ValueError:  # e.g. more digits than int() accepts
        return None


def _box_from_value(value) -> Box | None:
    """First usable ``bbox_2d`` in a list of objects or in a single object."""
    objs = value if isinstance(value, list) else [value]
    for obj in objs:
        if not isinstance(obj, dict):
            continue
        raw = obj.get("bbox_2d")
        if not isinstance(raw, (list, tuple)) or len(raw) != 4:
            continue
        coords = [_coord(v) for v in raw]
        if all(c is not None for c in coords):
            return tuple(coords)  # type: ignore[return-value]
    return None


def _loads(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def find_bbox(text: str) -> BoxMatch | None:
    """Locate the first usable box in ``text``; see the module docstring for the order."""
    if not isinstance(text, str):
        return None
    text = text[:_MAX_SCAN]
    # 1. fenced blocks, in order (the paper's format)
    for m in _FENCE.finditer(text):
        value = _loads(m.group(1).strip())
        if isinstance(value, (list, dict)) and value:
            box = _box_from_value(value)
            if box is not None:
                return BoxMatch(box, m.end(), "fenced")
    # 2. bare JSON values starting at any '[' or '{'
    decoder = json.JSONDecoder()
    for n, m in enumerate(re.finditer(r"[\[{]", text)):
        if n >= _MAX_STARTS:
            break
        try:
            value, end = decoder.raw_decode(text, m.start())
        except (ValueError, RecursionError):
            continue
        box = _box_from_value(value) if isinstance(value, (list, dict)) else None
        if box is not None:
            return BoxMatch(box, end, "json")
    # 3. a "bbox_2d": [a, b, c, d] fragment inside malformed or truncated JSON
    for m in _BBOX_KEY.finditer(text):
        four = _FOUR.match(m.group(1))
        if four is None:
            continue
        coords = [_number(g) for g in four.groups()]
        if len(coords) == 4 and all(c is not None for c in coords):
            return BoxMatch(tuple(coords), m.end(), "regex")  # type: ignore[arg-type]
    return None


def parse_bbox(text: str) -> Box | None:
    """``(x1, y1, x2, y2)`` of the first usable ``bbox_2d`` in ``text`` (model frame), else None."""
    match = find_bbox(text)
    return match.box if match else None


def complete_fenced_box(text: str) -> int | None:
    """End index of the first *closed* fenced block holding a usable box, else None.

    Used while streaming turn 1 to stop generation right after the block, as the paper does.
    """
    if not isinstance(text, str) or "```" not in text:
        return None
    for m in _FENCE.finditer(text[:_MAX_SCAN]):
        value = _loads(m.group(1).strip())
        if isinstance(value, (list, dict)) and value and _box_from_value(value) is not None:
            return m.end()
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces handled), else None."""
    if not isinstance(text, str):
        return None
    start = text.rfind("\\boxed{")
    while start != -1:
        i = start + len("\\boxed{")
        depth = 1
        j = i
        while j < len(text):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[i:j].strip()
            j += 1
        # unclosed: look at an earlier one
        start = text.rfind("\\boxed{", 0, start)
    return None


_LETTER = re.compile(r"^\(?\s*([A-Za-z])\s*\)?(?:[.:)\s]|$)")


def answer_letter(answer: str | None, n_choices: int = 26) -> str | None:
    """Normalise an extracted answer to a choice letter: ``"(C)"``, ``"c"``, ``"C. red"`` → ``"C"``.

    Also reads ``\\text{C}`` and ``\\textbf{C}``. Returns None when no letter within the first
    ``n_choices`` can be read.
    """
    if not isinstance(answer, str):
        return None
    s = answer.strip()
    inner = re.fullmatch(r"\\text(?:bf|rm)?\{(.*)\}", s, re.DOTALL)
    if inner:
        s = inner.group(1).strip()
    m = _LETTER.match(s)
    if not m:
        return None
    letter = m.group(1).upper()
    if ord(letter) - ord("A") >= n_choices:
        return None
    return letter

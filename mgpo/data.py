"""One data layer for evaluation and training: the record type, the error type, and one reader per
record format. Pure (no torch).

A reader yields, record by record, either an :class:`Item` or a :class:`RecordError` naming the
rule the record breaks (``"missing question"``, ``"bad choices"``, ``"bad answer"``, ``"image not
found"``, ``"invalid JSON"`` …); each caller keeps its own policy — the evaluator refuses the file
at the first bad record (a benchmark must be read whole), the trainer skips and counts
(``train.data.Report``). The benchmark loaders (``mgpo.eval.datasets``) and the training loaders
(``train.data``) are thin policies over these readers.

The rules for one question record, in order: a non-empty question (at most ``MAX_QUESTION_CHARS``
characters, the engine's limit), an image, an answer, then the choices (2 to 26, given as a list
or one per line, a leading ``(A)`` dropped), the answer as a letter within them or the text of one
(:func:`answer_to_letter`; a question without choices keeps its free-text answer), and the image
resolved by the caller's ``resolve`` (which decides whether a missing file is an error now or
when the item is run).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .prompts import LETTERS, strip_letter

MAX_QUESTION_CHARS = 4000   # the engine refuses longer questions (EngineConfig.max_question_chars)
FIELDS = ("image", "question", "choices", "answer", "id")   # a record in the project's own names


class DataError(ValueError):
    """Data that cannot be read, with a message that says where and why."""


class RecordError(DataError):
    """One record that breaks a named rule (``rule``); the message says where and why."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


@dataclass
class Item:
    """One question about one image."""

    id: str                       # unique within its source; the resume key of an evaluation
    question: str                 # the question alone (no choices, no answer instruction)
    choices: list[str] | None     # option texts without their letters, in letter order; None: open question
    answer: str                   # ground-truth letter; free text for an open question
    image: Path | str | bytes | Image.Image   # a file, the encoded bytes (decoded when run), or pixels
    meta: dict = field(default_factory=dict)  # fields scoring groups by (category, cycle, task …)
    gt_box: tuple[int, int, int, int] | None = None  # hidden target box, original pixels (analysis only)


def letter(value, n: int, where: str) -> str:
    """A ground-truth letter within the first ``n`` letters: ``"B"``, ``"b"``, ``"(B)"``."""
    m = re.fullmatch(r"\s*\(?\s*([A-Za-z])\s*\)?\s*\.?\s*", str(value))
    if not m or LETTERS.index(m.group(1).upper()) >= n:
        raise RecordError("bad answer", f"{where}: answer {value!r} is not one of the letters {LETTERS[:n]}")
    return m.group(1).upper()


def answer_to_letter(answer, choices: list[str], where: str) -> str:
    """The ground-truth letter of a record whose ``answer`` is a letter (``"B"``, ``"(b)"``) or
    the text of one of ``choices``; a letter wins. The one rule for evaluation and training."""
    answer = str(answer).strip()
    try:
        return letter(answer, len(choices), where)
    except RecordError:
        matches = [i for i, c in enumerate(choices) if c.strip().lower() == answer.lower()]
        if not matches:
            raise RecordError("bad answer", f"{where}: answer {answer!r} is neither a letter within "
                                            f"{LETTERS[:len(choices)]} nor the text of a choice") from None
        return LETTERS[matches[0]]


def clean_choices(raw, where: str, minimum: int = 2) -> list[str]:
    """Option texts in letter order, their ``(A)`` prefixes dropped; a string is one per line."""
    if isinstance(raw, str):
        raw = [c for c in raw.splitlines() if c.strip()]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(c, (str, int, float)) for c in raw):
        raise RecordError("bad choices", f"{where}: the choices must be a list of texts")
    if not minimum <= len(raw) <= len(LETTERS):
        raise RecordError("bad choices", f"{where}: {len(raw)} choices; {minimum} to {len(LETTERS)} are supported")
    return [strip_letter(str(c), LETTERS[i]) for i, c in enumerate(raw)]


def question_text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError("missing question", f"{where}: the question is empty")
    if len(value.strip()) > MAX_QUESTION_CHARS:
        raise RecordError("question too long", f"{where}: the question is over {MAX_QUESTION_CHARS:,} characters")
    return value.strip()


def parse_record(rec: dict, where: str, resolve: Callable, *, require_choices: bool = False,
                 meta: dict | None = None, default_id: str | None = None) -> Item:
    """An :class:`Item` from a record in the project's field names (:data:`FIELDS`), or the
    :class:`RecordError` of the first rule it breaks (the order is the module docstring's).
    ``resolve(value)`` turns the record's image into what the item holds (None: not found)."""
    question = question_text(rec.get("question"), where)
    for key in ("image", "answer") + (("choices",) if require_choices else ()):
        value = rec.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise RecordError(f"missing {key}", f"{where}: missing field {key!r}")
    raw = rec.get("choices")
    choices = clean_choices(raw, where) if raw is not None else None
    answer = str(rec["answer"]).strip()
    if choices:
        answer = answer_to_letter(answer, choices, where)
    image = resolve(rec["image"])
    if image is None:
        raise RecordError("image not found", f"{where}: image {rec['image']!r} not found")
    rid = rec.get("id")
    rid = str(rid) if rid is not None else (default_id if default_id is not None else where)
    return Item(rid, question, choices, answer, image, dict(meta or {}))


def json_lines(path: Path) -> Iterator[tuple[int, dict | str]]:
    """``(line number, record)`` for every non-empty line; a line that is not a JSON object comes
    as the name of the rule it breaks (``"invalid JSON"``, ``"not an object"``)."""
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield n, "invalid JSON"
                continue
            yield n, row if isinstance(row, dict) else "not an object"


Where = Callable[[int, "dict | None"], str]   # (line or item number, the record if any) → its name


def jsonl_records(path: Path, resolve: Callable, *, require_choices: bool = False, where: Where | None = None,
                  line_ids: bool = False) -> Iterator[tuple[str, Item | RecordError]]:
    """``(place, item or error)`` for the project's JSONL: ``{"image", "question", "choices",
    "answer"}`` a line (``id`` and ``category`` optional). ``where`` names a record (default
    ``path:line``); a record without ``id`` is known by that name, or by its line number with
    ``line_ids``."""
    name = where or (lambda n, row: f"{path}:{n}")
    for n, row in json_lines(path):
        if isinstance(row, str):
            place = name(n, None)
            yield place, RecordError(row, f"{place}: {'not valid JSON' if row == 'invalid JSON' else 'expected a JSON object'}")
            continue
        place = name(n, row)
        meta = {"category": str(row["category"])} if row.get("category") is not None else {}
        try:
            yield place, parse_record(row, place, resolve, require_choices=require_choices, meta=meta,
                                      default_id=str(n) if line_ids else None)
        except RecordError as e:
            yield place, e


MME_FIELDS = ("Question_id", "Image", "Text", "Answer choices", "Ground truth", "Task", "Subtask", "Category")


def mme_json(path: Path) -> list:
    """The official MME-RealWorld JSON: a list of its items (or a Lite subset in that schema)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of MME-RealWorld items")
    return data


def mme_records(path: Path, resolve: Callable, *, require_all: bool = False,
                where: Where | None = None) -> Iterator[tuple[str, Item | RecordError]]:
    """``(place, item or error)`` for MME-RealWorld's items (``Text`` → question, ``Answer
    choices``, ``Ground truth``, ``Image`` resolved; Task / Subtask / Category → meta).
    ``require_all``: every field of :data:`MME_FIELDS` must be there (a benchmark read for its
    per-task scores). ``where`` names an item (default ``path item n``)."""
    name = where or (lambda n, rec: f"{path} item {n}")
    for n, rec in enumerate(mme_json(path)):
        place = name(n, rec if isinstance(rec, dict) else None)
        if not isinstance(rec, dict):
            yield place, RecordError("not an object", f"{place}: expected an object")
            continue
        missing = [k for k in MME_FIELDS if k not in rec] if require_all else []
        if missing:
            yield place, RecordError("missing field", f"{place}: missing field(s) {', '.join(missing)}")
            continue
        mapped = {"image": rec.get("Image"), "question": rec.get("Text"), "choices": rec.get("Answer choices"),
                  "answer": rec.get("Ground truth"), "id": rec.get("Question_id", n)}
        meta = {k.lower(): str(rec[k]) for k in ("Task", "Subtask", "Category") if k in rec}
        try:
            yield place, parse_record(mapped, place, resolve, require_choices=True, meta=meta)
        except RecordError as e:
            yield place, e

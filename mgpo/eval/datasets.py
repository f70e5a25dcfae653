"""Benchmark loaders: each public format becomes a stream of :class:`Item`. Pure (no torch).

Formats read (MGPO_SPEC section 4; the public files, unchanged):

- **V\\*** (``vstar``): the folder of ``sa_XXXX.jpg`` + ``sa_XXXX.json`` pairs
  (``{"question", "options", ...}``, ``options[0]`` is the correct one), or the
  ``test_questions.jsonl`` form (``{"image", "text", "category", "question_id", "label"}``, the
  choices written into ``text`` as ``(A) ...`` lines). A folder that holds ``test_questions.jsonl``
  is read through it (its letter order is the published one). In the pair form the options are put
  in a fixed pseudo-random order per item (seeded by the item id, see :func:`vstar_order`) so the
  answer is not always (A).
- **HR-Bench 4K/8K** (``hrbench``): ``hr_bench_4k.tsv`` / ``hr_bench_8k.tsv`` with columns
  ``index, question, A, B, C, D, answer, category, cycle_category, image`` (base64 JPEG). The
  files are 1.9 / 4.6 GB, so rows are read one at a time and each image is decoded only when its
  item is run.
- **MME-RealWorld** (``mme-realworld``): the official ``MME_RealWorld.json`` (full; any JSON list
  with its item schema, e.g. a Lite subset, works too), images relative to the JSON's folder or
  ``image_root``; or the Lite TSV ``mme_realworld_lite.tsv`` (VLMEvalKit layout: ``index,
  question, multi-choice options, answer, category = "Task/Subtask", l2-category, image``).
- **Project JSONL** (``jsonl``): one ``{"image", "question", "choices", "answer"}`` object a line
  (optional ``id``, ``category``); ``answer`` is a letter or the text of one choice.

Broken files raise :class:`DataError` naming the file and line; an unreadable image is an item
error reported by the runner, not a crash.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import json
import random
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..prompts import LETTERS, strip_letter

BENCHMARKS = ("vstar", "hrbench", "mme-realworld", "jsonl")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VSTAR_SEED = "mgpo-vstar-v1"   # seeds the per-item option order of the V* pair form

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # one base64 image is a field of tens of MB


class DataError(ValueError):
    """A benchmark file that cannot be read, with a message that says where and why."""


@dataclass
class Item:
    """One multiple-choice question about one image."""

    id: str                       # unique within the benchmark; the resume key
    question: str                 # the question alone (no choices, no answer instruction)
    choices: list[str]            # option texts without their letters, in letter order
    answer: str                   # ground-truth letter
    image: Path | bytes           # a file, or the encoded image bytes (decoded when run)
    meta: dict = field(default_factory=dict)  # fields scoring groups by (category, cycle, task …)


@dataclass
class Benchmark:
    name: str                     # one of BENCHMARKS
    variant: str                  # which public form was read (recorded in the protocol)
    path: Path
    items: Callable[[], Iterator[Item]]   # a fresh stream on every call
    total: int | None = None      # item count when known without reading every row


def open_benchmark(name: str, path: str | Path, image_root: str | Path | None = None) -> Benchmark:
    """Recognise the format of ``path`` for benchmark ``name`` and return its item stream."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist")
    root = Path(image_root).expanduser() if image_root else None
    if name == "vstar":
        return _open_vstar(path)
    if name == "hrbench":
        if path.is_dir():
            raise DataError(f"{path} is a folder; pass the TSV file (hr_bench_4k.tsv or hr_bench_8k.tsv)")
        return Benchmark("hrbench", path.stem, path, lambda: read_hrbench(path))
    if name == "mme-realworld":
        if path.is_dir():
            found = [p for p in ("MME_RealWorld.json", "mme_realworld_lite.tsv") if (path / p).is_file()]
            if not found:
                raise DataError(f"{path} holds neither MME_RealWorld.json nor mme_realworld_lite.tsv")
            path = path / found[0]
        if path.suffix.lower() == ".tsv":
            return Benchmark("mme-realworld", "lite-tsv:" + path.name, path, lambda: read_mme_tsv(path))
        items = read_mme_json(path, root)
        return Benchmark("mme-realworld", "json:" + path.name, path, lambda: iter(items), len(items))
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass the .jsonl file")
    items = list(read_jsonl(path, root))
    return Benchmark("jsonl", path.name, path, lambda: iter(items), len(items))


# ----- shared helpers ---------------------------------------------------------------------------

def _letter(value, n: int, where: str) -> str:
    """A ground-truth letter within the first ``n`` letters: ``"B"``, ``"b"``, ``"(B)"``."""
    m = re.fullmatch(r"\s*\(?\s*([A-Za-z])\s*\)?\s*\.?\s*", str(value))
    if not m or LETTERS.index(m.group(1).upper()) >= n:
        raise DataError(f"{where}: answer {value!r} is not one of the letters {LETTERS[:n]}")
    return m.group(1).upper()


def _clean_choices(raw, where: str) -> list[str]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise DataError(f"{where}: the choices must be a non-empty list")
    if len(raw) > len(LETTERS):
        raise DataError(f"{where}: {len(raw)} choices; at most {len(LETTERS)} are supported")
    return [strip_letter(str(c), LETTERS[i]) for i, c in enumerate(raw)]


def _question(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: the question is empty")
    return value.strip()


def _b64(value: str, where: str) -> bytes:
    try:
        data = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{where}: the image field is not base64 ({e})") from None
    if not data:
        raise DataError(f"{where}: the image field is empty")
    return data


def _read_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object")
            yield n, row


class _TsvRows:
    """Rows of a (huge) TSV as dicts, read one line at a time; the header names the columns."""

    def __init__(self, path: Path, required: tuple[str, ...]):
        self.path = path
        self.required = required

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        with self.path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{self.path} is empty") from None
            except csv.Error as e:
                raise DataError(f"{self.path}: not a TSV file ({e})") from None
            missing = [c for c in self.required if c not in header]
            if missing:
                raise DataError(
                    f"{self.path}: missing column(s) {', '.join(missing)} (found: {', '.join(header[:12])})"
                )
            while True:
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    raise DataError(f"{self.path}:{reader.line_num}: {e}") from None
                if not values:
                    continue
                if len(values) != len(header):
                    raise DataError(
                        f"{self.path}:{reader.line_num}: {len(values)} fields, the header has {len(header)}"
                    )
                yield reader.line_num, dict(zip(header, values))


class _RecentImages:
    """VLMEvalKit TSVs may store an image once and refer to it by row index in later rows."""

    def __init__(self, size: int = 16):
        self.size = size
        self.seen: OrderedDict[str, str] = OrderedDict()

    def resolve(self, index: str, image: str, where: str) -> str:
        image = image.strip()
        if len(image) <= 64 and image.isdigit():
            if image not in self.seen:
                raise DataError(f"{where}: the image refers to row {image}, which is not among the "
                                f"last {self.size} rows read")
            return self.seen[image]
        self.seen[index] = image
        if len(self.seen) > self.size:
            self.seen.popitem(last=False)
        return image


# ----- V* ---------------------------------------------------------------------------------------

_CHOICE_LINE = re.compile(r"^\s*\(([A-Z])\)\s?(.*)$")


def split_vstar_text(text: str, where: str = "V*") -> tuple[str, list[str]]:
    """``"Q?\\n(A) x\\n(B) y\\nAnswer with the option's letter ..."`` → ``("Q?", ["x", "y"])``.

    Lines before the first ``(A)`` line are the question; lines after the last choice (the
    benchmark's own answer instruction) are dropped — MGPO's prompts carry their own.
    """
    lines = str(text).splitlines()
    first = next((i for i, ln in enumerate(lines) if _CHOICE_LINE.match(ln)), None)
    if first is None:
        raise DataError(f"{where}: no '(A) ...' choice lines in the text")
    question = _question("\n".join(lines[:first]), where)
    choices: list[str] = []
    for ln in lines[first:]:
        m = _CHOICE_LINE.match(ln)
        if not m:
            break
        if m.group(1) != LETTERS[len(choices)]:
            raise DataError(f"{where}: choice ({m.group(1)}) out of order")
        choices.append(m.group(2).strip())
    return question, choices


def vstar_order(item_id: str, n: int) -> list[int]:
    """The option order for a V* pair: a permutation of ``range(n)`` seeded by the item id.

    ``order[k]`` is the index into ``options`` shown as letter k; deterministic across runs,
    machines and Python versions (``random.Random`` seeded with a string).
    """
    order = list(range(n))
    random.Random(f"{VSTAR_SEED}:{item_id}").shuffle(order)
    return order


def _open_vstar(path: Path) -> Benchmark:
    if path.is_file():
        if path.suffix.lower() != ".jsonl":
            raise DataError(f"{path}: pass the V* folder or its test_questions.jsonl")
        items = list(read_vstar_jsonl(path))
        return Benchmark("vstar", "jsonl:" + path.name, path, lambda: iter(items), len(items))
    if (path / "test_questions.jsonl").is_file():
        jl = path / "test_questions.jsonl"
        items = list(read_vstar_jsonl(jl))
        return Benchmark("vstar", "jsonl:test_questions.jsonl", path, lambda: iter(items), len(items))
    items = list(read_vstar_folder(path))
    if not items:
        raise DataError(f"{path}: no V* questions found (expected sa_XXXX.json + sa_XXXX.jpg pairs "
                        "in direct_attributes/ and relative_position/, or test_questions.jsonl)")
    return Benchmark("vstar", "folder", path, lambda: iter(items), len(items))


def read_vstar_jsonl(path: Path) -> Iterator[Item]:
    base = path.parent
    for n, row in _read_json_lines(path):
        where = f"{path}:{n}"
        for key in ("image", "text", "label"):
            if key not in row:
                raise DataError(f"{where}: missing field {key!r}")
        question, choices = split_vstar_text(row["text"], where)
        image = base / str(row["image"])
        category = row.get("category") or image.parent.name
        qid = row.get("question_id", Path(str(row["image"])).stem)
        yield Item(str(qid), question, choices, _letter(row["label"], len(choices), where), image,
                   {"category": str(category)})


def read_vstar_folder(root: Path) -> Iterator[Item]:
    for meta_path in sorted(root.rglob("*.json")):
        image = next((meta_path.with_suffix(s) for s in IMAGE_SUFFIXES if meta_path.with_suffix(s).is_file()), None)
        if image is None:
            continue  # not a V* annotation (no image next to it)
        where = str(meta_path)
        try:
            anno = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(anno, dict) or "question" not in anno or "options" not in anno:
            raise DataError(f"{where}: expected {{\"question\": ..., \"options\": [...]}}")
        options = _clean_choices(anno["options"], where)
        rel = meta_path.relative_to(root).with_suffix("")
        item_id = rel.as_posix()
        order = vstar_order(item_id, len(options))
        choices = [options[k] for k in order]
        answer = LETTERS[order.index(0)]  # options[0] is the correct one
        category = rel.parent.as_posix() if rel.parent != Path(".") else "all"
        yield Item(item_id, _question(anno["question"], where), choices, answer, image, {"category": category})


# ----- HR-Bench ---------------------------------------------------------------------------------

HRBENCH_COLUMNS = ("index", "question", "A", "B", "answer", "category", "cycle_category", "image")
HRBENCH_SPLITS = {"single": "FSP", "cross": "FCP"}  # fine-grained single-/cross-instance perception


def read_hrbench(path: Path) -> Iterator[Item]:
    """Stream HR-Bench rows; each row is one option rotation (a *cycle*) of a question."""
    recent = _RecentImages()
    for line, row in _TsvRows(path, HRBENCH_COLUMNS):
        where = f"{path}:{line}"
        choices = []
        for letter in LETTERS:
            value = row.get(letter)
            if value is None or value.strip() in ("", "nan"):
                break
            choices.append(value.strip())
        image = recent.resolve(row["index"], row["image"], where)
        category = row["category"].strip()
        yield Item(row["index"].strip(), _question(row["question"], where), choices,
                   _letter(row["answer"], len(choices), where), _b64(image, where),
                   {"category": category, "cycle_category": row["cycle_category"].strip(),
                    "split": HRBENCH_SPLITS.get(category.lower(), category)})


# ----- MME-RealWorld ----------------------------------------------------------------------------

MME_FIELDS = ("Question_id", "Image", "Text", "Answer choices", "Ground truth", "Task", "Subtask", "Category")
MME_TSV_COLUMNS = ("index", "question", "multi-choice options", "answer", "category", "l2-category", "image")


def read_mme_json(path: Path, image_root: Path | None = None) -> list[Item]:
    """The official JSON (a list of items); images are relative to ``image_root`` or the JSON's folder."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of MME-RealWorld items")
    base = image_root or path.parent
    items = []
    for n, row in enumerate(data):
        where = f"{path} item {n}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object")
        missing = [k for k in MME_FIELDS if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        choices = _clean_choices(row["Answer choices"], where)
        items.append(Item(str(row["Question_id"]), _question(row["Text"], where), choices,
                          _letter(row["Ground truth"], len(choices), where), base / str(row["Image"]),
                          {"task": str(row["Task"]), "subtask": str(row["Subtask"]),
                           "category": str(row["Category"])}))
    return items


def read_mme_tsv(path: Path) -> Iterator[Item]:
    """The Lite TSV (VLMEvalKit layout), streamed."""
    recent = _RecentImages()
    for line, row in _TsvRows(path, MME_TSV_COLUMNS):
        where = f"{path}:{line}"
        try:
            raw = ast.literal_eval(row["multi-choice options"])
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: 'multi-choice options' is not a list literal") from None
        choices = _clean_choices(raw, where)
        task, _, subtask = row["category"].partition("/")
        image = recent.resolve(row["index"], row["image"], where)
        yield Item(row["index"].strip(), _question(row["question"], where), choices,
                   _letter(row["answer"], len(choices), where), _b64(image, where),
                   {"task": task.strip(), "subtask": subtask.strip(), "category": row["l2-category"].strip()})


# ----- project JSONL ----------------------------------------------------------------------------

def read_jsonl(path: Path, image_root: Path | None = None) -> Iterator[Item]:
    """``{"image", "question", "choices", "answer"}`` lines; ``answer`` is a letter or a choice's text."""
    base = image_root or path.parent
    for n, row in _read_json_lines(path):
        where = f"{path}:{n}"
        for key in ("image", "question", "choices", "answer"):
            if key not in row:
                raise DataError(f"{where}: missing field {key!r}")
        choices = _clean_choices(row["choices"], where)
        answer = str(row["answer"]).strip()
        matches = [i for i, c in enumerate(choices) if c.strip().lower() == answer.lower()]
        try:
            letter = _letter(answer, len(choices), where)   # a letter wins over a choice's text
        except DataError:
            if not matches:
                raise DataError(f"{where}: answer {answer!r} is neither a letter within "
                                f"{LETTERS[:len(choices)]} nor the text of a choice") from None
            letter = LETTERS[matches[0]]
        meta = {"category": str(row["category"])} if row.get("category") is not None else {}
        yield Item(str(row.get("id", n)), _question(row["question"], where), choices, letter,
                   base / str(row["image"]), meta)

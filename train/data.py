"""Training data: multiple-choice questions about images, with no box annotations.

Three sources, one record type (:class:`Item`):

- JSONL, one record per line: ``{"image": "imgs/a.jpg", "question": "...", "choices": ["..", ..],
  "answer": "B"}`` (``choices`` optional, ``id`` optional). Image paths are relative to the JSONL
  file's folder (absolute paths work; URLs are refused — nothing is downloaded).
- MME-RealWorld's JSON (a list of ``{"Question_id", "Image", "Text", "Answer choices",
  "Ground truth", ...}``); ``Image`` is relative to ``image_root`` (default: the JSON's folder).
- A Hugging Face ``datasets`` dataset (a Hub name, or a folder saved with ``save_to_disk``) with
  a column mapping ``{our field: their column}``; the image column may hold PIL images, bytes or
  paths.

Bad records are never dropped silently: each one is skipped by a named rule (invalid JSON,
missing field, image not found, bad choices, bad answer, ...) and :class:`Report` counts them
per rule, with the first few line numbers / ids, for the log.

:class:`Sampler` walks the items in a seeded shuffled order, epoch after epoch; its position
(epoch, cursor) is what a checkpoint stores, so a resumed run sees the same prompts.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mgpo.data import FIELDS, DataError, Item, RecordError, jsonl_records, mme_records, parse_record

__all__ = ["DataError", "Item", "Report", "Sampler", "load_items"]   # the record type and error are mgpo.data's


@dataclass
class Report:
    """Skipped records per rule, with the first few places (line numbers or ids)."""

    source: str
    total: int = 0
    kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def skip(self, rule: str, where: str) -> None:
        self.skipped[rule].append(where)

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        s = f"{self.source}: {self.kept} of {self.total} records usable"
        if self.skipped:
            parts = []
            for rule, places in sorted(self.skipped.items()):
                shown = ", ".join(places[:5]) + (", ..." if len(places) > 5 else "")
                parts.append(f"{len(places)} {rule} ({shown})")
            s += "; skipped " + "; ".join(parts)
        return s


def _path_resolver(root: Path):
    def resolve(value):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, dict):                         # datasets' {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return bytes(value["bytes"])
            value = value.get("path")
        if hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image
            return value
        if not isinstance(value, str) or "://" in value:
            return None
        p = Path(value)
        p = p if p.is_absolute() else root / p
        return str(p) if p.is_file() else None
    return resolve


def _keep(records, report: Report, max_records: int) -> list[Item]:
    """The trainer's policy on bad records: skip each one, counted by its rule, and go on."""
    items: list[Item] = []
    for place, x in records:
        report.total += 1
        if isinstance(x, RecordError):
            report.skip(x.rule, place)
            continue
        items.append(x)
        if max_records and len(items) >= max_records:
            break
    report.kept = len(items)
    return items


def _line(n: int, rec: dict | None) -> str:
    return f"line {n}" + (f" (id {rec['id']})" if rec and rec.get("id") is not None else "")


def load_jsonl(path: str | Path, max_records: int = 0) -> tuple[list[Item], Report]:
    path = Path(path)
    report = Report(str(path))
    records = jsonl_records(path, _path_resolver(path.parent), where=_line)
    return _keep(records, report, max_records), report


def load_mme_realworld(path: str | Path, image_root: str | Path | None = None,
                       max_records: int = 0) -> tuple[list[Item], Report]:
    path = Path(path)
    report = Report(str(path))
    resolve = _path_resolver(Path(image_root) if image_root else path.parent)
    records = mme_records(path, resolve, where=lambda n, rec: f"id {rec.get('Question_id', n)}" if rec else f"item {n}")
    return _keep(records, report, max_records), report


def load_hf(name: str, split: str = "train", columns: dict | None = None, image_root: str | Path | None = None,
            max_records: int = 0) -> tuple[list[Item], Report]:
    import datasets

    columns = dict(columns or {})
    unknown = set(columns) - set(FIELDS)
    if unknown:
        raise DataError(f"unknown fields in the column mapping: {', '.join(sorted(unknown))}; map {', '.join(FIELDS)}")
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataError(f"could not open the dataset {name!r} (split {split!r}): "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    missing = [columns.get(f, f) for f in ("image", "question", "answer") if columns.get(f, f) not in ds.column_names]
    if missing:
        raise DataError(f"the dataset has no column {', '.join(missing)} (columns: {', '.join(ds.column_names)}); "
                        "pass a mapping, e.g. --columns image=img,question=query,answer=label")
    report = Report(f"{name} [{split}]")
    resolve = _path_resolver(Path(image_root) if image_root else Path.cwd())

    def records():
        for n, row in enumerate(ds):
            mapped = {f: row.get(columns.get(f, f)) for f in FIELDS}
            where = f"row {n}" + (f" (id {mapped['id']})" if mapped.get("id") is not None else "")
            try:
                yield where, parse_record(mapped, where, resolve)
            except RecordError as e:
                yield where, e

    return _keep(records(), report, max_records), report


def detect_format(data: str) -> str:
    p = Path(data)
    if p.is_dir():
        return "hf"
    if p.suffix.lower() == ".jsonl":
        return "jsonl"
    if p.suffix.lower() == ".json":
        return "mme"
    if p.exists():
        raise DataError(f"cannot tell the format of {data}; pass --data-format jsonl|mme|hf")
    return "hf"  # a Hub dataset name


def load_items(data: str, data_format: str = "auto", *, image_root: str = "", split: str = "train",
               columns: dict | None = None, max_records: int = 0) -> tuple[list[Item], Report]:
    """Load usable items and the skip report; raises :class:`DataError` when none are usable."""
    fmt = detect_format(data) if data_format == "auto" else data_format
    if fmt in ("jsonl", "mme") and not Path(data).is_file():
        raise DataError(f"the data file {data} does not exist")
    if fmt == "jsonl":
        items, report = load_jsonl(data, max_records)
    elif fmt == "mme":
        items, report = load_mme_realworld(data, image_root or None, max_records)
    elif fmt == "hf":
        items, report = load_hf(data, split, columns, image_root or None, max_records)
    else:
        raise DataError(f"unknown data format {fmt!r}")
    if not items:
        raise DataError(f"no usable training records. {report.summary()}")
    return items, report


class Sampler:
    """Shuffled passes over ``n`` items; process ``rank`` of ``world`` takes every world-th slot.

    State ``(epoch, cursor)`` is plain data for checkpoints; the order of epoch e is a fixed
    permutation from ``seed + e``.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1):
        if n < 1:
            raise DataError("no items to sample from")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.cursor = 0, rank
        self._order = self._perm(0)

    def _perm(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self) -> int:
        while self.cursor >= self.n:
            self.cursor -= self.n
            self.epoch += 1
            self._order = self._perm(self.epoch)
        i = self._order[self.cursor]
        self.cursor += self.world
        return i

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "rank": self.rank, "world": self.world}

    def load_state(self, state: dict) -> None:
        if (state.get("rank"), state.get("world")) != (self.rank, self.world):
            raise DataError(f"the checkpoint was written by process {state.get('rank')} of {state.get('world')}; "
                            f"this is process {self.rank} of {self.world}: resume with the same number of processes")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._perm(self.epoch)

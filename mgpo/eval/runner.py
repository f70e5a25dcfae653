"""Run a benchmark through the engine, item by item on disk, and score it.

The loop (:func:`evaluate`):

1. Record the protocol (model, adapter, pixel budget, turns, mode, decoding, box rule, prompt
   set, answer extraction) in ``DIR/run.json``. A rerun in the same DIR must ask for the same
   protocol — otherwise it stops and says which setting differs — and then resumes.
2. Read ``DIR/items.jsonl`` (one JSON row per finished item; a half-written last line from a
   crash is cut off) and skip those ids.
3. Stream the benchmark, take the first ``limit`` items, and send the unfinished ones in
   batches of ``batch_size`` through :meth:`Engine.stream` (one sample each, greedy by
   default). In MGPO mode each item with a valid box is then re-asked, batched, on its first
   valid crop alone with the direct prompt (crop-only accuracy, the paper's Table 5). Each
   batch's rows are appended and flushed to disk before the next batch starts, so a crash loses
   at most the batch in flight.
4. Score the rows of the selected items (:mod:`mgpo.eval.scoring`) and write
   ``DIR/results.json`` (protocol + scores) and ``DIR/results.md``.

An item whose image cannot be read, or that the engine refuses (empty question, too many
choices, extreme aspect ratio), is written as an error row and scored wrong; any other
exception stops the run, and the next run resumes.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

from .. import geometry
from ..engine import DEFAULT_MODEL, Engine, EngineConfig, InputError, Request, drain
from ..events import TurnFinished
from ..images import ImageError, load_image
from ..conversation import Sampling
from .datasets import Benchmark, Item
from .report import markdown
from .parallel import PARTS, World, finished as _finished
from .scoring import extract_letter, score

ITEMS = "items.jsonl"
RUN = "run.json"
RESULTS = "results.json"
REPORT = "results.md"

ANSWER_RULE = ("letter from the last \\boxed{} (or a choice's text inside it); "
               "fallback: last 'answer is X' phrase, or a bare letter reply")
STRICT_RULE = "letter from the last \\boxed{} (or a choice's text inside it); no fallback"

# Settings that change what the model sees or how a row is scored: a resumed run must match.
RESUME_KEYS = ("benchmark", "variant", "model", "mode", "max_turns", "min_pixels", "max_pixels",
               "box_rule", "prompts", "decoding", "crop_only", "answer_extraction")


class EvalError(RuntimeError):
    """A run that cannot go on, with a message for the person who started it."""


@dataclass
class EvalConfig:
    benchmark: str = "vstar"                  # vstar | hrbench | mme-realworld | jsonl | playground
    data: str = ""                            # the benchmark's file or folder
    out: str = "eval_out"                     # results folder (resumes when it exists)
    model: str = DEFAULT_MODEL                # Hub id or local directory
    adapter: str | None = None                # LoRA adapter (Hub id or directory)
    mode: str = "mgpo"                        # mgpo (multi-turn) | direct (single-turn baseline)
    limit: int | None = None                  # first K items only
    batch_size: int = 8                       # items per engine call
    crop_only: bool = True                    # mgpo mode: re-ask on the answer's crop alone
    strict: bool = False                      # True: \boxed{} only, no fallback extraction
    image_root: str | None = None             # where relative image paths start (default: next to the data file)
    categories: str | None = None             # vstar: subfolders to score, comma-separated, or "all"
                                              # (default: direct_attributes,relative_position — the official 191)
    split: str = "test"                       # playground: the seed split its scenes come from (test | val)
    overview: int | None = None               # playground: the overview side its world is drawn for (224 | 280;
                                              # None: a release's own, else 224)
    cards: int | None = None                  # playground: cards a scene, the question naming one (None: a
                                              # release's own, else 1)
    # the engine's settings (turns, pixel limits, box rule, prompts, decoding): greedy by default
    engine: EngineConfig = field(default_factory=EngineConfig)

    @classmethod
    def of(cls, **settings) -> "EvalConfig":
        """An EvalConfig from flat settings: the engine's fields (``max_turns``, ``min_pixels``,
        ``temperature`` …) go to :attr:`engine`, the rest are the evaluation's own."""
        engine_fields = {f.name for f in fields(EngineConfig)}
        engine = {k: v for k, v in settings.items() if k in engine_fields}
        own = {k: v for k, v in settings.items() if k not in engine_fields}
        return cls(**own, engine=EngineConfig(**engine))

    def sampling(self) -> Sampling:
        return self.engine.sampling()

    def engine_settings(self) -> dict:
        """Per-call engine settings, so the protocol recorded is the one that ran."""
        e = self.engine
        return dict(min_pixels=e.min_pixels, max_pixels=e.max_pixels, box_rule=e.box_rule, prompts=e.prompts)

    def check(self) -> None:
        if self.mode not in ("mgpo", "direct"):
            raise EvalError(f"unknown mode {self.mode!r}; choose mgpo or direct")
        if self.batch_size < 1:
            raise EvalError("--batch-size must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise EvalError("--limit must be at least 1")
        if self.split not in ("test", "val"):
            raise EvalError(f"--split must be test or val, not {self.split!r} (the other splits are training's)")
        try:
            self.engine.check(self.mode)
        except InputError as e:
            raise EvalError(str(e)) from None


# ----- protocol ---------------------------------------------------------------------------------

def versions() -> dict:
    out: dict = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "pillow"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5)
        out["mgpo_commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["mgpo_commit"] = None
    return out


def make_protocol(model_name: str, bench: Benchmark, cfg: EvalConfig) -> dict:
    """What ran: ``model_name`` is the engine's name (``model`` or ``model + adapter``)."""
    return {
        "benchmark": bench.name,
        "variant": bench.variant,
        "data": str(bench.path),
        "model": model_name,
        "adapter": cfg.adapter,
        "mode": cfg.mode,
        "max_turns": 1 if cfg.mode == "direct" else cfg.engine.max_turns,
        "min_pixels": cfg.engine.min_pixels,
        "max_pixels": cfg.engine.max_pixels,
        "box_rule": cfg.engine.box_rule,
        "prompts": cfg.engine.prompts,
        "decoding": {**asdict(cfg.sampling()), "greedy": cfg.engine.temperature == 0},
        "crop_only": cfg.mode == "mgpo" and cfg.crop_only,
        "answer_extraction": STRICT_RULE if cfg.strict else ANSWER_RULE,
        "limit": cfg.limit,
        "batch_size": cfg.batch_size,
        "data_notes": list(bench.notes),
        "versions": versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def check_resume(out: Path, protocol: dict, write: bool = True) -> None:
    """Write ``run.json`` on the first run; on a rerun refuse a different protocol."""
    key = {k: protocol[k] for k in RESUME_KEYS}
    path = out / RUN
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))["protocol"]
        except (OSError, ValueError, KeyError, TypeError):
            raise EvalError(f"{path} is damaged; delete it (and {ITEMS}) or pick a new --out") from None
        diff = [k for k in RESUME_KEYS if before.get(k) != key[k]]
        if diff:
            detail = "; ".join(f"{k}: was {before.get(k)!r}, now {key[k]!r}" for k in diff)
            raise EvalError(f"{out} holds a run with a different protocol ({detail}). "
                            "Use a new --out folder, or --overwrite to start this one again.")
        return
    if write:
        path.write_text(json.dumps({"protocol": key, "started": protocol["date"]}, indent=2), encoding="utf-8")


# ----- the per-item file ------------------------------------------------------------------------

def load_rows(path: Path) -> dict[str, dict]:
    """Finished rows by id. A torn or damaged tail (a crash mid-write) is cut off the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    rows: dict[str, dict] = {}
    good = 0                       # bytes of whole, readable lines
    while True:
        nl = data.find(b"\n", good)
        if nl == -1:               # nothing left, or a last line without its newline (torn)
            break
        try:
            row = json.loads(data[good:nl]) if data[good:nl].strip() else {}
        except ValueError:
            break
        if isinstance(row, dict) and "id" in row:
            rows.setdefault(str(row["id"]), row)
        good = nl + 1
    if good < len(data):
        with path.open("r+b") as f:
            f.truncate(good)
    return rows


def _append(f, rows: list[dict]) -> None:
    for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def unique_ids(items: Iterable[Item]) -> Iterator[Item]:
    """Keep ids unique (they are the resume key): a repeated id gets ``#2``, ``#3`` …"""
    seen: dict[str, int] = {}
    for it in items:
        k = seen.get(it.id, 0) + 1
        seen[it.id] = k
        yield replace(it, id=f"{it.id}#{k}") if k > 1 else it


# ----- one batch --------------------------------------------------------------------------------

def _base_row(it: Item) -> dict:
    row = {"id": it.id, "question": it.question, "choices": it.choices, "answer": it.answer, "meta": it.meta}
    if it.gt_box is not None:     # hidden target box (original px), for the IoU in scoring
        row["gt_box"] = list(it.gt_box)
    return row


def error_row(it: Item, message: str) -> dict:
    return {**_base_row(it), "pred": None, "letter_source": None, "correct": False, "error": message}


def _drain(stream) -> tuple[list, dict[int, int]]:
    """Run an engine stream to its end; the rollouts and the tokens generated per sample."""
    new_tokens: dict[int, int] = {}

    def count(event) -> None:
        if isinstance(event, TurnFinished):
            new_tokens[event.sample] = new_tokens.get(event.sample, 0) + event.new_tokens

    return drain(stream, count), new_tokens


def _crop_only(engine: Engine, pairs, rollouts, cfg: EvalConfig) -> dict[int, dict]:
    """Re-ask each item that got a valid box on the crop its answer read alone (direct prompt)."""
    asks = []
    for k, r in enumerate(rollouts):
        box = r.answer_box
        if box is None:
            continue
        it, original = pairs[k]
        # (x1, y1, x2, y2) in original-image pixels → the crop as turn 2 fed it
        crop = geometry.prepare(original, tuple(box.box_original), cfg.engine.min_pixels, cfg.engine.max_pixels)
        asks.append((k, box, Request(crop.image, it.question, it.choices, it.answer, it.id)))
    if not asks:
        return {}
    outs, new_tokens = _drain(engine.stream([a[2] for a in asks], 1, mode="direct", sampling=cfg.sampling(),
                                            **cfg.engine_settings()))
    result = {}
    for (k, box, _), r in zip(asks, outs):
        it = pairs[k][0]
        pred, source = extract_letter(r.final.text, it.choices, cfg.strict)
        result[k] = {"box_original": list(box.box_original), "turn": box.turn, "pred": pred,
                     "letter_source": source, "correct": pred == it.answer, "text": r.final.text,
                     "visual_tokens": r.final.visual_tokens, "new_tokens": new_tokens.get(r.sample, 0)}
    return result


def _generate(engine: Engine, pairs: list[tuple[Item, object]], cfg: EvalConfig) -> list[dict]:
    t0 = time.perf_counter()
    requests = [Request(img, it.question, it.choices, it.answer, it.id) for it, img in pairs]
    rollouts, new_tokens = _drain(engine.stream(requests, 1, mode=cfg.mode, max_turns=cfg.engine.max_turns,
                                                sampling=cfg.sampling(), **cfg.engine_settings()))
    crops = _crop_only(engine, pairs, rollouts, cfg) if cfg.mode == "mgpo" and cfg.crop_only else {}
    share = (time.perf_counter() - t0) / len(pairs)
    rows = []
    for k, ((it, _), r) in enumerate(zip(pairs, rollouts)):
        pred, source = extract_letter(r.final.text, it.choices, cfg.strict)
        rows.append({
            **_base_row(it),
            "pred": pred,
            "letter_source": source,
            "correct": pred == it.answer,
            "text": r.final.text,                 # the last turn's reply
            "texts": r.texts,                     # every turn's reply
            "kinds": r.kinds,                     # grounding | crop | fallback | refine | direct
            "turns": r.final.turns,
            "valid_box": r.valid_box,
            "boxes": [_box_row(b) for b in r.boxes],
            "crop_area": r.crop_area,
            "visual_tokens": r.final.visual_tokens,
            "native_visual_tokens": r.final.native_visual_tokens,
            "new_tokens": new_tokens.get(r.sample, 0),
            "seconds": r.final.seconds,           # this conversation inside its batch
            "batch_seconds_per_item": share,      # the batch's wall time / its items
            "crop_only": crops.get(k) if cfg.mode == "mgpo" and cfg.crop_only else None,
            "error": None,
        })
    return rows


def _box_row(box) -> dict:
    """A box event for items.jsonl, without its place in the engine's batch (which depends on
    how the items were batched and dealt out, not on the item)."""
    d = box.to_dict()
    d.pop("sample", None)
    return d


def _generate_isolating(engine: Engine, pairs, cfg: EvalConfig) -> list[dict]:
    """A batch the engine refuses is split so that only the offending item becomes an error row."""
    try:
        return _generate(engine, pairs, cfg)
    except (InputError, ImageError) as e:
        if len(pairs) == 1:
            return [error_row(pairs[0][0], str(e))]
        return [row for p in pairs for row in _generate_isolating(engine, [p], cfg)]


def run_batch(engine: Engine, items: list[Item], cfg: EvalConfig) -> list[dict]:
    """Rows for ``items``, in order; unreadable images become error rows."""
    rows: list[dict | None] = [None] * len(items)
    ready, where = [], []
    for pos, it in enumerate(items):
        try:
            ready.append((it, load_image(it.image)))
            where.append(pos)
        except ImageError as e:
            rows[pos] = error_row(it, str(e))
    if ready:
        for pos, row in zip(where, _generate_isolating(engine, ready, cfg)):
            rows[pos] = row
    return rows  # type: ignore[return-value]


# ----- the run ----------------------------------------------------------------------------------

def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, dynamic_ncols=True)


def evaluate(engine: Engine, bench: Benchmark, cfg: EvalConfig, progress: bool = True,
             overwrite: bool = False) -> dict:
    """Run (or resume) ``bench`` into ``cfg.out``; returns what ``results.json`` holds."""
    cfg.check()
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} is a file; pass a folder")
    world = World.current()
    parts = out / PARTS
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in (ITEMS, RUN, RESULTS, REPORT):
                (out / name).unlink(missing_ok=True)
            for part in parts.glob("*.jsonl"):
                part.unlink()
    world.barrier()
    protocol = make_protocol(engine.name, bench, cfg)
    check_resume(out, protocol, write=False)      # every process refuses a different protocol alike
    world.barrier()
    if world.main:
        check_resume(out, protocol)
    done = _finished(out)
    world.barrier()                               # every process has read what is done before any writes

    total = bench.total if cfg.limit is None else (min(cfg.limit, bench.total) if bench.total else cfg.limit)
    selected: list[str] = []
    pending: list[Item] = []
    correct = seen = 0
    mine = out / ITEMS if world.size == 1 else parts / f"rank-{world.rank}.jsonl"
    mine.parent.mkdir(parents=True, exist_ok=True)
    todo = 0
    with mine.open("a", encoding="utf-8") as f, \
            _progress(total, f"{bench.name} {cfg.mode}", progress and world.main) as bar:

        def record(rows: list[dict]) -> None:
            nonlocal correct, seen
            _append(f, rows)
            for row in rows:
                done[row["id"]] = row
            seen += len(rows)
            correct += sum(bool(r["correct"]) for r in rows)
            bar.update(len(rows) * world.size)
            bar.set_postfix(acc=f"{100 * correct / seen:.1f}%")

        for it in itertools.islice(unique_ids(bench.items()), cfg.limit):
            selected.append(it.id)
            if it.id in done:
                bar.update(1)
                continue
            todo += 1
            if (todo - 1) % world.size != world.rank:   # the items left are dealt out in turn
                continue
            pending.append(it)
            if len(pending) == cfg.batch_size:
                record(run_batch(engine, pending, cfg))
                pending = []
        if pending:
            record(run_batch(engine, pending, cfg))

    world.barrier()                               # every process has written its items
    if not world.main:
        world.barrier()                           # the main process merges and scores
        return json.loads((out / RESULTS).read_text(encoding="utf-8"))
    done = _finished(out)
    if not selected:
        raise EvalError(f"no items were read from {bench.path}")
    rows = [done[i] for i in selected]
    # one items.jsonl in the benchmark's order, whatever the processes and resumes that made it
    tmp = out / (ITEMS + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        chosen = set(selected)
        _append(f, rows + [r for k, r in done.items() if k not in chosen])   # rows of a larger earlier --limit
    tmp.replace(out / ITEMS)
    for part in parts.glob("*.jsonl"):
        part.unlink()
    protocol["items"] = len(rows)
    protocol["processes"] = world.size
    results = {"protocol": protocol, **score(bench.name, rows)}
    (out / RESULTS).write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / REPORT).write_text(markdown(results), encoding="utf-8")
    world.barrier()
    return results

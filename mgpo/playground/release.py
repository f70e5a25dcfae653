"""A playground release: the folder the recipe ships and the app's Playground tab shows.

Pure (json, PIL): no torch, no gradio. The layout::

    RELEASE/
      README.md          model card
      model/             the base-skills model ("before RL"): a Qwen2.5-VL checkpoint + processor
      adapters/<name>/   one peft LoRA adapter per RL checkpoint (adapters/step-0010, ...)
      checkpoints.json   {"default": "late", "overview": 224, "checkpoints": [
                            {"name": "before RL", "step": 0, "adapter": null},
                            {"name": "early", "step": 10, "adapter": "adapters/step-0010"}, ...]}
                         ("overview": the world's geometry the release was trained in, 224 or 280;
                         224 when absent — see ``world.Budgets.for_overview``; "cards": cards a
                         scene, the question naming one, 1 when absent; "max_turns": the MGPO turns
                         it was trained and is run with, 2 — the paper's — when absent)
      metrics.jsonl      one JSON object per RL step: {"step", "reward", "valid_box", ...}, maybe "iou"
      curves.png         the training curves (optional)
      summary.json       eval numbers (optional, any JSON object)

:meth:`Release.load` checks it and says what is wrong (:class:`ReleaseError`); the recipe writes
``checkpoints.json`` with :func:`write_index`. :func:`draw_boxes` shows a predicted box against
the scene's hidden ground-truth box.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..transcript import TURN_COLOURS, Mark, draw_marks

INDEX = "checkpoints.json"
DISPLAY_SIDE = 1024                  # draw_boxes scales the scene to at most this many pixels a side
TRUTH_COLOUR = (0, 170, 70)
MODEL_COLOUR = TURN_COLOURS[0]       # the Ask tab's turn-1 orange
# one colour per checkpoint in the compare view (never the truth's green)
CHECKPOINT_COLOURS = [(255, 122, 0), (0, 110, 230), (230, 0, 126), (140, 70, 210), (150, 90, 30), (20, 20, 20)]
CURVE_KEYS = ("reward", "accuracy", "valid_box", "iou", "hit", "wrong_card")   # metrics.jsonl series the tab plots


class ReleaseError(ValueError):
    """A release folder that cannot be used, with what is wrong with it."""


@dataclass(frozen=True)
class Checkpoint:
    name: str                        # "before RL", "early", ...
    step: int                        # RL steps taken (0 = the base-skills model)
    adapter: Path | None             # LoRA adapter folder; None = the model without adapter


@dataclass
class Release:
    folder: Path
    model: Path                      # the base-skills checkpoint (model/)
    checkpoints: list[Checkpoint]    # in the index's order
    default: str                     # the checkpoint shown first
    curves: Path | None              # curves.png
    metrics: Path | None             # metrics.jsonl
    summary: dict | None             # summary.json
    overview: int = 224              # the overview side of the world it was trained in (Budgets.for_overview)
    cards: int = 1                   # cards a scene of that world (the question names one)
    max_turns: int = 2               # MGPO turns it was trained with and runs with (3: a look inside the crop first)

    def budgets(self):
        """The world's geometry this release sees: its scenes' side and pixel budgets."""
        from .world import Budgets

        return Budgets.for_overview(self.overview)

    @classmethod
    def load(cls, folder: str | Path) -> "Release":
        """Read and check ``folder``; raises :class:`ReleaseError` saying what is missing or wrong."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ReleaseError(f"no playground release at {folder}: the folder does not exist")
        model = folder / "model"
        if not (model / "config.json").is_file():
            raise ReleaseError(f"the playground release {folder} has no model: {model} should hold a "
                               "Qwen2.5-VL checkpoint (config.json, weights, processor)")
        index = _read_json(folder / INDEX, required=True)
        if not isinstance(index, dict) or not isinstance(index.get("checkpoints"), list) or not index["checkpoints"]:
            raise ReleaseError(f"{folder / INDEX} must be an object with a non-empty \"checkpoints\" list")
        checkpoints = [_checkpoint(folder, k, entry) for k, entry in enumerate(index["checkpoints"])]
        names = [c.name for c in checkpoints]
        if len(set(names)) != len(names):
            raise ReleaseError(f"{folder / INDEX}: checkpoint names repeat ({', '.join(names)})")
        default = index.get("default", names[-1])
        if default not in names:
            raise ReleaseError(f"{folder / INDEX}: the default checkpoint {default!r} is not one of "
                               f"{', '.join(map(repr, names))}")
        from .world import OVERVIEWS

        overview = index.get("overview", OVERVIEWS[0])   # releases from before the 280 world: 224
        if overview not in OVERVIEWS or isinstance(overview, bool):
            raise ReleaseError(f"{folder / INDEX}: \"overview\" must be one of {', '.join(map(str, OVERVIEWS))} "
                               f"(the world's geometry the release was trained in), not {overview!r}")
        from .world import check_cards

        try:
            cards = check_cards(index.get("cards", 1))
        except ValueError as e:
            raise ReleaseError(f"{folder / INDEX}: \"cards\": {e}") from None
        max_turns = index.get("max_turns", 2)
        if isinstance(max_turns, bool) or max_turns not in (2, 3):
            raise ReleaseError(f"{folder / INDEX}: \"max_turns\" must be 2 (the paper's MGPO) or 3 (one look inside "
                               f"the crop first), not {max_turns!r}")
        summary = _read_json(folder / "summary.json", required=False)
        if summary is not None and not isinstance(summary, dict):
            raise ReleaseError(f"{folder / 'summary.json'} must hold a JSON object")
        curves, metrics = folder / "curves.png", folder / "metrics.jsonl"
        return cls(folder, model, checkpoints, default, curves if curves.is_file() else None,
                   metrics if metrics.is_file() else None, summary, overview, cards, max_turns)

    def checkpoint(self, name: str) -> Checkpoint:
        for c in self.checkpoints:
            if c.name == name:
                return c
        raise ReleaseError(f"no checkpoint {name!r} in this release; choose one of "
                           f"{', '.join(repr(c.name) for c in self.checkpoints)}")

    def metrics_rows(self) -> list[dict]:
        """The RL steps of ``metrics.jsonl`` (objects with a ``step``); unreadable lines are skipped."""
        if self.metrics is None:
            return []
        rows = []
        for line in self.metrics.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                rows.append(row)
        return rows

    def curve_points(self, keys=CURVE_KEYS) -> list[dict]:
        """``metrics_rows`` in long form for a line plot: ``{"step", "value", "series"}`` per
        step and number among ``keys``."""
        return [{"step": r["step"], "value": float(r[k]), "series": k}
                for k in keys for r in self.metrics_rows()
                if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]


def is_release(path: str | Path) -> bool:
    """Whether ``path`` is a folder laid out as a release (it has the checkpoint index)."""
    return (Path(path) / INDEX).is_file()


def resolve(path: str | Path, checkpoint: str | None = None) -> tuple[str, str | None, dict]:
    """``(model dir, adapter dir or None, {"min_pixels", "max_pixels"})`` to run a release's
    ``checkpoint`` (its default when None) the way it was trained — what ``--model RELEASE``
    means to the CLI and the evaluator. Raises :class:`ReleaseError`."""
    release = Release.load(path)
    chosen = release.checkpoint(checkpoint or release.default)
    return str(release.model), str(chosen.adapter) if chosen.adapter else None, release.budgets().engine()


def apply_to_args(args) -> None:
    """Read ``--model RELEASE [--checkpoint NAME]`` for a command line (the CLI, the evaluator):
    when ``args.model`` is a release folder, set the model, the checkpoint's adapter (unless
    ``--adapter`` was given) and the release's pixel budgets (where ``--min/--max-pixels`` were
    not) and, where the command has ``--overview``, ``--cards`` or ``--max-turns`` and they were
    not given, the world's geometry, its cards a scene and the turns the release was trained with. Raises :class:`ReleaseError` for a broken release or an unknown
    checkpoint, and a plain ValueError for ``--checkpoint`` without a release."""
    if not is_release(args.model):
        if args.checkpoint:
            raise ValueError("--checkpoint needs --model to be a playground release folder (with checkpoints.json)")
        return
    release = Release.load(args.model)
    for name in ("overview", "cards", "max_turns"):
        if getattr(args, name, 0) is None:
            setattr(args, name, getattr(release, name))
    args.model, adapter, budgets = resolve(args.model, args.checkpoint)
    args.adapter = args.adapter or adapter
    args.min_pixels = budgets["min_pixels"] if args.min_pixels is None else args.min_pixels
    args.max_pixels = budgets["max_pixels"] if args.max_pixels is None else args.max_pixels


def _read_json(path: Path, required: bool):
    if not path.is_file():
        if required:
            raise ReleaseError(f"{path} is missing: it lists the checkpoints (see mgpo/playground/release.py)")
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:   # JSONDecodeError, or bytes that are not UTF-8
        raise ReleaseError(f"{path} is not valid JSON ({e})") from None


def _checkpoint(folder: Path, k: int, entry) -> Checkpoint:
    where = f"{folder / INDEX}, checkpoint {k + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
        raise ReleaseError(f"{where}: each checkpoint needs a \"name\"")
    step, adapter = entry.get("step", 0), entry.get("adapter")
    if not isinstance(step, int) or isinstance(step, bool):
        raise ReleaseError(f"{where} ({entry['name']!r}): \"step\" must be an integer")
    if adapter is None:
        return Checkpoint(entry["name"], step, None)
    if not isinstance(adapter, str):
        raise ReleaseError(f"{where} ({entry['name']!r}): \"adapter\" must be a folder path or null")
    path = folder / adapter
    if not (path / "adapter_config.json").is_file():
        raise ReleaseError(f"{where} ({entry['name']!r}): {path} is not a LoRA adapter folder "
                           "(no adapter_config.json)")
    return Checkpoint(entry["name"], step, path)


def write_index(folder: str | Path, checkpoints: list[Checkpoint], default: str, overview: int = 224,
                cards: int = 1, max_turns: int = 2) -> Path:
    """Write ``folder/checkpoints.json`` atomically (the adapters must be in place: their paths
    are checked and stored relative to ``folder``); ``overview``, ``cards``: the world it was
    trained in (its geometry, its cards a scene); ``max_turns``: the MGPO turns it runs with."""
    folder = Path(folder)
    names = [c.name for c in checkpoints]
    if not checkpoints or len(set(names)) != len(names):
        raise ReleaseError(f"a release needs checkpoints with distinct names (got {names})")
    if default not in names:
        raise ReleaseError(f"the default checkpoint {default!r} is not one of {names}")
    entries = [{"name": c.name, "step": c.step, "adapter": None if c.adapter is None else _relative(folder, c)}
               for c in checkpoints]
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoints.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            world = {"overview": overview, **({"cards": cards} if cards != 1 else {}),
                     **({"max_turns": max_turns} if max_turns != 2 else {})}
            json.dump({"default": default, **world, "checkpoints": entries}, f, indent=1)
            f.write("\n")
        os.replace(tmp, folder / INDEX)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / INDEX


def _relative(folder: Path, c: Checkpoint) -> str:
    """The adapter folder of ``c`` relative to ``folder`` (``c.adapter``: absolute, relative to
    ``folder``, or relative to the working directory)."""
    path = Path(c.adapter)
    for p in [path] if path.is_absolute() else [folder / path, path]:
        if (p / "adapter_config.json").is_file():
            try:
                return p.resolve().relative_to(folder.resolve()).as_posix()
            except ValueError:
                raise ReleaseError(f"checkpoint {c.name!r}: the adapter {p} is outside the release {folder}") from None
    raise ReleaseError(f"checkpoint {c.name!r}: {path} is not a LoRA adapter folder (no adapter_config.json)")


def draw_boxes(image: Image.Image, truth, predicted, side: int = DISPLAY_SIDE) -> Image.Image:
    """``image`` scaled to ≤ ``side`` pixels with the hidden ground-truth box (green dashes on
    white, "truth") and the model's box (orange on a dark line, "model"; the cards come in green
    and orange too); both ``(x1, y1, x2, y2)`` in original pixels, either may be None."""
    marks = []
    if truth is not None:
        marks.append(Mark(tuple(truth), TRUTH_COLOUR, "truth", dashed=True, label_below=True, halo=(255, 255, 255)))
    if predicted is not None:
        marks.append(Mark(tuple(predicted), MODEL_COLOUR, "model", halo=(40, 40, 40)))
    return draw_marks(image, marks, side)


def draw_compare(image: Image.Image, truth, boxes: list[tuple[str, tuple | None]],
                 side: int = DISPLAY_SIDE) -> Image.Image:
    """``image`` with the hidden truth (green dashes) and each checkpoint's box in its own colour
    (:data:`CHECKPOINT_COLOURS`, in the order given; ``boxes``: ``(label, box or None)``). Boxes
    that coincide are drawn a little inside one another, labels alternating above and below, so
    each stays visible."""
    marks = []
    if truth is not None:
        marks.append(Mark(tuple(truth), TRUTH_COLOUR, "truth", dashed=True, label_below=True, halo=(255, 255, 255)))
    inset = max(image.size) // 160
    for k, (label, box) in enumerate(boxes):
        if box is None:
            continue
        x1, y1, x2, y2 = box
        d = min(k * inset, (x2 - x1) // 4, (y2 - y1) // 4)
        marks.append(Mark((x1 + d, y1 + d, x2 - d, y2 - d), checkpoint_colour(k), label,
                          label_below=bool(k % 2), halo=(40, 40, 40)))
    return draw_marks(image, marks, side)


def checkpoint_colour(index: int) -> tuple[int, int, int]:
    return CHECKPOINT_COLOURS[index % len(CHECKPOINT_COLOURS)]


def summary_markdown(summary: dict | None) -> str:
    """``summary.json`` as Markdown tables: one per shape of record (objects whose values are
    all numbers or text, e.g. ``before → mgpo → {accuracy, mean_iou, ...}``), a row each,
    named by its path, the largest table first; top-level values in a table of their own. Lists
    are left out."""
    if not summary:
        return ""
    tables: dict[tuple, list[tuple[str, dict]]] = {}
    scalars = {k: v for k, v in summary.items() if _is_scalar(v)}

    def walk(path: list[str], value) -> None:
        if not isinstance(value, dict):
            return
        if value and all(_is_scalar(v) for v in value.values()):
            if path:
                tables.setdefault(tuple(value), []).append((" · ".join(path), value))
            return
        for k, v in value.items():
            if isinstance(v, dict):
                walk(path + [str(k)], v)

    walk([], summary)
    out = []
    groups = sorted(tables.items(), key=lambda kv: -len(kv[1]))   # the largest table (the evals) first
    for keys, rows in groups:
        out.append(_table([""] + [k.replace("_", " ") for k in keys], [[name] + [_fmt(r[k]) for k in keys] for name, r in rows]))
    if scalars:
        out.append(_table(["", "value"], [[k, _fmt(v)] for k, v in scalars.items()]))
    return "\n\n".join(out)


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)

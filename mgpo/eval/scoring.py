"""Scoring as each benchmark defines it. Pure: rows in (the per-item JSONL records), numbers out.

Answer extraction (:func:`extract_letter`), in this order — the first that yields a letter
within the question's choices wins, and the row records which one (``letter_source``):

1. ``boxed``: the content of the **last** ``\\boxed{...}`` read as a letter (``C``, ``(C)``,
   ``C. red``, ``\\text{C}``) — the paper's reward rule, the same reading as the engine's.
2. ``boxed_text``: that content equals one choice's text (case-insensitive) → its letter.
3. ``phrase`` (fallback): no usable ``\\boxed{}``; the last "answer is (C)" / "answer: C" /
   "option C" phrase in the text.
4. ``bare`` (fallback): the whole reply is one letter (``C``, ``(C)``, ``C.``) or a letter
   followed by exactly that choice's text (``(C) red``).

``strict=True`` keeps steps 1–2 only (the RL reward's view). Everything else is wrong, as is
an item whose image could not be read. No judge model is used.

Benchmark scores:

- V\\*: accuracy overall and per category (direct_attributes, relative_position).
- HR-Bench: accuracy per option-rotation cycle (``cycle_category``), then the mean over cycles;
  the same within FSP (category ``single``) and FCP (``cross``) — lmms-eval's aggregation.
- MME-RealWorld: accuracy overall, per Task, per Task/Subtask and per Task/Subtask/Category with
  the official script's category key (lower-cased; ``…/attribute…`` folded to ``…/attribute``).
- JSONL: accuracy overall and per ``category`` when the rows have one.
- Playground: accuracy overall and per target colour; and, as for any rows that carry a hidden
  ``gt_box``, the IoU of the answer's box (``box_original`` of the last valid box, whose crop the
  answer read: with two turns, the only one) with it (:func:`grounding_scores`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from statistics import mean

from ..events import answer_box
from ..parsing import answer_letter, extract_boxed
from ..prompts import LETTERS

_BARE = re.compile(r"^\s*\(?([A-Z])\)?\s*[.:]?\s*$")
_LETTER_TEXT = re.compile(r"^\s*\(?([A-Z])[).:]\s*(.+?)\s*\.?\s*$", re.DOTALL)
_PHRASE = re.compile(
    r"(?i:answer|option|choice)\s*(?:(?i:is)\s*)?[:：]?\s*\(?([A-Z])\)?(?![A-Za-z0-9])"
)


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().rstrip(".").strip()).lower()


def extract_letter(text: str | None, choices: list[str], strict: bool = False) -> tuple[str | None, str | None]:
    """``(letter, source)`` read from a model reply; ``(None, None)`` when nothing is readable."""
    if not isinstance(text, str) or not choices:
        return None, None
    n = len(choices)
    boxed = extract_boxed(text)
    if boxed is not None:
        letter = answer_letter(boxed, n)
        if letter is not None:
            return letter, "boxed"
        inner = re.fullmatch(r"\\text(?:bf|rm)?\{(.*)\}", boxed.strip(), re.DOTALL)
        content = _norm(inner.group(1) if inner else boxed)
        hits = [i for i, c in enumerate(choices) if _norm(c) == content]
        if len(hits) == 1:
            return LETTERS[hits[0]], "boxed_text"
    if strict:
        return None, None
    phrases = [m.group(1) for m in _PHRASE.finditer(text) if LETTERS.index(m.group(1)) < n]
    if phrases:
        return phrases[-1], "phrase"
    m = _BARE.match(text)
    if m and LETTERS.index(m.group(1)) < n:
        return m.group(1), "bare"
    m = _LETTER_TEXT.match(text)
    if m and LETTERS.index(m.group(1)) < n and _norm(m.group(2)) == _norm(choices[LETTERS.index(m.group(1))]):
        return m.group(1), "bare"
    return None, None


# ----- generic accuracy -------------------------------------------------------------------------

def accuracy(rows: list[dict]) -> float | None:
    """Fraction of rows marked correct (None for no rows)."""
    return sum(bool(r["correct"]) for r in rows) / len(rows) if rows else None


def table(rows: Iterable[dict], key: Callable[[dict], str | None]) -> dict[str, dict]:
    """``{group: {"n", "correct", "accuracy"}}`` over the groups ``key`` assigns (None = skipped)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        k = key(r)
        if k is not None:
            groups.setdefault(str(k), []).append(r)
    return {k: {"n": len(g), "correct": sum(bool(r["correct"]) for r in g), "accuracy": accuracy(g)}
            for k, g in sorted(groups.items())}


def cycle_accuracy(rows: list[dict]) -> tuple[float | None, dict[str, float]]:
    """HR-Bench: accuracy within each ``cycle_category``, and the mean of those accuracies."""
    cycles = {k: v["accuracy"] for k, v in table(rows, lambda r: r["meta"].get("cycle_category")).items()}
    return (mean(cycles.values()) if cycles else None), cycles


def mme_category(meta: dict) -> str:
    """The official MME-RealWorld category key: ``Task/Subtask/category`` (lower-cased, attributes folded)."""
    category = str(meta.get("category", "")).lower()
    if "attribute" in category:
        category = category.split("/")[0] + "/attribute"
    return f"{meta.get('task', '')}/{meta.get('subtask', '')}/{category}"


def benchmark_scores(benchmark: str, rows: list[dict]) -> dict:
    """Headline accuracy (``overall``) and the benchmark's own breakdowns."""
    out: dict = {"n": len(rows), "correct": sum(bool(r["correct"]) for r in rows), "accuracy": accuracy(rows)}
    out["overall"] = out["accuracy"]
    tables: dict[str, dict] = {}
    if benchmark == "hrbench":
        out["overall"], out["cycles"] = cycle_accuracy(rows)
        for split in ("FSP", "FCP"):
            part = [r for r in rows if r["meta"].get("split") == split]
            out[split] = cycle_accuracy(part)[0]
        tables["split"] = table(rows, lambda r: r["meta"].get("split"))
        tables["cycle"] = table(rows, lambda r: r["meta"].get("cycle_category"))
    elif benchmark == "mme-realworld":
        tables["task"] = table(rows, lambda r: r["meta"].get("task"))
        tables["subtask"] = table(rows, lambda r: f"{r['meta'].get('task')}/{r['meta'].get('subtask')}")
        tables["category"] = table(rows, lambda r: mme_category(r["meta"]))
    else:
        tables["category"] = table(rows, lambda r: r["meta"].get("category"))
    if benchmark == "playground":   # the board slot of the card: grounding mistakes sit in a few slots
        tables["slot"] = table(rows, lambda r: r["meta"].get("slot"))
    out["tables"] = {k: v for k, v in tables.items() if v}
    return out


# ----- answers, boxes, crops, cost --------------------------------------------------------------

def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def answer_sources(rows: list[dict]) -> dict[str, int]:
    """How each prediction was read (see the module docstring); ``none`` = no letter found."""
    counts: dict[str, int] = {}
    for r in rows:
        if r.get("error"):
            key = "error"
        else:
            key = r.get("letter_source") or "none"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def crop_only_scores(rows: list[dict]) -> dict | None:
    """Paper Table 5: the question re-asked on the answer's crop alone (direct prompt).

    ``accuracy`` is over the items that had a valid crop; ``accuracy_all`` counts the items
    without one as wrong (its denominator is every item).
    """
    asked = [r for r in rows if r.get("crop_only") is not None]
    if not asked:
        return None
    correct = sum(bool(r["crop_only"]["correct"]) for r in asked)
    return {"n": len(asked), "correct": correct, "accuracy": correct / len(asked),
            "accuracy_all": correct / len(rows)}


def iou(a, b) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (0.0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grounding_scores(rows: list[dict]) -> dict | None:
    """IoU of the answer's box (:func:`answer_box`, original pixels) with the hidden ``gt_box`` —
    None when no row has one. ``mean_iou`` is over the items that produced a valid box;
    ``mean_iou_all`` counts the others (and unreadable items) as 0; ``hit_rate`` is the share of
    all items with IoU ≥ 0.5 (a *hit*). ``accuracy_after_hit`` / ``accuracy_after_miss`` split
    the answers by it: reading after a box that covers the target, against answering without one
    — the two halves of MGPO's task. Where items name distractors (``meta.other_boxes``: the
    playground's other cards), ``wrong_card_rate`` is the share of those items whose box has
    IoU ≥ 0.5 with one of them: a box on the wrong card."""
    marked = [r for r in rows if r.get("gt_box") is not None]
    if not marked:
        return None
    ious, wrong, with_others = [], 0, 0
    for r in marked:
        box = answer_box(r.get("boxes"))
        ious.append(None if box is None else iou(box["box_original"], r["gt_box"]))
        others = (r.get("meta") or {}).get("other_boxes")
        if others:
            with_others += 1
            wrong += box is not None and any(iou(box["box_original"], o) >= 0.5 for o in others)
    got = [v for v in ious if v is not None]
    hit = [v is not None and v >= 0.5 for v in ious]
    right_hit = sum(bool(r.get("correct")) for r, h in zip(marked, hit) if h)
    right_miss = sum(bool(r.get("correct")) for r, h in zip(marked, hit) if not h)
    hits = sum(hit)
    out = {"n": len(marked), "n_boxed": len(got), "mean_iou": mean(got) if got else None,
           "mean_iou_all": sum(got) / len(marked), "hits": hits, "hit_rate": hits / len(marked),
           "accuracy_after_hit": right_hit / hits if hits else None,
           "accuracy_after_miss": right_miss / (len(marked) - hits) if hits < len(marked) else None}
    if with_others:
        out.update(wrong_card=wrong, wrong_card_rate=wrong / with_others)
    slots = slot_grounding(marked, hit)
    if slots:
        out["slots"] = slots
    return out


def slot_grounding(rows: list[dict], hit: list[bool]) -> dict[str, dict]:
    """The playground's board: for each slot the target sat in (``meta.slot``), its items, its
    hits and, for the others, the slot that held the centre of the answer's box (or ``no box``)
    — grounding mistakes are a few slots boxed as a neighbour every time. ``{}`` when the rows
    carry no slot."""
    from ..playground.world import board_slot, slot_label

    out: dict[str, dict] = {}
    for r, h in zip(rows, hit):
        slot = (r.get("meta") or {}).get("slot")
        if slot is None:
            continue
        entry = out.setdefault(slot, {"n": 0, "hits": 0, "missed_to": {}})
        entry["n"] += 1
        if h:
            entry["hits"] += 1
            continue
        box = answer_box(r.get("boxes"))
        where = "no box" if box is None else slot_label(*board_slot(box["box_model"], box["frame"]))
        entry["missed_to"][where] = entry["missed_to"].get(where, 0) + 1
    for entry in out.values():
        entry["missed_to"] = dict(sorted(entry["missed_to"].items(), key=lambda kv: (-kv[1], kv[0])))
    return dict(sorted(out.items()))


def behaviour(rows: list[dict]) -> dict:
    """Valid-box ratio (turn-1 box, or the direct reply's box), turns, tokens — deterministic."""
    ok = [r for r in rows if not r.get("error")]
    return {
        "valid_box_ratio": _mean([float(bool(r.get("valid_box"))) for r in ok]),
        "mean_turns": _mean([r.get("turns") for r in ok]),
        "mean_visual_tokens": _mean([r.get("visual_tokens") for r in ok]),
        "mean_native_visual_tokens": _mean([r.get("native_visual_tokens") for r in ok]),
        "mean_new_tokens": _mean([r.get("new_tokens") for r in ok]),
        "mean_crop_area": _mean([r.get("crop_area") for r in ok]),
    }


def latency(rows: list[dict]) -> dict:
    """Wall-clock seconds per item: the conversation inside its batch, and the batch's share."""
    ok = [r for r in rows if not r.get("error")]
    return {"mean_seconds": _mean([r.get("seconds") for r in ok]),
            "mean_batch_seconds_per_item": _mean([r.get("batch_seconds_per_item") for r in ok])}


def score(benchmark: str, rows: list[dict]) -> dict:
    """Everything ``results.json`` reports except the protocol; ``latency`` is the only part
    that changes between identical runs."""
    return {
        "scores": benchmark_scores(benchmark, rows),
        "answers": answer_sources(rows),
        "errors": sum(1 for r in rows if r.get("error")),
        "behaviour": behaviour(rows),
        "crop_only": crop_only_scores(rows),
        "grounding": grounding_scores(rows),
        "latency": latency(rows),
    }

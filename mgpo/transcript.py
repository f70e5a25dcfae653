"""Engine events → what a page shows: chat steps, boxes drawn on the image, crops, costs.

No Gradio here (the demo's ``app.py`` maps these plain values to components): chat messages are
dicts in the ``{"role", "content", "metadata": {"title", ...}}`` shape ``gr.Chatbot`` takes,
the box view is a PIL image, crops are ``(image, caption)`` pairs, costs are table rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

from .events import BoxPredicted, CropReady, FinalAnswer, TextDelta, TurnFinished, TurnStarted
from .geometry import to_region
from .prompts import LETTERS

DISPLAY_SIDE = 1280               # the box view is drawn at most this many pixels on a side

KIND_TITLES = {
    "grounding": "find the key area on the full image",
    "crop": "answer with the zoomed crop",
    "fallback": "answer from the full image (no usable box)",
    "refine": "look inside the crop and box again",
    "direct": "single turn, no zoom",
}
RUN_LABELS = {"mgpo": "MGPO", "baseline": "Baseline"}
TURN_COLOURS = [(255, 122, 0), (230, 0, 126), (0, 168, 232), (120, 200, 0)]   # turn 1, 2, 3, 4
BASELINE_COLOUR = (120, 120, 120)
REFUSED_COLOUR = (220, 30, 30)


def _fmt_box(box) -> str:
    return "(" + ", ".join(str(int(v)) for v in box) + ")"


def _size(size) -> str:
    return f"{size[0]}×{size[1]}"


@dataclass(frozen=True)
class Mark:
    """A labelled box to draw on an image."""

    box: tuple                        # (x1, y1, x2, y2) in original-image pixels
    colour: tuple[int, int, int]
    label: str
    dashed: bool = False
    label_below: bool = False         # the label under the box (it goes above by default)
    halo: tuple[int, int, int] | None = None   # a contrasting line under the box (and in a dashed box's gaps)


def draw_marks(original: Image.Image, marks: list[Mark], side: int = DISPLAY_SIDE) -> Image.Image:
    """A copy of ``original`` scaled to ≤ ``side`` pixels with each mark's box drawn on it and
    its label on a tab of the box's colour (above the box, or below it when there is no room).
    The Ask tab's turn boxes and the Playground's truth-vs-model view are both drawn here."""
    img = original.copy()
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    s = img.width / original.width
    d = ImageDraw.Draw(img)
    width = max(3, round(max(img.size) / 180))
    font = ImageFont.load_default(size=max(14, round(max(img.size) / 28)))
    for m in marks:                   # the boxes first, then every label on top
        x1, y1, x2, y2 = (v * s for v in m.box)
        if m.halo is not None:
            d.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=m.halo, width=width + 2)
        if m.dashed:
            _dashed_rectangle(d, (x1, y1, x2, y2), m.colour, width)
        else:
            d.rectangle((x1, y1, x2, y2), outline=m.colour, width=width)
    placed: list[tuple] = []
    for m in marks:
        x1, y1, x2, y2 = (v * s for v in m.box)
        tx0, ty0, tx1, ty1 = d.textbbox((0, 0), m.label, font=font)
        tw, th = tx1 - tx0 + 2 * width, ty1 - ty0 + 2 * width
        lx, ly = label_spot((x1, y1, x2, y2), (tw, th), img.size, m.label_below, placed)
        placed.append((lx, ly, lx + tw, ly + th))
        d.rectangle(placed[-1], fill=m.colour)
        d.text((lx + width - tx0, ly + width - ty0), m.label, font=font, fill=(255, 255, 255))
    return img


def label_spot(box, size, image_size, below: bool, placed: list[tuple]) -> tuple[float, float]:
    """Where a label tab of ``size`` (w, h) goes for ``box`` (display pixels): on the box's top
    edge, outside (under it with ``below``, or when there is no room above), flush with its left;
    when that covers a tab already ``placed`` (boxes that coincide), the next free slot along the
    edge, then the next row further out, so every label stays readable."""
    (x1, y1, x2, y2), (tw, th), (w, h) = box, size, image_size
    under = (below and y2 + th <= h) or y1 - th < 0
    first = None
    for row in range(4):
        ly = y2 + row * th if under else y1 - th - row * th
        if ly < 0 or ly + th > h:
            break
        lx = min(max(0, x1), w - tw)
        while lx + tw <= w:
            spot = (lx, ly, lx + tw, ly + th)
            first = first or spot
            hit = [r for r in placed if r[0] < spot[2] and spot[0] < r[2] and r[1] < spot[3] and spot[1] < r[3]]
            if not hit:
                return lx, ly
            lx = max(r[2] for r in hit) + 1
    if first is None:       # no row fits inside the image: the top-left corner of the box
        return min(max(0, x1), max(0, w - tw)), min(max(0, y1), max(0, h - th))
    return first[0], first[1]   # crowded everywhere: where it would have gone alone


def _dashed_rectangle(d: ImageDraw.ImageDraw, box, colour, width: int) -> None:
    """``box``'s outline in dashes of three line widths, inside the box as a solid outline is."""
    x1, y1, x2, y2 = box
    dash, h = 3 * width, width / 2
    for lo, hi, at, across in ((x1, x2, y1 + h, True), (x1, x2, y2 - h, True), (y1, y2, x1 + h, False), (y1, y2, x2 - h, False)):
        t = lo
        while t < hi:
            e = min(t + dash, hi)
            d.line(((t, at), (e, at)) if across else ((at, t), (at, e)), fill=colour, width=width)
            t += 2 * dash


@dataclass
class _Run:
    started: dict[int, TurnStarted] = field(default_factory=dict)
    finished: list[TurnFinished] = field(default_factory=list)
    regions: dict[int, tuple] = field(default_factory=dict)   # turn → region its image shows (original px)
    final: FinalAnswer | None = None


class Transcript:
    """The page's view of one request, built from engine events; no Gradio inside.

    ``apply(run, event)`` returns which parts changed: ``chat``, ``boxes``, ``crops``,
    ``answer``, ``stats``. The renderers give plain values: chat message dicts for
    ``gr.Chatbot``, a PIL image with the boxes, ``(image, caption)`` pairs, table rows.
    """

    def __init__(self, original: Image.Image, question: str, choices: list[str] | None = None):
        self.original = original
        self.choices = choices or []
        self.runs: dict[str, _Run] = {}
        self.boxes: list[tuple[str, BoxPredicted, tuple | None]] = []  # (run, event, box in original px)
        self.crops: list[CropReady] = []
        self.messages: list[dict] = [{"role": "user", "content": self._ask(question)}]
        self._turn_msg: dict[tuple[str, int], int] = {}
        self._box_msg: dict[tuple[str, int], int] = {}
        self.status = "Starting…"

    def _ask(self, question: str) -> str:
        lines = [question.strip()]
        lines += [f"({LETTERS[i]}) {c}" for i, c in enumerate(self.choices)]
        return "\n".join(lines)

    # -- state --

    def apply(self, run: str, event) -> set[str]:
        r = self.runs.setdefault(run, _Run())
        who = "" if run == "mgpo" else f"{RUN_LABELS[run]} · "
        if isinstance(event, TurnStarted):
            r.started[event.turn] = event
            r.regions.setdefault(event.turn, (0, 0, self.original.width, self.original.height))
            self._turn_msg[run, event.turn] = len(self.messages)
            self.messages.append({"role": "assistant", "content": "", "metadata": {
                "title": f"{who}Turn {event.turn} · {KIND_TITLES.get(event.kind, event.kind)}",
                "log": f"image {_size(event.image_size)}, {event.visual_tokens:,} visual tokens",
                "status": "pending"}})
            self.status = f"{RUN_LABELS[run]}: turn {event.turn}, {KIND_TITLES.get(event.kind, event.kind)}…"
            return {"chat"}
        if isinstance(event, TextDelta):
            self.messages[self._turn_msg[run, event.turn]]["content"] += event.text
            return {"chat"}
        if isinstance(event, TurnFinished):
            m = self.messages[self._turn_msg[run, event.turn]]
            m["content"] = event.text if event.text.strip() else "*(the model wrote nothing)*"
            m["metadata"]["duration"] = round(event.seconds, 2)
            if r.started[event.turn].kind in ("grounding", "refine"):
                m["metadata"]["status"] = "done"        # folded: its box is drawn on the image
            else:
                m["metadata"].pop("status", None)       # the answering turn stays open
            r.finished.append(event)
            return {"chat", "stats"}
        if isinstance(event, BoxPredicted):
            return self._box(run, r, who, event)
        if isinstance(event, CropReady):
            r.regions[event.turn] = tuple(event.box_original)
            self.crops.append(event)
            i = self._box_msg.get((run, event.turn))
            if i is not None:
                zoom = event.fed_size[0] / max(1, event.crop_size[0])
                self.messages[i]["content"] += (
                    f"\n\nCut {_size(event.crop_size)} px from the original and fed at {_size(event.fed_size)} "
                    f"({event.visual_tokens:,} visual tokens, ×{zoom:.2f}" + (", enlarged for clarity)." if event.enlarged else ").")
                )
            return {"chat", "crops"}
        if isinstance(event, FinalAnswer):
            r.final = event
            self.messages.append({"role": "assistant", "content": f"**{RUN_LABELS[run]} answer:** {self.answer(run)}"})
            return {"chat", "answer", "stats"}
        return set()

    def _box(self, run: str, r: _Run, who: str, event: BoxPredicted) -> set[str]:
        region = r.regions.get(event.turn, (0, 0, self.original.width, self.original.height))
        shown = event.box_original
        if shown is None and event.box_model is not None:
            x1, y1, x2, y2 = event.box_model
            if x1 < x2 and y1 < y2:   # where the refused box points (clipped to the image)
                shown = to_region(event.box_model, event.frame, region)
        self.boxes.append((run, event, shown))
        self._box_msg[run, event.turn + 1] = len(self.messages)
        said = f"`{list(event.box_model)}`" if event.box_model else "no box"
        frame = f"in the {_size(event.frame)} model frame"
        if event.valid and run == "baseline":
            title, text = f"{who}Box {_fmt_box(event.box_original)}", f"The model marked {said} {frame} → {_fmt_box(event.box_original)} in the original."
        elif event.valid:
            title = f"{who}Cropping region {_fmt_box(event.box_original)} of the original"
            text = f"The model marked {said} {frame} → {_fmt_box(event.box_original)} in original pixels ({event.reason})."
        else:
            title = f"{who}No usable box: {event.reason}"
            text = f"The model gave {said} {frame}; the box rule '{event.rule}' refused it: {event.reason}."
            if run == "mgpo":
                text += (" The next turn answers with the earlier crop." if self.crops
                         else " The next turn looks at the full image again.")
        self.messages.append({"role": "assistant", "content": text, "metadata": {"title": title}})
        return {"chat", "boxes"}

    # -- renderers --

    def answer(self, run: str) -> str:
        r = self.runs.get(run)
        if r is None or r.final is None:
            return ""
        f = r.final
        k = LETTERS.find(f.letter) if f.letter else -1
        if 0 <= k < len(self.choices):
            return f"{f.letter} — {self.choices[k]}"
        if f.answer is not None:
            return f.answer
        return "no \\boxed{} answer in the model's reply"

    def box_image(self) -> Image.Image:
        """The original (scaled to ≤ DISPLAY_SIDE) with every box drawn and labelled by turn."""
        marks = []
        for run, event, box in self.boxes:
            if box is None:
                continue
            colour = BASELINE_COLOUR if run == "baseline" else TURN_COLOURS[(event.turn - 1) % len(TURN_COLOURS)]
            label = ("baseline" if run == "baseline" else f"turn {event.turn}") + ("" if event.valid else " (refused)")
            marks.append(Mark(box, colour if event.valid else REFUSED_COLOUR, label))
        return draw_marks(self.original, marks, DISPLAY_SIDE)

    def gallery(self) -> list[tuple[Image.Image, str]]:
        return [(c.image, f"turn {c.turn}: {_size(c.crop_size)} px of the original, fed at {_size(c.fed_size)} "
                          f"({c.visual_tokens:,} tokens{', enlarged' if c.enlarged else ''})") for c in self.crops]

    STATS_HEADERS = ["Run", "Turn", "Step", "Fed at", "Visual tokens", "Prompt tokens", "New tokens", "Time (s)"]

    def stats(self) -> list[list]:
        rows = []
        for run, r in self.runs.items():
            for t in r.finished:
                st = r.started[t.turn]
                rows.append([RUN_LABELS[run], t.turn, st.kind, _size(st.image_size), t.visual_tokens,
                             t.prefill_tokens, t.new_tokens, round(t.seconds, 2)])
        return rows

    def summary(self) -> str:
        lines = []
        for run, r in self.runs.items():
            f = r.final
            if f is None:
                continue
            lines.append(f"**{RUN_LABELS[run]}**: {f.turns} turn{'s' if f.turns > 1 else ''}, "
                         f"{f.visual_tokens:,} visual tokens, {f.seconds:.1f} s")
        if lines:
            native = next(r.final.native_visual_tokens for r in self.runs.values() if r.final)
            lines.append(f"One pass at the native {_size(self.original.size)} resolution would feed "
                         f"**{native:,}** visual tokens.")
        return " · ".join(lines)

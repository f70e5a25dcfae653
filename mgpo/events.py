"""The small typed events the engine yields. Pure; every event turns into a JSON-able dict.

``sample`` numbers the conversation inside one engine call (0 for a single question; in a
batched call, request ``r``'s ``g``-th sample of a group of ``G`` is ``r·G + g``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from PIL import Image

Box = tuple[int, int, int, int]
Size = tuple[int, int]


@dataclass
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict:
        """JSON-able view: images are replaced by their size."""
        out: dict = {"type": self.type}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Image.Image):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass
class TurnStarted(Event):
    """A turn begins: the user message the model now reads, and the image it carries."""

    type: ClassVar[str] = "turn_started"
    sample: int
    turn: int                 # 1-based
    kind: str                 # grounding | crop | fallback | refine | direct
    prompt: str               # the user text, "<image>" where the image sits
    image_size: Size          # size the image is fed at (model frame)
    visual_tokens: int


@dataclass
class TextDelta(Event):
    """A piece of the model's text, as it is generated."""

    type: ClassVar[str] = "text"
    sample: int
    turn: int
    text: str


@dataclass
class TurnFinished(Event):
    type: ClassVar[str] = "turn_finished"
    sample: int
    turn: int
    text: str                 # the whole turn (concatenated deltas)
    new_tokens: int           # tokens the model generated this turn
    stop: str                 # eos | box (turn 1 cut after its JSON block) | length
    prefill_tokens: int       # tokens encoded before generating (0 of them cached)
    visual_tokens: int        # visual tokens of this turn's image
    prefill_seconds: float
    decode_seconds: float

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds


@dataclass
class BoxPredicted(Event):
    """The box read from a turn's text, and the verdict on it."""

    type: ClassVar[str] = "box"
    sample: int
    turn: int
    box_model: Box | None     # (x1, y1, x2, y2) in the model frame of the image it was drawn on
    box_original: Box | None  # (x1, y1, x2, y2) in original-image pixels (None when invalid)
    frame: Size               # that image's model frame (W_in, H_in)
    valid: bool
    reason: str               # "ok", "ok after clamped (rule clamp)", or why it was refused
    rule: str                 # the box rule that ran: paper | clamp | pad | clamp+pad
    adjusted: tuple[str, ...] = ()


def answer_box(boxes):
    """The last valid box of a run — its :class:`BoxPredicted` events or their ``to_dict()`` forms,
    in order — the one whose crop the answer read (with two turns, the only box); None without one."""
    for b in reversed(list(boxes or ())):
        if (b.get("valid") if isinstance(b, dict) else b.valid):
            return b
    return None


@dataclass
class CropReady(Event):
    """The crop cut from the full-resolution original, at the size it is fed to the model."""

    type: ClassVar[str] = "crop"
    sample: int
    turn: int                 # the turn that will read it
    image: Image.Image = field(repr=False)
    box_original: Box = (0, 0, 0, 0)  # (x1, y1, x2, y2) in original-image pixels
    crop_size: Size = (0, 0)  # its size in original pixels
    fed_size: Size = (0, 0)   # its size as fed (model frame)
    visual_tokens: int = 0
    enlarged: bool = False    # True when the crop was scaled up to reach min_pixels


@dataclass
class FinalAnswer(Event):
    type: ClassVar[str] = "final"
    sample: int
    text: str                 # the last turn's full text
    answer: str | None        # content of the last \boxed{} (None when there is none)
    letter: str | None        # the choice letter, for multiple-choice questions
    turns: int
    seconds: float            # wall time of the whole conversation
    visual_tokens: int        # all visual tokens the conversation fed
    native_visual_tokens: int # what one pass at the original's native resolution would feed

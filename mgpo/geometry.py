"""Coordinate frames, box validity, crops and resizes. Pure: PIL and math only.

Frames (all boxes are ``(x1, y1, x2, y2)``, x right, y down, pixels):

- *original*: the image as the user sees it (EXIF-rotated), full resolution.
- *model frame*: the size the processor feeds the model after the paper's pre-resize and
  Qwen's ``smart_resize`` (multiples of 28). Qwen2.5-VL answers boxes in this frame.
  Two resizes, as in the paper's code: the image is first scaled by sqrt(max_pixels / (w·h))
  (:func:`pre_resize`), then rounded to multiples of 28 by ``smart_resize``. That is not what the
  processor alone does with the same limits: a 2400×1600 photo becomes 1232×812 here (44×29 =
  1,276 visual tokens) where Qwen2.5-VL-7B-Instruct's processor by itself gives 1204×812
  (43×29 = 1,247), because the pre-resize leaves 1226×817, which rounds up to 1232 and down
  to 812 without crossing max_pixels again. The engine feeds the model-frame image with the
  processor's resize turned off (:meth:`mgpo.generation.QwenBackend.feed_image`), so boxes are
  read in exactly this frame; tests pin both numbers against the released processor config.
- *region*: the part of the original an image shows: the whole original for the overview,
  the crop's box for a crop. A box predicted on an image maps through that image's region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

FACTOR = 28                   # patch 14 × spatial merge 2: one visual token per 28×28 pixels
MIN_PIXELS = 256 * 28 * 28    # 200,704: the paper's min_pixels (≥256 visual tokens)
MAX_PIXELS = 1280 * 28 * 28   # 1,003,520: the paper's max_pixels (≤1280 visual tokens)
MAX_ASPECT = 200              # the processor refuses images more elongated than this
MIN_BOX_SIDE = 28             # paper: a valid box is wider and taller than this (model frame)
MAX_BOX_ASPECT = 100          # paper: a valid box is less elongated than this
BOX_RULES = ("paper", "clamp", "pad", "clamp+pad")

Box = tuple[int, int, int, int]
Size = tuple[int, int]  # (width, height)


def smart_resize(
    height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """``(height, width)`` after Qwen2-VL's processor resize, computed exactly as it does."""
    if min(height, width) <= 0:
        raise ValueError(f"image has no pixels ({width}×{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(
            f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is beyond the "
            f"{MAX_ASPECT}:1 that Qwen2.5-VL's processor accepts"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def pre_resize(size: Size, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Size:
    """The paper's resize before the processor: scale both sides by sqrt(limit / (w·h))."""
    w, h = size
    if w * h > max_pixels:
        s = math.sqrt(max_pixels / (w * h))
        w, h = max(1, int(w * s)), max(1, int(h * s))
    if w * h < min_pixels:
        s = math.sqrt(min_pixels / (w * h))
        w, h = max(1, int(w * s)), max(1, int(h * s))
    return w, h


def model_frame(size: Size, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Size:
    """``(W_in, H_in)``: the size the model sees an image of ``size`` at (its box frame)."""
    w, h = pre_resize(size, min_pixels, max_pixels)
    h_in, w_in = smart_resize(h, w, FACTOR, min_pixels, max_pixels)
    return w_in, h_in


def visual_tokens(frame: Size) -> int:
    """Visual tokens (``<|image_pad|>`` count) for an image fed at ``frame``."""
    return (frame[0] // FACTOR) * (frame[1] // FACTOR)


def native_visual_tokens(size: Size) -> int:
    """Visual tokens a single pass at the image's native resolution would cost (no max cap)."""
    h, w = smart_resize(size[1], size[0], FACTOR, min_pixels=FACTOR * FACTOR, max_pixels=10**12)
    return visual_tokens((w, h))


@dataclass(frozen=True)
class BoxCheck:
    """The verdict on one predicted box (model frame)."""

    valid: bool
    reason: str              # "ok" or why it was refused, in words
    box: Box | None          # the box that will be used (after any adjustment), model frame
    rule: str                # the rule that ran: paper | clamp | pad | clamp+pad
    adjusted: tuple[str, ...] = ()  # what the rule changed: "clamped", "padded"


def check_box(box: Box | None, width: int, height: int) -> tuple[bool, str]:
    """The paper's validity rules for a box in a ``width``×``height`` model frame."""
    if box is None:
        return False, "no box in the model's answer"
    x1, y1, x2, y2 = box
    if not (x1 < x2 and y1 < y2):
        return False, "corners are reversed or the box is empty (needs x1 < x2 and y1 < y2)"
    if x1 < 0 or y1 < 0:
        return False, "negative coordinates"
    if x2 > width or y2 > height:
        return False, f"outside the image ({width}×{height} in the model frame)"
    bw, bh = x2 - x1, y2 - y1
    if bw <= MIN_BOX_SIDE or bh <= MIN_BOX_SIDE:
        return False, f"too small ({bw}×{bh}; each side must exceed {MIN_BOX_SIDE})"
    if max(bw / bh, bh / bw) >= MAX_BOX_ASPECT:
        return False, f"too elongated (aspect ratio must stay below {MAX_BOX_ASPECT})"
    return True, "ok"


def is_valid_box(box: Box | None, width: int, height: int) -> bool:
    """True when ``box`` passes the paper's rules in a ``width``×``height`` model frame."""
    return check_box(box, width, height)[0]


def clamp_box(box: Box, width: int, height: int, margin: float = 0.1) -> Box | None:
    """Clamp a box that pokes out of the frame by at most ``margin`` of the frame's side."""
    x1, y1, x2, y2 = box
    mx, my = margin * width, margin * height
    if x1 < -mx or y1 < -my or x2 > width + mx or y2 > height + my:
        return None
    return max(0, x1), max(0, y1), min(width, x2), min(height, y2)


def pad_box(box: Box, width: int, height: int, min_side: int = 4 * FACTOR) -> Box:
    """Grow a box around its centre to at least ``min_side`` per side, kept inside the frame."""
    x1, y1, x2, y2 = box

    def grow(a: int, b: int, limit: int) -> tuple[int, int]:
        side = min(max(b - a, min_side), limit)
        if b - a >= side:
            return a, b
        centre = (a + b) / 2
        lo = int(round(centre - side / 2))
        lo = min(max(0, lo), limit - side)
        return lo, lo + side

    x1, x2 = grow(x1, x2, width)
    y1, y2 = grow(y1, y2, height)
    return x1, y1, x2, y2


def decide_box(box: Box | None, frame: Size, rule: str = "paper") -> BoxCheck:
    """Apply a box rule: ``paper`` (as is), ``clamp`` (slightly-out boxes pulled in),
    ``pad`` (tiny boxes grown to give context) or ``clamp+pad``."""
    if rule not in BOX_RULES:
        raise ValueError(f"unknown box rule {rule!r}; choose one of {', '.join(BOX_RULES)}")
    width, height = frame
    adjusted: list[str] = []
    used = box
    if box is not None and box[0] < box[2] and box[1] < box[3]:
        if "clamp" in rule and not check_box(box, width, height)[0]:
            clamped = clamp_box(box, width, height)
            if clamped is not None and clamped != box:
                used = clamped
                adjusted.append("clamped")
        if "pad" in rule and used is not None:
            x1, y1, x2, y2 = used
            if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
                padded = pad_box(used, width, height)
                if padded != used:
                    used = padded
                    adjusted.append("padded")
    valid, reason = check_box(used, width, height)
    if valid and adjusted:
        reason = "ok after " + " and ".join(adjusted) + " (rule " + rule + ")"
    return BoxCheck(valid, reason, used if valid else box, rule, tuple(adjusted))


def to_region(box: Box, frame: Size, region: Box) -> Box:
    """Map a model-frame box on an image showing ``region`` (original pixels) to original pixels.

    Paper Eq. 3 for the overview (region = whole image): ``x_ori = x / W_in · W_ori``.
    """
    fw, fh = frame
    rx1, ry1, rx2, ry2 = region
    sx, sy = (rx2 - rx1) / fw, (ry2 - ry1) / fh
    x1 = rx1 + int(math.floor(box[0] * sx))
    y1 = ry1 + int(math.floor(box[1] * sy))
    x2 = rx1 + int(math.ceil(box[2] * sx))
    y2 = ry1 + int(math.ceil(box[3] * sy))
    x1, x2 = max(rx1, min(x1, rx2)), max(rx1, min(x2, rx2))
    y1, y2 = max(ry1, min(y1, ry2)), max(ry1, min(y2, ry2))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def to_frame(box: Box, frame: Size, region: Box) -> tuple[float, float, float, float]:
    """Inverse of :func:`to_region` (without rounding): original pixels → model frame."""
    fw, fh = frame
    rx1, ry1, rx2, ry2 = region
    sx, sy = fw / (rx2 - rx1), fh / (ry2 - ry1)
    return ((box[0] - rx1) * sx, (box[1] - ry1) * sy, (box[2] - rx1) * sx, (box[3] - ry1) * sy)


@dataclass(frozen=True)
class Prepared:
    """An image made ready for the model, and what it shows."""

    image: Image.Image   # resized to ``frame``, RGB
    frame: Size          # model frame (W_in, H_in)
    region: Box          # what it shows, in original pixels
    source_size: Size    # size of the pixels it was made from (crop or original)

    @property
    def visual_tokens(self) -> int:
        return visual_tokens(self.frame)

    @property
    def enlarged(self) -> bool:
        return self.frame[0] * self.frame[1] > self.source_size[0] * self.source_size[1]


def prepare(image: Image.Image, region: Box | None = None, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Prepared:
    """Crop ``region`` from the full-resolution ``image`` (all of it when None) and resize it
    to its model frame: large crops are scaled down to ≤ max_pixels, small ones enlarged to
    ≥ min_pixels — the paper's "enlarge for clarity" step."""
    if region is None:
        region = (0, 0, image.width, image.height)
    pixels = image if region == (0, 0, image.width, image.height) else image.crop(region)
    frame = model_frame(pixels.size, min_pixels, max_pixels)
    resized = pixels if pixels.size == frame else pixels.resize(frame, Image.Resampling.BICUBIC)
    return Prepared(resized, frame, region, pixels.size)

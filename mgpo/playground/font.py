"""A 5×7 dot-matrix digit font, drawn as squares. Pure: PIL and the tables below.

The playground's decisive detail is a digit in this font. A bitmap font drawn as ``dot``-pixel
squares has no dependency on a system font or on Pillow's font rendering, so a seed gives the
same pixels on every machine, and its scale is exact: a glyph is ``5·dot`` wide and ``7·dot``
tall in original pixels. A 5×7 matrix needs ≥ 7 pixels of height to be resolved at all (one
sample per dot row), which is what makes "illegible at the overview" a sampling fact, not taste.
"""

from __future__ import annotations

import random

from PIL import ImageDraw

GLYPH_W, GLYPH_H = 5, 7

DIGITS: dict[str, tuple[str, ...]] = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
}


def ink(digit: str) -> int:
    """Number of dots a digit lights (its total ink, the one cue that survives heavy blur)."""
    return sum(row.count("1") for row in DIGITS[digit])


def draw_digit(draw: ImageDraw.ImageDraw, digit: str, x: int, y: int, dot: int, fill,
               wear: random.Random | None = None) -> None:
    """Draw ``digit`` with its top-left corner at ``(x, y)`` (original pixels), dots ``dot`` px.

    ``wear`` (an RNG) prints each dot up to 1 px off and up to 1 px smaller — worn print: the
    glyph stays plain when magnified, while its blurred ink blob changes unpredictably.
    """
    if digit not in DIGITS:
        raise ValueError(f"no glyph for {digit!r}; the font has the digits 0-9")
    for r, row in enumerate(DIGITS[digit]):
        for c, bit in enumerate(row):
            if bit == "1":
                dx = dy = shrink = 0
                if wear is not None:
                    dx, dy, shrink = wear.randint(-1, 1), wear.randint(-1, 1), wear.randint(0, 1)
                x1, y1 = x + c * dot + dx, y + r * dot + dy
                draw.rectangle((x1, y1, x1 + dot - 1 - shrink, y1 + dot - 1 - shrink), fill=fill)

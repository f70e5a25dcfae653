"""The playground's pixels: a :class:`~.world.Layout` drawn (see :mod:`.world` for the world
and why each part looks as it does). Same layout, same pixels."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw

from .world import COLOURS, DECOY, PATTERNS, Card, Layout, Scene

RAMP = (20, 235)                 # background red (left → right) and blue (top → bottom) ramp ends
CLUTTER_ALPHA = 0.45             # clutter is translucent: the background ramp shows through
CARD_ALPHA = 0.6                 # card bodies are translucent: the ramp shows through (see draw_card)
DECOY_DOT = 2                    # original px per decoy dot at 2048


def background(layout: Layout) -> Image.Image:
    """A smooth colour ramp (red rises left → right, blue top → bottom) + blotches (low
    frequency) + grain (high frequency). The ramp is the world's one absolute-position cue: every
    patch of the overview shows roughly where it is, as a horizon, shadows or perspective do in a
    photograph. A pretrained VLM knows where things are from billions of images; a few-million-
    parameter model trained for minutes learns a box from this cue (without it, a small model
    did not learn absolute coordinates in 20 k samples)."""
    size = layout.size
    half = (size + 1) // 2                      # painted at half resolution, then doubled (speed)
    rng = np.random.default_rng([layout.seed, size])
    blotch = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((half, half), Image.Resampling.BILINEAR)
    ramp = np.linspace(RAMP[0], RAMP[1], half, dtype=np.float32)
    base = np.empty((half, half, 3), dtype=np.float32)
    base[..., 0] = ramp[None, :]
    base[..., 1] = 0.5 * (RAMP[0] + RAMP[1]) + (layout.background[1] - 128.0) / 4.0   # the scene's own tint
    base[..., 2] = ramp[:, None]
    base += (np.asarray(blotch, dtype=np.float32) - 128.0) / 24.0
    base += rng.integers(-9, 10, (half, half), dtype=np.int16)[..., None]   # grain
    out = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    out = out.resize((2 * half, 2 * half), Image.Resampling.NEAREST)   # each pixel doubled
    return out if 2 * half == size else out.crop((0, 0, size, size))


def stripe_ink(pattern: str, width: int, height: int, period: int) -> np.ndarray:
    """How much ink (0..1) ``pattern``'s stripes put on each pixel of a ``width``×``height``
    square: a sinusoid of ``period`` across the stripes (phase 0 at the square's corner), faded in over one
    period at the square's edges. Sinusoidal and faded, the stripes have no low-frequency part
    that depends on their orientation (hard-edged stripes, cut at the square's border, left one
    that survived the overview's resize); their mean ink is the same for all four."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown stripe pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    across = {"horizontal": y, "vertical": x, "rising diagonal": (x + y) / math.sqrt(2),
              "falling diagonal": (x - y) / math.sqrt(2)}[pattern]
    wave = 0.5 + 0.5 * np.cos(2 * math.pi * across / period)
    def fade(t, n):   # 0 → 1 over one period from each edge, raised-cosine
        return 0.5 - 0.5 * np.cos(math.pi * np.clip(np.minimum(t + 0.5, n - t - 0.5) / period, 0, 1))
    return wave * fade(x, width) * fade(y, height)


def draw_card(image: Image.Image, card: Card, period: int, clean: bool = False, detail: str | None = None) -> None:
    """Paint ``card`` onto ``image`` (in place). ``clean``: the card as its design says — no
    stains, ink 40 — the template a reader could know; ``detail`` overrides its orientation."""
    x1, y1, x2, y2 = card.box
    side = x2 - x1
    border = max(2, side // 96)
    # the body is translucent (CARD_ALPHA): the background ramp shows through, so the patches of
    # the card itself still say where they are (an opaque card hid the world's position cue)
    body = Image.new("RGBA", (side, y2 - y1), (0, 0, 0, 0))
    ImageDraw.Draw(body).rounded_rectangle((0, 0, side - 1, y2 - y1 - 1), radius=side // 12,
                                           fill=(*(COLOURS[card.colour] if clean else card.shade), int(255 * CARD_ALPHA)),
                                           outline=(*(v // 2 for v in COLOURS[card.colour]), 255), width=border)
    region = image.crop((x1, y1, x2, y2)).convert("RGBA")
    image.paste(Image.alpha_composite(region, body).convert("RGB"), (x1, y1))
    lx1, ly1, lx2, ly2 = card.label
    paper = (246, 244, 238)
    label = Image.new("RGB", (lx2 - lx1, ly2 - ly1), paper)
    if not clean:   # faint stains, kept inside the label
        ldraw = ImageDraw.Draw(label)
        for cx, cy, r, dark in card.stains:
            ldraw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(v - dark for v in paper))
    sx1, sy1, sx2, sy2 = card.stripes
    cover = stripe_ink(detail or card.detail, sx2 - sx1, sy2 - sy1, period)
    pixels = np.asarray(label, dtype=np.float64).copy()
    part = pixels[sy1 - ly1:sy2 - ly1, sx1 - lx1:sx2 - lx1]
    part += cover[..., None] * ((40 if clean else card.ink) - part)
    image.paste(Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB"), (lx1, ly1))


def render(layout: Layout) -> Image.Image:
    """The scene's pixels: background, translucent clutter, then the cards on top."""
    image = background(layout)
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    alpha = int(round(255 * CLUTTER_ALPHA))
    for kind, coords, colour, width in layout.clutter:
        fill = (*colour, alpha)
        if kind == "ellipse":
            draw.ellipse(coords, fill=fill)
        elif kind == "rectangle":
            draw.rectangle(coords, fill=fill)
        elif kind == "triangle":
            draw.polygon(coords, fill=fill)
        elif kind == "line":
            draw.line(coords, fill=fill, width=width)
        else:
            x, y, bits = coords
            d = max(2, int(round(DECOY_DOT * layout.scale)) - 1 + width % 3)
            for k, bit in enumerate(bits):
                if bit:
                    c, r = k % DECOY[0], k // DECOY[0]
                    draw.rectangle((x + c * d, y + r * d, x + (c + 1) * d - 1, y + (r + 1) * d - 1),
                                   fill=(*colour, 255))
    if layout.clutter:   # (a clutter-free scene skips compositing an empty layer: same pixels)
        image = Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")
    for card in layout.cards:
        draw_card(image, card, layout.period)
    return image


def with_detail(scene: Scene, detail: str, clean: bool = False) -> Image.Image:
    """The scene's image with the target card repainted to show ``detail`` (all else equal)."""
    image = scene.image.copy()
    card = scene.target
    draw_card(image, card if clean else replace(card, detail=detail), scene.layout.period, clean=clean, detail=detail)
    return image

"""The playground world: procedurally generated high-resolution scenes with one small target.

A scene (``size``×``size`` pixels, 2048 by default) is a colour-ramp background (red rises left →
right, blue top → bottom: the world's one absolute-position cue, see :func:`.draw.background`),
translucent clutter (muted shapes, lines and "decoy" dot patterns everywhere) and one coloured
**card** (``N_CARDS``; more on request) in a slot of a 4×4 board (``grid``; 0 places cards
anywhere on the lattice), in one of eight saturated colours that nothing else in the scene uses.
Card bodies are translucent (``CARD_ALPHA``), so the ramp shows through a card and its own
patches tell where it is. Every card carries a white label printed with fine **stripes** in one
of four orientations (:data:`PATTERNS`: horizontal, vertical, rising or falling diagonal). The
question is about one card, the target, named by its colour: *"Which way do the stripes on the
red card run?"*, the four orientations as choices in that fixed order (so the letter names the
orientation; what the task tests is where to look, not matching words to letters).

Why it needs the zoom (the numbers for the default 2048² scene and :class:`Budgets`):

- turn 1 sees the overview at 224×224 (64 visual tokens): 9.14 original pixels per fed pixel.
  A card (384 px) is a 42-px coloured square there — easy to find by its colour — but its stripes
  (period ``PERIOD`` = 8 original px) would be 0.9 fed pixels apart, far above the overview's
  Nyquist limit (2 fed px per period): the resize's low-pass filter leaves a flat grey label, the
  same for all four orientations, so *no* reader can tell them apart;
- a crop of the card (384² > the 224² budget) is fed at 224×224: 0.58 fed pixels per original
  pixel, the stripes have a period of 4.7 fed px, three per 14-px patch — plainly visible. The
  label is half the card's side (``LABEL_FRACTION``): its stripes lie under about 16 of the crop's
  64 visual tokens. (v4's quarter-side label put them under 4: a linear probe still read every
  one, but a small language model stayed at chance reading them in 150 steps where the
  half-side label reached 0.78 held-out.)

Nuisances a reader cannot know: the stripes' ink (a random dark grey), faint stains on the
label, the card's colour varies a little. The stripes' phase is fixed at the corner of their
square, and the period divides the lattice step, so every crop on the lattice shows them in
step with its own pixels (a linear filter reads them; a random phase left a small vision tower
at chance). The property is measured by
:mod:`.legibility` (``python -m mgpo.playground.legibility``): a template reader that knows the
card design is right on 38–42 % of overviews (chance is 25 %; candidate differences under one grey
level) and on every crop.

Lattice (learnability): cards sit on a lattice of 14 *fed* overview pixels (half a visual token;
128 original pixels at 2048) and span 3×3 lattice steps, so a card's box in the overview's
model frame is exactly ``[14i, 14j, 14i+42, 14j+42]``: a valid box (> 28 per side); on the 4×4
board ``i, j`` are multiples of 4, and a crop of exactly the card puts the label at the centre
of the crop.

Two geometries (:meth:`Budgets.for_overview`): the default 224² overview of 2048² scenes, whose
4×4 board slots start at coordinates 0, 56, 112 and 168 — rows and columns 3 and 4 share the first
digit, one token of a box written digit by digit — and a 280² overview (100 visual tokens) of 2560²
scenes, whose slots start at 0, 70, 140 and 210. Things are drawn to the overview's scale
(``Layout.scale``), so cards, stripes and clutter look the same in both; only the board is larger.
The seed RNG includes the scene's side, so the two are different scenes of the same world.

Splits are disjoint seed ranges (:func:`split_seeds`); the ground-truth box is for analysis only.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import geometry
from ..prompts import LETTERS

Box = tuple[int, int, int, int]

VERSION = "mgpo-playground-v5"   # seeds the scene RNG and names the benchmark; change it and every scene changes
DEFAULT_SIZE = 2048
LATTICE = 14                     # fed overview pixels per lattice step (half a 28-px token)
CARD_STEPS = 3                   # a card spans 3×3 lattice steps (42 fed px; valid boxes need > 28)
LABEL_FRACTION = 0.5             # label side / card side (0.25: the stripes under 4 of a crop's 64 tokens, too few to learn to read)
PATTERNS = ("horizontal", "vertical", "rising diagonal", "falling diagonal")   # the detail; choices A–D
PERIOD = 8                       # stripe period across the stripes, original px at 2048 for 224 (scaled)
MARGIN = 0.12                    # unstriped paper around the stripes, a fraction of the label side
DECOY = (5, 7)                   # decoy dot patterns in the clutter: columns × rows of dots
N_STAINS = (8, 16)               # faint stains per label ...
STAIN_RADIUS = (4, 14)           # ... of this radius (original px at 2048) ...
STAIN_DARK = (20, 60)            # ... and this many grey levels darker than the paper
N_CARDS = (1, 1)                 # cards per scene, target included (the task: one small target)
GRID = 4                         # cards sit in the slots of a GRID × GRID board (0: anywhere on the lattice)
N_CLUTTER = (70, 130)            # clutter shapes per scene at clutter=1

COLOURS: dict[str, tuple[int, int, int]] = {   # the card names; nothing else is this saturated
    "red": (215, 35, 35),
    "green": (35, 165, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 205, 30),
    "purple": (135, 55, 185),
    "orange": (245, 130, 25),
    "cyan": (30, 195, 210),
    "pink": (240, 105, 175),
}

# Disjoint seed ranges. "skills" feeds the supervised base skills, "train" the RL, "val"/"test"
# the evaluation; a held-out scene is never one the training saw.
SPLITS: dict[str, tuple[int, int]] = {
    "skills": (0, 1_000_000),
    "train": (1_000_000, 2_000_000),
    "val": (2_000_000, 2_100_000),
    "test": (3_000_000, 3_100_000),
}


def check_cards(cards) -> int:
    """``cards`` per scene, checked: a whole number from 1 to one per colour (each card has its own)."""
    if isinstance(cards, bool) or not isinstance(cards, int) or not 1 <= cards <= len(COLOURS):
        raise ValueError(f"cards a scene must be a whole number from 1 to {len(COLOURS)} (one colour each), not {cards!r}")
    return cards


def split_seeds(split: str, n: int, start: int = 0) -> list[int]:
    """``n`` consecutive seeds of ``split``, from its ``start``-th one."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    lo, hi = SPLITS[split]
    if n < 0 or start < 0 or lo + start + n > hi:
        raise ValueError(f"split {split!r} holds seeds {lo}..{hi - 1}: cannot take {n} from index {start}")
    return list(range(lo + start, lo + start + n))


def split_of(seed: int) -> str | None:
    """The split a seed belongs to (None outside every range)."""
    return next((name for name, (lo, hi) in SPLITS.items() if lo <= seed < hi), None)


OVERVIEWS = (224, 280)   # overview sides the world is drawn for (see Budgets.for_overview)


@dataclass(frozen=True)
class Budgets:
    """The world's geometry: the scenes' side and the pixel budgets of the model's two views;
    pass :meth:`engine` to ``EngineConfig``/``Engine.run``. The default is the 224² overview of
    2048² scenes; :meth:`for_overview` gives the others."""

    overview_max_pixels: int = 224 * 224   # turn-1 overview: 2048² → 224×224 = 64 visual tokens
    crop_min_pixels: int = 112 * 112       # crops under this are enlarged to it (≥ 16 tokens)
    scene: int = DEFAULT_SIZE              # the scenes' side, original pixels

    @classmethod
    def for_overview(cls, side: int | None = None) -> "Budgets":
        """The world seen through a ``side``×``side`` overview (None: the default, 224). The scene grows with it (2048 at
        224, 2560 at 280), so a card, a lattice step and the stripes look the same in every
        overview and crop; only the board's coordinates change. At 280 the 4×4 board's slots
        start at 0, 70, 140 and 210 — four different first digits, where 224's 0, 56, 112 and 168
        give rows and columns 3 and 4 the same first token ``1``."""
        side = OVERVIEWS[0] if side is None else side
        if side not in OVERVIEWS:
            raise ValueError(f"overview {side!r}: the world is drawn for {' or '.join(map(str, OVERVIEWS))}")
        return cls(overview_max_pixels=side * side, scene=side * DEFAULT_SIZE // OVERVIEWS[0])

    @property
    def overview(self) -> int:
        """The overview's side (the model frame of a square scene)."""
        return math.isqrt(self.overview_max_pixels)

    def engine(self) -> dict:
        """``{"min_pixels", "max_pixels"}`` for the engine (one pair serves overview and crop)."""
        return {"min_pixels": self.crop_min_pixels, "max_pixels": self.overview_max_pixels}


MAX_NEW_TOKENS = 96   # per turn for the playground's small model: a bbox_2d JSON block is ≈ 80 tokens


@dataclass(frozen=True)
class Card:
    colour: str
    box: Box                         # (x1, y1, x2, y2) in original pixels
    detail: str                      # the stripes' orientation, one of PATTERNS
    shade: tuple[int, int, int]      # body colour (the named colour ± a little)
    ink: int                         # grey level of the stripes
    stains: tuple[tuple[int, int, int, int], ...]   # (cx, cy, r, darkening) relative to the label

    @property
    def label(self) -> Box:
        """The white label, original pixels."""
        x1, y1, x2, y2 = self.box
        side = int(round((x2 - x1) * LABEL_FRACTION))
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        return cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side

    @property
    def stripes(self) -> Box:
        """The striped square inside the label (``MARGIN`` of paper around it), original pixels."""
        x1, y1, x2, y2 = self.label
        m = int(round((x2 - x1) * MARGIN))
        return x1 + m, y1 + m, x2 - m, y2 - m


@dataclass(frozen=True)
class Layout:
    """Every random decision of a scene; :func:`render` turns it into pixels."""

    seed: int
    size: int
    period: int                      # stripe period, original pixels
    background: tuple[int, int, int]
    clutter: tuple[tuple, ...]       # (kind, coords, colour, width)
    cards: tuple[Card, ...]
    target: int                      # index into cards
    choices: tuple[str, ...]         # the four orientations in letter order (PATTERNS)
    answer: str                      # the right letter
    grid: int = 0                    # board slots per side (0: cards anywhere on the lattice)
    scale: float = 1.0               # the size of things (stripes, stains, clutter shapes) against the default world's


@dataclass
class Scene:
    """One playground item. ``box`` is ground truth for analysis only — never shown to RL."""

    image: Image.Image               # RGB, size × size
    question: str
    choices: list[str]               # the four orientations, in letter order
    answer: str                      # ground-truth letter
    box: Box                         # the target card, (x1, y1, x2, y2) in original pixels
    name: str                        # "red card"
    detail: str                      # its stripes' orientation
    seed: int
    layout: Layout

    @property
    def target(self) -> Card:
        return self.layout.cards[self.layout.target]

    def cell(self, card: Card | None = None) -> tuple[int, int]:
        """(row, column), 1-based, of the board slot the card (default: the target) sits in."""
        size = self.image.width
        return board_slot((card or self.target).box, (size, size), self.layout.grid or GRID)


def board_slot(box, frame: tuple[int, int], grid: int = GRID) -> tuple[int, int]:
    """(row, column), 1-based, of the slot of a ``grid`` × ``grid`` board over the whole image
    that holds the centre of ``box`` (``(x1, y1, x2, y2)`` in a frame of ``(width, height)``)."""
    x1, y1, x2, y2 = box
    w, h = frame
    row = int((y1 + y2) / 2 * grid // h) + 1
    col = int((x1 + x2) / 2 * grid // w) + 1
    return min(max(row, 1), grid), min(max(col, 1), grid)


def slot_label(row: int, col: int) -> str:
    """How reports name a board slot (the eval items' ``meta.slot``)."""
    return f"row {row}, column {col}"


def lattice_step(size: int, budgets: Budgets = Budgets()) -> float:
    """Original pixels per lattice step: ``LATTICE`` fed pixels of the overview's model frame."""
    frame = geometry.model_frame((size, size), budgets.crop_min_pixels, budgets.overview_max_pixels)
    return size / frame[0] * LATTICE


def _muted(rng: random.Random) -> tuple[int, int, int]:
    """A clutter colour: low saturation, so it is never mistaken for a named card colour."""
    v = rng.uniform(0.25, 0.92)
    s = rng.uniform(0.0, 0.28)
    h = rng.random()
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(int(255 * c) for c in rgb)  # type: ignore[return-value]


def make_layout(seed: int, size: int | None = None, budgets: Budgets = Budgets(), clutter: float = 1.0,
                n_cards: tuple[int, int] = N_CARDS, grid: int = GRID) -> Layout:
    """All random choices of scene ``seed`` (deterministic: ``random.Random`` on a string seed);
    ``size`` defaults to the geometry's (``budgets.scene``)."""
    size = budgets.scene if size is None else size
    if not isinstance(size, int) or size < 1024:
        raise ValueError(f"scene size must be an integer ≥ 1024 (got {size!r}); the default is {DEFAULT_SIZE}")
    if not 1 <= n_cards[0] <= n_cards[1] <= len(COLOURS):
        raise ValueError(f"n_cards must be (lo, hi) with 1 ≤ lo ≤ hi ≤ {len(COLOURS)}")
    rng = random.Random(f"{VERSION}:{seed}:{size}")
    # things are drawn to the overview's scale (original px per fed px), so a 2560² scene for a 280²
    # overview shows the same cards, stripes and clutter as a 2048² one for 224² — only more of the
    # board's background and clutter (``grow``: clutter keeps its density)
    scale = size * OVERVIEWS[0] / (DEFAULT_SIZE * budgets.overview)
    grow = size / DEFAULT_SIZE
    step = lattice_step(size, budgets)
    steps = int(round(size / step))
    period = max(4, int(round(PERIOD * scale)))

    count = rng.randint(*n_cards)
    cells: list[tuple[int, int]] = []
    if grid:   # cards in the slots of a grid × grid board, each at its slot's lattice origin
        per = steps // grid
        if per < CARD_STEPS or count > grid * grid:
            raise ValueError(f"a {grid}×{grid} board cannot hold {count} cards of {CARD_STEPS} lattice steps")
        cells = [((k % grid) * per, (k // grid) * per) for k in rng.sample(range(grid * grid), count)]
    while len(cells) < count:   # free placement: lattice positions with one free step between any two
        c = (rng.randint(0, steps - CARD_STEPS), rng.randint(0, steps - CARD_STEPS))
        if all(max(abs(c[0] - o[0]), abs(c[1] - o[1])) >= CARD_STEPS + 1 for o in cells):
            cells.append(c)
    colours = rng.sample(sorted(COLOURS), count)
    target = rng.randrange(count)
    answer_index = rng.randrange(len(PATTERNS))
    cards = []
    for k, ((i, j), colour) in enumerate(zip(cells, colours)):
        box = (int(round(i * step)), int(round(j * step)), int(round((i + CARD_STEPS) * step)),
               int(round((j + CARD_STEPS) * step)))
        detail = PATTERNS[answer_index] if k == target else rng.choice(PATTERNS)
        base = COLOURS[colour]
        shade = tuple(min(255, max(0, v + rng.randint(-12, 12))) for v in base)
        side = int(round((box[2] - box[0]) * LABEL_FRACTION))
        lo, hi = STAIN_RADIUS
        stains = tuple((rng.randint(0, side), rng.randint(0, side), rng.randint(int(lo * scale), int(hi * scale) + 1),
                        rng.randint(*STAIN_DARK)) for _ in range(rng.randint(*N_STAINS)))
        cards.append(Card(colour, box, detail, shade, rng.randint(10, 70), stains))  # type: ignore[arg-type]

    # clutter: muted shapes anywhere (cards are drawn over them)
    items = []
    for _ in range(int(round(rng.randint(*N_CLUTTER) * clutter * grow * grow))):
        kind = rng.choice(("ellipse", "rectangle", "triangle", "line", "line", "decoy", "decoy"))
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        r = rng.uniform(20, 150) * scale
        colour = _muted(rng)
        if kind == "triangle":
            coords = tuple((x + r * math.cos(a), y + r * math.sin(a))
                           for a in (rng.uniform(0, 6.3), rng.uniform(0, 6.3), rng.uniform(0, 6.3)))
        elif kind == "line":
            a = rng.uniform(0, math.pi)
            coords = ((x, y), (x + 2.5 * r * math.cos(a), y + 2.5 * r * math.sin(a)))
        elif kind == "decoy":   # a small random dot matrix: fine detail that is not a card
            bits = tuple(rng.random() < 0.45 for _ in range(DECOY[0] * DECOY[1]))
            coords = (x, y, bits)
        else:
            coords = (x - r, y - r * rng.uniform(0.4, 1.0), x + r, y + r * rng.uniform(0.4, 1.0))
        items.append((kind, coords, colour, rng.randint(2, 9)))
    background = _muted(rng)
    return Layout(seed, size, period, background, tuple(items), tuple(cards), target, PATTERNS, LETTERS[answer_index], grid,
                  scale)


def scene_from_layout(layout: Layout) -> Scene:
    from .draw import render     # (draw reads this module's layouts)

    card = layout.cards[layout.target]
    return Scene(render(layout), question(f"{card.colour} card"), list(layout.choices),
                 layout.answer, card.box, f"{card.colour} card", card.detail, layout.seed, layout)


def question(name: str) -> str:
    """The task question about the card called ``name`` ("red card")."""
    return f"Which way do the stripes on the {name} run?"


def make_scene(seed: int, size: int | None = None, budgets: Budgets = Budgets(), clutter: float = 1.0,
               n_cards: tuple[int, int] = N_CARDS, grid: int = GRID) -> Scene:
    """Scene ``seed``: same seed, same pixels. ``clutter`` scales the distractor shapes (0 = a
    plain layout of cards on a textured background); ``grid`` is the board's slots per side (0:
    cards anywhere on the lattice); ``size`` defaults to the geometry's."""
    return scene_from_layout(make_layout(seed, size, budgets, clutter, n_cards, grid))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mgpo.playground.world",
                                description="Write one playground scene, its overview and its target crop as fed.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default=None, choices=sorted(SPLITS),
                   help="read --seed as an index into this split's seed range")
    p.add_argument("--overview", type=int, default=OVERVIEWS[0], choices=OVERVIEWS,
                   help="the overview's side in model pixels; the scene's side grows with it (224: 2048, 280: 2560)")
    p.add_argument("--size", type=int, default=None, help="scene side in original pixels (default: the overview's)")
    p.add_argument("--clutter", type=float, default=1.0)
    p.add_argument("--cards", type=int, default=1, help="cards of different colours; the question names one")
    p.add_argument("--out", default="scene.png", help="PNG path; .overview.png and .crop.png go next to it")
    args = p.parse_args(argv)
    budgets = Budgets.for_overview(args.overview)
    try:
        seed = split_seeds(args.split, 1, args.seed)[0] if args.split else args.seed
        cards = check_cards(args.cards)
        scene = make_scene(seed, args.size, budgets, args.clutter, n_cards=(cards, cards))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    overview = geometry.prepare(scene.image, None, **budgets.engine())
    crop = geometry.prepare(scene.image, scene.box, **budgets.engine())
    scene.image.save(out)
    overview.image.save(out.with_suffix(".overview.png"))
    crop.image.save(out.with_suffix(".crop.png"))
    print(f"seed {seed} ({split_of(seed) or 'no split'}): {scene.question}")
    for letter, choice in zip(LETTERS, scene.choices):
        print(f"  ({letter}) {choice}" + ("   <- answer" if letter == scene.answer else ""))
    print(f"target {scene.name} box {scene.box} (original px); overview {overview.frame} "
          f"({overview.visual_tokens} tokens), crop fed at {crop.frame} ({crop.visual_tokens} tokens)")
    print(f"wrote {out}, {out.with_suffix('.overview.png')}, {out.with_suffix('.crop.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

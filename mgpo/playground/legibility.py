"""Is the target's detail readable in what the model is fed? A measurement. Pure: PIL + numpy.

For one scene, the target card is repainted with each of the four candidate stripe orientations (everything
else equal) and every version goes through the engine's own resize (:func:`mgpo.geometry.prepare`
with the playground budgets): the whole image (turn 1's overview) and the target's box (the
crop turn 2 gets). Two numbers per fed image:

- ``separation``: the smallest RMS difference, in 8-bit grey levels over the label, between any
  two candidates' pixels — how far apart the four possible answers look.
- ``match``: a template-matching reader. It knows the card design (templates: the card painted
  *clean* with each candidate orientation, through the same resize) but not this copy's
  nuisances (stains, ink tone). It slides each template over the label by up to one stripe
  period (in fed pixels) and picks the candidate with the highest normalised
  cross-correlation. ``match`` is True when that is the right orientation.

The world is built so that the crop reads (match on ~all seeds, separation tens of levels) and the
overview does not (match near chance 1/4, separation a few levels): ``python -m
mgpo.playground.legibility --n 100`` prints both over held-out seeds.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import geometry
from .draw import with_detail
from .world import OVERVIEWS, Budgets, Scene, lattice_step, make_scene, split_seeds


@dataclass(frozen=True)
class Reading:
    """What one fed image shows of the target's detail."""

    separation: float     # min RMS grey-level difference between two candidates over the label
    match: bool           # the template reader picked the right orientation
    scores: tuple[float, ...]   # its correlation with each candidate, in choice order


@dataclass(frozen=True)
class Legibility:
    overview: Reading
    crop: Reading


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64)


def _region(box, frame, region, pad: int) -> tuple[int, int, int, int]:
    """``box`` (original px) in the fed frame of an image showing ``region``, grown by ``pad``."""
    x1, y1, x2, y2 = geometry.to_frame(box, frame, region)
    return (max(0, math.floor(x1) - pad), max(0, math.floor(y1) - pad),
            min(frame[0], math.ceil(x2) + pad), min(frame[1], math.ceil(y2) + pad))


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _read(observed: np.ndarray, actual: list[np.ndarray], templates: list[np.ndarray], area, shift: int,
          right: int) -> Reading:
    x1, y1, x2, y2 = area
    patches = [a[y1:y2, x1:x2] for a in actual]
    separation = min(float(np.sqrt(np.mean((p - q) ** 2))) for p, q in itertools.combinations(patches, 2))
    obs = observed[y1:y2, x1:x2]
    h, w = observed.shape
    scores = []
    for t in templates:
        best = -1.0
        for dy in range(-shift, shift + 1):
            for dx in range(-shift, shift + 1):
                if y1 + dy < 0 or x1 + dx < 0 or y2 + dy > h or x2 + dx > w:
                    continue
                best = max(best, _ncc(obs, t[y1 + dy:y2 + dy, x1 + dx:x2 + dx]))
        scores.append(best)
    return Reading(separation, int(np.argmax(scores)) == right, tuple(scores))


def _fed(images: list[Image.Image], region, budgets: Budgets, window) -> tuple[list[np.ndarray], tuple, tuple]:
    """Grey pixels of ``images`` as fed for ``region`` (None = the overview), plus the frame and
    the region shown. With a ``window`` (original px, on the lattice) the overview is resized on
    that window only, at the overview's exact scale — the same pixels inside it as resizing the
    whole image (checked in tests/test_playground.py), ~10× cheaper."""
    if region is not None or window is None:
        fed = [geometry.prepare(im, region, **budgets.engine()) for im in images]
        return [_gray(f.image) for f in fed], fed[0].frame, fed[0].region
    full = geometry.model_frame(images[0].size, budgets.crop_min_pixels, budgets.overview_max_pixels)
    sx, sy = full[0] / images[0].width, full[1] / images[0].height
    x1, y1, x2, y2 = window
    size = (int(round((x2 - x1) * sx)), int(round((y2 - y1) * sy)))
    grays = [_gray(im.crop(window).resize(size, Image.Resampling.BICUBIC)) for im in images]
    return grays, size, window


def measure(scene: Scene, budgets: Budgets = Budgets(), exact: bool = False) -> Legibility:
    """Readings of the target's detail in the overview and in the crop of its box, as fed.
    ``exact``: resize the whole image for the overview (as the engine does) instead of a window."""
    card = scene.target
    right = scene.choices.index(scene.detail)
    actual = [with_detail(scene, d) for d in scene.choices]
    clean = [with_detail(scene, d, clean=True) for d in scene.choices]
    jitter = max(scene.layout.period, 1)                   # any phase within one period
    step = int(round(lattice_step(scene.image.width, budgets)))
    size = scene.image.width
    x1, y1, x2, y2 = card.box
    window = None if exact else (max(0, x1 - step), max(0, y1 - step), min(size, x2 + step), min(size, y2 + step))
    out = []
    for region in (None, scene.box):
        grays, frame, shown = _fed([scene.image, *actual, *clean], region, budgets, window)
        scale = frame[0] / (shown[2] - shown[0])            # fed px per original px
        shift = max(1, math.ceil(jitter * scale))           # search one period, ≥ 1 fed px
        area = _region(card.stripes, frame, shown, 0)
        if area[2] - area[0] > 4 * shift:                   # keep the slid templates inside the label
            area = (area[0] + shift, area[1] + shift, area[2] - shift, area[3] - shift)
        out.append(_read(grays[0], grays[1:5], grays[5:9], area, shift, right))
    return Legibility(*out)


def summary(seeds: list[int], budgets: Budgets = Budgets()) -> dict:
    """Match rate and median separation over ``seeds``, overview vs crop."""
    readings = [measure(make_scene(s, budgets=budgets), budgets) for s in seeds]
    res = {}
    for name in ("overview", "crop"):
        rs = [getattr(r, name) for r in readings]
        res[name] = {"match_rate": sum(r.match for r in rs) / len(rs),
                     "median_separation": float(np.median([r.separation for r in rs])),
                     "max_separation": max(r.separation for r in rs),
                     "min_separation": min(r.separation for r in rs)}
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mgpo.playground.legibility", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--overview", type=int, default=OVERVIEWS[0], choices=OVERVIEWS,
                   help="the overview side the world is drawn for (its scenes grow with it)")
    args = p.parse_args(argv)
    try:
        seeds = split_seeds(args.split, args.n, args.start)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = summary(seeds, Budgets.for_overview(args.overview))
    for name, r in res.items():
        print(f"{name:8s}: template reader right on {100 * r['match_rate']:.0f}% of {len(seeds)} scenes "
              f"(chance 25%); candidate separation median {r['median_separation']:.1f} grey levels "
              f"(min {r['min_separation']:.1f}, max {r['max_separation']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

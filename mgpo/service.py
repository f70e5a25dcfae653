"""The model side of an interactive app, without any UI: one request's settings, engine runs with a
per-run LoRA adapter, a playground release's model loaded on first use, and the verdict on a
playground run. ``app.py`` maps what these return to Gradio components; another front end (a
notebook, another web framework) can use them as they are.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .adapters import AdapterPolicy, AdapterStore
from .engine import Engine, EngineConfig
from .events import answer_box
from .eval.scoring import iou
from .playground.release import Release, ReleaseError
from .playground.world import MAX_NEW_TOKENS, Budgets, make_scene
from .prompts import LETTERS


@dataclass
class Settings:
    """One request's knobs (a page's "advanced" panel); ``None`` keeps the engine's default."""

    max_turns: int = 2
    min_pixels: int | None = None
    max_pixels: int | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    box_rule: str | None = None

    def overrides(self) -> dict:
        out = dict(min_pixels=self.min_pixels, max_pixels=self.max_pixels, temperature=self.temperature,
                   max_new_tokens=self.max_new_tokens, box_rule=self.box_rule)
        return {k: v for k, v in out.items() if v is not None}


class Runner:
    """Runs the engine for a front end: the MGPO conversation and, with ``compare``, the
    single-turn baseline. :meth:`events` yields ``(run, event)`` with run ``"mgpo"`` or
    ``"baseline"``. ``gpu`` wraps that generator function (a Space passes ``spaces.GPU(...)``,
    so ZeroGPU lends a GPU for exactly the model's work); adapters are :class:`AdapterStore`'s."""

    def __init__(self, engine: Engine, adapter: str | None = None, policy: AdapterPolicy | None = None,
                 gpu=None):
        self.engine = engine
        self.adapters = AdapterStore(engine, policy)
        # the default adapter: the operator's, loaded as given
        self.adapter = self.adapters.load(adapter, visitor=False) if adapter else None
        self.events = gpu(self._events) if gpu is not None else self._events

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def _events(self, image, question: str, choices: str | None, settings: Settings,
                compare: bool = False, adapter: str | None = None):
        runs = [("mgpo", dict(mode="mgpo", max_turns=settings.max_turns))]
        if compare:
            runs.append(("baseline", dict(mode="direct")))
        with self.adapters.use(adapter):     # the model is this run's until it ends or is stopped
            for run, kw in runs:
                stream = self.engine.run(image, question, choices, **kw, **settings.overrides())
                try:
                    for event in stream:
                        yield run, event
                finally:
                    stream.close()   # a stopped request stops generating here


class PlaygroundModel:
    """A playground release's model, loaded on first use: the base-skills checkpoint with the
    playground's pixel budgets, and every RL checkpoint's LoRA adapter on it (all held), switched
    per run through a :class:`Runner`."""

    POLICY = AdapterPolicy(max_loaded=None)   # the release's own checkpoints, all held

    def __init__(self, release: Release, engine: Engine | None = None, gpu=None):
        self.release = release                  # ``engine``: a prepared one (tests); else loaded on first use
        # greedy, the release's own turns, in the pixel budgets of the world it was trained in
        self.settings = Settings(max_turns=release.max_turns, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS,
                                 **release.budgets().engine())
        self.gpu = gpu
        self._runner = Runner(engine, policy=self.POLICY, gpu=gpu) if engine is not None else None
        self._lock = threading.Lock()

    def config(self) -> EngineConfig:
        return EngineConfig(max_turns=self.settings.max_turns, **self.settings.overrides())

    def scene(self, seed: int):
        """The playground scene of ``seed`` in the release's world (cached: a page shows and then
        runs the same one)."""
        return scene(seed, self.release.overview, self.release.cards)

    @property
    def runner(self) -> Runner:
        with self._lock:
            if self._runner is None:
                runner = Runner(Engine.from_pretrained(str(self.release.model), config=self.config()),
                                policy=self.POLICY, gpu=self.gpu)
                for c in self.release.checkpoints:
                    if c.adapter is not None:
                        runner.adapters.load(str(c.adapter), visitor=False)
                self._runner = runner
        return self._runner

    def compare(self, scene):
        """Every checkpoint of the release on ``scene``, one after another (greedy, so each answer
        is that checkpoint's own): yields a :class:`CheckpointRun` as each one finishes."""
        for c in self.release.checkpoints:
            boxes, crop, final = [], None, None
            for run, e in self.events(scene, c.name):
                if run != "mgpo":
                    continue
                if e.type == "box":
                    boxes.append(e)
                elif e.type == "crop":
                    crop = e.image           # the last: the crop the answer read
                elif e.type == "final":
                    final = e
            yield CheckpointRun(c.name, c.step, verdict(scene, final, boxes), crop,
                                final.answer if final is not None else None)

    def events(self, scene, checkpoint: str):
        """``(run, event)`` of an MGPO run on ``scene`` with the checkpoint named ``checkpoint``;
        loading the model or the adapter happens on the first ``next`` (and may raise there)."""
        adapter = self.release.checkpoint(checkpoint).adapter
        yield from self.runner.events(scene.image, scene.question, scene.choices, self.settings, False,
                                      str(adapter) if adapter else None)


def load_playground(folder: str | None, default: str | Path | None = None) -> Release | ReleaseError | None:
    """The release for a playground view: ``folder``, or ``default`` (an app's shipped release,
    e.g. a clone's ``examples/playground``) when it exists; None for none or "off". A release that
    does not load comes back as its :class:`ReleaseError`, for the front end to show."""
    if folder and folder.strip().lower() in ("off", "none", "no", "0"):
        return None
    if not folder:
        if default is None or not Path(default).exists():
            return None
        folder = str(default)
    try:
        return Release.load(folder)
    except ReleaseError as e:
        return e


@lru_cache(maxsize=4)
def scene(seed: int, overview: int = 224, cards: int = 1):
    """The playground scene of ``seed`` in the world drawn for an ``overview``² first turn, with
    ``cards`` cards (cached)."""
    return make_scene(seed, budgets=Budgets.for_overview(overview), n_cards=(cards, cards))


def parse_seed(value) -> int:
    """A scene seed typed in a box, as an int, or ValueError saying what a seed is."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("type a scene seed or press New scene") from None
    if not number.is_integer() or not 0 <= number < 2**31:
        raise ValueError(f"a scene seed is a whole number from 0 to {2**31 - 1:,} (got {value})")
    return int(number)


@dataclass
class Verdict:
    """How a playground run did: the answer against the scene's, and the answer's box (the last
    valid one) against the hidden box of the target card (analysis only, never shown to the model)."""

    right: bool
    letter: str | None          # the model's choice letter, None without one
    truth: str                  # "D — falling diagonal"
    box: tuple | None           # the answer's box (the last valid one), (x1, y1, x2, y2) in original pixels
    iou: float | None           # its IoU with the hidden box; None without a valid box
    no_box_reason: str          # why there is no valid box ("" with one)


@dataclass
class CheckpointRun:
    """One checkpoint's MGPO run on a scene, for the side-by-side comparison."""

    name: str
    step: int
    verdict: Verdict
    crop: object | None          # the crop turn 2 read (PIL image as fed), None without a valid box
    answer: str | None           # the content of its last \boxed{}, None without one


def verdict(scene, final, boxes) -> Verdict:
    """``final``: the run's :class:`~mgpo.events.FinalAnswer` (or None); ``boxes``: its
    :class:`~mgpo.events.BoxPredicted` events in order. The box judged is the answer's: the last
    valid one, whose crop the answer read (with two turns, the only one)."""
    truth = f"{scene.answer} — {scene.choices[LETTERS.index(scene.answer)]}"
    letter = final.letter if final is not None else None
    chosen = answer_box(boxes)
    box = chosen.box_original if chosen is not None else None
    reason = "" if box is not None else (boxes[0].reason if boxes else "none given")
    return Verdict(letter == scene.answer, letter, truth, box, iou(box, scene.box) if box else None, reason)

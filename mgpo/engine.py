"""The MGPO engine: turn-1 grounding → crop from the original → turn-2 answer (and more turns).

This is the one implementation of a turn in the project. :meth:`Engine.run` streams the events
of one question (the demo and the CLI use it); :meth:`Engine.stream` does the same for a batch
of questions sampled ``group_size`` times each, and :meth:`Engine.rollout` drains it into
per-sample token ids, loss masks, log-probs and images (the trainer and the evaluator use it).

Turn logic (``mode="mgpo"``, ``max_turns`` = N ≥ 2):

1. *grounding*: the overview and the question (no choices); generation stops right after the
   first fenced JSON block holding a usable box, as in the paper.
2. The box is read in the model frame of the image it was drawn on and judged by the box rule
   (paper rules by default). Valid → the region is cut from the full-resolution original and
   resized (small crops enlarged to ≥ min_pixels). Then turn t+1 is *crop* (the paper's turn-2
   prompt) when t+1 = N, or *refine* (look inside the sub-image and give a box again) before
   that. Invalid → *fallback* (the paper's prompt with the original again), or, after a valid
   earlier crop, *crop* with that earlier crop.
3. A *crop* or *fallback* turn gives the final answer (the last ``\\boxed{}``). A *refine* turn
   that answers with ``\\boxed{}`` and no box ends the conversation early.

``mode="direct"`` is the paper's single-turn GRPO baseline: one turn, the baseline prompt.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from . import geometry
from .events import BoxPredicted, CropReady, FinalAnswer, TextDelta, TurnFinished, TurnStarted, answer_box
from .conversation import FedImage, Sampling
from .images import MAX_IMAGE_PIXELS, load_image
from .parsing import answer_letter, extract_boxed, parse_bbox
from .prompts import LETTERS, get_prompts, render, user_message

__all__ = ["DEFAULT_MODEL", "Engine", "EngineConfig", "InputError", "Request", "Rollout", "Sampling", "drain"]

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
_CONTROL = re.compile(r"<\|[A-Za-z_]+\|>")  # Qwen's special tokens: <|im_end|>, <|image_pad|>, …
MODES = ("mgpo", "direct")


def drain(stream, on_item=None):
    """Run a generator to its end and return its return value (an engine stream's rollouts, a
    backend turn's ``{row: Generated}``); ``on_item`` sees each item it yields on the way."""
    while True:
        try:
            item = next(stream)
        except StopIteration as done:
            return done.value
        if on_item is not None:
            on_item(item)


class InputError(ValueError):
    """A request the engine refuses, with a message meant for the person who made it."""


@dataclass
class EngineConfig:
    prompts: str = "mgpo"                       # prompt set name (mgpo.prompts)
    max_turns: int = 2                          # 2 = the paper; 3 = its Table 6 extra look
    min_pixels: int = geometry.MIN_PIXELS       # 256·28·28: small crops are enlarged to this
    max_pixels: int = geometry.MAX_PIXELS       # 1280·28·28: the overview's pixel budget
    box_rule: str = "paper"                     # paper | clamp | pad | clamp+pad
    max_new_tokens: int = 1024                  # per turn
    temperature: float = 0.0                    # 0 = greedy (demo, eval); rollouts use 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_question_chars: int = 4000              # longer questions are refused, not cut
    max_image_pixels: int = MAX_IMAGE_PIXELS    # larger images are refused before decoding

    def check(self, mode: str = "mgpo") -> "EngineConfig":
        """Refuse settings the engine cannot run (:class:`InputError`, a message for a person)."""
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "mgpo" and self.max_turns < 2:
            raise InputError("MGPO needs max_turns ≥ 2 (turn 1 grounds, the last turn answers)")
        if self.box_rule not in geometry.BOX_RULES:
            raise InputError(f"unknown box rule {self.box_rule!r}; choose one of {', '.join(geometry.BOX_RULES)}")
        if not (28 * 28 <= self.min_pixels <= self.max_pixels):
            raise InputError("pixel limits must satisfy 784 ≤ min_pixels ≤ max_pixels")
        if self.max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1")
        try:
            get_prompts(self.prompts)
        except ValueError as e:
            raise InputError(str(e)) from None
        return self

    def sampling(self, **changes) -> Sampling:
        base = dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                    max_new_tokens=self.max_new_tokens, seed=self.seed)
        base.update(changes)
        return Sampling(**base)


@dataclass
class Request:
    """One question about one image. ``answer`` (ground truth) is carried, not used."""

    image: Image.Image | str | Path | bytes
    question: str
    choices: list[str] | None = None
    answer: str | None = None
    id: str | None = None


@dataclass
class Rollout:
    """One sampled conversation, as the trainer consumes it."""

    request: int                      # index into the requests
    sample: int                       # row in the batch (request · G + g)
    token_ids: list[int]              # (T,) the whole conversation
    loss_mask: list[int]              # (T,) 1 = policy token, 0 = prompt/env token (image pads included)
    logprobs: list[float]             # (T,) sampling log-prob of policy tokens, 0.0 elsewhere
    positions: list[tuple[int, int, int]]  # (T,) M-RoPE (t, h, w)
    images: list[FedImage]            # images fed, in order, with their pixel values
    texts: list[str]                  # the model's text per turn
    kinds: list[str]                  # the kind of each turn
    boxes: list[BoxPredicted]
    final: FinalAnswer
    crop_area: float | None = None    # first valid crop's area / original area

    @property
    def valid_box(self) -> bool:
        return bool(self.boxes) and self.boxes[0].valid

    @property
    def answer_box(self) -> BoxPredicted | None:
        """The last valid box: the one whose crop the final answer read (two turns: turn 1's)."""
        return answer_box(self.boxes)


@dataclass
class _Sample:
    request: int
    row: int
    original: Image.Image
    question: str
    choices: list[str] | None
    current: geometry.Prepared                     # the image the last turn showed
    overview: geometry.Prepared
    last_crop: geometry.Prepared | None = None
    kind: str = "grounding"
    texts: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    boxes: list[BoxPredicted] = field(default_factory=list)
    visual_tokens: int = 0
    crop_area: float | None = None
    final: FinalAnswer | None = None


class Engine:
    """MGPO inference over a backend (a real Qwen2.5-VL, or a scripted stand-in in tests)."""

    def __init__(self, backend, config: EngineConfig | None = None, name: str = "model",
                 model_name: str | None = None):
        self.backend = backend
        self.config = config or EngineConfig()
        self.name = name                            # what ran: "model + adapter"
        self.model_name = model_name or name        # the base model: Hub id or directory

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, adapter: str | None = None,
                        config: EngineConfig | None = None, kv_reuse: bool = True, **load_kwargs) -> "Engine":
        """Load a base model (Hub id or directory), optionally a LoRA adapter, and wrap it."""
        from .generation import QwenBackend
        from .model import load_model

        config = config or EngineConfig()
        loaded = load_model(model, adapter, min_pixels=config.min_pixels, max_pixels=config.max_pixels, **load_kwargs)
        name = model + (f" + {adapter}" if adapter else "")
        return cls(QwenBackend(loaded.model, loaded.processor, kv_reuse=kv_reuse), config, name=name, model_name=model)

    @classmethod
    def from_server(cls, urls: str | list[str], config: EngineConfig | None = None, model: str | None = None,
                    **server_kwargs) -> "Engine":
        """The engine over OpenAI-compatible chat-completions servers (``vllm serve``, SGLang):
        ``urls`` one or several base URLs (comma-separated), ``model`` the served model's name
        (None: the server's only one). See :mod:`mgpo.server`."""
        from .server import ServerBackend

        backend = ServerBackend(urls, model, **server_kwargs)
        name = f"{model or 'served model'} @ {backend.description}"
        return cls(backend, config or EngineConfig(), name=name, model_name=model or backend.description)

    # ----- public calls -----------------------------------------------------------------------

    def run(self, image, question: str, choices: list[str] | None = None, *, mode: str = "mgpo",
            max_turns: int | None = None, sampling: Sampling | None = None, **overrides):
        """Answer one question, yielding events as they happen (see :mod:`mgpo.events`)."""
        return self.stream([Request(image, question, choices)], 1, mode=mode, max_turns=max_turns,
                           sampling=sampling, **overrides)

    def rollout(self, requests: list[Request], group_size: int = 1, **kwargs) -> list[Rollout]:
        """Run every request ``group_size`` times and return the samples (request-major)."""
        return drain(self.stream(requests, group_size, **kwargs))

    def stream(self, requests: list[Request], group_size: int = 1, *, mode: str = "mgpo",
               max_turns: int | None = None, sampling: Sampling | None = None, **overrides):
        """Generator of events for a batch; returns the list of :class:`Rollout` at the end.

        ``overrides`` change config fields for this call (min_pixels, max_pixels, box_rule, ...).
        """
        cfg = self._call_config(mode, max_turns, overrides)
        sampling = sampling or cfg.sampling()
        if group_size < 1:
            raise InputError("group_size must be at least 1")
        samples = self._prepare(requests, group_size, cfg)
        prompts = get_prompts(cfg.prompts)
        t_start = time.perf_counter()
        G = group_size

        first_kind = "direct" if mode == "direct" else "grounding"
        first = []
        for i in range(len(requests)):
            s = samples[i * G]
            first.append(self._first_messages(prompts, first_kind, s))
        convs = self.backend.start(first, G)
        active = list(samples)
        for s in active:
            s.kind = first_kind
            yield self._started(prompts, s, 1, s.current)

        for turn in range(1, cfg.max_turns + 1):
            if turn > 1:
                for s in active:
                    message = self._user_message(render(prompts, s.kind, s.question, s.choices), s.current)
                    self.backend.append(convs, s.row, message)
                    yield self._started(prompts, s, turn, s.current)
            grounding = {s.row for s in active if s.kind in ("grounding", "refine")}
            gens = yield from self._relay(
                self.backend.generate(convs, [s.row for s in active], sampling, stop_on_box=grounding), turn
            )
            still = []
            for s in active:
                g = gens[s.row]
                s.texts.append(g.text)
                s.kinds.append(s.kind)
                yield TurnFinished(s.row, turn, g.text, g.count, g.stop, g.prefill_tokens,
                                   s.current.visual_tokens, g.prefill_seconds, g.decode_seconds)
                if s.kind in ("direct", "crop", "fallback") or turn == cfg.max_turns:
                    if s.kind == "direct":
                        box = parse_bbox(g.text)
                        if box is not None:
                            yield self._judge(s, turn, box, cfg)
                    s.final = self._final(s, g.text, turn, t_start)
                    yield s.final
                    continue
                # a grounding or refine turn: read the box
                box = parse_bbox(g.text)
                if s.kind == "refine" and box is None and extract_boxed(g.text) is not None:
                    s.final = self._final(s, g.text, turn, t_start)
                    yield s.final
                    continue
                event = self._judge(s, turn, box, cfg)
                yield event
                if event.valid:
                    crop = geometry.prepare(s.original, event.box_original, cfg.min_pixels, cfg.max_pixels)
                    if s.crop_area is None:
                        cw, ch = crop.source_size
                        s.crop_area = (cw * ch) / (s.original.width * s.original.height)
                    yield CropReady(s.row, turn + 1, crop.image, event.box_original, crop.source_size,
                                    crop.frame, crop.visual_tokens, crop.enlarged)
                    s.current = s.last_crop = crop
                    s.kind = "refine" if turn + 1 < cfg.max_turns else "crop"
                elif s.last_crop is not None:
                    s.current, s.kind = s.last_crop, "crop"
                else:
                    s.current, s.kind = s.overview, "fallback"
                still.append(s)
            active = still
            if not active:
                break
        return [self._rollout(convs, s) for s in samples]

    # ----- pieces -----------------------------------------------------------------------------

    def _call_config(self, mode: str, max_turns: int | None, overrides: dict) -> EngineConfig:
        unknown = set(overrides) - set(EngineConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown engine settings: {', '.join(sorted(unknown))}")
        cfg = EngineConfig(**{**self.config.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
        if max_turns is not None:
            cfg.max_turns = max_turns
        cfg.check(mode)
        if mode == "direct":
            cfg.max_turns = 1
        return cfg

    def _prepare(self, requests: list[Request], G: int, cfg: EngineConfig) -> list[_Sample]:
        if not requests:
            raise InputError("no requests")
        samples = []
        for i, req in enumerate(requests):
            question = self._check_question(req.question, cfg)
            choices = self._check_choices(req.choices)
            image = load_image(req.image, cfg.max_image_pixels)
            try:
                overview = geometry.prepare(image, None, cfg.min_pixels, cfg.max_pixels)
            except ValueError as e:  # extreme aspect ratio
                raise InputError(f"this image cannot be fed to Qwen2.5-VL: {e}") from None
            for g in range(G):
                samples.append(_Sample(i, i * G + g, image, question, choices, overview, overview))
        return samples

    @staticmethod
    def _check_question(question, cfg: EngineConfig) -> str:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty: type a question about the image")
        q = question.strip()
        Engine._check_control(q, "question")
        if len(q) > cfg.max_question_chars:
            raise InputError(f"the question is {len(q):,} characters long; the limit is {cfg.max_question_chars:,}")
        return q

    @staticmethod
    def _check_choices(choices) -> list[str] | None:
        if choices is None:
            return None
        if isinstance(choices, str):
            choices = [c for c in choices.splitlines()]
        out = [str(c).strip() for c in choices if str(c).strip()]
        for c in out:
            Engine._check_control(c, "answer choice")
        if len(out) > len(LETTERS):
            raise InputError(f"{len(out)} answer choices; at most {len(LETTERS)} are supported")
        return out or None

    @staticmethod
    def _check_control(text: str, what: str) -> None:
        m = _CONTROL.search(text)
        if m:
            raise InputError(f"the {what} contains '{m.group()}', one of the model's control tokens; remove it")

    def _user_message(self, text: str, img: geometry.Prepared) -> dict:
        return user_message(text, [img.image] * text.count("<image>"))

    def _first_messages(self, prompts, kind: str, s: _Sample) -> list[dict]:
        messages = []
        system = prompts.direct_system if kind == "direct" else render(prompts, "system", s.question, s.choices)
        if system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append(self._user_message(render(prompts, kind, s.question, s.choices), s.current))
        return messages

    def _started(self, prompts, s: _Sample, turn: int, img: geometry.Prepared) -> TurnStarted:
        s.visual_tokens += img.visual_tokens
        return TurnStarted(s.row, turn, s.kind, render(prompts, s.kind, s.question, s.choices),
                           img.frame, img.visual_tokens)

    def _judge(self, s: _Sample, turn: int, box, cfg: EngineConfig) -> BoxPredicted:
        img = s.current
        check = geometry.decide_box(box, img.frame, cfg.box_rule)
        original = geometry.to_region(check.box, img.frame, img.region) if check.valid else None
        event = BoxPredicted(s.row, turn, box, original, img.frame, check.valid, check.reason, check.rule, check.adjusted)
        s.boxes.append(event)
        return event

    def _final(self, s: _Sample, text: str, turns: int, t_start: float) -> FinalAnswer:
        answer = extract_boxed(text)
        letter = answer_letter(answer, len(s.choices)) if s.choices else None
        return FinalAnswer(s.row, text, answer, letter, turns, time.perf_counter() - t_start,
                           s.visual_tokens, geometry.native_visual_tokens(s.original.size))

    @staticmethod
    def _relay(inner, turn: int):
        """Pass the backend's ``(row, delta)`` items on as events; return its result."""
        try:
            while True:
                try:
                    row, delta = next(inner)
                except StopIteration as done:
                    return done.value
                yield TextDelta(row, turn, delta)
        finally:
            inner.close()

    def _rollout(self, convs, s: _Sample) -> Rollout:
        row = convs.rows[s.row]
        return Rollout(s.request, s.row, list(row.tokens), list(row.mask), list(row.logprobs),
                       list(row.positions), list(row.images), s.texts, s.kinds, s.boxes, s.final,
                       s.crop_area)

"""Supervised base-skill examples from playground scenes — what a pretrained VLM would bring.

None of these is the MGPO task (question about a card's stripes → box); they are the abilities the
task needs, taught on their own prompts:

1. ``ground`` — grounding by name on the overview: *"Locate the red card in the image. Output the
   coordinates of the red card in JSON format."* → Qwen's JSON ``bbox_2d`` block, in the model
   frame of the overview as fed. The phrase "coordinates … in JSON format" is shared with MGPO's
   turn-1 prompt ("Out the coordinates of the key image area relevant to the problem in JSON
   format."): a base model trained on an unrelated wording gave 0 valid boxes under MGPO's. Any
   card of the scene is named, not only the one a task question would ask about.
2. ``read`` — reading a close-up: the crop of one card as turn 2 would feed it → ``\\boxed{vertical}``
   (open form) or ``\\boxed{B}`` (the four orientations as choices).
3. ``zoom`` — reading in MGPO's own second turn: a two-turn conversation whose turn 1 is an
   ``ask`` grounding of the card (its box as the reply, not learned here) and whose turn 2 is the
   crop the engine would cut for that box, in MGPO's turn-2 template, with a reading question
   that is not the task's (:data:`ZOOM_QUESTIONS` do not name the card) → ``\\boxed{B}``. Reading
   alone, in a one-turn chat, did not carry over to turn 2 of the engine's conversation.
4. ``answer`` — direct answers from the overview to questions the overview *does* answer (which
   colours the cards have, how many cards there are) → ``\\boxed{C}``. Without these, "an overview
   always gets a box" is a shortcut that makes RL's result trivial.

For MGPO with three turns (turn 1 boxes a region, turn 2 the card inside its enlarged crop, turn 3
answers) on scenes of several cards, two more, never in a scene's examples unless named:

5. ``group`` — one box around every card of the scene (:data:`GROUP_PROMPTS`, image first).
6. ``zoom3`` — reading in MGPO's third turn, after a turn-1 box around the cards and a turn-2 box
   on the card inside that crop, both context → ``\\boxed{B}``.

and a wording of ``ground``, ``name-first`` (:data:`NAME_FIRST_PROMPTS`): the name before the
image, whose tokens then come after it, as a crop comes after the question in MGPO's later turns.
With the image first, a small model learns where cards are but not which one a name asks for.

Coordinates are snapped to the world's lattice (multiples of 14 in the overview frame, half a
visual token). Cards sit exactly on that lattice, so the snap is lossless here (IoU 1.0 with the
card), and a small model learns 17 possible values per coordinate instead of 225: a coarse
frame is the first thing to try when a small model must learn boxes. A multiple-of-28 grid would be coarser still but
cannot express a 42-px card: its boxes would be 28 px (invalid: sides must exceed 28) or 56 px
(a crop 1.8× larger, the stripes that much finer).

Every example is plain data (:class:`Example`): the user text with ``<image>`` where each image
goes, the images as fed (already resized to their model frame with the playground budgets, so
the processor leaves them as they are), and the assistant text to learn.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from PIL import Image

from .. import geometry
from ..prompts import LETTERS, format_choices, user_message
from .skill_prompts import (ANSWER, ASK_QUESTIONS, BASIC_SKILLS, CELL, GROUND_PROMPTS, GROUP_PROMPTS,
                            NAME_FIRST_PROMPTS, READ_CHOICES, READ_OPEN, REFER_PROMPTS, SKILLS, ZOOM_QUESTIONS)
from .world import COLOURS, LATTICE, N_CARDS, PATTERNS, Budgets, Scene, make_scene, question, split_seeds

@dataclass
class Example:
    """One supervised example: a user turn (text + images) and the assistant text to learn."""

    skill: str                      # one of SKILLS
    prompt: str                     # user text; "<image>" marks where each image goes
    images: list[Image.Image]       # as fed: resized to their model frame (playground budgets)
    target: str                     # the assistant's reply to learn
    meta: dict = field(default_factory=dict)   # seed, names, boxes (frames said in the key)
    # earlier turns of the conversation, not learned: (user text, its images, the assistant's reply)
    context: tuple[tuple[str, tuple[Image.Image, ...], str], ...] = ()

    def turns(self) -> list[tuple[dict, str]]:
        """Every (user message, assistant reply) of the conversation in the engine's message
        format (``{"type": "image", "image": PIL}`` parts), the learned one last."""
        return [(user_message(text, images), reply)
                for text, images, reply in (*self.context, (self.prompt, tuple(self.images), self.target))]

    def messages(self) -> list[dict]:
        """The whole conversation as chat messages."""
        return [m for user, reply in self.turns()
                for m in (user, {"role": "assistant", "content": [{"type": "text", "text": reply}]})]


def bbox_json(box, label: str, label_first: bool = False) -> str:
    """Qwen2.5-VL's grounding reply for one box (model-frame pixels). ``label_first`` writes the
    label before ``bbox_2d`` (the parser reads either order): the name the prompt asked for then
    sits right before the coordinates, one local look-back instead of a look-up across the prompt."""
    fields = {"label": label, "bbox_2d": [int(v) for v in box]} if label_first else {"bbox_2d": [int(v) for v in box], "label": label}
    obj = json.dumps(fields)
    return f"```json\n[\n    {obj}\n]\n```"


def _orientation_choices(card) -> tuple[list[str], str]:
    """The four orientations as the task lists them (its fixed order) and the letter of ``card``'s."""
    choices = list(PATTERNS)
    return choices, LETTERS[choices.index(card.detail)]


def snap(box, frame, step: int = LATTICE):
    """A model-frame box rounded to multiples of ``step`` and kept inside ``frame``, ≥ one step wide."""
    x1, y1, x2, y2 = (int(round(v / step)) * step for v in box)
    x1, y1 = max(0, min(x1, frame[0] - step)), max(0, min(y1, frame[1] - step))
    return x1, y1, max(x1 + step, min(x2, frame[0])), max(y1 + step, min(y2, frame[1]))


def ground_examples(scene: Scene, budgets: Budgets = Budgets(), prompt: str = "locate",
                    rng: random.Random | None = None, label_first: bool = False,
                    overview: geometry.Prepared | None = None) -> list[Example]:
    """One grounding example per card of the scene, on the overview as fed (``overview``: that
    of ``scene.image``, prepared already). ``prompt``: a key of :data:`GROUND_PROMPTS`, or several
    joined by commas (one picked per card with ``rng``)."""
    overview = overview or geometry.prepare(scene.image, None, **budgets.engine())
    wordings = [w.strip() for w in prompt.split(",") if w.strip()]
    unknown = [w for w in wordings if w not in GROUND_PROMPTS]
    if unknown or not wordings:
        raise ValueError(f"unknown grounding prompt(s) {prompt!r}; choose from {', '.join(GROUND_PROMPTS)}")
    rng = rng or random.Random(scene.seed)
    out = []
    for card in scene.layout.cards:
        name = f"{card.colour} card"
        # (x1, y1, x2, y2): original pixels → the overview's model frame, snapped to the lattice
        box = snap(geometry.to_frame(card.box, overview.frame, overview.region), overview.frame)
        ask = rng.choice(ASK_QUESTIONS).format(name=name)
        template = GROUND_PROMPTS[rng.choice(wordings)].replace("{refer}", rng.choice(REFER_PROMPTS)).replace(
            "{named}", rng.choice(NAME_FIRST_PROMPTS))
        out.append(Example("ground", template.format(name=name, ask=ask), [overview.image],
                           bbox_json(box, name, label_first),
                           {"seed": scene.seed, "name": name, "box_model": list(box), "frame": list(overview.frame),
                            "box_original": list(card.box)}))
    return out


def read_examples(scene: Scene, rng: random.Random, budgets: Budgets = Budgets(), jitter: int = 0) -> list[Example]:
    """One reading example per card: its crop as turn 2 feeds it (box shifted by up to
    ``jitter`` original pixels), the open or the four-choice form at random."""
    out = []
    size = scene.image.width
    for card in scene.layout.cards:
        dx, dy = rng.randint(-jitter, jitter), rng.randint(-jitter, jitter)
        x1, y1, x2, y2 = card.box
        dx = max(-x1, min(dx, size - x2))
        dy = max(-y1, min(dy, size - y2))
        region = (x1 + dx, y1 + dy, x2 + dx, y2 + dy)
        crop = geometry.prepare(scene.image, region, **budgets.engine())
        meta = {"seed": scene.seed, "name": f"{card.colour} card", "detail": card.detail, "region": list(region)}
        if rng.random() < 0.5:
            out.append(Example("read", READ_OPEN, [crop.image], f"\\boxed{{{card.detail}}}", meta))
        else:
            choices, letter = _orientation_choices(card)
            out.append(Example("read", READ_CHOICES.format(choices=format_choices(choices)), [crop.image],
                               f"\\boxed{{{letter}}}", {**meta, "choices": choices, "answer": letter}))
    return out


def zoom_examples(scene: Scene, rng: random.Random, budgets: Budgets = Budgets(), jitter: float = 0.5) -> list[Example]:
    """One two-turn reading example per card: turn 1 an ``ask`` grounding of the card answered
    with a box (with probability ``jitter`` shifted by one lattice step, as an imperfect turn 1
    would be), turn 2 the crop of that box exactly as the engine cuts and feeds it, in MGPO's
    turn-2 template with a question of :data:`ZOOM_QUESTIONS` and the four orientations as
    choices → ``\\boxed{letter}``."""
    from ..prompts import get_prompts, render

    prompts = get_prompts("mgpo")
    overview = geometry.prepare(scene.image, None, **budgets.engine())
    out = []
    for card in scene.layout.cards:
        name = f"{card.colour} card"
        box = snap(geometry.to_frame(card.box, overview.frame, overview.region), overview.frame)
        if rng.random() < jitter:   # one lattice step off in x and/or y: ≥ 80 % of the stripes stay in the crop
            dx, dy = rng.choice([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)])
            w, h = overview.frame
            dx = max(-box[0], min(dx * LATTICE, w - box[2]))
            dy = max(-box[1], min(dy * LATTICE, h - box[3]))
            box = (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)
        region = geometry.to_region(box, overview.frame, overview.region)
        crop = geometry.prepare(scene.image, region, **budgets.engine())
        ask = rng.choice(ASK_QUESTIONS).format(name=name)
        turn1 = (GROUND_PROMPTS["ask"].format(ask=ask), (overview.image,), bbox_json(box, name))
        choices, letter = _orientation_choices(card)
        text = render(prompts, "crop", rng.choice(ZOOM_QUESTIONS), choices)
        out.append(Example("zoom", text, [crop.image], f"\\boxed{{{letter}}}",
                           {"seed": scene.seed, "name": name, "detail": card.detail, "region": list(region),
                            "box_model": list(box), "choices": choices, "answer": letter}, context=(turn1,)))
    return out


def group_box(scene: Scene, overview: geometry.Prepared):
    """The box around every card of ``scene`` in the overview's model frame, snapped outwards."""
    boxes = [geometry.to_frame(c.box, overview.frame, overview.region) for c in scene.layout.cards]
    x1, y1 = (min(b[k] for b in boxes) for k in (0, 1))
    x2, y2 = (max(b[k] for b in boxes) for k in (2, 3))
    return snap((x1, y1, x2, y2), overview.frame)


def group_example(scene: Scene, rng: random.Random, budgets: Budgets = Budgets()) -> Example:
    """Grounding a group: one box around every card (one of :data:`GROUP_PROMPTS`)."""
    overview = geometry.prepare(scene.image, None, **budgets.engine())
    box = group_box(scene, overview)
    return Example("group", rng.choice(GROUP_PROMPTS), [overview.image], bbox_json(box, "cards"),
                   {"seed": scene.seed, "box_model": list(box), "frame": list(overview.frame),
                    "region": list(geometry.to_region(box, overview.frame, overview.region))})


def zoom3_examples(scene: Scene, rng: random.Random, budgets: Budgets = Budgets()) -> list[Example]:
    """One three-turn reading example per card, MGPO with a further look as the engine runs it
    (``max_turns=3``): turn 1 (context) an ``ask`` question in MGPO's turn-1 template answered
    with the box around every card; turn 2 (context) that box's crop, as the engine cuts it, in
    the further-look template around the same question, answered with the card's box in that
    crop; turn 3 the crop of that box in MGPO's turn-2 template with a question of
    :data:`ZOOM_QUESTIONS` and the four orientations → ``\\boxed{letter}``, the only target."""
    from ..prompts import get_prompts, render

    prompts = get_prompts("mgpo")
    overview = geometry.prepare(scene.image, None, **budgets.engine())
    board = group_box(scene, overview)
    area = geometry.prepare(scene.image, geometry.to_region(board, overview.frame, overview.region), **budgets.engine())
    out = []
    for card in scene.layout.cards:
        name = f"{card.colour} card"
        box = snap(geometry.to_frame(card.box, area.frame, area.region), area.frame)
        region = geometry.to_region(box, area.frame, area.region)
        crop = geometry.prepare(scene.image, region, **budgets.engine())
        ask = rng.choice(ASK_QUESTIONS).format(name=name)
        turn1 = (GROUND_PROMPTS["ask"].format(ask=ask), (overview.image,), bbox_json(board, "cards"))
        turn2 = (render(prompts, "refine", ask), (area.image,), bbox_json(box, name))
        choices, letter = _orientation_choices(card)
        out.append(Example("zoom3", render(prompts, "crop", rng.choice(ZOOM_QUESTIONS), choices), [crop.image],
                           f"\\boxed{{{letter}}}",
                           {"seed": scene.seed, "name": name, "detail": card.detail, "region": list(region),
                            "choices": choices, "answer": letter}, context=(turn1, turn2)))
    return out


def answer_example(scene: Scene, rng: random.Random, budgets: Budgets = Budgets()) -> Example:
    """A question the overview answers (card colours or count), answered directly."""
    overview = geometry.prepare(scene.image, None, **budgets.engine())
    present = [c.colour for c in scene.layout.cards]
    absent = [c for c in sorted(COLOURS) if c not in present]
    if len(absent) >= 3 and rng.random() < 0.5:
        asked = "Which of these colours does one of the cards in the image have?"
        choices = [rng.choice(present), *rng.sample(absent, 3)]
        right = choices[0]
    else:
        n = len(present)
        asked = "How many cards are in the image?"
        lo = rng.randint(max(1, n - 3), n)
        choices = [str(k) for k in range(lo, lo + 4)]
        right = str(n)
    rng.shuffle(choices)
    letter = LETTERS[choices.index(right)]
    return Example("answer", ANSWER.format(question=asked, choices=format_choices(choices)), [overview.image],
                   f"\\boxed{{{letter}}}", {"seed": scene.seed, "question": asked, "choices": choices,
                                            "answer": letter})


def cell_examples(scene: Scene, budgets: Budgets = Budgets(), label_first: bool = False) -> list[Example]:
    """One example per card: the board cell it sits in, as "row R, column C" (1-based) — a short
    answer that needs the same look-up as grounding (find the named card, say where it is)
    without a long reply, so a small model learns the look-up first."""
    overview = geometry.prepare(scene.image, None, **budgets.engine()).image
    out = []
    for card in scene.layout.cards:
        row, col = scene.cell(card)
        name = f"{card.colour} card"
        out.append(Example("cell", CELL.format(name=name), [overview],
                           f"{name}: row {row}, column {col}" if label_first else f"row {row}, column {col}",
                           {"seed": scene.seed, "name": name}))
    return out


def scene_examples(seed: int, budgets: Budgets = Budgets(), skills: Iterable[str] = BASIC_SKILLS, simple: float = 0.3,
                   prompt: str = "locate", jitter: int = 0, n_cards: tuple[int, int] = N_CARDS,
                   label_first: bool = False) -> list[Example]:
    """Every example one scene gives: a grounding, a cell and a reading example per card and one direct
    answer. With probability ``simple`` the scene is a plain layout (no clutter) — an easier
    start for grounding."""
    skills = tuple(skills)
    unknown = [s for s in skills if s not in SKILLS]
    if unknown:
        raise ValueError(f"unknown skill(s) {', '.join(unknown)}; choose from {', '.join(SKILLS)}")
    rng = random.Random(f"skills:{seed}")
    scene = make_scene(seed, budgets=budgets, clutter=0.0 if rng.random() < simple else 1.0, n_cards=n_cards)
    out: list[Example] = []
    if "ground" in skills:
        out += ground_examples(scene, budgets, prompt, rng, label_first)
    if "read" in skills:
        out += read_examples(scene, rng, budgets, jitter)
    if "answer" in skills:
        out.append(answer_example(scene, rng, budgets))
    if "cell" in skills:
        out += cell_examples(scene, budgets, label_first)
    if "zoom" in skills:
        out += zoom_examples(scene, rng, budgets)
    if "group" in skills:
        out.append(group_example(scene, rng, budgets))
    if "zoom3" in skills:
        out += zoom3_examples(scene, rng, budgets)
    return out


def skill_examples(n_scenes: int, start: int = 0, split: str = "skills", **kw) -> Iterator[Example]:
    """Examples from ``n_scenes`` scenes of ``split`` (default: the base-skill seed range, which
    neither RL nor evaluation uses)."""
    for seed in split_seeds(split, n_scenes, start):
        yield from scene_examples(seed, **kw)


def corpus(n_scenes: int = 200, split: str = "skills") -> Iterator[str]:
    """The texts a playground model reads and writes, for learning its tokenizer's merges: the
    skill prompts and replies of ``n_scenes`` scenes, and every template of the registered prompt
    sets filled with task-like questions (the words of MGPO's turns, not their answers)."""
    from ..prompts import get_prompts, names, render
    from ..tiny import CHAT_TEMPLATE

    yield CHAT_TEMPLATE.replace("{%", " ").replace("%}", " ")
    yield "You are a helpful assistant. system user assistant"
    yield from (p.replace("<image>", "\n").format(name="red card")
                for p in (*REFER_PROMPTS, *NAME_FIRST_PROMPTS, *GROUP_PROMPTS))
    for k, ex in enumerate(skill_examples(n_scenes, split=split)):
        yield ex.prompt.replace("<image>", "\n")
        yield ex.target
        if k % 8 == 0:
            colour = ex.meta.get("name", "red card")
            task = question(colour)
            choices = list(PATTERNS)
            for name in names():
                prompts = get_prompts(name)
                for kind in ("system", "grounding", "crop", "fallback", "refine", "direct"):
                    yield render(prompts, kind, task, choices).replace("<image>", "\n")
                    yield render(prompts, kind, task, None).replace("<image>", "\n")

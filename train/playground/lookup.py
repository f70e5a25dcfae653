"""The name → card look-up on its own: stage 2's gate, measured apart from the vision tower.

On scenes with several cards, grounding "the red card" needs a look-up — find the tokens whose
colour is the named one, read where they are. Trained inside the full recipe it has not formed
on this CPU (docs/playground.md). This harness trains the language model alone on that one
skill — referring grounding of every card of a scene, Qwen's ``bbox_2d`` reply, the recipe's
prompts, positions and loss — with the overview's image features either

- ``perfect``: made from the layout, per merged token a one-hot of the card colour under it
  (or none), of its row and of its column, through a fixed random orthonormal map, as large as
  a token embedding: everything a vision tower could say, and nothing else;
- ``aligned``: as ``perfect``, but the colour said with the colour word's own input embedding,
  as a projector trained on captions would say it;
- ``clean``: the tower's own features fitted as a colour + row + column sum (least squares),
  the noise-free share of what the tower says;
- ``tower``: the base's own (frozen) vision tower on the rendered overview.

``question_first`` puts the prompt's text before the image (not MGPO's order), so the image's
tokens see the asked name: the diagnostic that tells the two-hop look-up from the match.
``image_again`` shows the image before the text and again after it, the layout of MGPO's later
turns, whose crop follows the question. ``refine`` asks in MGPO's own three-turn middle turn: turn
1 (context, never learned) the overview in MGPO's turn-1 template around the task question naming
the card, answered with the whole board's box; turn 2 that box's crop (the whole board: the
overview again) in the refine template → the named card's box. ``score_refine`` scores VAL in that
layout too, whatever the training layout: does a look-up learned in another wording carry over to
the turn a three-turn MGPO would ground the card in?

``adjacent`` replaces the JSON reply by the colour word glued to the numbers (``red112, 56, 168,
112``), so the name's own token writes the first digit: the match against the image without the
hop that brings the name to the box; ``adjacent_sep`` puts text between them to measure how far
back the name may sit.

Held-out, it scores the look-up itself: for each card of a VAL scene, the reply boxing each slot
of the board (the asked name as label) is scored by the model. ``card``: the likeliest box is one
of the scene's cards (it knows where cards are; chance cards / 16); ``lookup``: it is the named
card (chance 1 / 16, and one over the number of cards for a model that boxes a card at random). With perfect
features the question is whether the language model can learn the look-up at all, and how fast
with its width, depth, batch and learning rate; against ``tower`` it says whether the features
are the gate.

    python -m train.playground.lookup --model runs/s20/base --features perfect --cards 3 --steps 600
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mgpo.playground.world import Budgets

from .probe_features import PerfectFeatures, feed, unpatch

FEATURES = ("perfect", "aligned", "clean", "tower")


@dataclass
class LookupConfig:
    model: str                          # a base (a model folder: tokenizer, weights)
    features: str = "perfect"           # perfect | aligned | clean | tower
    cards: int = 3                      # cards per scene, each of its own colour
    overview: int = 280                 # the world's geometry (224 | 280)
    steps: int = 600
    batch: int = 16                     # examples a step (every card of a scene: its scenes whole)
    lr: float = 5e-4                    # AdamW, linear warm-up over 20 steps, then constant
    eval_every: int = 100
    eval_scenes: int = 24
    fresh: str = ""                     # "HIDDENxLAYERS": a random language model of that size instead
    seed: int = 0
    clutter: float = 0.7                # share of cluttered scenes (tower: the rest are plain)
    label_first: bool = False           # the reply names the card before its box
    adjacent: bool = False              # the reply is the colour word, then the four numbers (no JSON): the name is
                                        # the token that predicts the first digit, no hop to reach it
    adjacent_sep: str = ""              # text between that colour word and the numbers (" card: " puts it 3 tokens back)
    weight_decay: float = 0.0           # AdamW's
    question_first: float = 0.0         # share of training scenes asked text first, image after (not MGPO's
                                        # order); VAL asks image first unless it is 1 (a diagnostic)
    image_again: bool = False           # the image again after the text (as MGPO's turn-2 crop follows the
                                        # question); the box is read in either, the same frame
    refine: bool = False                # ask in MGPO's three-turn middle turn (turn 1, the board's box, as context)
    refine_repeat: bool = True          # its template repeats the question after the crop (the engine's); False:
                                        # only turn 1's question, before the crop (a wording to try)
    score_refine: bool = False          # VAL also asked in that layout (scores suffixed _refine)
    fit_scenes: int = 200               # clean: scenes the tower's additive model is fitted on

    def check(self) -> None:
        problems = []
        if self.features not in FEATURES:
            problems.append(f"features must be one of {', '.join(FEATURES)}")
        from mgpo.playground.world import COLOURS

        if not 1 <= self.cards <= len(COLOURS):
            problems.append(f"cards must be 1 to {len(COLOURS)} (one colour each)")
        if not 0 <= self.question_first <= 1:
            problems.append("question_first must be a share, 0 to 1")
        if self.batch < 1 or self.steps < 1 or self.eval_scenes < 1 or self.eval_every < 1:
            problems.append("batch, steps, eval_every and eval_scenes must be ≥ 1")
        if self.fresh and not _fresh_shape(self.fresh):
            problems.append(f"fresh must read HIDDENxLAYERS (e.g. 512x8), not {self.fresh!r}")
        if self.adjacent_sep and not self.adjacent:
            problems.append("adjacent_sep is a part of the adjacent reply: set adjacent too")
        if any(c.isdigit() for c in self.adjacent_sep):
            problems.append("adjacent_sep must not hold digits")
        if self.adjacent and self.label_first:
            problems.append("adjacent is a reply of its own: not with label_first")
        if self.weight_decay < 0:
            problems.append("weight_decay must be ≥ 0")
        if self.refine and (self.image_again or self.question_first):
            problems.append("refine is a layout of its own: not with image_again or question_first")
        if problems:
            raise ValueError("; ".join(problems))


def _fresh_shape(text: str) -> tuple[int, int] | None:
    try:
        hidden, layers = (int(v) for v in text.lower().split("x"))
    except ValueError:
        return None
    return (hidden, layers) if hidden > 0 and hidden % 8 == 0 and layers > 0 else None


def scene_items(seed: int, cfg: LookupConfig, held_out: bool = False):
    """(examples, per-token classes, (slots, cards)) for one scene of ``cfg.cards`` cards: one
    referring grounding example per card (the recipe's ``refer`` wordings); per merged overview
    token in raster order, (colour class, row, column); the overview box of every board slot a card
    can sit in, and the slot of each example's card. Perfect features never need the pixels, so the scene
    then carries a blank image of its size (the overview's frame and tokens are the same)."""
    from mgpo.playground.skill_examples import ground_examples
    from mgpo.playground.world import Scene, make_layout, make_scene

    from .vision import token_targets

    budgets = Budgets.for_overview(cfg.overview)
    rng = random.Random(f"lookup:{seed}")
    clutter = 1.0 if rng.random() < cfg.clutter else 0.0
    if cfg.features not in ("perfect", "aligned"):
        scene = make_scene(seed, budgets=budgets, clutter=clutter, n_cards=(cfg.cards, cfg.cards))
        overview = None
    else:
        layout = make_layout(seed, budgets=budgets, clutter=clutter, n_cards=(cfg.cards, cfg.cards))
        card = layout.cards[layout.target]
        blank = _blank(layout.size, cfg.overview)
        scene = Scene(blank[0], "", [], "", card.box, "", "", seed, layout)
        overview = blank[1]
    examples = ground_examples(scene, budgets, "refer", rng, cfg.label_first, overview)
    if cfg.adjacent:
        examples = [replace(ex, target=reply(cfg, ex.meta["box_model"], ex.meta["name"])) for ex in examples]
    share = float(cfg.question_first >= 1) if held_out else cfg.question_first
    if share and random.Random(f"lookup-order:{seed}").random() < share:
        # the image's tokens then see the asked name: the look-up is one hop
        examples = [replace(ex, prompt=ex.prompt.replace("<image>", "") + "<image>") for ex in examples]
    if cfg.image_again:
        examples = [replace(ex, prompt=ex.prompt + "<image>", images=list(ex.images) * 2) for ex in examples]
    if cfg.refine:
        examples = [_as_refine(ex, cfg.refine_repeat) for ex in examples]
    frame = (budgets.overview, budgets.overview)
    classes = list(zip(*token_targets(scene, frame)))          # (colour class, row, column) per token
    w, h = (examples[0].meta["box_model"][2] - examples[0].meta["box_model"][0],
            examples[0].meta["box_model"][3] - examples[0].meta["box_model"][1])
    grid = scene.layout.grid
    pitch = budgets.overview // grid
    slots = [(c * pitch, r * pitch, c * pitch + w, r * pitch + h) for r in range(grid) for c in range(grid)]
    cards = [slots.index(tuple(ex.meta["box_model"])) for ex in examples]
    return examples, classes, (slots, cards)


SHORT_REFINE = ("Based on the provided coordinates, return the sub-image:\n<image>\nOut the coordinates of the key "
                "image area relevant to the problem within this sub-image in JSON format.")


def _as_refine(ex, repeat: bool = True):
    """``ex`` as the middle turn of a three-turn MGPO conversation: turn 1, in context, the
    overview in MGPO's turn-1 template around the task question naming the card, answered with
    the whole board's box; then that box's crop — the whole board, fed as the overview was, so the
    same image and frame — in the refine template around the same question (``repeat``; else
    :data:`SHORT_REFINE`, the same words without the question after the crop), → the card's box."""
    from mgpo.playground.skill_examples import bbox_json
    from mgpo.playground.world import question
    from mgpo.prompts import get_prompts, render

    prompts = get_prompts("mgpo")
    asked = question(ex.meta["name"])
    w, h = ex.meta["frame"]
    turn1 = (render(prompts, "grounding", asked), tuple(ex.images), bbox_json((0, 0, w, h), "board"))
    return replace(ex, prompt=render(prompts, "refine", asked) if repeat else SHORT_REFINE, context=(turn1,))


@functools.lru_cache(maxsize=4)
def _blank(size: int, overview: int):
    """A blank scene of ``size`` and its overview as fed (perfect features never read pixels)."""
    from PIL import Image

    from mgpo import geometry

    image = Image.new("RGB", (size, size))
    return image, geometry.prepare(image, None, **Budgets.for_overview(overview).engine())


def tower_scenes(cfg: LookupConfig, seeds):
    """(the rendered overview as fed, per-token classes) of the scenes of ``seeds``: what
    :meth:`PerfectFeatures.fitted` fits the tower's features on."""
    tower = replace(cfg, features="tower")
    for seed in seeds:
        examples, classes, _ = scene_items(seed, tower)
        yield examples[0].images[0], classes


def load_core(cfg: LookupConfig, workdir: Path):
    """The base (or, with ``cfg.fresh``, a random model of that width and depth on the base's
    tokenizer) and its backend."""
    from mgpo.generation import QwenBackend
    from mgpo.model import load_model

    path = cfg.model
    if cfg.fresh:
        from transformers import AutoTokenizer

        from mgpo.tiny import build

        hidden, layers = _fresh_shape(cfg.fresh)  # type: ignore[misc]
        path = str(build(workdir / "fresh", seed=cfg.seed, layers=layers, hidden=hidden,
                         tokenizer=AutoTokenizer.from_pretrained(cfg.model), embed_std=1.0))
    from .runtime import cuda_available

    loaded = load_model(path, device="cuda" if cuda_available() else "cpu")
    return loaded, QwenBackend(loaded.model, loaded.processor)


def reply(cfg: LookupConfig, box, name: str) -> str:
    """The reply ``cfg`` trains for the card ``name`` at ``box``: Qwen's ``bbox_2d`` JSON (its label
    first with ``label_first``), or with ``adjacent`` the colour word glued to the coordinates
    (``red112, 56, 168, 112``: the colour's own token predicts the first digit), ``adjacent_sep``
    between them (``red card: 112, …``)."""
    from mgpo.playground.skill_examples import bbox_json

    if cfg.adjacent:
        return name.split()[0] + cfg.adjacent_sep + ", ".join(str(int(v)) for v in box)
    return bbox_json(box, name, cfg.label_first)


def candidates(examples, boxes, cfg: LookupConfig) -> list:
    """For each example (a card asked by name), one copy per box of ``boxes`` whose reply boxes
    it, the asked name as its label, in the reply format ``cfg`` trains."""
    return [[replace(ex, target=reply(cfg, box, ex.meta["name"])) for box in boxes] for ex in examples]


def score_lookup(backend, cfg: LookupConfig, scenes: list, perfect: PerfectFeatures | None) -> dict:
    """Held-out scores over ``scenes`` (:func:`scene_items`): ``lookup`` (the named card's box the
    likeliest of the board's slots), ``card`` (the likeliest is some card's) and the mean
    per-token loss of the right reply."""
    import torch

    from .skills import example_sequence, sft_loss

    right = card = total = 0
    losses = []
    with torch.no_grad():
        for examples, classes, (slots, cards) in scenes:
            asks = [c for row in candidates(examples, slots, cfg) for c in row]
            seqs = [example_sequence(backend, c) for c in asks]
            if perfect is not None:
                feed(backend.core, perfect, [(classes, ex) for ex in asks])
            _, per_row = sft_loss(backend.core, backend, seqs)
            per_row = per_row.view(len(examples), len(slots))
            n_tok = torch.tensor([sum(s.loss_mask) for s in seqs], dtype=per_row.dtype,
                                 device=per_row.device).view(per_row.shape)
            best = (-per_row * n_tok).argmax(1).tolist()          # the likeliest reply, by its summed log-prob
            right += sum(b == k for b, k in zip(best, cards))
            card += sum(b in cards for b in best)
            total += len(examples)
            losses += [float(per_row[i, k]) for i, k in enumerate(cards)]
    return {"lookup": right / max(1, total), "card": card / max(1, total), "loss": sum(losses) / max(1, len(losses)),
            "n": total}


def run(cfg: LookupConfig, out: Path | None = None) -> list[dict]:
    """Train and score; returns the log (one row per evaluation), also written to ``out``."""
    import torch

    from mgpo.playground.world import SPLITS

    from .skills import example_sequence, sft_loss

    cfg.check()
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        loaded, backend = load_core(cfg, Path(tmp))
    core = backend.core
    side = Budgets.for_overview(cfg.overview).overview // 28
    train_lo, train_hi = SPLITS["skills"]
    perfect = None                                            # tower: the model's own
    if cfg.features == "perfect":
        perfect = PerfectFeatures.random(core, side, cfg.seed)
    elif cfg.features == "aligned":
        perfect = PerfectFeatures.aligned(core, backend.tok, side, cfg.seed)
    elif cfg.features == "clean":
        fit = range(train_lo + 590_000, train_lo + 590_000 + cfg.fit_scenes)
        perfect = PerfectFeatures.fitted(backend, tower_scenes(cfg, fit), side)
    val_lo, _ = SPLITS["val"]
    val = [scene_items(val_lo + i, cfg, held_out=True) for i in range(cfg.eval_scenes)]
    refine = replace(cfg, question_first=0.0, image_again=False, refine=True)
    val_refine = [scene_items(val_lo + i, refine, held_out=True) for i in range(cfg.eval_scenes)] if cfg.score_refine else []
    seeds = iter(range(train_lo + 600_000, train_hi))        # a part of the skills range no recipe phase reads
    core.requires_grad_(True)
    core.model.visual.requires_grad_(False)
    params = [p for p in core.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 20))
    log: list[dict] = []
    sink = out.open("w") if out else None
    t0 = time.perf_counter()

    def evaluate(step: int, train_loss: float | None) -> None:
        core.eval()
        row = {"step": step, "train_loss": train_loss, **score_lookup(backend, cfg, val, perfect),
               **{f"{k}_refine": v for k, v in (score_lookup(backend, cfg, val_refine, perfect) if val_refine else {}).items()},
               "seconds": round(time.perf_counter() - t0, 1)}
        core.train()
        log.append(row)
        print(json.dumps(row), flush=True)
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()

    try:
        if sink:
            sink.write(json.dumps({"config": asdict(cfg)}) + "\n")
        evaluate(0, None)
        recent: list[float] = []
        for step in range(1, cfg.steps + 1):
            examples, classes = [], []
            while len(examples) < cfg.batch:
                exs, cls, _ = scene_items(next(seeds), cfg)
                examples += exs
                classes += [cls] * len(exs)
            examples, classes = examples[:cfg.batch], classes[:cfg.batch]
            seqs = [example_sequence(backend, ex) for ex in examples]
            if perfect is not None:
                feed(core, perfect, zip(classes, examples))
            loss, _ = sft_loss(core, backend, seqs)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            recent.append(float(loss.detach()))
            if step % cfg.eval_every == 0 or step == cfg.steps:
                evaluate(step, sum(recent) / len(recent))
                recent = []
    finally:
        unpatch(core)
        if sink:
            sink.close()
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.playground.lookup", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a base model folder (its tokenizer; its weights unless --fresh)")
    d = LookupConfig("")
    p.add_argument("--features", choices=FEATURES, default=d.features,
                   help="perfect: one-hots from the layout; aligned: the same, the colour said with the colour "
                        "word's own embedding; clean: the tower's colour + row + column least-squares sum; "
                        "tower: the base's frozen vision tower")
    p.add_argument("--cards", type=int, default=d.cards, help="cards per scene")
    p.add_argument("--overview", type=int, choices=(224, 280), default=d.overview, help="the world's geometry")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-scenes", type=int, default=d.eval_scenes, help="VAL scenes (each card asked once)")
    p.add_argument("--fresh", default=d.fresh, metavar="HIDDENxLAYERS",
                   help="train a random language model of this size instead of the base's")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--label-first", action="store_true", help="replies name the card before its box")
    p.add_argument("--adjacent", action="store_true",
                   help="a diagnostic: the reply is the colour word glued to the four numbers (red112, 56, 168, 112), "
                        "so the name is the very token that predicts the box: the look-up without its first hop")
    p.add_argument("--adjacent-sep", default=d.adjacent_sep, metavar="TEXT",
                   help="with --adjacent: text between the colour word and the numbers (' card: ' puts it 3 tokens back)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW's weight decay")
    p.add_argument("--question-first", type=float, default=d.question_first, metavar="SHARE",
                   help="a diagnostic: this share of training scenes puts the prompt's text before the image, so "
                        "the image's tokens see the asked name; VAL asks image first unless SHARE is 1")
    p.add_argument("--image-again", action="store_true",
                   help="a diagnostic: the image again after the text, as MGPO's turn-2 crop follows the question")
    p.add_argument("--refine", action="store_true",
                   help="a diagnostic: ask in MGPO's three-turn middle turn (turn 1 boxed the whole board; its crop "
                        "follows the question)")
    p.add_argument("--refine-short", action="store_true",
                   help="with --refine or --score-refine: the middle turn's text without the question after the crop")
    p.add_argument("--score-refine", action="store_true",
                   help="also score VAL in that middle turn, whatever the training layout (keys *_refine)")
    p.add_argument("--out", type=Path, default=None, help="write the log here (JSON lines)")
    a = p.parse_args(argv)
    cfg = LookupConfig(a.model, a.features, a.cards, a.overview, a.steps, a.batch, a.lr, a.eval_every,
                       a.eval_scenes, a.fresh, a.seed, label_first=a.label_first, adjacent=a.adjacent,
                       adjacent_sep=a.adjacent_sep,                       weight_decay=a.weight_decay,
                       question_first=a.question_first, image_again=a.image_again, refine=a.refine,
                       refine_repeat=not a.refine_short, score_refine=a.score_refine)
    try:
        cfg.check()
    except ValueError as e:
        p.error(str(e))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
    run(cfg, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

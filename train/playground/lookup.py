"""The name → card look-up on its own: stage 2's gate, measured apart from the vision tower.

On scenes with several cards, grounding "the red card" needs a look-up — find the tokens whose
colour is the named one, read where they are. Trained inside the full recipe it has not formed
on this CPU (docs/playground.md). This harness trains the language model alone on that one
skill — referring grounding of every card of a scene, Qwen's ``bbox_2d`` reply, the recipe's
prompts, positions and loss — with the overview's image features either

- ``perfect``: made from the layout, per merged token a one-hot of the card colour under it
  (or none), of its row and of its column, through a fixed random orthonormal map, as large as
  a token embedding: everything a vision tower could say, and nothing else;
- ``tower``: the base's own (frozen) vision tower on the rendered overview.

Held-out, it scores the look-up itself: for each card of a VAL scene, the reply boxing each of
the scene's cards (the asked name as label) is scored by the model, and the look-up is right when
the named card's reply is the likeliest (chance: one over the number of cards). With perfect
features the question is whether the language model can learn the look-up at all, and how fast
with its width, depth, batch and learning rate; against ``tower`` it says whether the features
are the gate.

    python -m train.playground.lookup --model runs/s20/base --features perfect --cards 3 --steps 600
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FEATURES = ("perfect", "tower")


@dataclass
class LookupConfig:
    model: str                          # a base (a model folder: tokenizer, weights)
    features: str = "perfect"           # perfect | tower
    cards: int = 3                      # cards per scene, each of its own colour
    overview: int = 280                 # the world's geometry (224 | 280)
    steps: int = 600
    batch: int = 16                     # examples a step (every card of a scene: its scenes whole)
    lr: float = 5e-4                    # AdamW, linear warm-up over 20 steps, then constant
    eval_every: int = 100
    eval_scenes: int = 32
    fresh: str = ""                     # "HIDDENxLAYERS": a random language model of that size instead
    seed: int = 0
    clutter: float = 0.7                # share of cluttered scenes (tower: the rest are plain)

    def check(self) -> None:
        problems = []
        if self.features not in FEATURES:
            problems.append(f"features must be one of {', '.join(FEATURES)}")
        if self.cards < 1 or self.batch < 1 or self.steps < 1 or self.eval_scenes < 1:
            problems.append("cards, batch, steps and eval_scenes must be ≥ 1")
        if self.fresh and not _fresh_shape(self.fresh):
            problems.append(f"fresh must read HIDDENxLAYERS (e.g. 512x8), not {self.fresh!r}")
        if problems:
            raise ValueError("; ".join(problems))


def _fresh_shape(text: str) -> tuple[int, int] | None:
    try:
        hidden, layers = (int(v) for v in text.lower().split("x"))
    except ValueError:
        return None
    return (hidden, layers) if hidden > 0 and hidden % 8 == 0 and layers > 0 else None


def scene_items(seed: int, cfg: LookupConfig):
    """(examples, per-token classes) for one scene of ``cfg.cards`` cards: one referring grounding
    example per card (the recipe's ``refer`` wordings) and, per merged overview token in raster
    order, (colour class, row, column). Perfect features never need the pixels, so the scene
    then carries a blank image of its size (the overview's frame and tokens are the same)."""
    from PIL import Image

    from mgpo.playground.skill_examples import ground_examples
    from mgpo.playground.world import COLOURS, Budgets, Scene, make_layout, make_scene

    budgets = Budgets.for_overview(cfg.overview)
    rng = random.Random(f"lookup:{seed}")
    clutter = 1.0 if rng.random() < cfg.clutter else 0.0
    if cfg.features == "tower":
        scene = make_scene(seed, budgets=budgets, clutter=clutter, n_cards=(cfg.cards, cfg.cards))
    else:
        layout = make_layout(seed, budgets=budgets, clutter=clutter, n_cards=(cfg.cards, cfg.cards))
        card = layout.cards[layout.target]
        scene = Scene(Image.new("RGB", (layout.size, layout.size)), "", [], "", card.box, "", "", seed, layout)
    examples = ground_examples(scene, budgets, "refer", rng)
    names = sorted(COLOURS)
    side = budgets.overview // 28
    step = scene.image.width / side
    classes = []
    for r in range(side):
        for c in range(side):
            x, y = (c + 0.5) * step, (r + 0.5) * step
            k = next((names.index(card.colour) + 1 for card in scene.layout.cards
                      if card.box[0] <= x < card.box[2] and card.box[1] <= y < card.box[3]), 0)
            classes.append((k, r, c))
    boxes = [ex.meta["box_model"] for ex in examples]
    return examples, classes, boxes


class PerfectFeatures:
    """One-hots of (colour, row, column) per token through a fixed random orthonormal map into
    the language model's width, scaled to the mean norm of its token embeddings."""

    def __init__(self, core, side: int, seed: int = 0):
        import torch

        from mgpo.playground.world import COLOURS

        hidden = core.config.text_config.hidden_size
        self.n_col, self.side = len(COLOURS) + 1, side
        dims = self.n_col + 2 * side
        if dims > hidden:
            raise ValueError(f"perfect features need {dims} dimensions; the model is {hidden} wide")
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(hidden, dims, generator=g))
        norm = core.get_input_embeddings().weight.detach().float().norm(dim=-1).mean().item()
        self.map = (q * norm / 3 ** 0.5).to(core.device, next(core.parameters()).dtype)   # three one-hots

    def __call__(self, classes) -> "torch.Tensor":
        import torch

        k = torch.tensor(classes, device=self.map.device)           # (tokens, 3)
        onehot = torch.zeros(len(classes), self.n_col + 2 * self.side, device=self.map.device, dtype=self.map.dtype)
        onehot[torch.arange(len(classes)), k[:, 0]] = 1
        onehot[torch.arange(len(classes)), self.n_col + k[:, 1]] = 1
        onehot[torch.arange(len(classes)), self.n_col + self.side + k[:, 2]] = 1
        return onehot @ self.map.T


def _patched_forward(core, features):
    """Make the model take ``features`` (tokens, hidden), in order, for its images' features."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = core.model

    def get_image_features(pixel_values, image_grid_thw=None, **kw):
        sizes = (image_grid_thw.prod(-1) // model.visual.spatial_merge_size ** 2).tolist()
        return BaseModelOutputWithPooling(pooler_output=features.split(sizes))

    model.get_image_features = get_image_features


def _unpatch(core) -> None:
    core.model.__dict__.pop("get_image_features", None)


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
    loaded = load_model(path, device="cpu")
    return loaded, QwenBackend(loaded.model, loaded.processor)


def candidates(examples, boxes) -> list:
    """For each example (a card asked by name), one copy per card of the scene whose reply boxes
    that card, the asked name as its label: row i, column i is the right reply."""
    from mgpo.playground.skill_examples import bbox_json

    return [[type(ex)(ex.skill, ex.prompt, ex.images, bbox_json(box, ex.meta["name"]), ex.meta) for box in boxes]
            for ex in examples]


def score_lookup(backend, cfg: LookupConfig, scenes: list, perfect: PerfectFeatures | None) -> dict:
    """Held-out look-up accuracy (the named card's reply the likeliest of the scene's cards') and
    the mean per-token loss of the right reply."""
    import torch

    from .skills import example_sequence, sft_loss

    right = total = 0
    losses = []
    with torch.no_grad():
        for examples, classes, boxes in scenes:
            seqs = [example_sequence(backend, c) for row in candidates(examples, boxes) for c in row]
            if perfect is not None:
                _patched_forward(backend.core, perfect([c for _ in seqs for c in classes]))
            _, per_row = sft_loss(backend.core, backend, seqs)
            n_tok = [sum(s.loss_mask) for s in seqs]
            score = (-per_row * torch.tensor(n_tok, dtype=per_row.dtype)).view(len(examples), len(boxes))
            right += int((score.argmax(1) == torch.arange(len(examples))).sum())
            total += len(examples)
            losses += [float(per_row.view(len(examples), len(boxes))[i, i]) for i in range(len(examples))]
    return {"lookup": right / max(1, total), "loss": sum(losses) / max(1, len(losses)), "n": total}


def run(cfg: LookupConfig, out: Path | None = None) -> list[dict]:
    """Train and score; returns the log (one row per evaluation), also written to ``out``."""
    import torch

    from mgpo.playground.world import SPLITS, Budgets

    from .skills import example_sequence, sft_loss

    cfg.check()
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        loaded, backend = load_core(cfg, Path(tmp))
    core = backend.core
    side = Budgets.for_overview(cfg.overview).overview // 28
    perfect = PerfectFeatures(core, side, cfg.seed) if cfg.features == "perfect" else None
    val_lo, _ = SPLITS["val"]
    val = [scene_items(val_lo + i, cfg) for i in range(cfg.eval_scenes)]
    train_lo, train_hi = SPLITS["skills"]
    seeds = iter(range(train_lo + 600_000, train_hi))        # a part of the skills range no recipe phase reads
    core.requires_grad_(True)
    core.model.visual.requires_grad_(False)
    params = [p for p in core.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / 20))
    log: list[dict] = []
    sink = out.open("w") if out else None
    t0 = time.perf_counter()

    def evaluate(step: int, train_loss: float | None) -> None:
        core.eval()
        row = {"step": step, "train_loss": train_loss, **score_lookup(backend, cfg, val, perfect),
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
                _patched_forward(core, perfect([c for cls in classes for c in cls]))
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
        _unpatch(core)
        if sink:
            sink.close()
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.playground.lookup", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a base model folder (its tokenizer; its weights unless --fresh)")
    d = LookupConfig("")
    p.add_argument("--features", choices=FEATURES, default=d.features,
                   help="perfect: one-hots from the layout; tower: the base's frozen vision tower")
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
    p.add_argument("--out", type=Path, default=None, help="write the log here (JSON lines)")
    a = p.parse_args(argv)
    cfg = LookupConfig(a.model, a.features, a.cards, a.overview, a.steps, a.batch, a.lr, a.eval_every,
                       a.eval_scenes, a.fresh, a.seed)
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

"""The playground recipe: a small Qwen2.5-VL, base skills by supervised training, MGPO RL, eval.

    python -m train.playground --out runs/playground [--size cpu|gpu|ci] [--rl-steps N] ...

Stages (each writes into ``--out``; ``--stages`` picks some):

1. **model** — a random-weight Qwen2.5-VL at a small size (``mgpo.tiny.build``; CPU size: text
   hidden 256 × 4 layers, vision hidden 128 × depth 4, the processor's min/max pixels = the
   playground budgets) with a byte-level BPE tokenizer learned from the playground's texts
   (:func:`mgpo.playground.skills.corpus`: ~4× fewer tokens than bytes) and token embeddings drawn
   with std ``embed_std`` → ``OUT/random``.
2. **skills** — what a pretrained VLM brings, taught on the "skills" seed range, never the task's
   question → box: (0) ``vision_steps`` of vision-tower pretraining through a linear probe thrown
   away afterwards (which card colour is under each overview token, and the token's row and
   column, again on the card tokens alone; the stripes' orientation under each crop token), then with
   ``vision_whiten`` the merger's output reduced to the probe's directions, whitened
   (:func:`whiten_merger`), and scaled to a token embedding's norm; scenes are rendered in
   ``workers`` processes with a GPU (:func:`scene_map`); (1) supervised text
   skills on a stream of fresh scenes — grounding cards *by name* (``bbox_2d`` JSON on the
   overview), the board cell a named card sits in, reading a card's close-up
   (``\\boxed{orientation}`` / ``\\boxed{letter}``), reading it in MGPO's own turn 2 after a
   grounding turn about another question (``zoom``), direct answers to questions the overview
   answers (colours present, card count), in the phases of ``curriculum`` (each its own skills and
   learning rate, e.g. the board cell first, then grounding, then zoom, earlier skills kept).
   Each example's tokens come from the engine's own assembly (:func:`example_prompts`:
   ``QwenBackend.start`` on the first user turn, earlier replies and ``QwenBackend.append`` for
   later turns, then the target tokens + ``<|im_end|>`` with ``policy=1``) and the loss is −mean log π(target token)
   from the trainer's forward; full fine-tune of the language model, AdamW → ``OUT/base``
   (a normal checkpoint, rewritten at every held-out evaluation).
3. **rl** — MGPO with the project's trainer (:class:`train.loop.Trainer`) on scenes from the
   "train" seed range written as PNG + JSONL (``OUT/rl_data``), the paper's prompts, the
   binary accuracy reward only, the playground pixel budgets → ``OUT/rl`` (``metrics.jsonl``
   with the rollouts' IoU against the hidden box added for analysis, ``curves.png``,
   ``adapter/``, ``snapshots/step-NNNN`` early/middle/late). LoRA, because that is what the
   trainer trains (its reference policy for the KL is the adapter disabled).
4. **eval** — the eval harness (:func:`mgpo.eval.runner.evaluate`, the same code as ``python -m
   mgpo.eval --benchmark playground``) on held-out TEST seeds, before RL (``OUT/base``) and
   after (``OUT/base`` + ``OUT/rl/adapter``): direct and MGPO accuracy, valid-box ratio, mean IoU
   with the hidden box, crop-only accuracy → ``OUT/eval/{before,after}-{direct,mgpo}`` and
   ``OUT/summary.json``.
5. **ship** — the release folder (:mod:`mgpo.playground.release`) the app's Playground tab, the
   CLI and the evaluator load: ``model/``, ``adapters/``, ``checkpoints.json``, curves, summary
   and a model card → ``--release`` (default ``OUT/release``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mgpo.playground.world import N_CARDS

# the skills seed range: the text skills' phases read from 0 (PHASE_SPACING apart), the vision probe from VISION_START
VISION_START = 500_000
PHASE_SPACING = 100_000

SIZES: dict[str, dict] = {
    # the CPU recipe (2 cores): one card per scene; the vision probe, then the board cell of a named
    # card alone at a high learning rate (0.38 held-out after 600 steps), grounding joining at a
    # quarter of the rate (900 steps: valid 0.94 / hit 0.38), zoom joining (300 steps: hit 0.56,
    # zoom 0.41), zoom with grounding at 2e-3 (150 steps: zoom 0.84), then grounding on cluttered
    # scenes (30 % clutter-free) with the ask questions in the task question's shape, 300 steps at
    # 2e-3, 400 and 600 at 1e-3, and direct answers joining for the last 150 at 5e-4: grounding
    # under the task's own turn 1 (val) 0.41 -> 0.66 -> 0.81 hits; MGPO on 200 test scenes 0.72 ->
    # 0.77 over those two phases, 0.78 after 1000 more steps at 5e-4 / 3e-4, then 0.835, 0.85 and
    # 0.965 after three rounds at 3e-4 / 2e-4 that train the vision tower too (":vision"), before
    # any RL. RL: 32 steps of 16 prompts at temperature 1.0 (from the 0.965 base -> 0.99 held-out,
    # from the 0.85 one -> 0.885; from weaker ones no rise). The shipped base was built as
    # continuations (README "Playground"): its first four phases drew the wordings
    # "ask,locate,where" and the first eight ASK_QUESTIONS, and its continuations re-read scenes
    # from index 0 until the fifth.
    "cpu": dict(hidden=256, layers=4, vision_hidden=128, vision_depth=4, vision_steps=60,
                curriculum="cell:600:2e-3 cell,ground:900:5e-4 cell,ground,zoom:300:1e-3 ground,zoom:150:2e-3 "
                           "ground,zoom:300:2e-3:0.3 ground,zoom:400:1e-3:0.3 ground,zoom:600:1e-3:0.3 "
                           "ground,zoom,answer:150:5e-4:0.3 ground,zoom:850:5e-4:0.3 ground,zoom,answer:150:3e-4:0.3 "
                           "ground,zoom:300:3e-4:0.3:vision ground,zoom,answer:100:2e-4:0.3:vision "
                           "ground,zoom:400:3e-4:0.3:vision ground,zoom,answer:100:2e-4:0.3:vision "
                           "ground,zoom:400:3e-4:0.3:vision ground,zoom,answer:100:2e-4:0.3:vision",
                skill_batch=16,
                skill_prompt="ask,ask,ask,locate", skill_simple=1.0, skill_system="mgpo", skill_eval_every=300,
                skill_eval_scenes=32, train_vision=False, vision_whiten=True, rl_scenes=512, rl_steps=32,
                prompts_per_step=16, group_size=8, rl_lr=1e-3, rl_temperature=1.0, lora_r=32, eval_scenes=200),
    # one H200 (not measured: no GPU session yet)
    "gpu": dict(hidden=512, layers=8, vision_hidden=256, vision_depth=6, vision_steps=300, vision_batch=64,
                curriculum="cell:1500:1e-3 cell,ground:2500:5e-4 cell,ground,zoom,answer:2000:5e-4", skill_batch=64,
                skill_prompt="ask,locate,where",
                skill_simple=0.5, skill_system="mgpo", skill_eval_every=1000, skill_eval_scenes=25,
                train_vision=False, vision_whiten=True, rl_scenes=4000, rl_steps=150, prompts_per_step=32,
                group_size=8, rl_lr=5e-4, eval_scenes=200),
    # every stage end to end in about a minute (CI): checks the mechanics, not the learning
    "ci": dict(hidden=64, layers=2, vision_hidden=32, vision_depth=2, vocab_size=600, corpus_scenes=8,
               vision_steps=3, vision_batch=4, curriculum="cell,zoom:3:2e-3 cell,ground,zoom,answer:3:1e-3",
               skill_batch=4, skill_eval_every=6, skill_eval_scenes=1, train_vision=True, vision_whiten=True,
               rl_scenes=8, rl_steps=4, prompts_per_step=2, group_size=2, lora_r=8, max_new_tokens=48,
               eval_scenes=2, stages="model,skills,rl,eval,ship"),
}


@dataclass
class RecipeConfig:
    out: str = "runs/playground"
    size: str = "cpu"
    seed: int = 0
    # model (mgpo.tiny.build shapes; 4 attention heads)
    hidden: int = 256
    layers: int = 4
    vision_hidden: int = 128
    vision_depth: int = 4
    embed_std: float = 1.0            # token-embedding init (0: the config's 0.02; see build_model)
    vocab_size: int = 1024            # byte-level BPE learned from the playground's texts (mgpo.playground.skills.corpus)
    corpus_scenes: int = 40
    # base skills, stage 0: the vision tower (a linear probe's targets; see pretrain_vision)
    vision_steps: int = 0
    vision_batch: int = 16
    vision_lr: float = 2e-3
    train_vision: bool = False        # the text skills also train the vision tower (else it stays as stage 0 left it)
    vision_whiten: bool = False       # after the probe, keep only its directions, whitened (see whiten_merger)
    # base skills (supervised)
    skill_steps: int = 60             # optimizer steps (without a curriculum)
    skill_batch: int = 16             # examples per step
    skill_lr: float = 2e-3
    skill_prompt: str = "locate,where"   # grounding wordings (mgpo.playground.skills.GROUND_PROMPTS), one per example
    skill_system: str = "mgpo,default"   # system prompts of the skill examples, one per example: mgpo (the paper's) | default
    skill_simple: float = 0.3         # share of clutter-free skill scenes
    skill_buffer: int = 8             # scenes shuffled together in the example stream
    skill_eval_every: int = 0         # held-out skill scores every N steps (0: at the end only if > 0 steps)
    skill_eval_scenes: int = 12
    skills: str = "ground,read,answer,cell"   # mgpo.playground.skills.SKILLS in the mix (without a curriculum)
    # phases "SKILLS:STEPS:LR[:SIMPLE][:vision]" separated by spaces, e.g. "cell:600:2e-3
    # cell,ground:900:5e-4 ground:300:3e-4:0.3:vision": each phase trains its skills (earlier ones
    # kept by naming them again) with its own learning rate, share of clutter-free scenes (else
    # skill_simple) and, with ":vision", the vision tower too; "" = one phase of skills / skill_steps / skill_lr
    curriculum: str = ""
    label_first: bool = False         # grounding/cell replies name the card first (mgpo.playground.skills.bbox_json)
    min_cards: int = N_CARDS[0]       # cards per scene (the world's default)
    max_cards: int = N_CARDS[1]
    skills_from: str = ""             # continue the skills stage from this checkpoint ("" = OUT/random)
    skill_start: int = 0              # first scene index in the skills seed range (a continuation reads fresh scenes)
    # RL (train.loop)
    rl_scenes: int = 64               # scenes of the "train" split
    rl_steps: int = 12
    prompts_per_step: int = 4
    group_size: int = 8
    rl_lr: float = 1e-3
    lora_r: int = 64
    kl_coef: float = 0.0              # the small model's base is our own SFT; no KL anchor needed
    max_new_tokens: int = 96          # per turn: a bbox_2d JSON block is ≈ 80 byte tokens
    rl_temperature: float = 1.0       # rollout temperature (the paper's 1.0)
    entropy_coef: float = 0.0         # with all-equal rewards the bonus alone moves the policy (observed)
    # eval (mgpo.eval on held-out test seeds)
    eval_scenes: int = 16
    eval_seed: int = 0                # first test-scene index
    workers: int = -1                 # processes rendering scenes ahead of training (-1: CPUs - 1 with a GPU, else 0)
    stages: str = "model,skills,rl,eval"
    release: str = ""                 # the ship stage's folder ("" = OUT/release)

    @classmethod
    def for_size(cls, size: str, **overrides) -> "RecipeConfig":
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
        return cls(size=size, **{**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}})

    def check(self) -> "RecipeConfig":
        from mgpo.playground.skills import GROUND_PROMPTS, SKILLS

        problems = []
        for name in ("hidden", "layers", "vision_hidden", "vision_depth", "skill_batch", "rl_scenes",
                     "prompts_per_step", "group_size", "lora_r", "max_new_tokens", "eval_scenes"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.hidden % 8:
            problems.append("hidden must be a multiple of 8 (4 heads with an even M-RoPE split)")
        for name in ("skill_steps", "rl_steps", "skill_eval_every", "skill_start"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be ≥ 0")
        if self.skill_start >= VISION_START:
            problems.append(f"skill_start must be below {VISION_START} (the vision probe reads the skills range from there)")
        if not set(w.strip() for w in self.skill_prompt.split(",")) <= set(GROUND_PROMPTS):
            problems.append(f"skill_prompt must be one or more of {', '.join(GROUND_PROMPTS)} (comma-separated)")
        if not set(w.strip() for w in self.skill_system.split(",")) <= {"mgpo", "default"}:
            problems.append("skill_system must be mgpo, default or both (comma-separated)")
        try:
            phases = self.phases()
        except ValueError as e:
            problems.append(str(e))
            phases = []
        bad = sorted({n for ph in phases for n in ph.skills if n not in SKILLS})
        if bad:
            problems.append(f"unknown skill(s) {', '.join(bad)}; choose from {', '.join(SKILLS)}")
        if any(ph.steps < 0 or ph.lr <= 0 or not ph.skills for ph in phases):
            problems.append("every curriculum phase needs skills, steps ≥ 0 and a learning rate > 0")
        if not all(0.0 <= v <= 1.0 for v in [self.skill_simple, *(ph.simple for ph in phases if ph.simple is not None)]):
            problems.append("the share of clutter-free scenes (skill_simple, a phase's SIMPLE) must be within [0, 1]")
        unknown = [s for s in self.stage_list() if s not in STAGES]
        if unknown:
            problems.append(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def phases(self) -> list["Phase"]:
        """The skills stage's phases: the curriculum, or one phase of skills / skill_steps / skill_lr."""
        if not self.curriculum.strip():
            return [Phase(_names(self.skills), self.skill_steps, self.skill_lr)]
        out = []
        for part in self.curriculum.split():
            try:
                names, steps, lr, *rest = part.split(":")
                vision = rest[-1:] == ["vision"]
                simple = rest[:-1] if vision else rest
                if len(simple) > 1:
                    raise ValueError
                out.append(Phase(_names(names), int(steps), float(lr), float(simple[0]) if simple else None, vision))
            except ValueError:
                raise ValueError(f"curriculum phase {part!r} is not SKILLS:STEPS:LR[:SIMPLE][:vision] (e.g. "
                                 "cell,ground:900:5e-4, ground:300:2e-3:0.3 for 30 % clutter-free scenes, "
                                 "ground:300:3e-4:0.3:vision to train the vision tower too)") from None
        return out

    def skill_list(self) -> tuple[str, ...]:
        """Every skill the stage trains, in the order they first appear."""
        return tuple(dict.fromkeys(name for ph in self.phases() for name in ph.skills))

    def stage_list(self) -> list[str]:
        return [s.strip() for s in self.stages.split(",") if s.strip()]


STAGES = ("model", "skills", "rl", "eval", "ship")


@dataclass(frozen=True)
class Phase:
    """One phase of the skills stage."""

    skills: tuple[str, ...]
    steps: int
    lr: float
    simple: float | None = None   # this phase's share of clutter-free scenes (None: cfg.skill_simple)
    vision: bool = False          # this phase trains the vision tower too, even where the run keeps it frozen


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _log(msg: str) -> None:
    print(f"[playground] {msg}", file=sys.stderr, flush=True)


def data_workers(cfg: RecipeConfig) -> int:
    """Scene-rendering processes: ``cfg.workers``, or with -1 all CPUs but one when a GPU trains
    (a 2048² scene takes ~0.08 s of one CPU, so a GPU step of 64 examples waits ~0.5 s on one
    process) and none on a CPU-only machine (there the workers would take the training's cores)."""
    import os

    if cfg.workers >= 0:
        return cfg.workers
    return max(0, (os.cpu_count() or 1) - 1) if _cuda() else 0


def scene_map(fn, seeds, workers: int = 0):
    """``fn(seed)`` for each seed of the (possibly endless) iterable, in order. With ``workers`` > 0
    that many processes compute ahead, at most ``4 × workers`` results waiting (bounded memory);
    ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one). The
    results are the same as without workers."""
    if workers <= 0:
        yield from map(fn, seeds)
        return
    import collections
    import multiprocessing

    it = iter(seeds)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending = collections.deque(pool.apply_async(fn, (seed,)) for seed in itertools.islice(it, 4 * workers))
        while pending:
            result = pending.popleft().get()
            for seed in itertools.islice(it, 1):
                pending.append(pool.apply_async(fn, (seed,)))
            yield result


def _cycle(lo: int, hi: int, first: int):
    """Seeds first, first + 1, … wrapping from hi - 1 back to lo."""
    seed = first
    while True:
        yield seed
        seed = lo if seed + 1 >= hi else seed + 1


# ----- stage 1: the model --------------------------------------------------------------------------

def build_model(cfg: RecipeConfig, out: Path) -> Path:
    """A random small Qwen2.5-VL checkpoint whose processor uses the playground budgets."""
    from mgpo.playground.skills import corpus
    from mgpo.playground.world import Budgets
    from mgpo.tiny import build, build_tokenizer

    b = Budgets().engine()
    tok = build_tokenizer(corpus(cfg.corpus_scenes), cfg.vocab_size)
    # embeddings with std embed_std: at the config's 0.02 (norm ≈ 0.3) a token's own identity drowned
    # under the first layer's output (norm ≈ 30) and the model never learned to copy from the prompt
    return build(out, seed=cfg.seed, layers=cfg.layers, hidden=cfg.hidden, vision_hidden=cfg.vision_hidden,
                 vision_depth=cfg.vision_depth, min_pixels=b["min_pixels"], max_pixels=b["max_pixels"], tokenizer=tok,
                 embed_std=cfg.embed_std or None)


# ----- stage 2: base skills ------------------------------------------------------------------------

@dataclass
class Sequence:
    """One example as the trainer's forward reads it (the fields :func:`train.logprobs.collate` uses)."""

    token_ids: list[int]
    loss_mask: list[int]             # 1 on the target tokens (and the closing <|im_end|>)
    logprobs: list[float]
    positions: list[tuple[int, int, int]]   # M-RoPE (t, h, w) per token
    images: list
    sample: int = 0


def example_prompts(backend, examples, systems):
    """Conversations ready for each example's learned reply: its first user turn as
    ``QwenBackend.start`` renders it (after ``systems[i]``, None for the template's default),
    then every earlier turn of its context — the reply's tokens (not learned) and the next user
    turn as the engine appends it."""
    from mgpo.rows import Conversations

    rows = []
    for example, system in zip(examples, systems):
        turns = example.turns()
        first = [turns[0][0]] if system is None else [
            {"role": "system", "content": [{"type": "text", "text": system}]}, turns[0][0]]
        convs = backend.start([first])
        for (_, reply), (user, _) in zip(turns, turns[1:]):
            convs.rows[0].add_tokens(backend.tok(reply, add_special_tokens=False)["input_ids"])
            backend.append(convs, 0, user)
        rows.append(convs.rows[0])
    return Conversations(rows)


def example_sequence(backend, example, system: str | None = None, sample: int = 0) -> Sequence:
    """Tokens of a skill example through the engine's assembly (:func:`example_prompts`), then
    the target's tokens and ``<|im_end|>`` with policy 1 — exactly what a sampled reply would be
    in a rollout."""
    row = example_prompts(backend, [example], [system]).rows[0]
    ids = backend.tok(example.target, add_special_tokens=False)["input_ids"]
    row.add_tokens(list(ids) + [backend.im_end_id], policy=1)
    return Sequence(row.tokens, row.mask, row.logprobs, row.positions, row.images, sample)


def skill_system_prompt(kind: str) -> str | None:
    """The system prompt skill examples carry: the paper's (with the choices' answer format), or
    None for the chat template's default."""
    if kind == "default":
        return None
    from mgpo.prompts import get_prompts, render

    return render(get_prompts("mgpo"), "system", "", ["a", "b", "c", "d"])


def sft_loss(core, backend, seqs: list[Sequence]):
    """−mean log π(target token) over the batch's policy tokens (the trainer's forward)."""
    from .logprobs import collate, token_logprobs

    batch = collate(seqs, backend.pad_id, core.config.image_token_id, backend.device, backend.dtype)
    logp, _ = token_logprobs(core, batch, 1.0, with_entropy=False)
    mask = batch.loss_mask.float()
    loss = -(logp * mask).sum() / mask.sum().clamp(min=1.0)
    per_row = (-(logp * mask).sum(1) / mask.sum(1).clamp(min=1.0)).detach()   # (B,) mean token loss per example
    return loss, per_row


def skill_stream(cfg: RecipeConfig, split: str = "skills", start: int = 0, skills: tuple[str, ...] | None = None,
                 simple: float | None = None):
    """An endless stream of skill examples from consecutive scenes of ``split``, shuffled within a
    buffer of ``cfg.skill_buffer`` scenes so a batch mixes scenes and skills. Each example is
    ``(example, system)`` with the system prompt drawn per example (``cfg.skill_system``);
    ``simple``: the share of clutter-free scenes (default ``cfg.skill_simple``)."""
    from mgpo.playground.skills import scene_examples
    from mgpo.playground.world import SPLITS, Budgets

    rng = random.Random(f"{cfg.seed}:{split}:{start}")
    systems = [skill_system_prompt(k.strip()) for k in cfg.skill_system.split(",") if k.strip()]
    lo, hi = SPLITS[split]
    make = functools.partial(scene_examples, budgets=Budgets(), skills=skills or cfg.skill_list(),
                             prompt=cfg.skill_prompt, simple=cfg.skill_simple if simple is None else simple,
                             n_cards=(cfg.min_cards, cfg.max_cards),
                             label_first=cfg.label_first)
    scenes = scene_map(make, _cycle(lo, hi, lo + start), data_workers(cfg))
    buffer: list = []
    while True:
        while len(buffer) < cfg.skill_buffer * 10:
            buffer += next(scenes)
        rng.shuffle(buffer)
        for _ in range(len(buffer) // 2):
            yield buffer.pop(), rng.choice(systems)


def skill_eval(backend, cfg: RecipeConfig, n_scenes: int = 12) -> dict:
    """Greedy base-skill scores on held-out VAL scenes: grounding (valid JSON box, mean IoU with
    the card, share with IoU ≥ 0.5), reading and direct-answer accuracy — and, for analysis
    only, the same grounding scores under the task's own turn 1 (``task_*``: MGPO's grounding
    prompt around the task question, which the skills never train with a box)."""
    import dataclasses

    import torch

    from mgpo.eval.scoring import iou
    from mgpo.parsing import find_bbox
    from mgpo.playground.skills import ground_examples, scene_examples
    from mgpo.playground.world import Budgets, make_scene, split_seeds
    from mgpo.prompts import get_prompts, render
    from mgpo.rows import Sampling

    system = skill_system_prompt(cfg.skill_system.split(",")[0].strip())
    seeds = split_seeds("val", n_scenes)
    examples = [ex for seed in seeds for ex in scene_examples(
        seed, Budgets(), skills=cfg.skill_list(), prompt=cfg.skill_prompt, simple=0.0,
        n_cards=(cfg.min_cards, cfg.max_cards), label_first=cfg.label_first)]
    if "ground" in cfg.skill_list():
        for seed in seeds:
            scene = make_scene(seed, budgets=Budgets(), n_cards=(cfg.min_cards, cfg.max_cards))
            target = next(e for e in ground_examples(scene, Budgets()) if e.meta["box_original"] == list(scene.box))
            examples.append(dataclasses.replace(target, skill="task",
                                                prompt=render(get_prompts("mgpo"), "grounding", scene.question)))
    scores: dict[str, list[float]] = {}
    was_training = backend.core.training
    backend.core.eval()
    try:
        for k in range(0, len(examples), 16):
            chunk = examples[k:k + 16]
            with torch.no_grad():
                convs = example_prompts(backend, chunk, [system] * len(chunk))
                gen = backend.generate(convs, list(range(len(chunk))), Sampling(max_new_tokens=cfg.max_new_tokens))
                try:
                    while True:
                        next(gen)
                except StopIteration as stop:
                    outs = stop.value
            for i, ex in enumerate(chunk):
                text = outs[i].text
                if ex.skill in ("ground", "task"):
                    m = find_bbox(text)
                    v = iou(m.box, ex.meta["box_model"]) if m else 0.0
                    scores.setdefault(f"{ex.skill}_valid", []).append(float(m is not None))
                    scores.setdefault(f"{ex.skill}_iou", []).append(v)
                    scores.setdefault(f"{ex.skill}_hit", []).append(float(v >= 0.5))
                else:
                    scores.setdefault(ex.skill, []).append(float(text.strip() == ex.target))
    finally:
        backend.core.train(was_training)
    return {k: sum(v) / len(v) for k, v in sorted(scores.items())}


def phase_start(cfg: RecipeConfig, index: int) -> int:
    """The first scene index phase ``index`` reads: each phase its own part of the skills seed range,
    from ``skill_start`` on, ``PHASE_SPACING`` apart and below the vision probe's ``VISION_START``;
    past it the parts wrap round a quarter spacing further on (a ``cpu`` phase reads under 10 000
    scenes, so its wrapped parts stay apart)."""
    n = cfg.skill_start + index * PHASE_SPACING
    return n % VISION_START + PHASE_SPACING // 4 * (n // VISION_START % 4)


def train_skills(loaded, cfg: RecipeConfig, log_path: Path | None = None, save_to: Path | None = None) -> list[dict]:
    """Full fine-tune on streams of skill examples, phase by phase (:meth:`RecipeConfig.phases`:
    each its own skills, steps and learning rate, a fresh AdamW with warm-up and cosine decay);
    returns the per-step log (loss per skill and, every ``cfg.skill_eval_every`` steps and at the
    end of each phase, held-out scores of every skill of the curriculum). ``save_to``: also
    written there at every evaluation, so a long run can be stopped and still leave a model."""
    import torch

    from mgpo.generation import QwenBackend

    backend = QwenBackend(loaded.model, loaded.processor)
    core = backend.core
    torch.manual_seed(cfg.seed)
    core.train()
    phases = cfg.phases()
    total = sum(ph.steps for ph in phases)
    history: list[dict] = []
    t0 = time.perf_counter()
    log = log_path.open("w") if log_path else None
    step = 0
    try:
        for index, phase in enumerate(phases):
            stream = skill_stream(cfg, start=phase_start(cfg, index), skills=phase.skills, simple=phase.simple)
            core.requires_grad_(True)
            core.model.visual.requires_grad_(trains_vision(cfg, phase))
            params = [p for p in core.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.0)
            warm = max(1, min(100, phase.steps // 10))

            def lr_at(k: int, warm=warm, steps=phase.steps) -> float:   # linear warm-up, then cosine down to 10 %
                if k < warm:
                    return (k + 1) / warm
                t = (k - warm) / max(1, steps - warm)
                return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, t)))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
            for k in range(1, phase.steps + 1):
                step += 1
                batch = [next(stream) for _ in range(cfg.skill_batch)]
                seqs = [example_sequence(backend, ex, system) for ex, system in batch]
                loss, per_row = sft_loss(core, backend, seqs)
                loss.backward()
                grad = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                by_skill: dict[str, list[float]] = {}
                for (ex, _), v in zip(batch, per_row.tolist()):
                    by_skill.setdefault(ex.skill, []).append(v)
                row = {"step": step, "phase": index + 1, "loss": float(loss.detach()), "grad_norm": grad,
                       "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0,
                       "skill_loss": {name: sum(v) / len(v) for name, v in sorted(by_skill.items())}}
                if cfg.skill_eval_every and (step % cfg.skill_eval_every == 0 or k == phase.steps):
                    row["eval"] = skill_eval(backend, cfg, cfg.skill_eval_scenes)
                    _log(f"skills step {step} (phase {index + 1}): held-out " +
                         ", ".join(f"{name} {v:.2f}" for name, v in row["eval"].items()))
                    if save_to is not None:
                        core.eval()
                        save_checkpoint(loaded, save_to, _card(cfg, history + [row]))
                        core.train()
                history.append(row)
                if log:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                if step == 1 or step % 25 == 0 or k == phase.steps:
                    parts = ", ".join(f"{name} {v:.3f}" for name, v in row["skill_loss"].items())
                    _log(f"skills step {step}/{total} (phase {index + 1}/{len(phases)}): loss {row['loss']:.3f} "
                         f"({parts}; {row['seconds']:.0f}s)")
            stream.close()
    finally:
        if log:
            log.close()
    core.eval()
    core.requires_grad_(False)
    return history


def token_targets(scene, frame: tuple[int, int]) -> tuple[list[int], list[int], list[int]]:
    """Per merged visual token of the overview (raster order): the colour class of the card under
    its centre (0 = none, 1.. = :data:`COLOURS` order), its row and its column."""
    from mgpo.playground.world import COLOURS

    names = sorted(COLOURS)
    w, h = frame
    sx, sy = scene.image.width / w, scene.image.height / h
    colour, rows, cols = [], [], []
    for r in range(h // 28):
        for c in range(w // 28):
            x, y = (c * 28 + 14) * sx, (r * 28 + 14) * sy
            k = 0
            for card in scene.layout.cards:
                x1, y1, x2, y2 = card.box
                if x1 <= x < x2 and y1 <= y < y2:
                    k = names.index(card.colour) + 1
            colour.append(k)
            rows.append(r)
            cols.append(c)
    return colour, rows, cols


def detail_targets(card, region, frame: tuple[int, int]) -> list[int]:
    """Per merged visual token of a crop of ``region`` fed at ``frame``: 1 + the index of the
    card's stripe orientation in :data:`PATTERNS` where the token overlaps the stripes, else 0."""
    from mgpo.playground.world import PATTERNS

    gx1, gy1, gx2, gy2 = card.stripes
    sx, sy = frame[0] / (region[2] - region[0]), frame[1] / (region[3] - region[1])
    g = ((gx1 - region[0]) * sx, (gy1 - region[1]) * sy, (gx2 - region[0]) * sx, (gy2 - region[1]) * sy)
    k = PATTERNS.index(card.detail) + 1
    out = []
    for r in range(frame[1] // 28):
        for c in range(frame[0] // 28):
            hit = c * 28 < g[2] and g[0] < (c + 1) * 28 and r * 28 < g[3] and g[1] < (r + 1) * 28
            out.append(k if hit else 0)
    return out


def probe_item(seed: int, simple: float = 0.3, n_cards: tuple[int, int] | None = None):
    """One scene's vision-probe data: the overview as fed and its per-token targets
    (:func:`token_targets`), one card's crop as fed and its per-token stripe targets
    (``n_cards``: the world's own range by default)."""
    from mgpo import geometry
    from mgpo.playground.world import N_CARDS, Budgets, make_scene

    n_cards = n_cards or N_CARDS

    rng = random.Random(f"probe:{seed}")
    b = Budgets().engine()
    scene = make_scene(seed, budgets=Budgets(), clutter=0.0 if rng.random() < simple else 1.0, n_cards=n_cards)
    ov = geometry.prepare(scene.image, None, **b)
    card = rng.choice(scene.layout.cards)
    crop = geometry.prepare(scene.image, card.box, **b)
    return ov.image, token_targets(scene, ov.frame), crop.image, detail_targets(card, card.box, crop.frame)


def pretrain_vision(loaded, cfg: RecipeConfig, log_path: Path | None = None) -> list[dict]:
    """Stage 0 of the base skills — what a pretrained vision encoder brings: the vision tower
    (and its merger) learn, through a linear probe thrown away afterwards, to tell for every
    overview token which card colour is there and where the token is (row, column), and for every
    token of a card's crop which way the stripes under it run. No text, no box JSON, no question;
    only the tower's weights are kept."""
    import torch

    from mgpo.generation import QwenBackend
    from mgpo.playground.world import COLOURS, PATTERNS, SPLITS, Budgets

    backend = QwenBackend(loaded.model, loaded.processor)
    core = backend.core
    visual = core.model.visual
    side = Budgets().overview_max_pixels ** 0.5 // 28
    n_col, n_pos = len(COLOURS) + 1, int(side)
    head = torch.nn.Linear(core.config.text_config.hidden_size, n_col + 2 * n_pos).to(backend.device)
    detail_head = torch.nn.Linear(core.config.text_config.hidden_size, 1 + len(PATTERNS)).to(backend.device)
    torch.manual_seed(cfg.seed)
    visual.requires_grad_(True)
    visual.train()
    params = list(visual.parameters()) + list(head.parameters()) + list(detail_head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.0)
    lo, hi = SPLITS["skills"]
    first = lo + VISION_START                     # a part of the skills range the text skills rarely reach
    items = scene_map(functools.partial(probe_item, simple=cfg.skill_simple, n_cards=(cfg.min_cards, cfg.max_cards)),
                      _cycle(lo, hi, first), data_workers(cfg))
    history, t0 = [], time.perf_counter()
    log = log_path.open("w") if log_path else None
    try:
        for step in range(1, cfg.vision_steps + 1):
            fed, targets, crops, details = [], [], [], []
            for overview, token_target, crop, detail_target in itertools.islice(items, cfg.vision_batch):
                fed.append(backend.feed_image(overview))
                targets.append(token_target)
                crops.append(backend.feed_image(crop))
                details += detail_target
            feats = backend._image_features(fed)                       # (B·tokens, hidden)
            logits = head(feats.float())
            colour = torch.tensor([v for t in targets for v in t[0]], device=backend.device)
            row = torch.tensor([v for t in targets for v in t[1]], device=backend.device)
            col = torch.tensor([v for t in targets for v in t[2]], device=backend.device)
            ce = torch.nn.functional.cross_entropy
            # colour and position on every token, and again on the card tokens alone: they are 2-3
            # of the 64, and the language model finds a card by them, so they must say what and where
            # (trained on all tokens together, the card tokens' own row and column stayed at chance)
            on = colour > 0
            lc = ce(logits[:, :n_col], colour) + ce(logits[on, :n_col], colour[on])
            lr_ = ce(logits[:, n_col:n_col + n_pos], row) + ce(logits[on, n_col:n_col + n_pos], row[on])
            lcol = ce(logits[:, n_col + n_pos:], col) + ce(logits[on, n_col + n_pos:], col[on])
            dlogits = detail_head(backend._image_features(crops).float())
            detail = torch.tensor(details, device=backend.device)
            striped = detail > 0        # the few tokens on the stripes, weighed as the card tokens are
            ld = ce(dlogits, detail) + ce(dlogits[striped], detail[striped])
            loss = lc + lr_ + lcol + ld
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                acc = {"colour": (logits[:, :n_col].argmax(1) == colour).float().mean().item(),
                       "card_colour": ((logits[:, :n_col].argmax(1) == colour)[colour > 0]).float().mean().item(),
                       "row": (logits[:, n_col:n_col + n_pos].argmax(1) == row).float().mean().item(),
                       "col": (logits[:, n_col + n_pos:].argmax(1) == col).float().mean().item(),
                       "card_row": ((logits[:, n_col:n_col + n_pos].argmax(1) == row)[on]).float().mean().item(),
                       "card_col": ((logits[:, n_col + n_pos:].argmax(1) == col)[on]).float().mean().item(),
                       "stripes": ((dlogits.argmax(1) == detail)[striped]).float().mean().item()}
            entry = {"step": step, "loss": loss.item(), "accuracy": acc, "seconds": time.perf_counter() - t0}
            history.append(entry)
            if log:
                log.write(json.dumps(entry) + "\n")
            if step == 1 or step % 25 == 0 or step == cfg.vision_steps:
                _log(f"vision step {step}/{cfg.vision_steps}: loss {loss.item():.3f} " +
                     ", ".join(f"{k} {v:.2f}" for k, v in acc.items()) + f" ({entry['seconds']:.0f}s)")
    finally:
        items.close()
        if log:
            log.close()
    visual.requires_grad_(False)
    visual.eval()
    # calibrate: image tokens as large as text tokens. The probe grows the features (norm ≈ 90
    # against ≈ 16 for a token embedding), and with such image tokens in the context the language
    # model did not even learn to copy a word from the prompt; scaling the merger's last layer
    # keeps every probe-readable direction and fixes that. With vision_whiten, first only the
    # probe's directions are kept, whitened (whiten_merger).
    with torch.no_grad():
        if cfg.vision_whiten:
            whiten_merger(visual.merger.mlp[-1], torch.cat([backend._image_features(fed), backend._image_features(crops)]),
                          torch.cat([head.weight, detail_head.weight]))
        norm = backend._image_features(fed).norm(dim=-1).mean().item()
        target = (cfg.embed_std or 0.02) * core.config.text_config.hidden_size ** 0.5
        last = visual.merger.mlp[-1]
        last.weight.mul_(target / norm)
        last.bias.mul_(target / norm)
    _log(f"vision: image-token norm {norm:.1f} scaled to {target:.1f} (a token embedding's)")
    return history


def whiten_merger(last, feats, directions) -> None:
    """Keep only what the probe reads, whitened: the merger's last linear layer (``f = W x + b``)
    becomes ``f' = M (f - mean)`` with ``M`` projecting onto the span of the probe heads' weight
    rows (``directions``, (K, hidden)) and giving each principal direction of ``feats`` (sampled
    outputs, (N, hidden)) within that span unit variance. Rare attributes (a card under 3 of 64
    tokens) then stand out as much as the ever-present ones (row, column), and nothing else (the
    clutter's texture) is left to drown them. (With perfect synthetic features — a card flag plus
    row and column per token — the language model learns the board cell of the card in ~100
    steps when the flag is as large as the position embeddings, and not in 200 when it is 0.3×.)"""
    import torch

    feats, directions = feats.detach().float(), directions.detach().float()
    q, _ = torch.linalg.qr(directions.T)                 # (hidden, K): the probe's directions
    mean = feats.mean(0)
    z = (feats - mean) @ q
    _, s, vh = torch.linalg.svd(z, full_matrices=False)
    keep = s > s[0] * 1e-3
    basis = q @ vh[keep].T                                        # (hidden, k) orthonormal
    m = basis @ torch.diag((len(feats) - 1) ** 0.5 / s[keep]) @ basis.T
    with torch.no_grad():
        w, b = last.weight.float(), last.bias.float()
        last.weight.copy_((m @ w).to(last.weight.dtype))
        last.bias.copy_((m @ (b - mean)).to(last.bias.dtype))


def save_checkpoint(loaded, out: Path, card: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    (out / "README.md").write_text(card)
    return out


# ----- stage 3: RL ---------------------------------------------------------------------------------

def write_rl_data(out: Path, n: int, start: int = 0, workers: int = 0) -> Path:
    """``n`` scenes of the "train" split as PNG + JSONL (question, four choices, answer letter —
    no box: the ground truth box never reaches RL), rendered by ``workers`` processes (0: this one)."""
    from mgpo.playground.world import split_seeds

    (out / "scenes").mkdir(parents=True, exist_ok=True)
    path = out / "train.jsonl"
    with path.open("w") as f:
        for rec in scene_map(functools.partial(_rl_record, out), split_seeds("train", n, start), workers):
            f.write(json.dumps(rec) + "\n")
    return path


def _rl_record(out: Path, seed: int) -> dict:
    """Scene ``seed`` as ``out/scenes/scene-SEED.png`` (kept if a rerun finds it) and its JSONL record."""
    from mgpo.playground.world import make_layout, question, render

    layout = make_layout(seed)
    png = out / "scenes" / f"scene-{seed}.png"
    if not png.is_file():
        render(layout).save(png, compress_level=1)
    card = layout.cards[layout.target]
    return {"image": str(png.relative_to(out)), "question": question(f"{card.colour} card"),
            "choices": list(layout.choices), "answer": layout.answer, "id": f"scene-{seed}"}


def rl_config(cfg: RecipeConfig, base: Path, data: Path, out: Path):
    from mgpo.playground.world import Budgets

    from .config import TrainConfig

    b = Budgets().engine()
    return TrainConfig(
        model=str(base), data=str(data), output_dir=str(out), mode="mgpo", max_turns=2,
        group_size=cfg.group_size, prompts_per_step=cfg.prompts_per_step, temperature=cfg.rl_temperature, top_p=1.0,
        max_new_tokens=cfg.max_new_tokens, min_pixels=b["min_pixels"], max_pixels=b["max_pixels"],
        rewards={"accuracy": 1.0}, kl_coef=cfg.kl_coef, lora_r=cfg.lora_r, lora_alpha=cfg.lora_r,
        lr=cfg.rl_lr, steps=cfg.rl_steps, entropy_coef=cfg.entropy_coef, seed=cfg.seed,
        gradient_checkpointing=False, dtype="",
        save_every=0, keep_last=1, tensorboard=False, progress=False, plot=True, micro_batch=8,
    )


def snapshot_steps(steps: int) -> dict[int, str]:
    """The RL steps whose adapters the release keeps: early, middle and late (= the last)."""
    if steps < 1:
        return {}
    marks = {max(1, round(steps * 0.2)): "early", max(1, round(steps * 0.5)): "middle", steps: "late"}
    return dict(sorted(marks.items()))


def run_rl(cfg: RecipeConfig, base: Path, out: Path) -> dict:
    """MGPO RL with the project's trainer. Two additions for analysis, neither seen by the
    reward: each step's metrics get ``iou`` (the rollouts' first valid box against the hidden card
    box, invalid boxes counted as 0), and the adapter is saved at :func:`snapshot_steps` to
    ``out/snapshots/step-NNNN``."""
    from mgpo.eval.scoring import iou
    from mgpo.playground.world import make_layout

    from .loop import Trainer

    data = write_rl_data(out.parent / "rl_data", cfg.rl_scenes, workers=data_workers(cfg))
    truth = {}
    for line in data.read_text().splitlines():
        rec = json.loads(line)
        seed = int(rec["id"].split("-")[1])
        layout = make_layout(seed)
        truth[rec["id"]] = layout.cards[layout.target].box
    marks = snapshot_steps(cfg.rl_steps)

    class PlaygroundTrainer(Trainer):
        def update(self, items, rollouts):
            metrics = super().update(items, rollouts)
            scores = [iou(r.boxes[0].box_original, truth[items[r.request].id]) if r.valid_box else 0.0
                      for r in rollouts]
            metrics["iou"] = sum(scores) / max(1, len(scores))
            return metrics

    def on_step(step: int, metrics: dict) -> None:
        if step in marks:
            trainer.model.save_pretrained(out / "snapshots" / f"step-{step:04d}")

    trainer = PlaygroundTrainer(rl_config(cfg, base, data, out), on_step=on_step)
    return trainer.run()


# ----- stage 4: eval -------------------------------------------------------------------------------

def run_eval(cfg: RecipeConfig, base: Path, adapter: Path | None, out: Path, mode: str) -> dict:
    """The eval harness on held-out test scenes (greedy), as ``python -m mgpo.eval --benchmark
    playground --seed S --limit N --model BASE [--adapter A] --mode MODE`` runs it."""
    from mgpo.engine import Engine
    from mgpo.eval.datasets import open_benchmark
    from mgpo.eval.runner import EvalConfig, evaluate
    from mgpo.playground.world import Budgets

    b = Budgets().engine()
    ecfg = EvalConfig(benchmark="playground", out=str(out), model=str(base),
                      adapter=str(adapter) if adapter else None, mode=mode, limit=cfg.eval_scenes,
                      batch_size=8, min_pixels=b["min_pixels"], max_pixels=b["max_pixels"],
                      max_new_tokens=cfg.max_new_tokens, seed=cfg.eval_seed)
    bench = open_benchmark("playground", None, None, seed=cfg.eval_seed, limit=cfg.eval_scenes)
    engine = Engine.from_pretrained(str(base), ecfg.adapter, config=ecfg.engine_config(),
                                    device="cpu" if not _cuda() else None)
    return evaluate(engine, bench, ecfg, progress=False, overwrite=True)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def summarize(results: dict) -> dict:
    """The numbers the recipe reports from one ``results.json``."""
    s, g, beh, crop = (results.get(k) or {} for k in ("scores", "grounding", "behaviour", "crop_only"))
    return {"accuracy": s.get("overall"), "n": s.get("n"), "valid_box_ratio": beh.get("valid_box_ratio"),
            "mean_iou": g.get("mean_iou"), "mean_iou_all": g.get("mean_iou_all"), "hits": g.get("hits"),
            "accuracy_after_hit": g.get("accuracy_after_hit"),
            "crop_only_accuracy": crop.get("accuracy") if crop else None}


def rl_curve(metrics_path: Path) -> list[dict]:
    """(step, reward, valid_box, iou) per RL step from the trainer's metrics.jsonl."""
    from .metrics import read

    return [{"step": r["step"], "reward": r.get("reward"), "valid_box": r.get("valid_box"), "iou": r.get("iou")}
            for r in read(metrics_path) if "step" in r]


# ----- stage 5: the release ------------------------------------------------------------------------

def _release_curves() -> list[tuple[str, str]]:
    """The panels of the release's curves.png: the trainer's own reward, valid-box and IoU curves."""
    from .metrics import CURVES

    return [(k, t) for k, t in CURVES if k in ("reward", "valid_box", "iou")]


def ship(cfg: RecipeConfig, out: Path, release: Path, summary: dict) -> Path:
    """The release folder the app's Playground tab and the CLI load (:mod:`mgpo.playground.release`):
    ``model/`` (the base-skills model), ``adapters/step-NNNN`` (early, middle, late RL), the
    index, the RL metrics and curves, the summary and a model card."""
    import shutil

    from mgpo.playground.release import Checkpoint, Release, write_index

    from .metrics import plot

    base_dir, rl_dir = out / "base", out / "rl"
    if not (base_dir / "config.json").is_file():
        raise ValueError(f"{base_dir} holds no base-skills checkpoint: run the skills stage first")
    tmp = release.with_name(release.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copytree(base_dir, tmp / "model")   # with the base's card: --skills-from RELEASE/model keeps its story
    checkpoints = [Checkpoint("before RL", 0, None)]
    for step, name in snapshot_steps(cfg.rl_steps).items():
        src = rl_dir / "snapshots" / f"step-{step:04d}"
        if src.is_dir():
            shutil.copytree(src, tmp / "adapters" / src.name)
            checkpoints.append(Checkpoint(name, step, tmp / "adapters" / src.name))
    if (rl_dir / "metrics.jsonl").is_file():
        shutil.copy(rl_dir / "metrics.jsonl", tmp / "metrics.jsonl")
        plot(tmp / "metrics.jsonl", tmp / "curves.png", _release_curves())
    for name in ("skills.jsonl", "recipe.json"):
        if (out / name).is_file():
            shutil.copy(out / name, tmp / name)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (tmp / "README.md").write_text(release_card(cfg, summary, checkpoints, base_story(base_dir)))
    write_index(tmp, checkpoints, checkpoints[-1].name)
    Release.load(tmp)                      # refuse to ship a folder the app could not open
    if release.exists():
        shutil.rmtree(release)
    tmp.rename(release)
    return release


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("–" if v is None else str(v))


def _with_scores(story: str, held: dict) -> str:
    """The base's story, ending with the last run's held-out skill scores (added when its card,
    written before cards carried them, does not end with them)."""
    if not held or story.rstrip().endswith(held_out_text(held)):
        return story
    return f"{story} {held_out_text(held)}"


def release_card(cfg: RecipeConfig, summary: dict, checkpoints, story: str = "") -> str:
    """The release's model card: how it was made (``story``: the base checkpoint's own account,
    else this run's skills settings) and what it measured."""
    rows = []
    for when in ("before", "after"):
        for mode in ("direct", "mgpo"):
            s = (summary.get(when) or {}).get(mode)
            if s:
                rows.append(f"| {when} RL | {mode} | {_fmt(s.get('accuracy'))} | {_fmt(s.get('valid_box_ratio'))} | "
                            f"{_fmt(s.get('mean_iou_all'))} | {_fmt(s.get('hits'))} | {_fmt(s.get('accuracy_after_hit'))} | "
                            f"{_fmt(s.get('crop_only_accuracy'))} | {s.get('n')} |")
    table = "\n".join(["| model | mode | accuracy | valid-box ratio | mean IoU (all items) | hits (IoU ≥ 0.5) | "
                        "accuracy after a hit | crop-only accuracy | n |",
                        "|---|---|---|---|---|---|---|---|---|", *rows]) if rows else "(no evaluation in this run)"
    skills = summary.get("skills") or {}
    held = skills.get("eval") or {}
    curve = summary.get("rl_curve") or []
    ckpts = ", ".join(f"{c.name} (step {c.step})" for c in checkpoints)
    return f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: image-text-to-text
tags: [mgpo, qwen2_5_vl, grounding, reinforcement-learning, synthetic]
---

# MGPO playground model

A small Qwen2.5-VL (text {cfg.hidden} × {cfg.layers} layers, vision {cfg.vision_hidden} × depth {cfg.vision_depth},
byte-level BPE tokenizer of {cfg.vocab_size} entries learned from the playground's texts) trained from random
weights by `python -m train.playground` (`recipe.json`: the settings of the run that shipped it, its RL and
evaluation; how the base was trained is told below). It only knows the playground world
(`mgpo.playground.world`): 2048-px scenes with {_cards(cfg)}, a label with fine stripes on each;
the question asks which way the stripes on one card run, which is illegible in the 224-px overview the model sees first.

## How it was made
1. **Base skills** (`model/`): {_with_scores(story, held) if story else f"{skills_text(cfg)} {held_out_text(held)}"}
2. **MGPO RL** (`adapters/`, LoRA r {cfg.lora_r} on the language model, {cfg.rl_steps} steps × {cfg.prompts_per_step}
   prompts × {cfg.group_size} samples at temperature {cfg.rl_temperature}, lr {cfg.rl_lr}) with the project's trainer
   on scenes of the "train" seed range, the paper's prompts and the **binary accuracy reward only**; the
   ground-truth boxes never reach it. Checkpoints kept: {ckpts}.

## Measured (held-out TEST seeds, greedy, `python -m mgpo.eval --benchmark playground`)
{table}

RL per step (rollouts at temperature {cfg.rl_temperature}; `metrics.jsonl`, `curves.png`):
- reward: {" ".join(f"{r['reward']:.2f}" for r in curve) or "–"}
- valid-box ratio: {" ".join(f"{r['valid_box']:.2f}" for r in curve) or "–"}
- IoU with the hidden box (analysis only): {" ".join(_fmt(r.get('iou')) for r in curve) or "–"}

## Use
RELEASE is this folder.
```bash
python -m mgpo.infer --model RELEASE --checkpoint late --image scene.png \\
    --question "Which way do the stripes on the red card run?" \\
    --choices horizontal vertical "rising diagonal" "falling diagonal"   # its model, adapter and pixel budgets
python app.py --playground RELEASE   # the Playground tab
```
"""


# ----- the recipe ----------------------------------------------------------------------------------

def run(cfg: RecipeConfig) -> dict:
    from transformers.utils import logging as hf_logging

    from mgpo.model import load_model
    from mgpo.playground.world import Budgets

    hf_logging.disable_progress_bar()
    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    stages = cfg.stage_list()
    # a run of some stages updates the summary of earlier ones in the same folder
    previous = out / "summary.json"
    summary: dict = json.loads(previous.read_text()) if previous.is_file() else {}
    summary.setdefault("seconds", {})
    summary.setdefault("configs", []).append(asdict(cfg))
    random_dir, base_dir, rl_dir = out / "random", out / "base", out / "rl"
    _check_inputs(cfg, stages, random_dir, base_dir)
    b = Budgets().engine()
    t = time.perf_counter()
    if "model" in stages:
        build_model(cfg, random_dir)
        summary["seconds"]["model"] = time.perf_counter() - t
    if "skills" in stages:
        t = time.perf_counter()
        loaded = load_model(cfg.skills_from or str(random_dir), device="cuda" if _cuda() else "cpu", dtype="float32",
                            min_pixels=b["min_pixels"], max_pixels=b["max_pixels"])
        if cfg.vision_steps:
            vhist = pretrain_vision(loaded, cfg, out / "vision.jsonl")
            summary["vision"] = {"steps": len(vhist), "last_loss": vhist[-1]["loss"], "accuracy": vhist[-1]["accuracy"]}
        hist = train_skills(loaded, cfg, out / "skills.jsonl", save_to=base_dir)
        save_checkpoint(loaded, base_dir, _card(cfg, hist))
        evals = [r for r in hist if "eval" in r]
        summary["skills"] = {"steps": len(hist), "first_loss": hist[0]["loss"] if hist else None,
                             "last_loss": hist[-1]["loss"] if hist else None,
                             "eval": evals[-1]["eval"] if evals else None,
                             "eval_curve": [{"step": r["step"], **r["eval"]} for r in evals]}
        summary["seconds"]["skills"] = time.perf_counter() - t
        del loaded
    if "eval" in stages and "rl" in stages:
        t = time.perf_counter()
        summary["before"] = {m: summarize(run_eval(cfg, base_dir, None, out / "eval" / f"before-{m}", m))
                             for m in ("direct", "mgpo")}
        summary["seconds"]["eval_before"] = time.perf_counter() - t
    if "rl" in stages:
        t = time.perf_counter()
        if rl_dir.exists():
            import shutil

            shutil.rmtree(rl_dir)
        run_rl(cfg, base_dir, rl_dir)
        summary["rl_curve"] = rl_curve(rl_dir / "metrics.jsonl")
        summary["seconds"]["rl"] = time.perf_counter() - t
    if "eval" in stages:
        t = time.perf_counter()
        # an adapter from an earlier run belongs to an earlier base: only use it if skills were not retrained
        fresh = "rl" in stages or "skills" not in stages
        adapter = rl_dir / "adapter" if fresh and (rl_dir / "adapter").is_dir() else None
        when = "after" if adapter else "before"
        summary[when] = {m: summarize(run_eval(cfg, base_dir, adapter, out / "eval" / f"{when}-{m}", m))
                         for m in ("direct", "mgpo")}
        summary["seconds"][f"eval_{when}"] = time.perf_counter() - t
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if "ship" in stages:
        release = ship(cfg, out, Path(cfg.release) if cfg.release else out / "release", summary)
        _log(f"release written to {release}")
    return summary


def _check_inputs(cfg: RecipeConfig, stages: list[str], random_dir: Path, base_dir: Path) -> None:
    """Each stage's input exists or an earlier stage of this run makes it (else a ValueError that says so)."""
    if "skills" in stages and "model" not in stages:
        start = Path(cfg.skills_from) if cfg.skills_from else random_dir
        if not (start / "config.json").is_file():
            raise ValueError(f"the skills stage starts from {start}, which holds no checkpoint: add the model stage "
                             "(--stages model,skills,...) or pass --skills-from DIR")
    if ({"rl", "eval"} & set(stages)) and "skills" not in stages and not (base_dir / "config.json").is_file():
        raise ValueError(f"{base_dir} holds no base-skills checkpoint: run the skills stage first "
                         "(--stages model,skills,...)")


def vision_frozen(cfg: RecipeConfig) -> bool:
    """Whether the text skills leave the vision tower (merger included) as it is: a probed or
    continued tower stays, unless ``train_vision`` asks to train it too (or a phase does: :func:`trains_vision`)."""
    return not cfg.train_vision and bool(cfg.vision_steps or cfg.skills_from)


def trains_vision(cfg: RecipeConfig, phase: "Phase") -> bool:
    """Whether this phase of the text skills trains the vision tower too (the run's rule, or the phase's ``:vision``)."""
    return phase.vision or not vision_frozen(cfg)


def skills_text(cfg: RecipeConfig) -> str:
    """What the base-skills stage trained, in words (the base checkpoint's card and the release's)."""
    names = {"ground": "grounding a card *by its colour* (Qwen's `bbox_2d` JSON on the overview; wordings "
                       f"{cfg.skill_prompt!r})",
             "cell": "the board cell a named card sits in",
             "read": "reading a card's close-up (the crop as turn 2 feeds it → the stripes' orientation or the letter of four choices)",
             "zoom": ("reading in MGPO's second turn (a two-turn conversation: turn 1 MGPO's grounding template around "
                      "another question about the card, answered with its box; turn 2 the crop of that box in MGPO's "
                      "turn-2 template with a reading question that does not name the card → the letter of the "
                      "stripes' orientation)"),
             "answer": "direct answers to questions the overview does answer (colours present, number of cards)"}
    vision = (f"{cfg.vision_steps} steps of vision-tower probe pretraining (card colour, row and column per overview "
              f"token, stripe orientation per crop token{', merger output whitened onto the probe directions' if cfg.vision_whiten else ''}), then "
              if cfg.vision_steps else "")
    skills = "; ".join(f"{k}: {names[k]}" for k in cfg.skill_list() if k in names)
    frozen = vision_frozen(cfg)
    phases = ", then ".join(f"{'+'.join(ph.skills)} for {ph.steps} steps at lr {ph.lr:g} "
                            f"({100 * (cfg.skill_simple if ph.simple is None else ph.simple):.0f} % clutter-free scenes"
                            f"{', the vision tower trained too' if frozen and ph.vision else ''})"
                            for ph in cfg.phases())
    tuned = ("the whole model, vision tower included" if not frozen else
             "the language model, the vision tower frozen except in the phases that say they trained it too"
             if any(ph.vision for ph in cfg.phases()) else "the language model, the vision tower frozen")
    return (f"{vision}a full fine-tune of {tuned} (AdamW, {cfg.skill_batch} examples a step, a fresh optimizer per phase) "
            f"on scenes of the \"skills\" seed range{f' from index {cfg.skill_start:,}' if cfg.skill_start else ''} "
            f"with {_cards(cfg)}: {phases}. Skills: {skills}. "
            "Never the task's question, neither → box nor → answer.")


def _cards(cfg: RecipeConfig) -> str:
    if cfg.min_cards == cfg.max_cards:
        return "one coloured card" if cfg.min_cards == 1 else f"{cfg.min_cards} coloured cards"
    return f"{cfg.min_cards}–{cfg.max_cards} coloured cards"


def base_story(folder: Path) -> str:
    """How a base-skills checkpoint was made: its card without the title ("" without a card)."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return ""
    return "\n".join(line for line in card.read_text().splitlines() if not line.startswith("# ")).strip()


def held_out_text(scores: dict | None) -> str:
    """A run's last held-out skill scores, as the cards print them."""
    return f"Held-out skill scores at the end:\n   {', '.join(f'{k} {v:.2f}' for k, v in (scores or {}).items()) or '–'}."


def _card(cfg: RecipeConfig, hist: list[dict]) -> str:
    """The base checkpoint's card; a continued one (``--skills-from``) keeps the story of its start.
    Each run's part ends with its own held-out skill scores (when it evaluated)."""
    last = hist[-1]["loss"] if hist else float("nan")
    evals = [r["eval"] for r in hist if r.get("eval")]
    scores = f" {held_out_text(evals[-1])}" if evals else ""
    title = f"# playground base model ({cfg.size} recipe)\n\n"
    if cfg.skills_from:
        before = base_story(Path(cfg.skills_from)) or f"The checkpoint `{cfg.skills_from}` (no card)."
        return (f"{title}{before}\n\nThen continued from that checkpoint (`--skills-from`) by "
                f"{skills_text(cfg)} Final loss {last:.3f}.{scores}\n")
    return (f"{title}A random Qwen2.5-VL (text {cfg.hidden}×{cfg.layers}, "
            f"vision {cfg.vision_hidden}×{cfg.vision_depth}, BPE tokenizer of {cfg.vocab_size} entries) after "
            f"{skills_text(cfg)} Final loss {last:.3f}. Built by `python -m train.playground`.{scores}\n")


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.playground", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", default="cpu", choices=sorted(SIZES))
    for f in fields(RecipeConfig):
        if f.name in ("out", "size"):
            continue
        kind = type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                       type=_flag if kind is bool else kind, metavar="yes|no" if kind is bool else None)
    args = vars(p.parse_args(argv))
    try:
        cfg = RecipeConfig.for_size(args.pop("size"), **args).check()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mgpo.eval.runner import EvalError
    from mgpo.model import ModelLoadError

    try:
        summary = run(cfg)
    except (ValueError, ModelLoadError, EvalError) as e:   # bad settings, missing inputs (Config/DataError too)
        print(f"error: {e}", file=sys.stderr)
        return 2
    for when in ("before", "after"):
        for mode, s in (summary.get(when) or {}).items():
            print(f"{when} RL, {mode}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in s.items()))
    curve = summary.get("rl_curve") or []
    for key, title in (("reward", "RL reward"), ("valid_box", "RL valid box"), ("iou", "RL IoU (hidden box)")):
        if curve and all(r.get(key) is not None for r in curve):
            print(f"{title}: " + " ".join(f"{r[key]:.2f}" for r in curve))
    print(f"wrote {cfg.out}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

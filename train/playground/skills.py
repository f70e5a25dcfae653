"""Stage 2 of the recipe, the base skills: supervised training on skill examples
(:mod:`mgpo.playground.skill_examples`), never the task's question → box, phase by phase, with held-out scores."""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from .cards import base_card
from .settings import Phase, RecipeConfig, phase_start, trains_vision
from .runtime import cycle_seeds, data_workers, echo, pool_workers, scene_map


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
    from mgpo.conversation import Conversations

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
    from ..logprobs import collate, token_logprobs

    batch = collate(seqs, backend.pad_id, core.config.image_token_id, backend.device, backend.dtype)
    logp, _ = token_logprobs(core, batch, 1.0, with_entropy=False)
    mask = batch.loss_mask.float()
    loss = -(logp * mask).sum() / mask.sum().clamp(min=1.0)
    per_row = (-(logp * mask).sum(1) / mask.sum(1).clamp(min=1.0)).detach()   # (B,) mean token loss per example
    return loss, per_row


def skill_stream(cfg: RecipeConfig, split: str = "skills", start: int = 0, skills: tuple[str, ...] | None = None,
                 simple: float | None = None, phase: Phase | None = None):
    """An endless stream of skill examples from consecutive scenes of ``split``, shuffled within a
    buffer of ``cfg.skill_buffer`` scenes so a batch mixes scenes and skills. Each example is
    ``(example, system)`` with the system prompt drawn per example (``cfg.skill_system``, or
    ``phase``'s own). ``skills`` and ``simple`` (the share of clutter-free scenes) default to
    ``phase``'s, then to the run's (``cfg.skill_list()``, ``cfg.skill_simple``).
    With a pool (``cfg.skill_pool`` or ``phase``'s own) the stream is that many scenes' examples
    instead, drawn once and reshuffled each pass."""
    from mgpo.playground.skill_prompts import SKILLS
    from mgpo.playground.skill_examples import scene_examples
    from mgpo.playground.world import SPLITS

    if phase is not None:
        skills = phase.skills if skills is None else skills
        simple = phase.simple if simple is None else simple
    rng = random.Random(f"{cfg.seed}:{split}:{start}")
    systems = {name: [skill_system_prompt(k) for k in cfg.skill_systems(name, phase)] for name in SKILLS}
    pool_size = cfg.skill_pool_of(phase)
    lo, hi = SPLITS[split]
    make = functools.partial(scene_examples, budgets=cfg.budgets(), skills=skills or cfg.skill_list(),
                             prompt=cfg.skill_prompt, simple=cfg.skill_simple if simple is None else simple,
                             n_cards=(cfg.min_cards, cfg.max_cards),
                             label_first=cfg.label_first)
    if pool_size:   # drawn once before training (every CPU's worker: nothing trains meanwhile), then cycled
        seeds = itertools.islice(cycle_seeds(lo, hi, lo + start), pool_size)
        pool = [ex for exs in scene_map(make, seeds, pool_workers(cfg)) for ex in exs]
        echo(f"skills: a pool of {len(pool)} examples from {pool_size} scenes")
        while True:
            order = list(pool)
            rng.shuffle(order)
            yield from ((ex, rng.choice(systems[ex.skill])) for ex in order)
    scenes = scene_map(make, cycle_seeds(lo, hi, lo + start), data_workers(cfg))
    buffer: list = []
    while True:
        while len(buffer) < cfg.skill_buffer * 10:
            buffer += next(scenes)
        rng.shuffle(buffer)
        for _ in range(len(buffer) // 2):
            ex = buffer.pop()
            yield ex, rng.choice(systems[ex.skill])


def skill_eval(backend, cfg: RecipeConfig, n_scenes: int = 12, phase: Phase | None = None) -> dict:
    """Greedy base-skill scores on held-out VAL scenes: grounding (valid JSON box, mean IoU with
    the card, share with IoU ≥ 0.5), reading and direct-answer accuracy — and, for analysis
    only, the same grounding scores under the task's own turn 1 (``task_*``: MGPO's grounding
    prompt around the task question, which the skills never train with a box, after MGPO's system
    prompt as RL and the eval harness give it), greedy and sampled at temperature 1 as RL samples
    it (``task_t1_valid``, ``task_t1_hit``: 4 samples a scene). Each skill is prompted with the
    first of its own system prompts (``cfg.skill_systems``, in ``phase`` where it has its own)."""
    import dataclasses

    import torch

    from mgpo.engine import drain
    from mgpo.eval.scoring import iou
    from mgpo.parsing import find_bbox
    from mgpo.playground.skill_prompts import SKILLS
    from mgpo.playground.skill_examples import ground_examples, scene_examples
    from mgpo.playground.world import make_scene, split_seeds
    from mgpo.prompts import get_prompts, render
    from mgpo.conversation import Sampling

    systems = {name: skill_system_prompt(cfg.skill_systems(name, phase)[0]) for name in SKILLS}
    systems["task"] = skill_system_prompt("mgpo")   # as RL's rollouts and the eval harness prompt turn 1
    seeds = split_seeds("val", n_scenes)
    budgets = cfg.budgets()
    examples = [ex for seed in seeds for ex in scene_examples(
        seed, budgets, skills=cfg.skill_list(), prompt=cfg.skill_prompt, simple=0.0,
        n_cards=(cfg.min_cards, cfg.max_cards), label_first=cfg.label_first)]
    for seed in seeds:   # always: whether RL will have a signal is the question before every RL run
        scene = make_scene(seed, budgets=budgets, n_cards=(cfg.min_cards, cfg.max_cards))
        target = next(e for e in ground_examples(scene, budgets) if e.meta["box_original"] == list(scene.box))
        examples.append(dataclasses.replace(target, skill="task",
                                            prompt=render(get_prompts("mgpo"), "grounding", scene.question)))
    scores: dict[str, list[float]] = {}
    was_training = backend.core.training
    backend.core.eval()
    try:
        for k in range(0, len(examples), 16):
            chunk = examples[k:k + 16]
            with torch.no_grad():
                convs = example_prompts(backend, chunk, [systems[ex.skill] for ex in chunk])
                outs = drain(backend.generate(convs, list(range(len(chunk))), Sampling(max_new_tokens=cfg.max_new_tokens)))
            for i, ex in enumerate(chunk):
                text = outs[i].text
                if ex.skill in ("ground", "task", "group"):
                    m = find_bbox(text)
                    v = iou(m.box, ex.meta["box_model"]) if m else 0.0
                    scores.setdefault(f"{ex.skill}_valid", []).append(float(m is not None))
                    scores.setdefault(f"{ex.skill}_iou", []).append(v)
                    scores.setdefault(f"{ex.skill}_hit", []).append(float(v >= 0.5))
                else:
                    scores.setdefault(ex.skill, []).append(float(text.strip() == ex.target))
        # the same task turn 1 sampled as RL samples it (temperature 1, 4 samples each): RL has a
        # signal only if some of these boxes are valid and on the card
        tasks = [ex for ex in examples if ex.skill == "task"] * 4
        for k in range(0, len(tasks), 16):
            chunk = tasks[k:k + 16]
            with torch.no_grad():
                convs = example_prompts(backend, chunk, [systems[ex.skill] for ex in chunk])
                outs = drain(backend.generate(convs, list(range(len(chunk))), Sampling(
                    temperature=1.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + k)))
            for i, ex in enumerate(chunk):
                m = find_bbox(outs[i].text)
                v = iou(m.box, ex.meta["box_model"]) if m else 0.0
                scores.setdefault("task_t1_valid", []).append(float(m is not None))
                scores.setdefault("task_t1_hit", []).append(float(v >= 0.5))
    finally:
        backend.core.train(was_training)
    return {k: sum(v) / len(v) for k, v in sorted(scores.items())}


def lr_factor(planned: int, k: int) -> float:
    """A skills phase's learning-rate factor after ``k`` steps of a schedule ``planned`` steps
    long: a linear warm-up over a tenth of it (at most 100 steps), then a cosine down to 10 %."""
    warm = max(1, min(100, planned // 10))
    if k < warm:
        return (k + 1) / warm
    t = (k - warm) / max(1, planned - warm)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, t)))


def train_skills(loaded, cfg: RecipeConfig, log_path: Path | None = None, save_to: Path | None = None,
                 snapshots: Path | None = None) -> list[dict]:
    """Full fine-tune on streams of skill examples, phase by phase (:meth:`RecipeConfig.phases`:
    each its own skills, steps and learning rate, a fresh AdamW with warm-up and cosine decay);
    returns the per-step log (loss per skill and, every ``cfg.skill_eval_every`` steps and at the
    end of each phase, held-out scores of every skill of the curriculum). ``save_to``: also
    written there at every evaluation, so a long run can be stopped and still leave a model;
    ``snapshots``: and kept there as ``step-NNNNN`` (a base to start RL from can then be chosen on
    the VAL scores the log holds for each)."""
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
            stream = skill_stream(cfg, start=phase_start(cfg, index), phase=phase)
            core.requires_grad_(True)
            core.model.visual.requires_grad_(trains_vision(cfg, phase))
            params = [p for p in core.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.0)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, phase.schedule or phase.steps))
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
                    row["eval"] = skill_eval(backend, cfg, cfg.skill_eval_scenes, phase)
                    echo(f"skills step {step} (phase {index + 1}): held-out " +
                         ", ".join(f"{name} {v:.2f}" for name, v in row["eval"].items()))
                    if save_to is not None:
                        core.eval()
                        card = base_card(cfg, history + [row])
                        save_checkpoint(loaded, save_to, card)
                        if snapshots is not None:
                            save_checkpoint(loaded, snapshots / f"step-{step:05d}", card)
                        core.train()
                history.append(row)
                if log:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                if step == 1 or step % 25 == 0 or k == phase.steps:
                    parts = ", ".join(f"{name} {v:.3f}" for name, v in row["skill_loss"].items())
                    echo(f"skills step {step}/{total} (phase {index + 1}/{len(phases)}): loss {row['loss']:.3f} "
                         f"({parts}; {row['seconds']:.0f}s)")
            stream.close()
    finally:
        if log:
            log.close()
    core.eval()
    core.requires_grad_(False)
    return history


def save_checkpoint(loaded, out: Path, card: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    (out / "README.md").write_text(card)
    return out

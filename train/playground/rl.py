"""Stage 3 of the recipe: MGPO RL with the project's trainer on scenes of the "train" split, the
binary accuracy reward only; the hidden boxes only measure (IoU per step), never reach the reward."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from .settings import RecipeConfig
from .runtime import pool_workers, scene_map


def write_rl_data(out: Path, n: int, start: int = 0, workers: int = 0, budgets=None, cards: int = 1) -> Path:
    """``n`` scenes of the "train" split with ``cards`` cards each as PNG + JSONL (question, four
    choices, answer letter — no box: the ground truth box never reaches RL), rendered by
    ``workers`` processes (0: this one) in the geometry ``budgets`` (the world's default when None)."""
    from mgpo.playground.world import Budgets, split_seeds

    (out / "scenes").mkdir(parents=True, exist_ok=True)
    path = out / "train.jsonl"
    with path.open("w") as f:
        for rec in scene_map(functools.partial(_rl_record, out, budgets or Budgets(), cards),
                             split_seeds("train", n, start), workers):
            f.write(json.dumps(rec) + "\n")
    return path


def _rl_record(out: Path, budgets, cards: int, seed: int) -> dict:
    """Scene ``seed`` as ``out/scenes/scene-SEED-SIDE[-cCARDS].png`` (kept if a rerun finds it) and
    its JSONL record."""
    from mgpo.playground.draw import render
    from mgpo.playground.world import make_layout, question

    layout = make_layout(seed, budgets=budgets, n_cards=(cards, cards))
    png = out / "scenes" / (f"scene-{seed}-{layout.size}" + (f"-c{cards}" if cards != 1 else "") + ".png")
    if not png.is_file():
        render(layout).save(png, compress_level=1)
    card = layout.cards[layout.target]
    return {"image": str(png.relative_to(out)), "question": question(f"{card.colour} card"),
            "choices": list(layout.choices), "answer": layout.answer, "id": f"scene-{seed}"}


def rl_config(cfg: RecipeConfig, base: Path, data: Path, out: Path):
    from ..config import TrainConfig

    b = cfg.budgets().engine()
    return TrainConfig(
        model=str(base), data=str(data), output_dir=str(out), mode="mgpo", max_turns=cfg.turns,
        group_size=cfg.group_size, prompts_per_step=cfg.prompts_per_step, temperature=cfg.rl_temperature, top_p=1.0,
        max_new_tokens=cfg.max_new_tokens, min_pixels=b["min_pixels"], max_pixels=b["max_pixels"],
        rewards={"accuracy": 1.0}, kl_coef=cfg.kl_coef, lora_r=cfg.lora_r, lora_alpha=cfg.lora_r,
        train_vision=cfg.rl_vision,
        lr=cfg.rl_lr, lr_schedule=cfg.rl_schedule, steps=cfg.rl_steps, entropy_coef=cfg.entropy_coef,
        seed=cfg.seed, gradient_checkpointing=False, dtype="",
        save_every=max(1, cfg.rl_steps // 8), keep_last=1, resume=True,   # an interrupted RL stage resumes
        tensorboard=False, progress=False, plot=True, micro_batch=8,
        log_samples=1,    # every rollout's box and reward in OUT/rl/samples.jsonl: where the policy looks, step by step
        mini_batches=cfg.rl_mini_batches,
    )


SNAPSHOTS = ((1 / 8, "early"), (1 / 4, "quarter"), (1 / 2, "middle"), (3 / 4, "three quarters"), (1.0, "late"))


def snapshot_steps(steps: int) -> dict[int, str]:
    """The RL steps whose adapters the release keeps (:data:`SNAPSHOTS`: an eighth, a quarter,
    half, three quarters and all of the run; fewer when short runs round two onto one step)."""
    if steps < 1:
        return {}
    marks: dict[int, str] = {}
    for frac, name in SNAPSHOTS:
        marks.setdefault(max(1, round(steps * frac)), name)
    marks[steps] = "late"
    return dict(sorted(marks.items()))


def run_rl(cfg: RecipeConfig, base: Path, out: Path) -> dict:
    """MGPO RL with the project's trainer. Two additions for analysis, neither seen by the
    reward: each step's metrics get ``iou`` and ``hit`` (the answer's box — the last valid one,
    whose crop the answer read — against the hidden box of the asked card, no box counted as 0;
    a hit: IoU ≥ 0.5) and, with several cards, ``wrong_card`` (that box on another card); and the
    adapter is saved at :func:`snapshot_steps` to ``out/snapshots/step-NNNN``."""
    from mgpo.eval.scoring import iou
    from mgpo.playground.world import make_layout

    from ..loop import Trainer

    data = write_rl_data(out.parent / "rl_data", cfg.rl_scenes, workers=pool_workers(cfg), budgets=cfg.budgets(),
                         cards=cfg.cards)
    truth, others = {}, {}
    for line in data.read_text().splitlines():
        rec = json.loads(line)
        seed = int(rec["id"].split("-")[1])
        layout = make_layout(seed, budgets=cfg.budgets(), n_cards=(cfg.cards, cfg.cards))
        truth[rec["id"]] = layout.cards[layout.target].box
        others[rec["id"]] = [c.box for k, c in enumerate(layout.cards) if k != layout.target]
    marks = snapshot_steps(cfg.rl_steps)

    class PlaygroundTrainer(Trainer):
        def update(self, items, rollouts, step: int = 0):
            metrics = super().update(items, rollouts, step)
            boxes = [(r.answer_box, items[r.request].id) for r in rollouts]
            scores = [iou(b.box_original, truth[key]) if b else 0.0 for b, key in boxes]
            metrics["iou"] = sum(scores) / max(1, len(scores))
            metrics["hit"] = sum(v >= 0.5 for v in scores) / max(1, len(scores))   # boxes on the asked card
            if cfg.cards > 1:
                wrong = [b is not None and any(iou(b.box_original, o) >= 0.5 for o in others[key]) for b, key in boxes]
                metrics["wrong_card"] = sum(wrong) / max(1, len(wrong))
            return metrics

    def on_step(step: int, metrics: dict) -> None:
        if step in marks:
            trainer.model.save_pretrained(out / "snapshots" / f"step-{step:04d}")

    trainer = PlaygroundTrainer(rl_config(cfg, base, data, out), on_step=on_step)
    return trainer.run()


def rl_curve(metrics_path: Path) -> list[dict]:
    """(step, reward, valid_box, iou, hit[, wrong_card]) per RL step from the trainer's metrics.jsonl."""
    from ..metrics import read

    return [{"step": r["step"], "reward": r.get("reward"), "valid_box": r.get("valid_box"), "iou": r.get("iou"),
             "hit": r.get("hit"), **({"wrong_card": r["wrong_card"]} if "wrong_card" in r else {})}
            for r in read(metrics_path) if "step" in r]

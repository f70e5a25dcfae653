"""The playground recipe: a small Qwen2.5-VL, base skills by supervised training, MGPO RL, eval.

    python -m train.playground --out runs/playground [--size cpu|gpu] [--rl-steps N] ...

Stages (each writes into ``--out``):

1. **model** — a random-weight Qwen2.5-VL at a small size (``mgpo.tiny.build``: byte tokenizer,
   Qwen's chat template; CPU size: text hidden 256 × 4 layers, vision hidden 128 × depth 4, the
   processor's min/max pixels = the playground budgets) → ``OUT/random``.
2. **skills** — supervised base skills on :mod:`mgpo.playground.skills` examples from the
   "skills" seed range: grounding cards *by name* (``bbox_2d`` JSON on the overview), reading a
   card's close-up (``\\boxed{digit}`` / ``\\boxed{letter}``), direct answers to questions the
   overview answers (colours present, card count). Never the task's question → box. Each
   example's tokens come from the engine's own assembly (``QwenBackend.start`` on the user
   turn, then the target tokens + ``<|im_end|>`` with ``policy=1``), and the loss is
   −mean log π(target token) from the trainer's forward (``train.logprobs.collate`` +
   ``token_logprobs``); full fine-tune, AdamW → ``OUT/base`` (a normal checkpoint).
3. **rl** — MGPO with the project's trainer (:class:`train.loop.Trainer`) on scenes from the
   "train" seed range written as PNG + JSONL (``OUT/rl_data``), the paper's prompts, the
   binary accuracy reward only, the playground pixel budgets → ``OUT/rl`` (``metrics.jsonl``,
   ``curves.png``, ``adapter/``). LoRA, because that is what the trainer trains (its
   reference policy for the KL is the adapter disabled); on a 256-wide model r 64 is nearly
   full rank, so LoRA costs little expressiveness here.
4. **eval** — the eval harness (:func:`mgpo.eval.runner.evaluate`, the same code as ``python -m
   mgpo.eval --benchmark playground``) on held-out TEST seeds, before RL (``OUT/base``) and
   after (``OUT/base`` + ``OUT/rl/adapter``): direct and MGPO accuracy, valid-box ratio, mean IoU
   with the hidden box, crop-only accuracy → ``OUT/eval/{before,after}-{direct,mgpo}`` and
   ``OUT/summary.json``.

Status: the stages run end to end, but the CPU-sized recipe does not learn yet. After ~6k skill
examples (15 min on 2 CPU cores) grounding has the format but IoU ≈ 0.01, reading is at chance,
and under the paper's MGPO prompts turn 1 loses the fenced-JSON format, so RL sees reward 0 and
no valid boxes. The next steps are the GPU size (``--size gpu``) with far more skill data, and
bridging the skill prompts to the MGPO turns.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SIZES: dict[str, dict] = {
    # ≤ 3 minutes on 2 CPU cores (the CI recipe)
    "cpu": dict(hidden=256, layers=4, vision_hidden=128, vision_depth=4,
                skill_scenes=48, skill_steps=60, skill_batch=16, skill_lr=2e-3,
                rl_scenes=64, rl_steps=12, prompts_per_step=4, group_size=8, rl_lr=1e-3,
                eval_scenes=16),
    # ≤ 10 minutes on one H200 (not yet measured)
    "gpu": dict(hidden=512, layers=8, vision_hidden=256, vision_depth=6,
                skill_scenes=4000, skill_steps=3000, skill_batch=64, skill_lr=1e-3,
                rl_scenes=4000, rl_steps=150, prompts_per_step=32, group_size=8, rl_lr=5e-4,
                eval_scenes=200),
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
    # base skills (supervised)
    skill_scenes: int = 48            # scenes of the "skills" split (≈ 11 examples each)
    skill_steps: int = 60             # optimizer steps
    skill_batch: int = 16             # examples per step
    skill_lr: float = 2e-3
    skill_prompt: str = "where"       # grounding wording (mgpo.playground.skills.GROUND_PROMPTS)
    skill_system: str = "mgpo"        # system prompt of the skill examples: mgpo (the paper's) | default
    skill_simple: float = 0.3         # share of clutter-free skill scenes
    skills_from: str = ""             # continue the skills stage from this checkpoint ("" = OUT/random)
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
    stages: str = "model,skills,rl,eval"

    @classmethod
    def for_size(cls, size: str, **overrides) -> "RecipeConfig":
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
        return cls(size=size, **{**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}})

    def check(self) -> "RecipeConfig":
        from mgpo.playground.skills import GROUND_PROMPTS

        problems = []
        for name in ("hidden", "layers", "vision_hidden", "vision_depth", "skill_batch", "rl_scenes",
                     "prompts_per_step", "group_size", "lora_r", "max_new_tokens", "eval_scenes"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.hidden % 8:
            problems.append("hidden must be a multiple of 8 (4 heads with an even M-RoPE split)")
        for name in ("skill_scenes", "skill_steps", "rl_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be ≥ 0")
        if self.skill_prompt not in GROUND_PROMPTS:
            problems.append(f"skill_prompt must be one of {', '.join(GROUND_PROMPTS)}")
        if self.skill_system not in ("mgpo", "default"):
            problems.append("skill_system must be mgpo or default")
        unknown = [s for s in self.stage_list() if s not in STAGES]
        if unknown:
            problems.append(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def stage_list(self) -> list[str]:
        return [s.strip() for s in self.stages.split(",") if s.strip()]


STAGES = ("model", "skills", "rl", "eval")


def _log(msg: str) -> None:
    print(f"[playground] {msg}", file=sys.stderr, flush=True)


# ----- stage 1: the model --------------------------------------------------------------------------

def build_model(cfg: RecipeConfig, out: Path) -> Path:
    """A random small Qwen2.5-VL checkpoint whose processor uses the playground budgets."""
    from mgpo.playground.world import Budgets
    from mgpo.tiny import build

    b = Budgets().engine()
    return build(out, seed=cfg.seed, layers=cfg.layers, hidden=cfg.hidden, vision_hidden=cfg.vision_hidden,
                 vision_depth=cfg.vision_depth, min_pixels=b["min_pixels"], max_pixels=b["max_pixels"])


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


def example_sequence(backend, example, system: str | None = None, sample: int = 0) -> Sequence:
    """Tokens of a skill example through the engine's assembly: the user turn as
    ``QwenBackend.start`` renders it (with the generation prompt), then the target's tokens and
    ``<|im_end|>`` with policy 1 — exactly what a sampled reply would be in a rollout."""
    messages = example.messages()[:1]
    if system is not None:
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]}, *messages]
    row = backend.start([messages]).rows[0]
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


def train_skills(loaded, cfg: RecipeConfig, log_path: Path | None = None) -> list[dict]:
    """Full fine-tune on the skill examples; returns the per-step log (loss per skill)."""
    import torch

    from mgpo.generation import QwenBackend
    from mgpo.playground.skills import skill_examples
    from mgpo.playground.world import Budgets

    backend = QwenBackend(loaded.model, loaded.processor)
    core = backend.core
    system = skill_system_prompt(cfg.skill_system)
    t0 = time.perf_counter()
    examples = list(skill_examples(cfg.skill_scenes, budgets=Budgets(), prompt=cfg.skill_prompt,
                                   simple=cfg.skill_simple))
    seqs = [example_sequence(backend, ex, system, k) for k, ex in enumerate(examples)]
    skills = [ex.skill for ex in examples]
    _log(f"skills: {len(seqs)} examples from {cfg.skill_scenes} scenes "
         f"({', '.join(f'{s} {skills.count(s)}' for s in sorted(set(skills)))}) in {time.perf_counter() - t0:.1f}s")
    torch.manual_seed(cfg.seed)
    core.requires_grad_(True)
    core.train()
    opt = torch.optim.AdamW([p for p in core.parameters() if p.requires_grad], lr=cfg.skill_lr, weight_decay=0.0)
    warm = max(1, cfg.skill_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm))
    rng = random.Random(cfg.seed)
    order: list[int] = []
    history = []
    log = log_path.open("w") if log_path else None
    try:
        for step in range(1, cfg.skill_steps + 1):
            if len(order) < cfg.skill_batch:
                order += rng.sample(range(len(seqs)), len(seqs))
            idx, order = order[:cfg.skill_batch], order[cfg.skill_batch:]
            loss, per_row = sft_loss(core, backend, [seqs[i] for i in idx])
            loss.backward()
            grad = float(torch.nn.utils.clip_grad_norm_(core.parameters(), 1.0))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            by_skill: dict[str, list[float]] = {}
            for i, v in zip(idx, per_row.tolist()):
                by_skill.setdefault(skills[i], []).append(v)
            row = {"step": step, "loss": float(loss.detach()), "grad_norm": grad, "lr": sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0,
                   "skill_loss": {k: sum(v) / len(v) for k, v in sorted(by_skill.items())}}
            history.append(row)
            if log:
                log.write(json.dumps(row) + "\n")
                log.flush()
            if step == 1 or step % 10 == 0 or step == cfg.skill_steps:
                parts = ", ".join(f"{k} {v:.3f}" for k, v in row["skill_loss"].items())
                _log(f"skills step {step}/{cfg.skill_steps}: loss {row['loss']:.3f} ({parts}; {row['seconds']:.0f}s)")
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


# ----- stage 3: RL ---------------------------------------------------------------------------------

def write_rl_data(out: Path, n: int, start: int = 0) -> Path:
    """``n`` scenes of the "train" split as PNG + JSONL (question, four choices, answer letter —
    no box: the ground truth box never reaches RL)."""
    from mgpo.playground.world import make_layout, render, split_seeds

    images = out / "scenes"
    images.mkdir(parents=True, exist_ok=True)
    path = out / "train.jsonl"
    with path.open("w") as f:
        for seed in split_seeds("train", n, start):
            layout = make_layout(seed)
            png = images / f"scene-{seed}.png"
            if not png.is_file():      # a rerun reuses the scenes already written
                render(layout).save(png, compress_level=1)
            card = layout.cards[layout.target]
            rec = {"image": str(png.relative_to(out)), "question": f"What is the number on the {card.colour} card?",
                   "choices": list(layout.choices), "answer": layout.answer, "id": f"scene-{seed}"}
            f.write(json.dumps(rec) + "\n")
    return path


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


def run_rl(cfg: RecipeConfig, base: Path, out: Path) -> dict:
    from .loop import train

    data = write_rl_data(out.parent / "rl_data", cfg.rl_scenes)
    return train(rl_config(cfg, base, data, out))


# ----- stage 4: eval -------------------------------------------------------------------------------

def run_eval(cfg: RecipeConfig, base: Path, adapter: Path | None, out: Path, mode: str) -> dict:
    """The eval harness on held-out test scenes (greedy), as ``python -m mgpo.eval --benchmark
    playground --seed S --limit N --model BASE [--adapter A] --mode MODE`` runs it."""
    from mgpo.engine import Engine, EngineConfig
    from mgpo.eval.datasets import open_benchmark
    from mgpo.eval.runner import EvalConfig, evaluate
    from mgpo.playground.world import Budgets

    b = Budgets().engine()
    ecfg = EvalConfig(benchmark="playground", out=str(out), model=str(base),
                      adapter=str(adapter) if adapter else None, mode=mode, limit=cfg.eval_scenes,
                      batch_size=8, min_pixels=b["min_pixels"], max_pixels=b["max_pixels"],
                      max_new_tokens=cfg.max_new_tokens, seed=cfg.eval_seed)
    bench = open_benchmark("playground", None, None, seed=cfg.eval_seed, limit=cfg.eval_scenes)
    engine = Engine.from_pretrained(str(base), str(adapter) if adapter else None, config=EngineConfig(
        max_turns=2, min_pixels=b["min_pixels"], max_pixels=b["max_pixels"], max_new_tokens=cfg.max_new_tokens,
        temperature=0.0, seed=cfg.eval_seed), device="cpu" if not _cuda() else None)
    return evaluate(engine, bench, ecfg, progress=False, overwrite=True)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def summarize(results: dict) -> dict:
    """The numbers the recipe reports from one ``results.json``."""
    s, g, beh, crop = (results.get(k) or {} for k in ("scores", "grounding", "behaviour", "crop_only"))
    return {"accuracy": s.get("overall"), "n": s.get("n"), "valid_box_ratio": beh.get("valid_box_ratio"),
            "mean_iou": g.get("mean_iou"), "mean_iou_all": g.get("mean_iou_all"),
            "crop_only_accuracy": crop.get("accuracy") if crop else None}


def rl_curve(metrics_path: Path) -> list[dict]:
    """(step, reward, valid_box) per RL step from the trainer's metrics.jsonl."""
    from .metrics import read

    return [{"step": r["step"], "reward": r.get("reward"), "valid_box": r.get("valid_box")}
            for r in read(metrics_path) if "step" in r]


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
        hist = train_skills(loaded, cfg, out / "skills.jsonl")
        save_checkpoint(loaded, base_dir, _card(cfg, hist))
        summary["skills"] = {"first_loss": hist[0]["loss"] if hist else None,
                             "last_loss": hist[-1]["loss"] if hist else None}
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


def _card(cfg: RecipeConfig, hist: list[dict]) -> str:
    last = hist[-1]["loss"] if hist else float("nan")
    return (f"# playground base model ({cfg.size} recipe)\n\nA random Qwen2.5-VL (text {cfg.hidden}×{cfg.layers}, "
            f"vision {cfg.vision_hidden}×{cfg.vision_depth}, byte tokenizer) fully fine-tuned for {cfg.skill_steps} "
            f"steps × {cfg.skill_batch} examples on mgpo.playground.skills examples from {cfg.skill_scenes} scenes of "
            f"the 'skills' seed range: grounding cards by name ({cfg.skill_prompt!r} prompt, bbox_2d JSON), reading "
            f"card close-ups, direct answers about colours/counts. Never the task's question → box. Final loss "
            f"{last:.3f}. Built by `python -m train.playground`.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.playground", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", default="cpu", choices=sorted(SIZES))
    for f in fields(RecipeConfig):
        if f.name in ("out", "size"):
            continue
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), default=None)
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
    if curve:
        print("RL reward: " + " ".join(f"{r['reward']:.2f}" for r in curve))
        print("RL valid box: " + " ".join(f"{r['valid_box']:.2f}" for r in curve))
    print(f"wrote {cfg.out}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The playground recipe: a small Qwen2.5-VL, base skills by supervised training, MGPO RL, eval.

    python -m train.playground --out runs/playground [--size cpu|gpu|ci] [--rl-steps N] ...

Stages (each writes into ``--out``; ``--stages`` picks some):

1. **model** — a random-weight Qwen2.5-VL at a small size (``mgpo.tiny.build``; CPU size: text
   hidden 256 × 4 layers, vision hidden 128 × depth 4, the processor's min/max pixels = the
   playground budgets) with a byte-level BPE tokenizer learned from the playground's texts
   (:func:`mgpo.playground.skill_examples.corpus`: ~4× fewer tokens than bytes) and token embeddings drawn
   with std ``embed_std`` → ``OUT/random``.
2. **skills** — what a pretrained VLM brings, taught on the "skills" seed range, never the task's
   question → box: (0) ``vision_steps`` of vision-tower pretraining through a linear probe thrown
   away afterwards (which card colour is under each overview token, and the token's row and
   column, again on the card tokens alone; the stripes' orientation under each crop token), then with
   ``vision_whiten`` the merger's output reduced to the probe's directions, whitened
   (:func:`vision.whiten_merger`), and scaled to a token embedding's norm; scenes are rendered in
   ``workers`` processes with a GPU (:func:`runtime.scene_map`); (1) supervised text
   skills on a stream of fresh scenes — grounding cards *by name* (``bbox_2d`` JSON on the
   overview), the board cell a named card sits in, reading a card's close-up
   (``\boxed{orientation}`` / ``\boxed{letter}``), reading it in MGPO's own turn 2 after a
   grounding turn about another question (``zoom``), direct answers to questions the overview
   answers (colours present, card count), in the phases of ``curriculum`` (each its own skills and
   learning rate, e.g. the board cell first, then grounding, then zoom, earlier skills kept).
   Each example's tokens come from the engine's own assembly (:func:`skills.example_prompts`:
   ``QwenBackend.start`` on the first user turn, earlier replies and ``QwenBackend.append`` for
   later turns, then the target tokens + ``<|im_end|>`` with ``policy=1``) and the loss is −mean log π(target token)
   from the trainer's forward; full fine-tune of the language model, AdamW → ``OUT/base``
   (a normal checkpoint, rewritten at every held-out evaluation).
3. **rl** — MGPO with the project's trainer (:class:`train.loop.Trainer`) on scenes from the
   "train" seed range written as PNG + JSONL (``OUT/rl_data``), the paper's prompts, the
   binary accuracy reward only, the playground pixel budgets → ``OUT/rl`` (``metrics.jsonl``
   with the rollouts' IoU against the hidden box added for analysis, ``curves.png``,
   ``adapter/``, ``snapshots/step-NNNN`` early, quarter, middle, three quarters and late). LoRA,
   because that is what the trainer trains (its reference policy for the KL is the adapter disabled).
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
import json
import shutil
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

from ..config import field_help, yes_no
from .cards import base_card, base_story, release_card
from .settings import SIZES, RecipeConfig
from .rl import rl_curve, run_rl, snapshot_steps
from .runtime import cuda_available, echo
from .skills import save_checkpoint, train_skills
from .vision import pretrain_vision


def build_model(cfg: RecipeConfig, out: Path) -> Path:
    """A random small Qwen2.5-VL checkpoint whose processor uses the playground budgets."""
    from mgpo.playground.skill_examples import corpus
    from mgpo.tiny import build, build_tokenizer

    b = cfg.budgets().engine()
    tok = build_tokenizer(corpus(cfg.corpus_scenes), cfg.vocab_size)
    # embeddings with std embed_std: at the config's 0.02 (norm ≈ 0.3) a token's own identity drowned
    # under the first layer's output (norm ≈ 30) and the model never learned to copy from the prompt
    return build(out, seed=cfg.seed, layers=cfg.layers, hidden=cfg.hidden, vision_hidden=cfg.vision_hidden,
                 vision_depth=cfg.vision_depth, min_pixels=b["min_pixels"], max_pixels=b["max_pixels"], tokenizer=tok,
                 embed_std=cfg.embed_std or None)


def run_eval(cfg: RecipeConfig, base: Path, adapter: Path | None, out: Path, mode: str, split: str = "test") -> dict:
    """The eval harness on held-out scenes (greedy), as ``python -m mgpo.eval --benchmark
    playground --split SPLIT --seed S --limit N --model BASE [--adapter A] --mode MODE`` runs it:
    ``eval_scenes`` TEST scenes, or ``val_scenes`` VAL scenes (for choosing the checkpoint)."""
    from mgpo.engine import Engine
    from mgpo.eval.datasets import open_benchmark
    from mgpo.eval.runner import EvalConfig, evaluate
    b = cfg.budgets().engine()
    n = cfg.eval_scenes if split == "test" else cfg.val_scenes
    ecfg = EvalConfig.of(benchmark="playground", out=str(out), model=str(base),
                      adapter=str(adapter) if adapter else None, mode=mode, limit=n, split=split,
                      batch_size=8, min_pixels=b["min_pixels"], max_pixels=b["max_pixels"],
                      max_new_tokens=cfg.max_new_tokens, seed=cfg.eval_seed, overview=cfg.overview,
                      cards=cfg.cards, max_turns=cfg.turns)
    bench = open_benchmark("playground", None, None, seed=cfg.eval_seed, limit=n, split=split,
                           overview=cfg.overview, cards=cfg.cards)
    engine = Engine.from_pretrained(str(base), ecfg.adapter, config=ecfg.engine,
                                    device="cpu" if not cuda_available() else None)
    return evaluate(engine, bench, ecfg, progress=False, overwrite=True)


def summarize(results: dict) -> dict:
    """The numbers the recipe reports from one ``results.json``."""
    s, g, beh, crop = (results.get(k) or {} for k in ("scores", "grounding", "behaviour", "crop_only"))
    return {"accuracy": s.get("overall"), "n": s.get("n"), "valid_box_ratio": beh.get("valid_box_ratio"),
            "mean_iou": g.get("mean_iou"), "mean_iou_all": g.get("mean_iou_all"), "hits": g.get("hits"),
            "accuracy_after_hit": g.get("accuracy_after_hit"),
            "crop_only_accuracy": crop.get("accuracy") if crop else None,
            **({"wrong_card_rate": g["wrong_card_rate"]} if "wrong_card_rate" in g else {})}


def checkpoint_list(cfg: RecipeConfig, rl_dir: Path | None) -> list[tuple[str, int, Path | None]]:
    """``(name, RL step, adapter or None)`` of the base and every RL snapshot saved in ``rl_dir``."""
    out: list[tuple[str, int, Path | None]] = [("before RL", 0, None)]
    for step, name in snapshot_steps(cfg.rl_steps).items() if rl_dir is not None else ():
        path = rl_dir / "snapshots" / f"step-{step:04d}"
        if path.is_dir():
            out.append((name, step, path))
    return out


def evaluate_checkpoints(cfg: RecipeConfig, out: Path, base_dir: Path, rl_dir: Path | None) -> dict:
    """Every checkpoint (the base, then each RL snapshot) on ``val_scenes`` VAL scenes (MGPO) and on
    ``eval_scenes`` TEST scenes (direct and MGPO). The release's checkpoint is chosen on VAL alone
    — MGPO accuracy, then hits, then the later step — never on test. A checkpoint whose results
    are already written is not evaluated again (an interrupted eval stage resumes)."""
    rows = []
    for name, step, adapter in checkpoint_list(cfg, rl_dir):
        tag = f"step-{step:04d}"
        row = {"name": name, "step": step}
        for split, mode in (("val", "mgpo"), ("test", "direct"), ("test", "mgpo")):
            folder = out / "eval" / f"{tag}-{split}-{mode}"
            done = folder / "results.json"
            made = [base_dir / "config.json"] + ([adapter / "adapter_config.json"] if adapter is not None else [])
            stale = done.is_file() and done.stat().st_mtime < max(p.stat().st_mtime for p in made)
            results = json.loads(done.read_text()) if done.is_file() and not stale else run_eval(
                cfg, base_dir, adapter, folder, mode, split)
            row.setdefault(split, {})[mode] = summarize(results)
        echo(f"eval {name} (step {step}): val mgpo {row['val']['mgpo']['accuracy']:.3f}, test mgpo "
             f"{row['test']['mgpo']['accuracy']:.3f} (hits {row['test']['mgpo']['hits']}), test direct "
             f"{row['test']['direct']['accuracy']:.3f}")
        rows.append(row)
    chosen = max(rows, key=lambda r: (r["val"]["mgpo"]["accuracy"] or 0.0, r["val"]["mgpo"]["hits"] or 0, r["step"]))
    result = {"checkpoints": rows, "selected": chosen["name"], "before": rows[0]["test"]}
    if len(rows) > 1:
        result["after"] = chosen["test"]
    return result


def _release_curves() -> list[tuple[str, str]]:
    """The panels of the release's curves.png: the trainer's own reward, valid-box and IoU curves."""
    from ..metrics import CURVES

    return [(k, t) for k, t in CURVES if k in ("reward", "valid_box", "iou", "hit", "wrong_card")]


def half_adapter(path: Path) -> None:
    """Store a LoRA adapter's float32 tensors as float16, in place: half the bytes (a release's five
    adapters fit its size budget), loaded back into the float32 base as float32 (peft copies them
    into its own LoRA weights)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}, str(path), metadata=meta)


def ship(cfg: RecipeConfig, out: Path, release: Path, summary: dict) -> Path:
    """The release folder the app's Playground tab and the CLI load (:mod:`mgpo.playground.release`):
    ``model/`` (the base-skills model), ``adapters/step-NNNN`` (each RL snapshot, stored in float16:
    :func:`half_adapter`), the index, the RL metrics and curves, the summary and a model card."""
    from mgpo.playground.release import Checkpoint, Release, write_index

    from ..metrics import plot

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
            half_adapter(tmp / "adapters" / src.name / "adapter_model.safetensors")
            checkpoints.append(Checkpoint(name, step, tmp / "adapters" / src.name))
    if (rl_dir / "metrics.jsonl").is_file():
        shutil.copy(rl_dir / "metrics.jsonl", tmp / "metrics.jsonl")
        plot(tmp / "metrics.jsonl", tmp / "curves.png", _release_curves())
    for name in ("skills.jsonl", "recipe.json"):
        if (out / name).is_file():
            shutil.copy(out / name, tmp / name)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (tmp / "README.md").write_text(release_card(cfg, summary, checkpoints, base_story(base_dir)))
    chosen = summary.get("selected")
    write_index(tmp, checkpoints, chosen if chosen in {c.name for c in checkpoints} else checkpoints[-1].name,
                overview=cfg.overview, cards=cfg.cards, max_turns=cfg.turns)
    Release.load(tmp)                      # refuse to ship a folder the app could not open
    if release.exists():
        shutil.rmtree(release)
    tmp.rename(release)
    return release


RUN_CONTROL = ("out", "stages", "release", "workers")   # where a run writes and how many processes draw: not its result


def settings_key(cfg: RecipeConfig) -> dict:
    """The settings a stage's result depends on: every field but :data:`RUN_CONTROL`."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUN_CONTROL}


def run(cfg: RecipeConfig) -> dict:
    """The stages of ``cfg.stages`` in order. A stage that finished in ``OUT`` under the same
    settings (``summary.json``'s ``finished``) is not run again while its output is there, unless an
    earlier stage of this run ran: the same command rerun after an interruption goes on where it
    stopped (RL from its newest checkpoint, eval from its last finished checkpoint, an interrupted
    skills stage from its start)."""
    from transformers.utils import logging as hf_logging

    from mgpo.model import load_model

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
    finished = summary.setdefault("finished", {})
    random_dir, base_dir, rl_dir = out / "random", out / "base", out / "rl"
    _check_inputs(cfg, stages, random_dir, base_dir)
    b = cfg.budgets().engine()
    key = settings_key(cfg)
    made = {"model": random_dir / "config.json", "skills": base_dir / "config.json",
            "rl": rl_dir / "adapter" / "adapter_config.json", "eval": out / "summary.json"}
    ran: list[str] = []

    def todo(stage: str) -> bool:
        if stage not in stages:
            return False
        if not ran and finished.get(stage) == key and made[stage].is_file():
            echo(f"{stage}: finished already in {out} with these settings (summary.json); not run again")
            return False
        finished.pop(stage, None)
        return True

    def done(stage: str, t: float) -> None:
        ran.append(stage)
        summary["seconds"][stage] = time.perf_counter() - t
        finished[stage] = key
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    if todo("model"):
        t = time.perf_counter()
        build_model(cfg, random_dir)
        done("model", t)
    if todo("skills"):
        t = time.perf_counter()
        loaded = load_model(cfg.skills_from or str(random_dir), device="cuda" if cuda_available() else "cpu",
                            dtype="float32", min_pixels=b["min_pixels"], max_pixels=b["max_pixels"])
        if cfg.vision_steps:
            vhist = pretrain_vision(loaded, cfg, out / "vision.jsonl")
            summary["vision"] = {"steps": len(vhist), "last_loss": vhist[-1]["loss"], "accuracy": vhist[-1]["accuracy"]}
        shutil.rmtree(out / "base-snapshots", ignore_errors=True)   # an earlier base's
        hist = train_skills(loaded, cfg, out / "skills.jsonl", save_to=base_dir, snapshots=out / "base-snapshots")
        save_checkpoint(loaded, base_dir, base_card(cfg, hist))
        evals = [r for r in hist if "eval" in r]
        summary["skills"] = {"steps": len(hist), "first_loss": hist[0]["loss"] if hist else None,
                             "last_loss": hist[-1]["loss"] if hist else None,
                             "eval": evals[-1]["eval"] if evals else None,
                             "eval_curve": [{"step": r["step"], **r["eval"]} for r in evals]}
        del loaded
        done("skills", t)
    if todo("rl"):
        t = time.perf_counter()
        if "skills" in ran and rl_dir.exists():   # a new base: the RL of the old one is stale
            shutil.rmtree(rl_dir)
        run_rl(cfg, base_dir, rl_dir)   # resumes from its newest checkpoint in rl_dir, if any
        summary["rl_curve"] = rl_curve(rl_dir / "metrics.jsonl")
        done("rl", t)
    if todo("eval"):
        t = time.perf_counter()
        # RL snapshots from an earlier run belong to an earlier base: only use them if skills were not retrained
        fresh = "rl" in stages or "skills" not in ran
        summary.update(evaluate_checkpoints(cfg, out, base_dir, rl_dir if fresh else None))
        done("eval", t)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if "ship" in stages:
        release = ship(cfg, out, Path(cfg.release) if cfg.release else out / "release", summary)
        echo(f"release written to {release}")
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


def _default_text(name: str, default) -> str:
    """A flag's default for ``--help``: the field's, or each size's where a size sets it."""
    sized = {size: values[name] for size, values in SIZES.items() if name in values}
    show = lambda v: ("yes" if v else "no") if isinstance(v, bool) else repr(v)   # noqa: E731
    if not sized:
        return f"default: {show(default)}"
    if any(len(show(v)) > 32 for v in sized.values()):
        return "default: by --size, see SIZES in train/playground/settings.py"
    return "default by --size: " + ", ".join(f"{size} {show(v)}" for size, v in sorted(sized.items())) + \
        (f"; else {show(default)}" if len(sized) < len(SIZES) else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.playground", description=__doc__.split("\n\n")[0])
    helps = field_help(RecipeConfig)
    p.add_argument("--out", required=True, help=helps["out"])
    p.add_argument("--size", default="cpu", choices=sorted(SIZES), help=helps["size"] + " (default: cpu)")
    for f in fields(RecipeConfig):
        if f.name in ("out", "size"):
            continue
        kind = type(f.default)
        text = f"{helps.get(f.name, '')} ({_default_text(f.name, f.default)})".strip()
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=text.replace("%", "%%"),
                       type=yes_no if kind is bool else kind, metavar="yes|no" if kind is bool else None)
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

"""The model cards: the base checkpoint's (its story across continued runs) and the release's
(how it was made, what it measured); both regenerate from the settings and the logs."""

from __future__ import annotations

from pathlib import Path

from .settings import Phase, RecipeConfig, vision_frozen


NEVER = "Never the task's question, neither → box nor → answer"
NEVER_MGPO = ", and never a box as the target of MGPO's turn-1 template."
BUT_MGPO = (" — but MGPO's turn-1 template itself, around other questions about the card (the `ask` and "
            "`where` wordings), had the card's box as its target.")


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
    per_ckpt = checkpoints_markdown(summary)
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
(`mgpo.playground.world`): {cfg.budgets().scene}-px scenes with {_task_cards(cfg)}, a label with fine stripes on each;
the question asks which way the stripes on one card run, which is illegible in the {cfg.overview}-px overview the model
sees first (`--overview {cfg.overview}{f" --cards {cfg.cards}" if cfg.cards != 1 else ""}`: run it with that world's scenes, as `--model RELEASE` does).{_turns_text(cfg)}

## How it was made
### 1. Base skills (`model/`)
{_with_scores(story, held) if story else f"{skills_text(cfg)} {held_out_text(held)}{chr(10) * 2}{templates_markdown(cfg)}"}

### 2. MGPO RL (`adapters/`)
LoRA r {cfg.lora_r} on the language model{' and the vision tower' if cfg.rl_vision else ''}, {cfg.rl_steps} steps × {cfg.prompts_per_step} prompts × {cfg.group_size}
samples at temperature {cfg.rl_temperature}, lr {cfg.rl_lr}{'' if cfg.rl_schedule == 'constant' else f', {cfg.rl_schedule} schedule'}{_updates(cfg)}, with the project's trainer
on scenes of the "train" seed range, the paper's prompts ({cfg.turns} turns) and the **binary accuracy reward only**; the
ground-truth boxes never reach it. Checkpoints kept: {ckpts}; their adapters are stored in float16
(half the bytes) and load into the float32 base as float32.

## Measured (held-out scenes, greedy, `python -m mgpo.eval --benchmark playground`)
Every checkpoint, on VAL scenes (where the release's default checkpoint is chosen) and TEST scenes (what is
reported; never used for a choice):

{per_ckpt}

Before RL and after it (the checkpoint chosen on VAL), TEST scenes:

{table}

RL per step (rollouts at temperature {cfg.rl_temperature}; `metrics.jsonl`, `curves.png`):
- reward: {" ".join(f"{r['reward']:.2f}" for r in curve) or "–"}
- valid-box ratio: {" ".join(f"{r['valid_box']:.2f}" for r in curve) or "–"}
- IoU with the hidden box (analysis only): {" ".join(_fmt(r.get('iou')) for r in curve) or "–"}
- boxes on the target, IoU ≥ 0.5 (analysis only): {" ".join(_fmt(r.get('hit')) for r in curve) or "–"}{_wrong_card_line(curve)}

## Use
RELEASE is this folder.
```bash
python -m mgpo.infer --model RELEASE --checkpoint late --image scene.png \\
    --question "Which way do the stripes on the red card run?" \\
    --choices horizontal vertical "rising diagonal" "falling diagonal"   # its model, adapter and pixel budgets
python app.py --playground RELEASE   # the Playground tab
```
"""


def checkpoints_markdown(summary: dict) -> str:
    """The eval stage's per-checkpoint numbers as a table ("" when it did not run)."""
    rows = summary.get("checkpoints") or []
    if not rows:
        return "(no per-checkpoint evaluation in this run)"
    lines = ["| checkpoint | RL step | VAL MGPO accuracy (n) | TEST MGPO accuracy | valid boxes | hits (IoU ≥ 0.5) | "
             "TEST direct accuracy (n) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        v, t, d = r["val"]["mgpo"], r["test"]["mgpo"], r["test"]["direct"]
        mark = " **(chosen on VAL)**" if r["name"] == summary.get("selected") else ""
        lines.append(f"| {r['name']}{mark} | {r['step']} | {_fmt(v.get('accuracy'))} ({v.get('n')}) | "
                     f"{_fmt(t.get('accuracy'))} | {_fmt(t.get('valid_box_ratio'))} | {t.get('hits')} of {t.get('n')} | "
                     f"{_fmt(d.get('accuracy'))} ({d.get('n')}) |")
    return "\n".join(lines)


def phases_done(cfg: RecipeConfig, steps: int | None = None) -> list[tuple[Phase, int]]:
    """``(phase, steps it ran)`` for the phases a skills stage stopped after ``steps`` in total
    reached (all of them in full when ``steps`` is None): what a checkpoint saved mid-run holds."""
    out, left = [], steps
    for ph in cfg.phases():
        if left is None:
            out.append((ph, ph.steps))
            continue
        if left <= 0:
            break
        out.append((ph, min(ph.steps, left)))
        left -= ph.steps
    return out


def skills_text(cfg: RecipeConfig, steps: int | None = None) -> str:
    """What the base-skills stage trained, in words (the base checkpoint's card and the release's);
    ``steps``: how many it had run when the checkpoint was saved (a phase cut short says so, the
    phases not reached are left out and counted)."""
    names = {"ground": "grounding a card *by its colour* (Qwen's `bbox_2d` JSON on the overview; wordings "
                       f"{cfg.skill_prompt!r})",
             "cell": "the board cell a named card sits in",
             "read": "reading a card's close-up (the crop as turn 2 feeds it → the stripes' orientation or the letter of four choices)",
             "zoom": ("reading in MGPO's second turn (a two-turn conversation: turn 1 MGPO's grounding template around "
                      "another question about the card, answered with its box; turn 2 the crop of that box in MGPO's "
                      "turn-2 template with a reading question that does not name the card → the letter of the "
                      "stripes' orientation)"),
             "answer": "direct answers to questions the overview does answer (colours present, number of cards)",
             "group": "one box around every card (Qwen's `bbox_2d` JSON on the overview)",
             "zoom3": ("reading in MGPO's third turn (turn 1 MGPO's grounding template around another question about "
                       "the card, answered with the box around every card; turn 2 that box's crop in the further-look "
                       "template, answered with the card's box; turn 3 the crop of that box in MGPO's turn-2 template "
                       "→ the letter of the stripes' orientation; both boxes context, never learned)")}
    vision = (f"{cfg.vision_steps} steps of vision-tower probe pretraining (card colour, row and column per overview "
              f"token, stripe orientation per crop token{', merger output whitened onto the probe directions' if cfg.vision_whiten else ''}), then "
              if cfg.vision_steps else "")
    frozen = vision_frozen(cfg)
    done = phases_done(cfg, steps)
    skills = "; ".join(f"{k}: {names[k]}" for k in trained_skills(cfg, steps) if k in names)
    phases = ", then ".join(f"{'+'.join(ph.skills)} for {ran if ran == ph.steps else f'{ran} of {ph.steps} planned'} steps "
                            f"{f'(of a learning-rate schedule planned for {ph.schedule}) ' if ph.schedule else ''}"
                            f"at lr {ph.lr:g} "
                            f"({100 * (cfg.skill_simple if ph.simple is None else ph.simple):.0f} % clutter-free scenes"
                            f"{', the vision tower trained too' if frozen and ph.vision else ''}"
                            f"{f', {cfg.skill_pool_of(ph):,} scenes drawn once and read over and over' if cfg.skill_pool_of(ph) else ''}"
                            f"{f', scenes from index {ph.start:,}' if ph.start is not None else ''})"
                            for ph, ran in done)
    skipped = cfg.phases()[len(done):]
    if steps is not None and (skipped or (done and done[-1][1] < done[-1][0].steps)):
        planned = sum(ph.steps for ph in cfg.phases())
        phases += (f" — stopped there, after {steps} of the {planned} planned steps"
                   + (f" ({len(skipped)} later phase{'s' if len(skipped) > 1 else ''} not run)" if skipped else ""))
    tuned = ("the whole model, vision tower included" if not frozen else
             "the language model, the vision tower frozen except in the phases that say they trained it too"
             if any(ph.vision for ph, _ in done) else "the language model, the vision tower frozen")
    return (f"{vision}a full fine-tune of {tuned} (AdamW, {cfg.skill_batch} examples a step, a fresh optimizer per phase) "
            f"on scenes of the \"skills\" seed range{f' from index {cfg.skill_start:,}' if cfg.skill_start else ''} "
            f"with {_cards(cfg)}"
            f": {phases}. Skills: {skills}. "
            + NEVER + (NEVER_MGPO if "ask" not in cfg.skill_prompt and "where" not in cfg.skill_prompt else BUT_MGPO))


def trained_skills(cfg: RecipeConfig, steps: int | None = None) -> tuple[str, ...]:
    """The skills of the phases run within ``steps`` (all of the curriculum's when None)."""
    return tuple(dict.fromkeys(name for ph, _ in phases_done(cfg, steps) for name in ph.skills))


def templates_markdown(cfg: RecipeConfig, steps: int | None = None) -> str:
    """Every prompt template the base-skills stage of ``cfg`` trained with (within ``steps``) and
    what it learned, as a Markdown table ({name} = "red card" etc.; ⏎ = a line break)."""
    from mgpo.playground.skill_prompts import trained_templates

    rows = [f"| {skill} | {_skill_systems_text(cfg, skill, steps)} | "
            f"`{t.replace(chr(10), ' ⏎ ')}` | {target} |"
            for skill, t, target in trained_templates(trained_skills(cfg, steps), cfg.skill_prompt)]
    return "\n".join(["| skill | system prompt (one drawn per example) | prompt template | target |",
                      "|---|---|---|---|", *rows])


def _skill_systems_text(cfg: RecipeConfig, skill: str, steps: int | None = None) -> str:
    """The system prompts ``skill`` drew from, phase by phase where the phases that train it differ."""
    done = [(i + 1, _systems_text(cfg.skill_systems(skill, ph))) for i, (ph, _) in enumerate(phases_done(cfg, steps))
            if skill in ph.skills]
    texts = list(dict.fromkeys(t for _, t in done))
    if len(texts) <= 1:
        return texts[0] if texts else _systems_text(cfg.skill_systems(skill))
    return "; ".join(f"phase{'s' if len(ns) > 1 else ''} {', '.join(map(str, ns))}: {t}"
                     for t in texts for ns in [[i for i, u in done if u == t]])


def _systems_text(kinds: tuple[str, ...]) -> str:
    """"MGPO's", or each system prompt with its share where a skill draws from several."""
    names = {"mgpo": "MGPO's", "default": "the chat template's default"}
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    if len(counts) == 1:
        return names[kinds[0]]
    return " or ".join(f"{names[k]} ({n} in {len(kinds)})" for k, n in counts.items())


def _cards(cfg: RecipeConfig) -> str:
    if cfg.min_cards == cfg.max_cards:
        return "one coloured card" if cfg.min_cards == 1 else f"{cfg.min_cards} coloured cards"
    return f"{cfg.min_cards}–{cfg.max_cards} coloured cards"


def _task_cards(cfg: RecipeConfig) -> str:
    if cfg.cards == 1:
        return "one coloured card"
    return f"{cfg.cards} cards of different colours (the question names one; the others are as large and as striped)"


def _turns_text(cfg: RecipeConfig) -> str:
    if cfg.turns == 2:
        return ""
    return ("\nIt takes three turns (`--max-turns 3`, which `--model RELEASE` sets): turn 1 boxes a region of the "
            "overview, turn 2 boxes inside that region's enlarged crop, turn 3 answers from the second crop.")


def _wrong_card_line(curve: list[dict]) -> str:
    if not any("wrong_card" in r for r in curve):
        return ""
    return "\n- boxes on another card (analysis only): " + " ".join(_fmt(r.get("wrong_card")) for r in curve)


def _updates(cfg: RecipeConfig) -> str:
    if cfg.rl_mini_batches == 1:
        return ", one on-policy update a step"
    return f", {cfg.rl_mini_batches} updates a step (one PPO epoch over the rollouts in {cfg.rl_mini_batches} slices)"


def base_story(folder: Path) -> str:
    """How a base-skills checkpoint was made: its card without the title ("" without a card)."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return ""
    return "\n".join(line for line in card.read_text().splitlines() if not line.startswith("# ")).strip()


def held_out_text(scores: dict | None) -> str:
    """A run's last held-out skill scores, as the cards print them."""
    return f"Held-out skill scores at the end:\n   {', '.join(f'{k} {v:.2f}' for k, v in (scores or {}).items()) or '–'}."


def base_card(cfg: RecipeConfig, hist: list[dict]) -> str:
    """The base checkpoint's card; a continued one (``--skills-from``) keeps the story of its start.
    Each run's part ends with its own held-out skill scores (when it evaluated)."""
    last = hist[-1]["loss"] if hist else float("nan")
    steps = hist[-1].get("step") if hist else None
    evals = [r["eval"] for r in hist if r.get("eval")]
    scores = held_out_text(evals[-1]) if evals else ""
    title = f"# playground base model ({cfg.size} recipe)\n\n"
    templates = f"\n\nPrompt templates of this run and their targets:\n\n{templates_markdown(cfg, steps)}\n\n"
    if cfg.skills_from:
        before = base_story(Path(cfg.skills_from)) or f"The checkpoint `{cfg.skills_from}` (no card)."
        return (f"{title}{before}\n\nThen continued from that checkpoint (`--skills-from`) by "
                f"{skills_text(cfg, steps)} Final loss {last:.3f}.{templates}{scores}\n")
    return (f"{title}A random Qwen2.5-VL (text {cfg.hidden}×{cfg.layers}, "
            f"vision {cfg.vision_hidden}×{cfg.vision_depth}, BPE tokenizer of {cfg.vocab_size} entries) after "
            f"{skills_text(cfg, steps)} Final loss {last:.3f}. Built by `python -m train.playground`.{templates}{scores}\n")

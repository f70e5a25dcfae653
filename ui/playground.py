"""The Playground tab: a generated held-out scene per click, MGPO's turns streamed, the model's box
against the hidden one, the release's checkpoints to compare, and its training curves."""

from __future__ import annotations

import random

import gradio as gr

from mgpo.playground.release import Release, ReleaseError, checkpoint_colour, draw_boxes, draw_compare, summary_markdown
from mgpo.playground.world import SPLITS, split_of, split_seeds
from mgpo.prompts import LETTERS
from mgpo.service import PlaygroundModel, parse_seed, verdict
from mgpo.transcript import Transcript

from .common import follow, warn

PLAYGROUND_INTRO = (
    "A generated world where the answer needs the zoom: each {scene}×{scene} scene hides {world} In turn 1 the "
    "model sees a {overview}×{overview} overview: {a_card} is easy to find, but its stripes blur to a flat grey square; in "
    "the crop of the card they are plain to see.{turns} The model is a small Qwen2.5-VL trained here from random "
    "weights: base skills first, then MGPO RL with the answer reward alone. {base} **Compare checkpoints** runs every "
    "checkpoint on the scene side by side. The {asked}card's true place (green, dashed) is shown after the run."
)
WORLD_ONE_CARD = "one small coloured card in clutter, and the question asks which way the fine stripes on its label run."
WORLD_CARDS = ("{cards} small cards of different colours in clutter, each with its own stripes; the question names "
               "one and asks which way the fine stripes on its label run, so where to look depends on the question.")
THREE_TURNS = (" This release takes three turns: it boxes a region of the overview, then the card inside that "
               "region's enlarged crop, then answers from the card's crop.")
BASE_TAUGHT_TURN1 = (
    "Its base was taught to find cards by name and to read close-ups — and also to box the card under MGPO's "
    "own turn-1 prompt (around other questions about the card), so RL here refines where it looks more than it "
    "discovers it."
)
BASE_NEVER_TURN1 = (
    "Its base learned boxes only from referring prompts in other wordings (\"Locate the red card …\"), never as "
    "the target of MGPO's turn-1 prompt nor of any question about a card's stripes, and it learned to read "
    "close-ups{zoom}: where to look under MGPO's prompt is RL's work (compare \"before RL\" with the later checkpoints)."
)
BASE_READS_TURN2 = (
    ", in MGPO's own turn 2 too (turn 1's box in the context there, never learned), and to answer what the "
    "overview shows"
)
BASE_UNKNOWN = "What its base was trained on is in the model card below."
SPLIT_NOTES = {
    "test": "a held-out test scene",
    "val": "a validation scene",
    "train": "a scene of the RL training range (the model may have trained on it)",
    "skills": "a scene of the base-skills range (the supervised training saw its cards)",
}
RELEASE_HELP = (
    "A release folder holds `model/` (a Qwen2.5-VL checkpoint), `adapters/<name>/` (LoRA adapters), "
    "`checkpoints.json` (the checkpoints, see `mgpo/playground/release.py`) and optionally `metrics.jsonl`, "
    "`curves.png` and `summary.json`. Point the app at one with `python app.py --playground DIR` "
    "(or `MGPO_PLAYGROUND`); `--playground off` hides this tab."
)


def base_note(release: Release) -> str:
    """What the release's base was and was not trained on, read from its model's card."""
    card = release.model / "README.md"
    text = card.read_text(errors="replace") if card.is_file() else ""
    if "MGPO's turn-1 template itself" in text:
        return BASE_TAUGHT_TURN1
    if "never a box as the target of MGPO's turn-1 template" in text:
        return BASE_NEVER_TURN1.format(zoom=BASE_READS_TURN2 if "reading in MGPO's second turn" in text else "")
    return BASE_UNKNOWN


def intro(release: Release) -> str:
    """The tab's opening paragraph for ``release``: its world (cards a scene), its turns, its base."""
    world = WORLD_ONE_CARD if release.cards == 1 else WORLD_CARDS.format(cards=release.cards)
    one = release.cards == 1
    return PLAYGROUND_INTRO.format(base=base_note(release), scene=release.budgets().scene, world=world,
                                   overview=release.overview, turns=THREE_TURNS if release.max_turns == 3 else "",
                                   a_card="the card" if one else "a card", asked="" if one else "asked ")


def _scene_markdown(scene) -> str:
    """The question and its choices; the answer stays hidden until a run ends."""
    note = SPLIT_NOTES.get(split_of(scene.seed), "outside every seed split")
    choices = " · ".join(f"**({letter})** {c}" for letter, c in zip(LETTERS, scene.choices))
    return f"**Seed {scene.seed}** · {note}\n\n### {scene.question}\n\n{choices}"


def verdict_line(scene, view: Transcript) -> tuple[str, tuple | None]:
    """The result line of a playground run and the box its answer read (original pixels) or None."""
    v = verdict(scene, view.runs["mgpo"].final if "mgpo" in view.runs else None,
                [e for run, e, _ in view.boxes if run == "mgpo"])
    if v.right:
        line = f"✓ **Right**: the model answered **{v.truth}**."
    elif v.letter:
        line = f"✗ **Wrong**: the model answered {view.answer('mgpo')}; the answer is **{v.truth}**."
    else:
        line = f"✗ **Wrong**: the model gave no choice letter; the answer is **{v.truth}**."
    if v.box is not None:
        line += f" IoU of its box with the hidden {scene.name}: **{v.iou:.2f}**."
    else:
        line += f" No usable box ({v.no_box_reason}), so no IoU."
    return line, v.box


def playground_tab(pg: PlaygroundModel | ReleaseError, concurrency: int, update_every: float) -> None:
    """The Playground tab's components and events (inside the open ``gr.Tab``)."""
    if isinstance(pg, ReleaseError):
        gr.Markdown(f"### The playground release could not be loaded\n\n{pg}\n\n{RELEASE_HELP}", elem_id="pg-error")
        return
    release = pg.release
    first = split_seeds("test", 1)[0]
    lo, hi = SPLITS["test"]
    skip = gr.skip()
    gr.Markdown(intro(release), elem_id="pg-intro")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=340):
            with gr.Row():
                seed = gr.Number(first, label="Scene seed", precision=0, elem_id="pg-seed",
                                 info=f"test scenes {lo:,}–{hi - 1:,}; Enter shows one")
                new_btn = gr.Button("New scene", elem_id="pg-new", scale=0, min_width=140)
            scene_md = gr.Markdown(_scene_markdown(pg.scene(first)), elem_id="pg-scene")
            checkpoint = gr.Radio([(f"{c.name} (step {c.step})", c.name) for c in release.checkpoints],
                                  value=release.default, label="Checkpoint", elem_id="pg-checkpoint",
                                  info="step 0 = the base-skills model; later steps add MGPO RL's LoRA adapter")
            with gr.Row():
                run_btn = gr.Button("Run", variant="primary", elem_id="pg-run")
                compare_btn = gr.Button("Compare checkpoints", elem_id="pg-compare")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="pg-stop")
            status = gr.Markdown("Press **Run**: the model boxes a card, reads the crop, answers.", elem_id="pg-status")
            answer = gr.Textbox(label="Model answer", interactive=False, elem_id="pg-answer",
                                elem_classes=["answer", "answer-mgpo"])
            result = gr.Markdown("", elem_id="pg-result")
        with gr.Column(scale=6, min_width=420):
            with gr.Row(equal_height=True):
                boxes = gr.Image(draw_boxes(pg.scene(first).image, None, None), interactive=False, height=380,
                                 label="Boxes: model (orange), truth (green)",
                                 format="jpeg", elem_id="pg-boxes", buttons=["fullscreen"])
                crops = gr.Gallery(label="Crop, as fed to the model", columns=1, height=380, object_fit="contain",
                                   format="jpeg", elem_id="pg-crops", allow_preview=True)
            chat = gr.Chatbot(label="Transcript", height=360, elem_id="pg-transcript", group_consecutive_messages=False,
                              feedback_options=None, buttons=["copy_all"])
    with gr.Accordion("Compare checkpoints: every checkpoint on this scene, side by side", open=True,
                      elem_id="pg-compare-panel"):
        with gr.Row(equal_height=True):
            compare_img = gr.Image(interactive=False, height=420, format="jpeg", elem_id="pg-compare-boxes",
                                   label="Each checkpoint's box in its own colour; truth green, dashed",
                                   buttons=["fullscreen"])
            compare_crops = gr.Gallery(label="The crop each checkpoint read", columns=4, height=420,
                                       object_fit="contain", format="jpeg", elem_id="pg-compare-crops")
        compare_md = gr.Markdown("Press **Compare checkpoints**: each checkpoint of the release runs MGPO on the "
                                 "scene above (greedy), from the base before RL to the last RL step.",
                                 elem_id="pg-compare-table")
    _training_panel(release)

    outputs = [status, scene_md, chat, boxes, crops, answer, result]

    def show(seed_value):
        try:
            scene = pg.scene(parse_seed(seed_value))
        except ValueError as e:
            return (warn(str(e)),) + (skip,) * 6
        return ("Press **Run**.", _scene_markdown(scene), [], draw_boxes(scene.image, None, None), [], "", "")

    def run(seed_value, name):
        try:
            scene = pg.scene(parse_seed(seed_value))
            ckpt = release.checkpoint(name or release.default)
        except ValueError as e:
            yield (warn(str(e)),) + (skip,) * 6
            return
        view = Transcript(scene.image, scene.question, scene.choices)
        updates = follow(view, pg.events(scene, ckpt.name), update_every)
        shown = False
        try:
            for changed in updates:
                if isinstance(changed, str):
                    yield (warn(changed),) + (skip,) * 6
                    continue
                verdict, image = skip, view.box_image() if "boxes" in changed else skip
                if "done" in changed:
                    view.status += f" Checkpoint **{ckpt.name}** (step {ckpt.step})."
                    verdict, box = verdict_line(scene, view)
                    image = draw_boxes(scene.image, scene.box, box)
                yield (view.status, skip if shown else _scene_markdown(scene),
                       view.messages if "chat" in changed else skip, image,
                       view.gallery() if "crops" in changed else skip,
                       view.answer("mgpo") if "answer" in changed else skip, verdict)
                shown = True
        finally:
            updates.close()   # a stopped request stops generating here

    def compare(seed_value):
        try:
            scene = pg.scene(parse_seed(seed_value))
        except ValueError as e:
            yield warn(str(e)), skip, skip, skip
            return
        done = []
        for result in pg.compare(scene):
            done.append(result)
            rest = len(release.checkpoints) - len(done)
            status_line = (f"Compared {len(done)} of {len(release.checkpoints)} checkpoints…" if rest else
                           f"Compared every checkpoint on seed {scene.seed}: "
                           f"{sum(r.verdict.right for r in done)} of {len(done)} right.")
            yield (status_line, draw_compare(scene.image, scene.box, [(r.name, r.verdict.box) for r in done]),
                   [(r.crop, f"{r.name} (step {r.step}): {'right' if r.verdict.right else 'wrong'}")
                    for r in done if r.crop is not None],
                   compare_table(scene, done))

    new_btn.click(lambda: random.randrange(lo, hi), outputs=[seed], queue=False, api_name="playground_new").then(
        show, inputs=[seed], outputs=outputs, queue=False, api_name=False)
    seed.submit(show, inputs=[seed], outputs=outputs, queue=False, api_name="playground_scene")
    clear = run_btn.click(lambda: ("Working…", skip, [], skip, [], "", ""), outputs=outputs, queue=False, api_name=False)
    event = clear.then(run, inputs=[seed, checkpoint], outputs=outputs, api_name="playground_run",
                       concurrency_limit=concurrency, concurrency_id="model")
    compared = compare_btn.click(lambda: ("Comparing…", [], "Working…"), outputs=[status, compare_crops, compare_md],
                                 queue=False, api_name=False).then(
        compare, inputs=[seed], outputs=[status, compare_img, compare_crops, compare_md],
        api_name="playground_compare", concurrency_limit=concurrency, concurrency_id="model")
    stop_btn.click(None, cancels=[event, compared], queue=False).then(
        lambda: "Stopped.", outputs=[status], queue=False, api_name="playground_stop")


def compare_table(scene, runs) -> str:
    """The comparison as a Markdown table: one row per checkpoint, its colour, box, IoU with the
    hidden card and answer."""
    lines = [f"Answer: **{runs[0].verdict.truth if runs else ''}**\n",
             "| checkpoint | colour | step | box on the card (IoU) | answer | right? |", "|---|---|---|---|---|---|"]
    for k, r in enumerate(runs):
        v = r.verdict
        colour = "#%02x%02x%02x" % checkpoint_colour(k)
        box = f"{v.iou:.2f}" if v.box is not None else f"no usable box ({v.no_box_reason})"
        lines.append(f"| {r.name} | <span style='color:{colour}'>■■</span> | {r.step} | {box} | "
                     f"{v.letter or (r.answer or '—')} | {'✓ right' if v.right else '✗ wrong'} |")
    return "\n".join(lines)


def _training_panel(release: Release) -> None:
    """The release's training curves, metrics and evaluation numbers, and its model card."""
    points = release.curve_points()
    table = summary_markdown(release.summary)
    with gr.Accordion("Training and evaluation of this release", open=True):
        if release.curves or points:
            with gr.Row(equal_height=True):
                if release.curves:
                    gr.Image(str(release.curves), label="Training curves (curves.png)", interactive=False,
                             elem_id="pg-curves", buttons=["fullscreen"])
                if points:
                    import pandas as pd

                    gr.LinePlot(pd.DataFrame(points), x="step", y="value", color="series", color_title="",
                                label="MGPO RL per step (metrics.jsonl)", x_title="RL step", y_title="mean over the step",
                                elem_id="pg-metrics")
        if table:
            gr.Markdown(f"**Evaluation** (`summary.json`)\n\n{table}", elem_id="pg-summary")
        if not (release.curves or points or table):
            gr.Markdown("This release has no `curves.png`, `metrics.jsonl` or `summary.json`.", elem_id="pg-summary")
        gr.Markdown(f"Release `{release.folder}`: model `{release.model.name}/`, "
                    f"{sum(c.adapter is not None for c in release.checkpoints)} RL checkpoints as LoRA adapters.")
    card = release.folder / "README.md"
    if card.is_file():
        with gr.Accordion("Model card (README.md)", open=False):
            gr.Markdown(_strip_front_matter(card.read_text(errors="replace")), elem_id="pg-card")


def _strip_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end >= 0:
            return text[end + 4:].lstrip("\n")
    return text

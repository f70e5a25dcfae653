"""MGPO demo: ask about a large image; watch the model box the key area, zoom in, then answer.

The page streams every event of :meth:`mgpo.engine.Engine.run`: turn 1's reasoning and JSON box,
the region cut from the full-resolution original (drawn on the image, and shown at the size it is
fed to the model), turn 2's answer, and what each turn cost in visual tokens and seconds. "Compare"
runs the paper's single-turn baseline (no zoom) on the same input. The Playground tab (when a
playground release is found, ``examples/playground`` by default) runs the small model trained on
the generated playground world, before and after MGPO RL, on held-out scenes, and shows its box
against the hidden ground truth. This module only maps engine events to Gradio components;
:class:`Runner` is the one place that calls a model.

    python app.py                                   # Qwen/Qwen2.5-VL-7B-Instruct on a GPU
    python app.py --adapter user/mgpo-lora          # with a LoRA adapter (Hub id or folder)
    python -m mgpo.tiny /tmp/tiny && python app.py --model /tmp/tiny   # try the page, no weights
                                                    # (a random model: its answers are noise)
    python app.py --playground runs/playground/release   # another playground release ("off": no tab)

Settings also come from the environment (for a Space): MGPO_MODEL, MGPO_ADAPTER, MGPO_HOST /
GRADIO_SERVER_NAME, MGPO_PORT / GRADIO_SERVER_PORT, MGPO_SHARE, MGPO_QUEUE_SIZE, MGPO_CONCURRENCY,
MGPO_GPU_SECONDS, MGPO_PLAYGROUND, and for the adapters visitors may load (see
:mod:`mgpo.adapters`) MGPO_ADAPTERS, MGPO_ANY_ADAPTER, MGPO_MAX_ADAPTERS, MGPO_ADAPTER_MAX_MB,
MGPO_ADAPTER_MAX_RANK.
"""

from __future__ import annotations

try:  # before gradio, as ZeroGPU asks; off Spaces spaces.GPU is the identity
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    spaces = None

import argparse
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path

import gradio as gr
from PIL import Image

from mgpo.adapters import AdapterPolicy
from mgpo.engine import DEFAULT_MODEL, Engine, InputError
from mgpo.geometry import BOX_RULES
from mgpo.geometry import MAX_PIXELS, MIN_PIXELS
from mgpo.images import ImageError, load_image
from mgpo.model import ModelLoadError
from mgpo.playground.release import Release, ReleaseError, draw_boxes, summary_markdown
from mgpo.playground.world import SPLITS, split_of, split_seeds
from mgpo.prompts import LETTERS
from mgpo.service import PlaygroundModel, Runner, Settings, load_playground, parse_seed, verdict
from mgpo.service import scene as make_playground_scene
from mgpo.transcript import Transcript

log = logging.getLogger("mgpo.app")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
MAX_UPLOAD_PIXELS = 8192 * 8192   # 67 MP: larger uploads are refused with a message


# ----- configuration -------------------------------------------------------------------------


@dataclass
class AppConfig:
    model: str = DEFAULT_MODEL      # Hub id or local directory of a Qwen2.5-VL checkpoint
    adapter: str | None = None      # LoRA adapter (Hub id or directory) loaded at start
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False             # a public gradio.live link
    queue_size: int = 16            # requests waiting beyond this are told the queue is full
    concurrency: int = 1            # model runs at a time (one model, one GPU)
    gpu_seconds: int = 120          # ZeroGPU duration of one request
    playground: str | None = None   # playground release folder; None: examples/playground if present; "off": none
    adapters: tuple[str, ...] = ()  # LoRA adapters visitors may pick: Hub ids or local folders
    any_adapter: bool | None = None  # visitors may load any Hub id; None: off on a Space, on elsewhere
    max_adapters: int = 4           # adapters held at once (the least recently used goes)
    adapter_max_mb: int = 1024      # adapter_model.safetensors size limit
    adapter_max_rank: int = 256     # LoRA rank limit

    def adapter_policy(self, environ: dict | None = None) -> AdapterPolicy:
        """What visitors may load. Without ``any_adapter`` set, a Space (``SPACE_ID`` in the
        environment, set by Hugging Face) allows only the listed adapters; elsewhere any Hub id."""
        env = os.environ if environ is None else environ
        any_hub = self.any_adapter if self.any_adapter is not None else "SPACE_ID" not in env
        allowed = tuple(dict.fromkeys([*self.adapters, *([self.adapter] if self.adapter else [])]))
        return AdapterPolicy(allowed=allowed, any_hub=any_hub, max_bytes=self.adapter_max_mb * 2**20,
                             max_rank=self.adapter_max_rank, max_loaded=self.max_adapters)


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def parse_args(argv: list[str] | None = None, environ: dict | None = None) -> AppConfig:
    """Command line over environment variables over the defaults."""
    env = os.environ if environ is None else environ
    d = AppConfig()
    p = argparse.ArgumentParser(prog="python app.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=env.get("MGPO_MODEL", d.model), help="Hub id or local directory (env MGPO_MODEL)")
    p.add_argument("--adapter", default=env.get("MGPO_ADAPTER") or None, help="LoRA adapter, Hub id or directory (env MGPO_ADAPTER)")
    p.add_argument("--host", default=env.get("MGPO_HOST", env.get("GRADIO_SERVER_NAME", d.host)),
                   help="address to listen on; 0.0.0.0 for all (env MGPO_HOST or GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=int(env.get("MGPO_PORT", env.get("GRADIO_SERVER_PORT", d.port))),
                   help="port (env MGPO_PORT or GRADIO_SERVER_PORT; default 7860)")
    p.add_argument("--share", action="store_true", default=_env_flag(env.get("MGPO_SHARE")), help="create a public link")
    p.add_argument("--queue-size", type=int, default=int(env.get("MGPO_QUEUE_SIZE", d.queue_size)),
                   help="requests that may wait; more are told the queue is full (env MGPO_QUEUE_SIZE)")
    p.add_argument("--concurrency", type=int, default=int(env.get("MGPO_CONCURRENCY", d.concurrency)),
                   help="model runs at a time (env MGPO_CONCURRENCY; default 1)")
    p.add_argument("--gpu-seconds", type=int, default=int(env.get("MGPO_GPU_SECONDS", d.gpu_seconds)),
                   help="ZeroGPU time per request on a Space (env MGPO_GPU_SECONDS)")
    p.add_argument("--playground", default=env.get("MGPO_PLAYGROUND") or None, metavar="DIR",
                   help="playground release for the Playground tab (default: examples/playground when present; "
                        "'off': no tab; env MGPO_PLAYGROUND)")
    p.add_argument("--adapters", default=env.get("MGPO_ADAPTERS", ""), metavar="ID,ID,...",
                   help="LoRA adapters visitors may pick (Hub ids or local folders; env MGPO_ADAPTERS)")
    any_default = env.get("MGPO_ANY_ADAPTER")
    p.add_argument("--any-adapter", action=argparse.BooleanOptionalAction,
                   default=None if any_default is None else _env_flag(any_default),
                   help="let visitors load any Hub adapter id (default: off on a Space, on elsewhere; "
                        "env MGPO_ANY_ADAPTER)")
    p.add_argument("--max-adapters", type=int, default=int(env.get("MGPO_MAX_ADAPTERS", d.max_adapters)),
                   help="adapters held at once; the least recently used is dropped (env MGPO_MAX_ADAPTERS)")
    p.add_argument("--adapter-max-mb", type=int, default=int(env.get("MGPO_ADAPTER_MAX_MB", d.adapter_max_mb)),
                   help="largest adapter_model.safetensors a visitor may load (env MGPO_ADAPTER_MAX_MB)")
    p.add_argument("--adapter-max-rank", type=int, default=int(env.get("MGPO_ADAPTER_MAX_RANK", d.adapter_max_rank)),
                   help="highest LoRA rank a visitor may load (env MGPO_ADAPTER_MAX_RANK)")
    a = p.parse_args(argv)
    if a.max_adapters < 1:
        p.error("--max-adapters must be at least 1")
    listed = tuple(x.strip() for x in a.adapters.split(",") if x.strip())
    return AppConfig(a.model, a.adapter, a.host, a.port, a.share, a.queue_size, a.concurrency, a.gpu_seconds,
                     a.playground, listed, a.any_adapter, a.max_adapters, a.adapter_max_mb, a.adapter_max_rank)


def gpu_wrapper(seconds: int):
    """ZeroGPU's ``spaces.GPU(duration=seconds)`` on a Space; None elsewhere (no wrapping)."""
    return spaces.GPU(duration=seconds) if spaces else None


# ----- the page --------------------------------------------------------------------------------


def keep_upload_path(image: gr.Image) -> gr.Image:
    """Make ``image`` hand the uploaded file's path on without opening it, so that a non-image or
    gigantic upload reaches the handler and gets a specific message there (``gr.Image`` would open
    it with PIL first and fail with a bare "Error"). Patched on the instance: a ``gr.Image``
    subclass would make Gradio write an ``app.pyi`` stub next to this file."""
    plain = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return plain(payload)

    image.preprocess = preprocess
    return image


def load_examples(folder: Path = EXAMPLES_DIR) -> list[list]:
    """``[image path, question, choices (one per line)]`` rows from ``examples/examples.json``."""
    index = folder / "examples.json"
    if not index.is_file():
        return []
    items = json.loads(index.read_text())
    return [[str(folder / it["image"]), it["question"], "\n".join(it.get("choices") or [])] for it in items]


def _adapter_rules(policy: AdapterPolicy) -> str:
    held = f"at most {policy.max_loaded} held at once" if policy.max_loaded else "no limit on how many are held"
    return (f"LoRA on the language model only, safetensors ≤ {policy.max_bytes / 2**20:,.0f} MB, "
            f"rank ≤ {policy.max_rank}; {held}.")


def _header(runner: Runner, adapter: str | None) -> str:
    lora = f" · LoRA **{adapter}**" if adapter else " · no adapter"
    if (Path(runner.model_name) / "mgpo_tiny.json").is_file():
        lora += " · ⚠️ a tiny *random* test model (`python -m mgpo.tiny`): the page works, its answers are noise"
    return (
        "# MGPO · look, zoom, answer\n"
        "Multi-turn grounding for high-resolution images ([arXiv 2507.05920](https://arxiv.org/abs/2507.05920)): "
        "the model first marks the key area of the full image, the app cuts it from the original at full "
        "resolution, and the model answers looking at the zoomed crop.\n\n"
        f"Model: **{runner.model_name}**{lora}"
    )


CSS = """
.answer textarea { font-size: 1.25rem !important; font-weight: 600; }
.answer-mgpo textarea { background: #fff7ed !important; border-color: #fb923c !important; }
#summary { min-height: 1.5em; }
"""
THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="pink")


ALL_PARTS = frozenset({"chat", "boxes", "crops", "answer", "stats"})


def follow(view: Transcript, stream, update_every: float):
    """Apply a run's ``(run, event)`` stream to ``view`` and yield the set of page parts to
    refresh: at once for a box, a crop or an answer, at most every ``update_every`` seconds while
    only the text grows; the last set holds every part plus ``"done"`` (``view.status`` then says
    "Done in …"). A refused or failed run yields its message (a ``str``) instead and ends. Both
    tabs stream through this loop."""
    t0, last, pending = time.perf_counter(), 0.0, {"boxes"}   # the first update shows the image
    try:
        for run_name, event in stream:
            pending |= view.apply(run_name, event)
            if pending == {"chat"} and time.perf_counter() - last < update_every:
                continue
            yield pending
            last, pending = time.perf_counter(), set()
    except (InputError, ImageError, ModelLoadError, ReleaseError) as e:   # the request was refused
        yield str(e)
    except Exception as e:                                                  # never a traceback on the page
        log.exception("model run failed")
        yield f"The model run failed ({type(e).__name__}: {str(e)[:300]}). Try again, or with other settings."
    else:
        view.status = f"Done in {time.perf_counter() - t0:.1f} s."
        yield ALL_PARTS | {"done"}
    finally:
        stream.close()


def _ask_tab(runner: Runner, examples: list[list]) -> SimpleNamespace:
    """The Ask tab's components (inside the open ``gr.Tab``), by name."""
    policy = runner.adapters.policy
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=340):
            image = keep_upload_path(gr.Image(label="Image (upload, paste or drag)", type="filepath", height=300,
                                              sources=["upload", "clipboard"], image_mode=None, elem_id="image"))
            question = gr.Textbox(label="Question", placeholder="What is written on the small sign?", lines=2, elem_id="question")
            choices = gr.Textbox(label="Answer choices (optional, one per line)", lines=3,
                                 placeholder="LB MA 864\nLB MA 846\n…", elem_id="choices")
            max_turns = gr.Slider(2, 3, value=2, step=1, label="Max turns", info="2 = the paper; 3 = one more zoom")
            compare = gr.Checkbox(label="Compare with the single-turn baseline (no zoom)", value=False, elem_id="compare")
            with gr.Row():
                run_btn = gr.Button("Run", variant="primary", elem_id="run")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    min_pixels = gr.Number(MIN_PIXELS, label="Min pixels", precision=0, info="256·28·28: smaller crops are enlarged")
                    max_pixels = gr.Number(MAX_PIXELS, label="Max pixels", precision=0, info="1280·28·28: the overview's budget")
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature", info="0 = greedy")
                max_new_tokens = gr.Slider(16, 4096, value=1024, step=16, label="Max new tokens per turn")
                box_rule = gr.Dropdown(list(BOX_RULES), value="paper", label="Box rule",
                                       info="paper: refuse out-of-bounds or tiny boxes; clamp / pad: repair them")
            with gr.Accordion("LoRA adapter", open=False):
                adapter_box = gr.Dropdown(
                    # custom values reach the handler, whose store says which rule refuses them
                    list(policy.allowed), value=runner.adapter, allow_custom_value=True,
                    label="Adapter" + (" (pick one, or type a Hub id: user/name)" if policy.any_hub else ""),
                    info=_adapter_rules(policy), elem_id="adapter")
                with gr.Row():
                    load_btn = gr.Button("Load adapter", size="sm")
                    base_btn = gr.Button("Use the base model", size="sm")
                adapter_status = gr.Markdown("")
        with gr.Column(scale=6, min_width=420):
            status = gr.Markdown("Pick an example or upload an image, then press **Run**.", elem_id="status")
            with gr.Row():
                answer_mgpo = gr.Textbox(label="MGPO answer (zoom)", interactive=False, elem_id="answer-mgpo",
                                         elem_classes=["answer", "answer-mgpo"])
                answer_base = gr.Textbox(label="Single-turn baseline answer", interactive=False, elem_id="answer-base",
                                         elem_classes=["answer"], placeholder="tick Compare to run it")
            with gr.Row(equal_height=True):
                boxes = gr.Image(label="Predicted boxes on the full image", interactive=False, height=340,
                                 format="jpeg", elem_id="boxes", buttons=["fullscreen"])
                crops = gr.Gallery(label="Crops, as fed to the model", columns=1, height=340, object_fit="contain",
                                   format="jpeg", elem_id="crops", allow_preview=True)
            chat = gr.Chatbot(label="Transcript", height=420, elem_id="transcript", group_consecutive_messages=False,
                              placeholder="Each turn streams here as a titled step: the grounding turn and its JSON box, "
                                          "the cropped region, the answer turn.", feedback_options=None,
                              buttons=["copy_all"])
            stats = gr.Dataframe(headers=Transcript.STATS_HEADERS, label="Cost per turn", interactive=False,
                                 elem_id="stats", wrap=True,
                                 column_widths=["12%", "8%", "13%", "13%", "14%", "14%", "13%", "13%"])
            summary = gr.Markdown("", elem_id="summary")
    if examples:
        gr.Examples(examples, inputs=[image, question, choices], cache_examples=False, examples_per_page=8,
                    label="Examples: large scenes whose detail needs a zoom (click one to load it)")
    gr.Markdown("The model only sees a resized overview (≤ 1280·28·28 pixels). Boxes are read in that frame "
                "and mapped back to the original; crops are cut from the full-resolution upload.",
                elem_id="footnote")
    return SimpleNamespace(**{k: v for k, v in locals().items() if isinstance(v, gr.components.Component)})


def build_demo(engine: Engine | Runner, *, examples: list[list] | None = None, queue_size: int = 16,
               concurrency: int = 1, update_every: float = 0.08,
               playground: Release | PlaygroundModel | ReleaseError | None = None) -> gr.Blocks:
    """The Blocks app for ``engine`` (or a prepared :class:`Runner`). ``update_every`` (seconds)
    limits how often streamed text alone refreshes the page; every other change is sent at once.
    ``playground`` adds the Playground tab (a :class:`ReleaseError`: the tab says what is wrong)."""
    runner = engine if isinstance(engine, Runner) else Runner(engine)
    examples = load_examples() if examples is None else examples
    if isinstance(playground, Release):
        playground = PlaygroundModel(playground)

    def run(image_path, question, choices, max_turns, compare, min_pixels, max_pixels, temperature,
            max_new_tokens, box_rule, adapter):
        try:
            original = _open_upload(image_path)
            settings = Settings(int(max_turns), _int(min_pixels), _int(max_pixels), temperature,
                                _int(max_new_tokens), box_rule)
        except (ImageError, TypeError, ValueError) as e:
            yield _refusal(str(e))
            return
        view = Transcript(original, question or "", _choice_list(choices))
        updates = follow(view, runner.events(original, question, choices, settings, bool(compare), adapter),
                         update_every)
        try:
            for changed in updates:
                yield _refusal(changed) if isinstance(changed, str) else _outputs(view, changed)
        finally:
            updates.close()   # a stopped request stops generating here

    def load_adapter(adapter_id):
        adapter_id = (adapter_id or "").strip()
        try:        # every rule is the store's: the API refuses what the page refuses
            runner.adapters.load(adapter_id)
        except ModelLoadError as e:
            return gr.skip(), gr.skip(), _warn(str(e))
        return adapter_id, _header(runner, adapter_id), f"Loaded **{adapter_id}**; runs in this tab use it."

    def base_model():
        return None, _header(runner, None), "Runs in this tab use the base model."

    with gr.Blocks(title="MGPO · look, zoom, answer") as demo:
        adapter_state = gr.State(runner.adapter)
        header = gr.Markdown(_header(runner, runner.adapter), elem_id="header")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Ask", id="ask", elem_id="tab-ask"):
                c = _ask_tab(runner, examples)
            if playground is not None:
                with gr.Tab("Playground", id="playground", elem_id="tab-playground"):
                    _playground_tab(playground, concurrency, update_every)

        outputs = [c.status, c.chat, c.boxes, c.crops, c.answer_mgpo, c.answer_base, c.stats, c.summary]
        inputs = [c.image, c.question, c.choices, c.max_turns, c.compare, c.min_pixels, c.max_pixels, c.temperature,
                  c.max_new_tokens, c.box_rule, adapter_state]
        clear = gr.on([c.run_btn.click, c.question.submit], _reset, outputs=outputs, queue=False, api_name=False)
        event = clear.then(run, inputs=inputs, outputs=outputs, api_name="run",
                           concurrency_limit=concurrency, concurrency_id="model")
        # cancel first, then say so: a status update still in flight from the run cannot overwrite it
        c.stop_btn.click(None, cancels=[event], queue=False).then(
            lambda: "Stopped.", outputs=[c.status], queue=False, api_name="stop")
        c.load_btn.click(load_adapter, inputs=[c.adapter_box], outputs=[adapter_state, header, c.adapter_status],
                         api_name="load_adapter", concurrency_limit=concurrency, concurrency_id="model")
        c.base_btn.click(base_model, outputs=[adapter_state, header, c.adapter_status], api_name="base_model",
                         queue=False)
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    return demo


# ----- the Playground tab ------------------------------------------------------------------------

PLAYGROUND_INTRO = (
    "A generated world where the answer needs the zoom: each 2048×2048 scene hides one small coloured card in "
    "clutter, and the question asks which way the fine stripes on its label run. In turn 1 the model sees a "
    "224×224 overview: the card is easy to find, but its stripes blur to a flat grey square; in the crop of the "
    "card they are plain to see. The model is a "
    "small Qwen2.5-VL trained here from random weights: base skills first (finding cards by name, reading "
    "close-ups), then MGPO RL with the answer reward alone: it never saw a box for this question. Pick a "
    "checkpoint to compare before and after RL. The card's true place (green, dashed) is shown after the run."
)
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


def _scene_markdown(scene) -> str:
    """The question and its choices; the answer stays hidden until a run ends."""
    note = SPLIT_NOTES.get(split_of(scene.seed), "outside every seed split")
    choices = " · ".join(f"**({letter})** {c}" for letter, c in zip(LETTERS, scene.choices))
    return f"**Seed {scene.seed}** · {note}\n\n### {scene.question}\n\n{choices}"


def _verdict(scene, view: Transcript) -> tuple[str, tuple | None]:
    """The result line of a playground run and its first valid box (original pixels) or None."""
    v = verdict(scene, view.runs["mgpo"].final if "mgpo" in view.runs else None,
                [e for run, e, _ in view.boxes if run == "mgpo"])
    if v.right:
        line = f"✅ **Right**: the model answered **{v.truth}**."
    elif v.letter:
        line = f"❌ **Wrong**: the model answered {view.answer('mgpo')}; the answer is **{v.truth}**."
    else:
        line = f"❌ **Wrong**: the model gave no choice letter; the answer is **{v.truth}**."
    if v.box is not None:
        line += f" IoU of its box with the hidden {scene.name}: **{v.iou:.2f}**."
    else:
        line += f" No usable box ({v.no_box_reason}), so no IoU."
    return line, v.box


def _playground_tab(pg: PlaygroundModel | ReleaseError, concurrency: int, update_every: float) -> None:
    """The Playground tab's components and events (inside the open ``gr.Tab``)."""
    if isinstance(pg, ReleaseError):
        gr.Markdown(f"### The playground release could not be loaded\n\n{pg}\n\n{RELEASE_HELP}", elem_id="pg-error")
        return
    release = pg.release
    first = split_seeds("test", 1)[0]
    lo, hi = SPLITS["test"]
    skip = gr.skip()
    gr.Markdown(PLAYGROUND_INTRO, elem_id="pg-intro")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=340):
            with gr.Row():
                seed = gr.Number(first, label="Scene seed", precision=0, elem_id="pg-seed",
                                 info=f"test scenes {lo:,}–{hi - 1:,}; Enter shows one")
                new_btn = gr.Button("New scene", elem_id="pg-new", scale=0, min_width=140)
            scene_md = gr.Markdown(_scene_markdown(make_playground_scene(first)), elem_id="pg-scene")
            checkpoint = gr.Radio([(f"{c.name} (step {c.step})", c.name) for c in release.checkpoints],
                                  value=release.default, label="Checkpoint", elem_id="pg-checkpoint",
                                  info="step 0 = the base-skills model; later steps add MGPO RL's LoRA adapter")
            with gr.Row():
                run_btn = gr.Button("Run", variant="primary", elem_id="pg-run")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="pg-stop")
            status = gr.Markdown("Press **Run**: the model boxes a card, reads the crop, answers.", elem_id="pg-status")
            answer = gr.Textbox(label="Model answer", interactive=False, elem_id="pg-answer",
                                elem_classes=["answer", "answer-mgpo"])
            result = gr.Markdown("", elem_id="pg-result")
        with gr.Column(scale=6, min_width=420):
            with gr.Row(equal_height=True):
                boxes = gr.Image(draw_boxes(make_playground_scene(first).image, None, None), interactive=False, height=380,
                                 label="Boxes: model (orange), truth (green)",
                                 format="jpeg", elem_id="pg-boxes", buttons=["fullscreen"])
                crops = gr.Gallery(label="Crop, as fed to the model", columns=1, height=380, object_fit="contain",
                                   format="jpeg", elem_id="pg-crops", allow_preview=True)
            chat = gr.Chatbot(label="Transcript", height=360, elem_id="pg-transcript", group_consecutive_messages=False,
                              feedback_options=None, buttons=["copy_all"])
    _training_panel(release)

    outputs = [status, scene_md, chat, boxes, crops, answer, result]

    def show(seed_value):
        try:
            scene = make_playground_scene(parse_seed(seed_value))
        except ValueError as e:
            return (_warn(str(e)),) + (skip,) * 6
        return ("Press **Run**.", _scene_markdown(scene), [], draw_boxes(scene.image, None, None), [], "", "")

    def run(seed_value, name):
        try:
            scene = make_playground_scene(parse_seed(seed_value))
            ckpt = release.checkpoint(name or release.default)
        except ValueError as e:
            yield (_warn(str(e)),) + (skip,) * 6
            return
        view = Transcript(scene.image, scene.question, scene.choices)
        updates = follow(view, pg.events(scene, ckpt.name), update_every)
        shown = False
        try:
            for changed in updates:
                if isinstance(changed, str):
                    yield (_warn(changed),) + (skip,) * 6
                    continue
                verdict, image = skip, view.box_image() if "boxes" in changed else skip
                if "done" in changed:
                    view.status += f" Checkpoint **{ckpt.name}** (step {ckpt.step})."
                    verdict, box = _verdict(scene, view)
                    image = draw_boxes(scene.image, scene.box, box)
                yield (view.status, skip if shown else _scene_markdown(scene),
                       view.messages if "chat" in changed else skip, image,
                       view.gallery() if "crops" in changed else skip,
                       view.answer("mgpo") if "answer" in changed else skip, verdict)
                shown = True
        finally:
            updates.close()   # a stopped request stops generating here

    new_btn.click(lambda: random.randrange(lo, hi), outputs=[seed], queue=False, api_name="playground_new").then(
        show, inputs=[seed], outputs=outputs, queue=False, api_name=False)
    seed.submit(show, inputs=[seed], outputs=outputs, queue=False, api_name="playground_scene")
    clear = run_btn.click(lambda: ("Working…", skip, [], skip, [], "", ""), outputs=outputs, queue=False, api_name=False)
    event = clear.then(run, inputs=[seed, checkpoint], outputs=outputs, api_name="playground_run",
                       concurrency_limit=concurrency, concurrency_id="model")
    stop_btn.click(None, cancels=[event], queue=False).then(
        lambda: "Stopped.", outputs=[status], queue=False, api_name="playground_stop")


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


def _int(v) -> int | None:
    return None if v is None or v == "" else int(v)


def _choice_list(choices: str | None) -> list[str]:
    """The choices as the transcript lists them (the engine validates them)."""
    return [c.strip() for c in (choices or "").splitlines() if c.strip()][: len(LETTERS)]


def _open_upload(path) -> Image.Image:
    """The uploaded file as an RGB image, or ImageError with what is wrong with it."""
    if not path:
        raise ImageError("add an image first: upload, paste or drag one, or click an example below")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageError(f"the upload could not be read ({e.strerror})") from None
    try:
        return load_image(data, MAX_UPLOAD_PIXELS)
    except ImageError as e:
        raise ImageError(f"that upload can't be used: {e}") from None


def _warn(message: str) -> str:
    """Show ``message`` as a toast and return it for the page (a visitor's mistake, not a crash)."""
    message = message[:1].upper() + message[1:]
    gr.Warning(message)
    return f"⚠️ {message}"


def _refusal(message: str):
    """Outputs for a request that cannot run: the reason in the status line, the rest unchanged."""
    return (_warn(message),) + (gr.skip(),) * 7


def _reset():
    """Clear the outputs of the previous request."""
    return ("Working…", [], None, [], "", "", [], "")


def _outputs(view: Transcript, changed: set[str]):
    skip = gr.skip()
    return (
        view.status,
        view.messages if "chat" in changed else skip,
        view.box_image() if "boxes" in changed else skip,
        view.gallery() if "crops" in changed else skip,
        view.answer("mgpo") if "answer" in changed else skip,
        view.answer("baseline") if "answer" in changed and "baseline" in view.runs else skip,
        view.stats() if "stats" in changed else skip,
        view.summary() if "stats" in changed else skip,
    )


# ----- when the model cannot be loaded ---------------------------------------------------------


def error_demo(message: str, model: str, playground: PlaygroundModel | ReleaseError | None = None,
               queue_size: int = 16, concurrency: int = 1, update_every: float = 0.08) -> gr.Blocks:
    """A page that says why the model did not load and how to fix it (no traceback). With a
    playground release, its tab comes first and works: offline, the playground model is the one
    the page can really answer with."""
    def explain():
        gr.Markdown(f"# MGPO · the model could not be loaded\n\nThe demo could not start **{model}**."
                    + ("  The **Playground** tab runs the small model trained on the generated world."
                       if isinstance(playground, PlaygroundModel) else ""))
        gr.Textbox(message, label="What went wrong", lines=4, interactive=False, elem_id="load-error")
        gr.Markdown(
            "**How to fix it**\n\n"
            "- pass a local checkpoint folder: `python app.py --model /path/to/Qwen2.5-VL-7B-Instruct`\n"
            f"- or download it once while online (`hf download {model}`) so it loads from the Hugging Face cache\n"
            "- or try the interface with a tiny random model: `python -m mgpo.tiny /tmp/tiny` then "
            "`python app.py --model /tmp/tiny` (its answers are noise)"
        )

    with gr.Blocks(title="MGPO · model not loaded") as demo:
        if playground is None:
            explain()
        else:
            with gr.Tabs(elem_id="tabs"):
                with gr.Tab("Playground", id="playground", elem_id="tab-playground"):
                    _playground_tab(playground, concurrency, update_every)
                with gr.Tab("Ask", id="ask", elem_id="tab-ask"):
                    explain()
    if playground is not None:
        demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    return demo


def launch(demo: gr.Blocks, cfg: AppConfig, block: bool = True):
    """Start the server with the app's theme and style (Gradio 6 takes them at launch)."""
    return demo.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share, theme=THEME, css=CSS,
                       prevent_thread_lock=not block, show_error=False, max_file_size="100mb",
                       footer_links=["api"])


def make_app(cfg: AppConfig) -> gr.Blocks:
    """Load the model and build the page (with the Playground tab when a release is found), or the
    page explaining why the model could not be loaded."""
    playground = load_playground(cfg.playground)
    if isinstance(playground, ReleaseError):
        log.error("playground release: %s", playground)
    if isinstance(playground, Release):
        playground = PlaygroundModel(playground, gpu=gpu_wrapper(cfg.gpu_seconds))
    try:
        runner = Runner(Engine.from_pretrained(cfg.model), cfg.adapter, cfg.adapter_policy(), gpu_wrapper(cfg.gpu_seconds))
    except ModelLoadError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return error_demo(str(e), cfg.model, playground, cfg.queue_size, cfg.concurrency)
    return build_demo(runner, queue_size=cfg.queue_size, concurrency=cfg.concurrency, playground=playground)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = parse_args(argv)
    launch(make_app(cfg), cfg)


if __name__ == "__main__":
    main()

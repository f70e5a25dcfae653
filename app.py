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
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from mgpo.adapters import AdapterPolicy
from mgpo.engine import DEFAULT_MODEL, Engine
from mgpo.geometry import BOX_RULES, MAX_PIXELS, MIN_PIXELS
from mgpo.images import ImageError
from mgpo.model import ModelLoadError
from mgpo.playground.release import Release, ReleaseError
from mgpo.service import PlaygroundModel, Runner, Settings, load_playground
from mgpo.transcript import Transcript
from ui.common import CSS, THEME, choice_list, follow, int_or_none, keep_upload_path, open_upload, refusal, warn
from ui.playground import playground_tab

log = logging.getLogger("mgpo.app")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
SHIPPED_RELEASE = EXAMPLES_DIR / "playground"   # the Playground tab's release unless --playground says otherwise


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
    server: str | None = None       # OpenAI-compatible server URL(s) that answer instead of a model loaded here
    server_model: str | None = None  # the served model's name (None: the server's only one)

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
    p.add_argument("--server", default=env.get("MGPO_SERVER") or None, metavar="URL[,URL…]",
                   help="answer with the model an OpenAI-compatible server (vllm serve, SGLang) serves instead of "
                        "loading one here: a CPU Space can answer with a 7B served elsewhere (env MGPO_SERVER)")
    p.add_argument("--server-model", default=env.get("MGPO_SERVER_MODEL") or None, metavar="NAME",
                   help="the served model's name (default: the server's only model; env MGPO_SERVER_MODEL)")
    a = p.parse_args(argv)
    if a.max_adapters < 1:
        p.error("--max-adapters must be at least 1")
    listed = tuple(x.strip() for x in a.adapters.split(",") if x.strip())
    return AppConfig(a.model, a.adapter, a.host, a.port, a.share, a.queue_size, a.concurrency, a.gpu_seconds,
                     a.playground, listed, a.any_adapter, a.max_adapters, a.adapter_max_mb, a.adapter_max_rank,
                     a.server, a.server_model)


def gpu_wrapper(seconds: int):
    """ZeroGPU's ``spaces.GPU(duration=seconds)`` on a Space; None elsewhere (no wrapping)."""
    return spaces.GPU(duration=seconds) if spaces else None


# ----- the page --------------------------------------------------------------------------------


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
            original = open_upload(image_path)
            settings = Settings(int(max_turns), int_or_none(min_pixels), int_or_none(max_pixels), temperature,
                                int_or_none(max_new_tokens), box_rule)
        except (ImageError, TypeError, ValueError) as e:
            yield refusal(str(e))
            return
        view = Transcript(original, question or "", choice_list(choices))
        updates = follow(view, runner.events(original, question, choices, settings, bool(compare), adapter),
                         update_every)
        try:
            for changed in updates:
                yield refusal(changed) if isinstance(changed, str) else _outputs(view, changed)
        finally:
            updates.close()   # a stopped request stops generating here

    def load_adapter(adapter_id):
        adapter_id = (adapter_id or "").strip()
        try:        # every rule is the store's: the API refuses what the page refuses
            runner.adapters.load(adapter_id)
        except ModelLoadError as e:
            return gr.skip(), gr.skip(), warn(str(e))
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
                    playground_tab(playground, concurrency, update_every)

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
                    playground_tab(playground, concurrency, update_every)
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
    playground = load_playground(cfg.playground, default=SHIPPED_RELEASE)
    if isinstance(playground, ReleaseError):
        log.error("playground release: %s", playground)
    if isinstance(playground, Release):
        playground = PlaygroundModel(playground, gpu=gpu_wrapper(cfg.gpu_seconds))
    try:
        if cfg.server:    # the model is served elsewhere: no GPU here, adapters are the server's
            runner = Runner(Engine.from_server(cfg.server, model=cfg.server_model))
        else:
            runner = Runner(Engine.from_pretrained(cfg.model), cfg.adapter, cfg.adapter_policy(),
                            gpu_wrapper(cfg.gpu_seconds))
    except (ModelLoadError, ValueError) as e:
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

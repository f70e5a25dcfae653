"""Answer a question about an image with MGPO from the command line.

    python -m mgpo.infer --model Qwen/Qwen2.5-VL-7B-Instruct --image photo.jpg \\
        --question "What is the plate number?" --choices "LB MA 864" "LB MA 846" [--json]

Human-readable by default (the turns stream as they are generated); with ``--json`` one JSON
object per event per line, each with a ``type`` field. Bad input gives a message on stderr and
a non-zero exit code (2 for bad arguments or input, 3 when the model cannot be loaded, 4 when a
``--server`` fails every retry).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import geometry
from .engine import DEFAULT_MODEL, EngineConfig, InputError
from .images import ImageError, load_image
from .server import ServerError, add_arguments as add_server_arguments, server_kwargs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mgpo.infer", description="MGPO multi-turn grounding inference.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="base model: Hub id or local directory")
    p.add_argument("--adapter", default=None, help="LoRA adapter: Hub id or local directory")
    p.add_argument("--image", required=True, help="path to the image")
    p.add_argument("--question", required=True)
    p.add_argument("--choices", nargs="*", default=None, help="answer choices (A, B, … in order)")
    p.add_argument("--mode", choices=["mgpo", "direct"], default="mgpo",
                   help="mgpo: ground, crop, answer; direct: the single-turn baseline")
    p.add_argument("--max-turns", type=int, default=None, help="MGPO turns: 2 = the paper's, 3 = one look inside the "
                   "crop first (default: a release's own, else 2)")
    p.add_argument("--box-rule", choices=list(geometry.BOX_RULES), default="paper")
    p.add_argument("--checkpoint", default=None,
                   help="with --model set to a playground release folder: which of its checkpoints (default: its own)")
    p.add_argument("--min-pixels", type=int, default=None, help=f"default {geometry.MIN_PIXELS} (a release: its own)")
    p.add_argument("--max-pixels", type=int, default=None, help=f"default {geometry.MAX_PIXELS} (a release: its own)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cuda, cpu, … (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    p.add_argument("--save-crops", default=None, metavar="DIR", help="write each crop as a PNG here")
    add_server_arguments(p)
    return p


def _human(event, out) -> None:
    t = event.type
    if t == "turn_started":
        w, h = event.image_size
        print(f"\n── turn {event.turn} ({event.kind}) · image {w}×{h} · {event.visual_tokens} visual tokens", file=out)
    elif t == "text":
        out.write(event.text)
        out.flush()
    elif t == "turn_finished":
        print(f"\n   [{event.new_tokens} tokens, stop={event.stop}, prefill {event.prefill_seconds:.2f}s"
              f" + decode {event.decode_seconds:.2f}s]", file=out)
    elif t == "box":
        if event.valid:
            print(f"── box {list(event.box_model)} (model frame {event.frame[0]}×{event.frame[1]}) "
                  f"→ {list(event.box_original)} in the original [{event.reason}]", file=out)
        else:
            print(f"── box {list(event.box_model) if event.box_model else 'none'} refused: {event.reason}", file=out)
    elif t == "crop":
        print(f"── cropping region {list(event.box_original)} ({event.crop_size[0]}×{event.crop_size[1]} px)"
              f" → fed at {event.fed_size[0]}×{event.fed_size[1]}{' (enlarged)' if event.enlarged else ''}", file=out)
    elif t == "final":
        answer = event.answer if event.answer is not None else "(no \\boxed{} answer)"
        print(f"\n══ answer: {answer}" + (f" (choice {event.letter})" if event.letter else ""), file=out)
        print(f"   {event.turns} turns · {event.seconds:.2f}s · {event.visual_tokens} visual tokens "
              f"(one native-resolution pass: {event.native_visual_tokens})", file=out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = sys.stderr
    try:
        image = load_image(args.image)
    except ImageError as e:
        print(f"error: {e}", file=err)
        return 2
    if not args.question.strip():
        print("error: the question is empty", file=err)
        return 2

    from transformers.utils import logging as hf_logging

    from .engine import Engine
    from .model import ModelLoadError

    hf_logging.disable_progress_bar()

    from .playground.release import ReleaseError, apply_to_args

    try:   # --model may be a playground release: its model, checkpoint and pixel budgets
        apply_to_args(args)
    except ReleaseError as e:
        print(f"error: {e}", file=err)
        return 3
    except ValueError as e:
        print(f"error: {e}", file=err)
        return 2
    config = EngineConfig(
        max_turns=2 if args.max_turns is None else args.max_turns, min_pixels=args.min_pixels or geometry.MIN_PIXELS,
        max_pixels=args.max_pixels or geometry.MAX_PIXELS, box_rule=args.box_rule,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
    )
    try:
        if args.server:
            if args.adapter:
                raise ValueError("--adapter with --server: serve the adapter (vllm serve --lora-modules NAME=DIR) "
                                 "and pass --server-model NAME")
            engine = Engine.from_server(args.server, config, args.server_model, **server_kwargs(args))
        else:
            engine = Engine.from_pretrained(args.model, args.adapter, config=config, device=args.device)
    except ValueError as e:
        print(f"error: {e}", file=err)
        return 2
    except ModelLoadError as e:
        print(f"error: {e}", file=err)
        return 3
    out = sys.stdout
    crops = Path(args.save_crops) if args.save_crops else None
    try:
        for event in engine.run(image, args.question, args.choices, mode=args.mode):
            if crops is not None and event.type == "crop":
                crops.mkdir(parents=True, exist_ok=True)
                event.image.save(crops / f"turn{event.turn}_crop.png")
            if args.json:
                print(json.dumps(event.to_dict(), ensure_ascii=False), file=out, flush=True)
            else:
                _human(event, out)
    except (InputError, ImageError) as e:
        print(f"error: {e}", file=err)
        return 2
    except ServerError as e:
        print(f"error: {e}", file=err)
        return 4
    except KeyboardInterrupt:
        print("\ninterrupted", file=err)
        return 130
    except RuntimeError as e:  # e.g. CUDA out of memory
        print(f"error while generating: {e}", file=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

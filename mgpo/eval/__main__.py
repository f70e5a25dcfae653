"""Command line: ``python -m mgpo.eval --benchmark {vstar,hrbench,mme-realworld,jsonl} --data PATH
--model M [--adapter A] [--mode direct|mgpo] [--max-turns N] [--limit K] [--batch-size B] --out DIR``,
or ``python -m mgpo.eval --benchmark playground --seed S --limit N --model M --out DIR`` (N generated
held-out scenes from the playground's test seeds, from index S; pixel budgets default to the
playground's 224² overview / 112² crop floor; results add the IoU with the hidden target box).

Writes ``DIR/items.jsonl`` (one row per item, as it goes), ``DIR/results.json`` (protocol +
scores) and ``DIR/results.md``. Rerunning the same command resumes where it stopped.

Several GPUs: ``accelerate launch --num_processes N -m mgpo.eval …`` deals the items out to N
processes (one GPU each; rows in ``DIR/parts/`` until the main process merges them into the
same ``items.jsonl`` a single process writes). ``--server URL[,URL…]``: the model answers from
OpenAI-compatible servers instead (:mod:`mgpo.server`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from .. import geometry
from ..playground.world import OVERVIEWS
from ..engine import DEFAULT_MODEL, EngineConfig
from .datasets import BENCHMARKS, DataError, open_benchmark
from ..server import ServerError, add_arguments as add_server_arguments, served_name, server_kwargs
from .runner import EvalConfig, EvalError, World, check_resume, evaluate, make_protocol


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig()
    p = argparse.ArgumentParser(prog="python -m mgpo.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--data", default=None, help="the benchmark's folder or file (see README); "
                   "not used by playground")
    p.add_argument("--out", required=True, help="results folder; an existing one is resumed")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or local directory (default: %(default)s)")
    p.add_argument("--adapter", default=None, help="LoRA adapter: Hub id or directory")
    p.add_argument("--checkpoint", default=None,
                   help="with --model set to a playground release folder: which of its checkpoints (default: its own)")
    p.add_argument("--mode", default=d.mode, choices=("mgpo", "direct"),
                   help="mgpo = multi-turn grounding; direct = the single-turn baseline prompt")
    p.add_argument("--max-turns", type=int, default=None,
                   help=f"mgpo turns (2 = paper, 3 = its Table 6; default: a release's own, else {d.engine.max_turns})")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first K items only")
    p.add_argument("--categories", default=None,
                   help="vstar: the categories (subfolders) to score, comma-separated, or 'all' "
                        "(default: direct_attributes,relative_position, the official 191 items)")
    p.add_argument("--split", default=d.split, choices=("test", "val"),
                   help="playground: score TEST scenes (default) or VAL scenes (for choosing a checkpoint)")
    p.add_argument("--overview", type=int, default=None, choices=OVERVIEWS,
                   help="playground: the overview side its scenes are drawn for (default: the release's, else 224)")
    p.add_argument("--cards", type=int, default=None,
                   help="playground: cards of different colours a scene, the question naming one (default: the "
                        "release's, else 1)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--min-pixels", type=int, default=None,
                   help=f"default {geometry.MIN_PIXELS:,} (the paper's); playground: its crop floor")
    p.add_argument("--max-pixels", type=int, default=None,
                   help=f"default {geometry.MAX_PIXELS:,} (the paper's); playground: its overview budget")
    p.add_argument("--box-rule", default=d.engine.box_rule, choices=geometry.BOX_RULES)
    p.add_argument("--prompts", default=d.engine.prompts, help="prompt set name (default: the paper's)")
    p.add_argument("--max-new-tokens", type=int, default=d.engine.max_new_tokens, help="per turn")
    p.add_argument("--temperature", type=float, default=d.engine.temperature, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=d.engine.top_p)
    p.add_argument("--top-k", type=int, default=d.engine.top_k)
    p.add_argument("--seed", type=int, default=None,
                   help="decoding seed; playground: also the index of the first scene of --split (default 0)")
    p.add_argument("--no-crop-only", dest="crop_only", action="store_false",
                   help="mgpo mode: skip re-asking on the crop alone (crop-only accuracy)")
    p.add_argument("--strict", action="store_true", help="read answers from \\boxed{} only (no fallback)")
    p.add_argument("--image-root", default=None, help="folder that relative image paths start from")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in --out")
    add_server_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..playground.release import apply_to_args

    try:   # --model may be a playground release: its model, checkpoint and pixel budgets
        apply_to_args(args)
    except ValueError as e:   # ReleaseError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.max_turns = EngineConfig().max_turns if args.max_turns is None else args.max_turns
    if args.benchmark == "playground":
        from ..playground.world import Budgets

        budgets = Budgets.for_overview(args.overview).engine()
        args.min_pixels = budgets["min_pixels"] if args.min_pixels is None else args.min_pixels
        args.max_pixels = budgets["max_pixels"] if args.max_pixels is None else args.max_pixels
    args.min_pixels = geometry.MIN_PIXELS if args.min_pixels is None else args.min_pixels
    args.max_pixels = geometry.MAX_PIXELS if args.max_pixels is None else args.max_pixels
    names = {f.name for f in fields(EvalConfig)} | {f.name for f in fields(EngineConfig)}
    cfg = EvalConfig.of(**{k: v for k, v in vars(args).items() if k in names})
    try:
        cfg.check()
        bench = open_benchmark(cfg.benchmark, cfg.data, cfg.image_root, seed=cfg.engine.seed, limit=cfg.limit,
                               categories=cfg.categories, split=cfg.split, overview=cfg.overview,
                               cards=cfg.cards)
        for note in bench.notes:
            print(f"note: {note}", file=sys.stderr)
        out = Path(cfg.out).expanduser()
        if args.server:
            if cfg.adapter:
                raise EvalError("--adapter with --server: serve the adapter (vllm serve --lora-modules NAME=DIR) "
                                "and pass --server-model NAME")
            cfg.model = served_name(args)
        if not args.overwrite and out.is_dir():   # refuse a mismatched resume before loading weights
            name = cfg.model + (f" + {cfg.adapter}" if cfg.adapter else "")
            check_resume(out, make_protocol(name, bench, cfg), write=False)
        from ..engine import Engine
        from ..model import ModelLoadError

        try:
            if args.server:
                engine = Engine.from_server(args.server, cfg.engine, args.server_model, **server_kwargs(args))
                engine.name = cfg.model
            else:
                device = args.device
                if device is None and World.current().size > 1:   # accelerate launch: one GPU per process
                    device = str(World.current().state.device)
                engine = Engine.from_pretrained(cfg.model, cfg.adapter, config=cfg.engine, device=device,
                                                dtype=args.dtype)
        except (ModelLoadError, ValueError) as e:
            raise EvalError(str(e)) from None
        results = evaluate(engine, bench, cfg, progress=not args.no_progress, overwrite=args.overwrite)
    except (DataError, EvalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ServerError as e:
        print(f"error: {e}\nfinished items are in {cfg.out}/items.jsonl — rerun the same command to resume",
              file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished items are in {cfg.out}/items.jsonl — rerun the same command to resume",
              file=sys.stderr)
        return 130
    if not World.current().main:
        return 0
    s, g = results["scores"], results.get("grounding")
    iou = "" if not g or g["mean_iou"] is None else f", mean IoU {g['mean_iou']:.3f} over {g['n_boxed']} boxes"
    print(f"{results['protocol']['benchmark']} {cfg.mode}: {100 * s['overall']:.1f}% "
          f"over {s['n']} items{iou} → {cfg.out}/results.json, {cfg.out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

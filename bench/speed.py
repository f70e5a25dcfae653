"""Speed of the engine and the trainer's LoRA update, side by side with plain transformers.

    python -m bench                                   # GPU: Qwen2.5-VL-7B shapes, bf16 (or python -m mgpo.bench)
    python -m bench --shapes tiny --json /tmp/b.json  # CPU: tiny shapes, a dry run in seconds

One process builds a random-weight Qwen2.5-VL (:mod:`bench.shapes`; speed does not depend on the
weights), measures the hardware (bf16 matmul TFLOP/s, copy bandwidth), then times each case of
``docs/speed.md`` twice — with the project's code (:class:`mgpo.engine.Engine` over the real
:class:`mgpo.generation.QwenBackend` decode loop; :func:`train.logprobs.token_logprobs` for the
update) and with :class:`bench.baseline.Baseline`, a plain transformers forward loop:

- ``decode``: single-stream decode tok/s (one prompt with the 4K overview, 128 new tokens);
- ``two_turn``: the 4K image (3840×2160 noise): turn 1 on the overview (≤1280 visual tokens,
  48 generated tokens ending with a box), turn 2 on the native-resolution crop of a 1/4 × 1/4
  region (~646 visual tokens, 16 generated) — the engine with KV reuse and re-encoding, the
  baseline re-encoding and continuing its cache;
- ``native``: the same image in one turn at native resolution (10,549 visual tokens) + 16 tokens;
- ``group_prefill``: turn-1 prefill of a group of 8 samples of one prompt vs one sample
  (the engine's ``TurnFinished.prefill_seconds``; the baseline's 8 copies of the prompt);
- ``rollout``: rollout decode tok/s of 8 prompts × 8 samples, 128 new tokens, temperature 1;
- ``lora``: one LoRA r=64 update (gradient checkpointing) on 8 rollouts: tokens/s and MFU.

Random weights never write a box and stop at random, so :class:`bench.forced.ForcedBackend`
scripts turn 1 (a prose prefix padded to 48 tokens and a fenced ``json`` box that maps to the
wanted crop) and fixes every answer's length; log-probs stay the model's own.

Each case runs once to warm up, then ``reps`` times; the median counts (``cuda.synchronize``
around every timing). A case that fails is reported as an error and the rest still run. The
baseline gets the same token counts as the engine's turns (the tiny byte-level tokenizer makes
the text part of a prompt about 4× longer than Qwen's BPE would). Floors and MFU come from the
hardware measured in the same run (:mod:`bench.hardware`). Engine times include what a caller
waits for (image resize and processor); the baseline's images are encoded before its clock starts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from mgpo import geometry

from .cases import Bench
from .hardware import Floors, Model, hardware, sync
from .report import Row, table

CASES = ("decode", "two_turn", "native", "group_prefill", "rollout", "lora")


@dataclass
class BenchConfig:
    shapes: str = "7b"                       # 7b | tiny
    image_size: tuple[int, int] = (3840, 2160)   # (W, H) of the noise image
    min_pixels: int = geometry.MIN_PIXELS    # the paper's pixel limits for the overview / crops
    max_pixels: int = geometry.MAX_PIXELS
    crop_at: tuple[float, float] = (1 / 3, 1 / 3)   # crop's top-left, as fractions of (W, H)
    crop_frac: float = 0.25                  # crop side / image side
    turn1_tokens: int = 48                   # turn 1 = prose + box, exactly this long
    answer_tokens: int = 16                  # a final answer's new tokens
    decode_tokens: int = 128                 # single-stream decode
    group_size: int = 8                      # group_prefill and rollout
    rollout_prompts: int = 8                 # rollout: prompts × group_size rows
    rollout_tokens: int = 128
    lora_rows: int = 8
    lora_r: int = 64
    reps: int = 3                            # timed repetitions after one warm-up
    long_reps: int = 2                       # for the long cases (rollout, lora)
    max_seconds: float = 420.0               # later cases are skipped past this (the device lease)
    cases: tuple[str, ...] = CASES

    @classmethod
    def tiny(cls, **kw) -> "BenchConfig":
        """CPU dry run: the same cases on tiny shapes and a small image (seconds)."""
        base = dict(shapes="tiny", image_size=(640, 360), min_pixels=16 * 28 * 28, max_pixels=64 * 28 * 28,
                    decode_tokens=8, group_size=4, rollout_prompts=2, rollout_tokens=8, lora_rows=2, lora_r=8,
                    reps=1, long_reps=1, max_seconds=120.0)
        base.update(kw)
        return cls(**base)

    @classmethod
    def playground(cls, **kw) -> "BenchConfig":
        """CPU at the playground's size: its model shapes, a 2048² image at its pixel budgets (224²
        overview, 112² crops), and its RL rollouts (16 prompts × 8 samples, 96 new tokens)."""
        from mgpo.playground.world import MAX_NEW_TOKENS, Budgets

        b = Budgets()
        base = dict(shapes="playground", image_size=(2048, 2048), min_pixels=b.crop_min_pixels,
                    max_pixels=b.overview_max_pixels, crop_frac=0.125, turn1_tokens=48, answer_tokens=8,
                    decode_tokens=MAX_NEW_TOKENS, group_size=8, rollout_prompts=16, rollout_tokens=MAX_NEW_TOKENS,
                    lora_rows=16, lora_r=32, reps=3, long_reps=3, max_seconds=600.0)
        base.update(kw)
        return cls(**base)


# Rough wall seconds of each case on an H200 at 7B shapes (docs/speed.md's baseline times × runs):
# printed before the run so a device session knows what it is in for.
EST_7B_SECONDS = dict(build=15, floors=3, decode=22, two_turn=30, native=16, group_prefill=10, rollout=30, lora=70)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def run(cfg: BenchConfig, device: str | None = None, out=print, save=None) -> dict:
    """Build the model, measure the hardware and every case; return the result dict.
    ``save(result)`` is called after every case with what is known so far (a run cut short by
    a time limit still leaves its finished cases)."""
    import torch
    import transformers

    from mgpo.model import pick_device, pick_dtype

    device = pick_device(device)
    dtype = pick_dtype(device)
    t_start = time.perf_counter()
    result: dict = {"config": asdict(cfg), "env": {
        "torch": torch.__version__, "transformers": transformers.__version__, "device": device, "dtype": str(dtype),
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}}
    if cfg.shapes == "7b":
        est = EST_7B_SECONDS["build"] + EST_7B_SECONDS["floors"] + sum(EST_7B_SECONDS[c] for c in cfg.cases)
        out(f"estimated run time on an H200: ≈{est} s ({', '.join(f'{c} {EST_7B_SECONDS[c]} s' for c in cfg.cases)})")
        result["estimate_s"] = est
    threads = torch.get_num_threads()
    if device == "cpu" and cfg.shapes == "tiny":
        # tiny ops gain nothing from threads, and threads waiting on each other on shared cores
        # made the dry run 10× slower at random
        torch.set_num_threads(1)
    try:
        return _run(cfg, device, dtype, result, t_start, out, save or (lambda r: None))
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchConfig, device: str, dtype, result: dict, t_start: float, out, save) -> dict:
    import torch

    from .shapes import SHAPES, build

    bench = Bench(cfg, device, dtype)
    errors: dict[str, str] = {}
    t = time.perf_counter()
    bench.loaded = build(SHAPES[cfg.shapes], device, dtype, cfg.min_pixels, cfg.max_pixels)
    sync(device)
    m = Model.of(bench.loaded.model)
    result["model"] = {**asdict(m), "build_s": time.perf_counter() - t}
    hw = hardware(device)
    result["hardware"] = hw
    bench.floors = Floors(m, hw["matmul_tflops"] * 1e12, hw["copy_tbps"] * 1e12)
    out(f"{cfg.shapes} shapes on {device} ({dtype}): {m.params / 1e9:.3g} B parameters; matmul "
        f"{hw['matmul_tflops']:.3g} TFLOP/s, copy {hw['copy_tbps']:.3g} TB/s"
        + ("" if hw["meaningful"] else " (CPU: floors and targets are meaningless here)"))
    timings: dict[str, float] = {}
    result.update(rows=[], cases=bench.cases, errors=errors, case_seconds=timings)
    for name in cfg.cases:
        spent = time.perf_counter() - t_start
        if spent > cfg.max_seconds:
            errors[name] = f"skipped: {spent:.0f} s spent, over --max-seconds {cfg.max_seconds:.0f}"
            out(f"{name}: {errors[name]}")
            continue
        t = time.perf_counter()
        n_rows = len(bench.rows)
        try:
            getattr(bench, f"case_{name}")()
            bad = [r.case for r in bench.rows[n_rows:]
                   if not all(_finite(v) for v in (r.project, r.baseline) + ((r.floor,) if r.floor is not None else ()))]
            if bad:
                raise RuntimeError(f"non-finite result in {bad}")
        except Exception as e:  # noqa: BLE001 — one broken case must not cost the others' numbers
            del bench.rows[n_rows:]
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            traceback.print_exc(file=sys.stderr)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        timings[name] = time.perf_counter() - t
        out(f"{name}: {'error: ' + errors[name] if name in errors else 'done'} in {timings[name]:.1f} s")
        result.update(rows=[r.to_dict() for r in bench.rows], total_seconds=time.perf_counter() - t_start)
        save(result)
    if "two_turn" in bench.cases and "native" in bench.cases:
        tt, nat = bench.cases["two_turn"], bench.cases["native"]
        bench.rows.append(Row("two turns ÷ one native pass", "×", tt["engine_kv_reuse_s"] / nat["engine_s"],
                              tt["baseline_kv_reuse_s"] / nat["baseline_s"], None, 0.5, higher=False))
    result.update(rows=[r.to_dict() for r in bench.rows], total_seconds=time.perf_counter() - t_start)
    save(result)
    out(table(bench.rows, errors))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", choices=("7b", "tiny", "playground"),
                   help="default: 7b with CUDA, tiny without; playground: the playground model's size (CPU)")
    p.add_argument("--json", help="write the result here (default: $OUT/bench.json when $OUT is set)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE",
                   help=f"which cases to run (default all: {' '.join(CASES)})")
    p.add_argument("--reps", type=int, help="timed repetitions per case (after one warm-up)")
    p.add_argument("--max-seconds", type=float, help="skip cases that would start after this many seconds")
    p.add_argument("--device", help="cuda | cpu (default: cuda when available)")
    args = p.parse_args(argv)

    import os

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    shapes = args.shapes or ("7b" if cuda else "tiny")
    if shapes == "7b" and not cuda:
        print("error: --shapes 7b needs a GPU (about 40 GB); on CPU run --shapes tiny (a dry run)", file=sys.stderr)
        return 2
    kw = {"cases": tuple(args.cases)}
    if args.reps is not None:
        if args.reps < 1:
            print("error: --reps must be at least 1", file=sys.stderr)
            return 2
        kw.update(reps=args.reps, long_reps=min(args.reps, 2))
    if args.max_seconds is not None:
        kw["max_seconds"] = args.max_seconds
    # the order of CASES: lora last (it injects LoRA layers into the model)
    kw["cases"] = tuple(c for c in CASES if c in kw["cases"])
    cfg = {"7b": BenchConfig, "tiny": BenchConfig.tiny, "playground": BenchConfig.playground}[shapes](**kw)
    path = args.json or (str(Path(os.environ["OUT"]) / "bench.json") if os.environ.get("OUT") else None)

    def save(result: dict) -> None:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(result, indent=1, default=str) + "\n")

    try:
        result = run(cfg, args.device, out=lambda line: print(line, flush=True), save=save)
    except Exception as e:  # noqa: BLE001 — building the model or measuring the hardware failed
        traceback.print_exc(file=sys.stderr)
        save({"config": asdict(cfg), "errors": {"setup": f"{type(e).__name__}: {e}"}})
        print(f"error: the benchmark could not start: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if path:
        print(f"wrote {path}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

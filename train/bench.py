"""A few training steps of the real loop on a random-weight model with Qwen2.5-VL-7B's shapes:
peak GPU memory and step time, without downloading weights.

    python -m train.bench --shapes 7b --steps 3 --group-size 8 --prompts-per-step 2 --max-new-tokens 256
    python -m train.bench --shapes tiny --steps 1          # the same path on CPU, in seconds

The model is built in memory by :func:`bench.shapes.build` (the 7B shapes on the GPU in bf16).
Random weights write noise: turn 1's box is never valid, so every rollout takes the fallback
path with the full overview twice (the longest sequences MGPO produces) and every turn runs to
``max_new_tokens``.
Images are ``--image-size`` noise pictures, so the overview fills ``max_pixels`` (1280 visual
tokens at the paper's setting). The result is printed as JSON (and written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mgpo import geometry
from bench.shapes import SHAPES_7B, SHAPES_TINY, build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", choices=("7b", "tiny"), default="7b")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--image-size", type=int, nargs=2, default=(2000, 1500), metavar=("W", "H"))
    p.add_argument("--max-pixels", type=int, default=geometry.MAX_PIXELS)
    p.add_argument("--min-pixels", type=int, default=geometry.MIN_PIXELS)
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from .config import TrainConfig
    from .loop import Trainer

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if args.shapes == "7b" and not cuda:
        print("error: --shapes 7b needs a GPU (about 40 GB for weights + LoRA + activations)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="mgpo-bench-"))
    rng = np.random.RandomState(0)
    lines = []
    for i in range(max(4, args.prompts_per_step)):
        w, h = args.image_size
        Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8")).save(tmp / f"{i}.jpg")
        lines.append(json.dumps({"image": f"{i}.jpg", "question": "What is the license plate of the red car?",
                                 "choices": ["LB MA 864", "LB MA 846", "LR MA 864", "LB NA 864", "None"],
                                 "answer": "A"}))
    (tmp / "data.jsonl").write_text("\n".join(lines) + "\n")

    t0 = time.perf_counter()
    loaded = build(SHAPES_7B if args.shapes == "7b" else SHAPES_TINY, device, dtype, args.min_pixels,
                   args.max_pixels)
    build_s = time.perf_counter() - t0
    cfg = TrainConfig(model=f"random-{args.shapes}-shapes", data=str(tmp / "data.jsonl"), output_dir=str(tmp / "run"),
                      steps=args.steps, group_size=args.group_size, prompts_per_step=args.prompts_per_step,
                      micro_batch=args.micro_batch, max_new_tokens=args.max_new_tokens,
                      min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                      gradient_checkpointing=not args.no_gradient_checkpointing,
                      save_every=0, tensorboard=False, progress=False, plot=False)
    steps: list[dict] = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, loaded=loaded, on_step=lambda s, m: steps.append(m))
    n_params = sum(p.numel() for p in trainer.model.parameters())
    n_lora = sum(p.numel() for p in trainer.params)
    trainer.run()
    keys = ("step_seconds", "rollout_seconds", "train_seconds", "tokens_per_s", "seq_tokens", "turn1_tokens",
            "final_tokens", "loss", "kl", "grad_norm")
    result = {
        "shapes": args.shapes, "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype),
        "params": n_params, "lora_params": n_lora, "build_seconds": round(build_s, 1),
        "samples_per_step": args.group_size * args.prompts_per_step, "micro_batch": args.micro_batch,
        "max_new_tokens": args.max_new_tokens, "image_size": list(args.image_size),
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "steps": [{k: float(f"{float(m[k]):.4g}") for k in keys if k in m} for m in steps],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A few training steps of the real loop on a random-weight model with Qwen2.5-VL-7B's shapes:
peak GPU memory and step time, without downloading weights.

    python -m train.bench --shapes 7b --steps 3 --group-size 8 --prompts-per-step 2 --max-new-tokens 256
    python -m train.bench --shapes tiny --steps 1          # the same path on CPU, in seconds

The 7B model is built in memory on the GPU in bf16 from Qwen2.5-VL-7B-Instruct's published
config (28 layers × 3584 hidden, 28 heads / 4 KV heads, MLP 18944, vocab 152064; vision tower 32
blocks × 1280, window attention with full attention at blocks 7/15/23/31) with the byte-level
tokenizer of :mod:`mgpo.tiny` (the embedding table keeps its 152,064 rows). Random weights write
noise: turn 1's box is never valid, so every rollout takes the fallback path with the full
overview twice (the longest sequences MGPO produces) and every turn runs to ``max_new_tokens``.
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

SHAPES_7B = dict(
    text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
              num_key_value_heads=4, vocab_size=152064, mrope=[16, 24, 24]),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                fullatt_block_indexes=[7, 15, 23, 31]),
)
SHAPES_TINY = dict(
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=288, mrope=[4, 2, 2]),
    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                fullatt_block_indexes=[1]),
)


def build(shapes: dict, device: str, dtype, min_pixels: int, max_pixels: int):
    """A random-weight Qwen2.5-VL of the given shapes, with processor, as :class:`mgpo.model.Loaded`."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    from mgpo.model import Loaded
    from mgpo.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(shapes["text"])
    mrope = text.pop("mrope")
    config = Qwen2_5_VLConfig(
        text_config=dict(**text, max_position_embeddings=128000, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False),
        vision_config=dict(**shapes["vision"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, hidden_act="silu"),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels), tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    return Loaded(model, processor, "random Qwen2.5-VL", None, device, dtype)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", choices=("7b", "tiny"), default="7b")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--image-size", type=int, nargs=2, default=(2000, 1500), metavar=("W", "H"))
    p.add_argument("--max-pixels", type=int, default=1280 * 28 * 28)
    p.add_argument("--min-pixels", type=int, default=256 * 28 * 28)
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

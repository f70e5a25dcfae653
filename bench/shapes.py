"""A random-weight Qwen2.5-VL with given shapes (Qwen2.5-VL-7B's, or tiny ones), built in memory.

No weights can be downloaded where the speed and memory benchmarks run, and speed does not
depend on the weights, so ``python -m bench`` and ``python -m train.bench`` time a model
built from the published Qwen2.5-VL-7B-Instruct config (28 layers × 3584 hidden, 28 heads / 4 KV
heads, MLP 18944, vocab 152064, M-RoPE sections [16, 24, 24]; vision tower 32 blocks × 1280,
window attention with full attention at blocks 7/15/23/31) with the byte-level tokenizer of
:mod:`mgpo.tiny` (the embedding table keeps its 152,064 rows). Built directly on the GPU in
bf16 it takes about a second.
"""

from __future__ import annotations

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

# the playground's cpu-size model (examples/playground/model): text 256 × 4 layers, vision 128 × depth 4
SHAPES_PLAYGROUND = dict(
    text=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=800, mrope=[12, 10, 10]),
    vision=dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                fullatt_block_indexes=[3]),
)
SHAPES = {"7b": SHAPES_7B, "tiny": SHAPES_TINY, "playground": SHAPES_PLAYGROUND}


def build(shapes: dict, device: str, dtype, min_pixels: int, max_pixels: int):
    """A random-weight Qwen2.5-VL of the given shapes, with processor, as :class:`mgpo.model.Loaded`."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mgpo.model import Loaded
    from mgpo.tiny import build_processor, build_tokenizer, qwen_config

    tok = build_tokenizer()
    config = qwen_config(tok, shapes["text"], shapes["vision"])
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    processor = build_processor(tok, min_pixels, max_pixels)
    return Loaded(model, processor, "random Qwen2.5-VL", None, device, dtype)

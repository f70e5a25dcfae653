"""A random-weight Qwen2.5-VL with given shapes (Qwen2.5-VL-7B's, or tiny ones), built in memory.

No weights can be downloaded where the speed and memory benchmarks run, and speed does not
depend on the weights, so ``python -m mgpo.bench`` and ``python -m train.bench`` time a model
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

"""Build a tiny random-weight Qwen2.5-VL (model + processor + chat template) for offline use.

    python -m mgpo.tiny OUT_DIR [--seed 0] [--layers 2] [--hidden 64] [--qwen-files DIR]

The result is a real ``Qwen2_5_VLForConditionalGeneration`` checkpoint with a byte-level
``Qwen2Tokenizer`` (the 256 GPT-2 byte symbols plus Qwen's special tokens), Qwen2.5-VL's chat
template and a ``Qwen2VLImageProcessor``. It loads through :func:`mgpo.model.load_model` exactly
like ``Qwen/Qwen2.5-VL-7B-Instruct``; tests, CI and offline tries of the demo use it. It answers
with noise: it exists to exercise every real code path, not to be right.

``--qwen-files DIR`` takes the tokenizer, chat template, processor and generation config from a
released checkpoint's folder instead (no weights needed there: ``vocab.json`` + ``merges.txt`` or
``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.json``,
``preprocessor_config.json``, ``generation_config.json``, ``config.json`` for the vocabulary
size). The model keeps its small dimensions but gets the real vocabulary (152,064 embedding
rows for Qwen2.5-VL-7B-Instruct) and special-token ids, so the ids it reads and writes are the
released model's. ``tests/fixtures/qwen2.5-vl-7b-instruct/`` holds those files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .geometry import MAX_PIXELS, MIN_PIXELS

# Qwen2.5-VL's chat template, as shipped with the released checkpoints.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-VL's special tokens, in the order of the released vocabulary.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]



def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2's byte-level BPE uses for raw bytes, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def build_tokenizer(corpus=None, vocab_size: int = 1024):
    """A ``Qwen2Tokenizer``: byte-level (no merges) by default; with ``corpus`` (an iterable of
    texts), byte-level BPE merges learned from it up to ``vocab_size`` entries before the special
    tokens — Qwen's own pre-tokenizer (digits one by one, words with their leading space), so a
    small model trained on that text reads a word as one token instead of its bytes."""
    from transformers import Qwen2Tokenizer

    symbols = _byte_symbols()
    vocab = {sym: i for i, sym in enumerate(symbols)}
    merges: list = []
    if corpus is not None:
        vocab, merges = _learn_merges(corpus, vocab_size, symbols)
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _learn_merges(corpus, vocab_size: int, symbols: list[str]):
    """(vocab, merges) of a byte-level BPE trained on ``corpus`` with Qwen2's pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    if vocab_size < len(symbols):
        raise ValueError(f"vocab_size must be at least {len(symbols)} (the byte symbols)")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=symbols, special_tokens=[],
                                  show_progress=False, min_frequency=2)
    bpe.train_from_iterator(corpus, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    # byte symbols first, in byte order (as the byte-level tokenizer numbers them), then the merges
    vocab = {sym: i for i, sym in enumerate(symbols)}
    for piece, _ in sorted(state["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    return vocab, merges


def qwen_config(tok, text: dict, vision: dict):
    """A ``Qwen2_5_VLConfig`` for ``tok``'s special-token ids. ``text``: the text model's sizes
    plus ``mrope`` (sums to head_dim / 2, like 7B's [16, 24, 24]); ``vision``: the vision tower's
    sizes. The rest follows Qwen2.5-VL-7B-Instruct's published config."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(text)
    mrope = text.pop("mrope")
    return Qwen2_5_VLConfig(
        text_config=dict(**text, max_position_embeddings=128000, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False),
        vision_config=dict(**vision, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, hidden_act="silu"),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_processor(tok, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    """Qwen2.5-VL's processor around ``tok`` with the given pixel limits and chat template."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
        tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE,
    )


def build(
    out_dir: str | Path,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    vision_hidden: int = 32,
    vision_depth: int = 2,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    tokenizer=None,
    embed_std: float | None = None,
    qwen_files: str | Path | None = None,
) -> Path:
    """Write a tiny Qwen2.5-VL checkpoint to ``out_dir`` and return the path (``tokenizer``:
    one from :func:`build_tokenizer`; the byte-level one by default; ``embed_std``: draw the
    token embeddings with this std instead of the config's 0.02; ``qwen_files``: a released
    checkpoint's folder whose tokenizer, template, processor and generation config to carry —
    the pixel limits then are that processor's own)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generation = processor = None
    if qwen_files is not None:
        processor, vocab_size, generation = _released_files(Path(qwen_files))
        tok = processor.tokenizer
    else:
        tok = tokenizer if tokenizer is not None else build_tokenizer()
        vocab_size = len(tok)
        vocab_size += (-vocab_size) % 16  # round up, as real checkpoints pad their embedding tables
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = 4
    half = hidden // heads // 2
    config = qwen_config(
        tok,
        text=dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=2,
                  mrope=[half - 2 * (half // 3), half // 3, half // 3]),
        vision=dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_heads=2,
                    out_hidden_size=hidden, fullatt_block_indexes=[vision_depth - 1]),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    if embed_std:
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, embed_std)
    if generation is not None:
        model.generation_config = generation
    else:
        model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
        model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    (processor or build_processor(tok, min_pixels, max_pixels)).save_pretrained(out)
    origin = f", tokenizer and processor files from {Path(qwen_files).name}" if qwen_files else ""
    (out / "README.md").write_text(
        "# tiny random Qwen2.5-VL\n\nBuilt by `python -m mgpo.tiny` "
        f"(seed {seed}, {layers} text layers, hidden {hidden}{origin}). Random weights: for tests and "
        "offline tries of the tooling only; its answers are noise.\n"
    )
    meta = {"seed": seed, "layers": layers, "hidden": hidden, "vocab_size": vocab_size}
    if qwen_files:
        meta["qwen_files"] = Path(qwen_files).name
    (out / "mgpo_tiny.json").write_text(json.dumps(meta) + "\n")
    return out


def _released_files(folder: Path):
    """(processor, vocabulary size, generation config) from a released checkpoint's folder."""
    from transformers import AutoProcessor, GenerationConfig

    missing = [f for f in ("config.json", "generation_config.json", "preprocessor_config.json",
                           "tokenizer_config.json") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)} (a Qwen2.5-VL checkpoint's own files)")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "qwen2_5_vl":
        raise ValueError(f"{folder}/config.json is a {config.get('model_type')} config, not qwen2_5_vl")
    processor = AutoProcessor.from_pretrained(folder)
    return processor, int(config["vocab_size"]), GenerationConfig.from_pretrained(folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mgpo.tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--qwen-files", default=None, metavar="DIR",
                   help="carry a released checkpoint's tokenizer, template, processor and generation config "
                        "(e.g. tests/fixtures/qwen2.5-vl-7b-instruct): the real vocabulary at small dimensions")
    args = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        path = build(args.out_dir, seed=args.seed, layers=args.layers, hidden=args.hidden, qwen_files=args.qwen_files)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote a tiny random Qwen2.5-VL to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

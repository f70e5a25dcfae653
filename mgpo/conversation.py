"""Per-sample conversation records and decoding settings. Torch-free.

A :class:`Row` is one sample's whole conversation as the model reads it: token ids, the loss
mask, the log-probs seen while sampling, the M-RoPE positions and the images fed. Positions are
computed token by token exactly as transformers' ``get_rope_index`` computes them over a whole
sequence: a text token takes the running position on all three axes; an image's merged grid
(t, h/2, w/2) takes ``start + (t, y, x)`` and the running position then advances by
``max(h/2, w/2)``. Passing them explicitly keeps turn 2 on proper M-RoPE positions with a KV
cache, where the model would otherwise fall back to 1-D positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Sampling:
    """Decoding settings for one engine call."""

    temperature: float = 0.0    # 0 = greedy; the paper samples rollouts at 1.0
    top_p: float = 1.0
    top_k: int = 0              # 0 = off
    max_new_tokens: int = 1024  # per turn (the paper allows 8192)
    seed: int | None = None     # seeds the sampler for reproducible rollouts


@dataclass
class Generated:
    """What one row produced in one turn."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    stop: str                   # eos | box | length
    prefill_tokens: int
    prefill_seconds: float
    decode_seconds: float
    new_tokens: int | None = None   # tokens generated, where the ids stay elsewhere (a server); else len(token_ids)

    @property
    def count(self) -> int:
        return len(self.token_ids) if self.new_tokens is None else self.new_tokens


@dataclass
class FedImage:
    image: Image.Image          # as fed, at its model frame
    pixel_values: object        # torch.Tensor (patches, 3·2·14·14) from the image processor
    grid_thw: tuple[int, int, int]

    @property
    def tokens(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w // 4


@dataclass
class Row:
    """One sample's conversation. All lists are aligned with ``tokens``."""

    tokens: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)          # 1 = policy token, 0 = prompt/env token
    logprobs: list[float] = field(default_factory=list)    # sampling log-prob of policy tokens, 0.0 else
    positions: list[tuple[int, int, int]] = field(default_factory=list)  # M-RoPE (t, h, w)
    images: list[FedImage] = field(default_factory=list)
    next_pos: int = 0           # next text position
    cached: int = 0             # tokens already in the KV cache
    images_cached: int = 0      # images whose tokens are already in the KV cache

    def add_tokens(self, ids: list[int], policy: int = 0, logprobs: list[float] | None = None) -> None:
        """Append text tokens: ``policy`` 1 for sampled tokens, 0 for prompt/environment."""
        for k, tid in enumerate(ids):
            self.tokens.append(tid)
            self.mask.append(policy)
            self.logprobs.append(logprobs[k] if logprobs else 0.0)
            self.positions.append((self.next_pos,) * 3)
            self.next_pos += 1

    def add_image(self, img: FedImage, image_token_id: int) -> None:
        """Append an image's ``<|image_pad|>`` tokens (mask 0) with their 3-D positions."""
        t, gh, gw = img.grid_thw
        mh, mw = gh // 2, gw // 2
        start = self.next_pos
        for tt in range(t):
            for y in range(mh):
                for x in range(mw):
                    self.tokens.append(image_token_id)
                    self.mask.append(0)
                    self.logprobs.append(0.0)
                    self.positions.append((start + tt, start + y, start + x))
        self.next_pos = start + max(mh, mw)
        self.images.append(img)

    def copy(self) -> "Row":
        """An independent row sharing the (immutable) fed images."""
        return Row(list(self.tokens), list(self.mask), list(self.logprobs), list(self.positions),
                   list(self.images), self.next_pos, self.cached, self.images_cached)


class Conversations:
    """A batch of rows sharing one KV cache."""

    def __init__(self, rows: list[Row], repeat: int = 1):
        self.rows = rows
        self.repeat = repeat    # >1: rows are a group's shared prompts, expanded after prefill
        self.cache = None
        self.attn = None        # torch (B, L): 1 = real token in the cache, 0 = hole
        self.holes = False      # attn has a 0 somewhere (the forward then needs the mask)
        self.generator = None   # the sampler's RNG, seeded once per call

    def __len__(self) -> int:
        return len(self.rows) * self.repeat



"""The plain-transformers baseline the benchmark compares the engine with.

What a straightforward transformers program does (measured on an H200 for the table in
``docs/speed.md``): build the token sequence with ``<|image_pad|>`` runs, call
``model(...)`` on it (sdpa attention, a ``DynamicCache``), then call ``model(...)`` once per new
token with greedy argmax — no static cache, no compile, no shared prefill, a group of G samples
is G copies of the prompt (the image encoded G times). Turn 2 either re-encodes the whole
conversation or continues turn 1's cache with explicit M-RoPE positions from
``get_rope_index`` over the full sequence. The LoRA step is a full forward with full-vocabulary
logits, a log-softmax over the last positions, backward and AdamW.

Token ids are random text bytes: speed does not depend on them.
"""

from __future__ import annotations

import time

import torch

from mgpo.generation import cache_keyword

class Baseline:
    """Plain forward loops over a ``Qwen2_5_VLForConditionalGeneration`` (no peft wrapper)."""

    def __init__(self, model, processor, seed: int = 0):
        self.model = model
        self.processor = processor
        cfg = model.config
        self.image_id, self.start_id, self.end_id = cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype
        self.gen = torch.Generator().manual_seed(seed)
        self.prefill_seconds = 0.0     # of the last prefill_decode call (synchronised)
        self.cache_kw = cache_keyword(model.forward)   # cache= (5.2x) or past_key_values= (5.17)

    # ----- inputs -------------------------------------------------------------------------------

    def encode(self, image, min_pixels: int, max_pixels: int):
        """(pixel_values, grid (1, 3), visual tokens) with the processor's own resize."""
        out = self.processor.image_processor(
            images=[image], size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, return_tensors="pt")
        grid = out["image_grid_thw"]
        return out["pixel_values"].to(self.device, self.dtype), grid.to(self.device), int(grid.prod()) // 4

    def prompt(self, tokens: int, visual: int, before: int = 40) -> torch.Tensor:
        """(1, tokens) ids: ``before`` text tokens, an image of ``visual`` tokens, text to fill."""
        return self.sequence([before, ("img", visual), max(1, tokens - visual - 2 - before)])

    def sequence(self, parts) -> torch.Tensor:
        """(1, T) ids from parts: an int n = n random text tokens, ("img", n) = an image of n tokens."""
        ids: list[int] = []
        for p in parts:
            if isinstance(p, tuple):
                ids += [self.start_id] + [self.image_id] * p[1] + [self.end_id]
            else:
                ids += torch.randint(32, 127, (p,), generator=self.gen).tolist()   # printable bytes
        return torch.tensor([ids], device=self.device)

    # ----- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def prefill_decode(self, ids, pixel_values, grid, n_new: int, cache=None, positions=None, batch: int = 1):
        """Prefill ``ids`` (repeated ``batch`` times) then greedy-decode until ``n_new`` tokens
        exist (the prefill gives the first). Returns the cache; ``self.prefill_seconds`` is the
        prefill's share of the call."""
        t0 = time.perf_counter()
        ids = ids.repeat(batch, 1)                                            # (B, T)
        kw = dict(input_ids=ids, use_cache=True, mm_token_type_ids=(ids == self.image_id).int(), logits_to_keep=1)
        if pixel_values is not None:
            kw.update(pixel_values=pixel_values.repeat(batch, 1), image_grid_thw=grid.repeat(batch, 1))
        if cache is not None:
            kw[self.cache_kw] = cache
        if positions is not None:
            kw.update(position_ids=positions)                                 # (3, B, T)
        out = self.model(**kw)
        cache = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)                                   # (B, 1)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.prefill_seconds = time.perf_counter() - t0
        for _ in range(n_new - 1):
            out = self.model(input_ids=tok, use_cache=True, **{self.cache_kw: cache})
            tok = out.logits[:, -1:].argmax(-1)
        return cache

    def positions(self, ids, grid) -> torch.Tensor:
        """(3, B, T) M-RoPE positions of a whole sequence (transformers' ``get_rope_index``)."""
        pos, _ = self.model.model.get_rope_index(ids, (ids == self.image_id).int(), image_grid_thw=grid)
        return pos

    def two_turn_reuse(self, ids1, pv1, grid1, n1: int, ids_full, pv2, grid2, n2: int, pos_full):
        """Turn 1 (prefill + n1 tokens), then turn 2's new tokens prefilled on turn 1's cache."""
        cache = self.prefill_decode(ids1, pv1, grid1, n1)
        self.model.model.rope_deltas = None
        start = ids1.shape[1] + n1     # the turn-2 tokens start after turn 1's prompt and answer
        return self.prefill_decode(ids_full[:, start:], pv2, grid2, n2, cache=cache, positions=pos_full[:, :, start:])

    # ----- training -----------------------------------------------------------------------------

    def lora_step(self, peft_model, optimizer, ids, pixel_values, grid, last: int = 64) -> None:
        """One LoRA step: full forward (full-vocabulary logits), mean log-prob of the last
        ``last`` tokens, backward, AdamW."""
        B = ids.shape[0]
        out = peft_model(input_ids=ids, pixel_values=pixel_values.repeat(B, 1), image_grid_thw=grid.repeat(B, 1),
                         mm_token_type_ids=(ids == self.image_id).int())
        logp = torch.log_softmax(out.logits[:, -last:].float(), -1).gather(-1, ids[:, -last:, None]).mean()
        (-logp).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

"""The training forward: log-probs of the sampled tokens of rollouts, with grad.

A micro-batch of :class:`mgpo.engine.Rollout` is right-padded into one Qwen2.5-VL call over the
WHOLE conversation (both turns, both images) — what the engine did in pieces with a KV cache:

- ``input_ids`` (B, T) with every ``<|image_pad|>`` of both images; ``attention_mask`` (B, T);
- ``position_ids`` (3, B, T): explicit M-RoPE (t, h, w) per token — the rollout's own positions
  (equal to ``get_rope_index`` over the full sequence; :func:`rope_positions` recomputes them
  that way), so the SECOND image gets proper 3-D positions (the original code's defect: it
  extended positions linearly after the first image);
- ``mm_token_type_ids`` (B, T): 1 on image tokens — always passed, so the model never falls back
  to 1-D positions;
- ``pixel_values`` / ``image_grid_thw`` of all images of all rows, in order.

Only policy positions reach ``lm_head``: the hidden state before each policy token (mask 1) is
gathered, projected in chunks (each chunk checkpointed, so full-vocab logits are never stored
for the backward) and turned into ``log_softmax(logits / T)[token]`` — the same quantity the
engine recorded while sampling (:meth:`mgpo.generation.QwenBackend.pick`). Prompt, image and
inserted user-turn positions never get vocabulary logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint


@dataclass
class Batch:
    input_ids: torch.Tensor         # (B, T) right-padded
    attention_mask: torch.Tensor    # (B, T) 1 = real token
    position_ids: torch.Tensor      # (3, B, T) M-RoPE (t, h, w); 0 on padding
    mm_token_type_ids: torch.Tensor  # (B, T) 1 = image token
    loss_mask: torch.Tensor         # (B, T) 1 = policy token (sampled), 0 = prompt/env/padding
    old_logprobs: torch.Tensor      # (B, T) sampling log-probs, 0 off policy tokens
    pixel_values: torch.Tensor | None   # (patches, C·2·14·14) of every image of every row, in order
    image_grid_thw: torch.Tensor | None  # (n_images, 3)

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum().item())


def collate(rollouts, pad_id: int, image_token_id: int, device, dtype=torch.float32) -> Batch:
    """Right-pad rollouts into one batch on ``device`` (pixel values in ``dtype``)."""
    B = len(rollouts)
    T = max(len(r.token_ids) for r in rollouts)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    pos = torch.zeros((3, B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    old = torch.zeros((B, T), dtype=torch.float32)
    pixels, grids = [], []
    for b, r in enumerate(rollouts):
        n = len(r.token_ids)
        ids[b, :n] = torch.tensor(r.token_ids)
        attn[b, :n] = 1
        pos[:, b, :n] = torch.tensor(r.positions, dtype=torch.long).T
        mask[b, :n] = torch.tensor(r.loss_mask)
        old[b, :n] = torch.tensor(r.logprobs, dtype=torch.float32)
        n_img = 0
        for img in r.images:
            if img.pixel_values is None:
                raise ValueError("rollout images carry no pixel values (a scripted backend?): cannot train on them")
            pixels.append(img.pixel_values)
            grids.append(list(img.grid_thw))
            n_img += img.tokens
        if n_img != int((ids[b, :n] == image_token_id).sum()):
            raise ValueError(f"rollout {r.sample}: {n_img} image features for "
                             f"{int((ids[b, :n] == image_token_id).sum())} image tokens")
    mm = (ids == image_token_id).long() * attn
    pv = torch.cat(pixels).to(device, dtype) if pixels else None
    grid = torch.tensor(grids, dtype=torch.long, device=device) if grids else None
    return Batch(ids.to(device), attn.to(device), pos.to(device), mm.to(device), mask.to(device),
                 old.to(device), pv, grid)


def rope_positions(core, batch: Batch) -> torch.Tensor:
    """(3, B, T) M-RoPE positions from transformers' ``get_rope_index`` over the full sequences
    (with ``mm_token_type_ids``); equal to ``batch.position_ids`` on real tokens."""
    pos, _ = core.model.get_rope_index(
        batch.input_ids, mm_token_type_ids=batch.mm_token_type_ids, image_grid_thw=batch.image_grid_thw,
        attention_mask=batch.attention_mask,
    )
    return pos * batch.attention_mask[None]


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, lm_head, temperature: float,
                    with_entropy: bool):
    logits = lm_head(hidden).float()                                  # (n, V)
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)          # (n,)
    if with_entropy:
        ent = -(logp_all.exp() * logp_all).sum(-1)                    # (n,)
    else:
        ent = torch.zeros_like(logp)
    return logp, ent


def token_logprobs(core, batch: Batch, temperature: float = 1.0, with_entropy: bool = True,
                   chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, entropy), each (B, T): at every policy token t, log π(token_t | tokens_<t) and the
    entropy of π at that step; 0 elsewhere. Runs with grad unless called under no_grad.

    ``core`` is the ``Qwen2_5_VLForConditionalGeneration`` (``mgpo.generation.unwrap`` of a peft
    model: its LoRA layers are live; inside ``disable_adapter()`` this is the base model).
    """
    out = core.model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        pixel_values=batch.pixel_values,
        image_grid_thw=batch.image_grid_thw,
        mm_token_type_ids=batch.mm_token_type_ids,
        use_cache=False,
    )
    hidden = out.last_hidden_state                                    # (B, T, H)
    B, T = batch.input_ids.shape
    # token t is predicted from the hidden state at t − 1: policy tokens never sit at t = 0
    sel = batch.loss_mask[:, 1:].bool()                               # (B, T−1)
    h = hidden[:, :-1][sel]                                           # (N, H) only policy positions
    targets = batch.input_ids[:, 1:][sel]                             # (N,)
    lps, ents = [], []
    for s in range(0, h.shape[0], chunk):
        args = (h[s:s + chunk], targets[s:s + chunk], core.lm_head, float(temperature), with_entropy)
        if torch.is_grad_enabled() and h.requires_grad:
            lp, en = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, en = _chunk_logprobs(*args)
        lps.append(lp)
        ents.append(en)
    flat_lp = torch.cat(lps) if lps else hidden.new_zeros(0, dtype=torch.float32)
    flat_en = torch.cat(ents) if ents else hidden.new_zeros(0, dtype=torch.float32)
    logp = torch.zeros((B, T), dtype=torch.float32, device=hidden.device)
    ent = torch.zeros((B, T), dtype=torch.float32, device=hidden.device)
    idx = sel.nonzero(as_tuple=True)
    logp = logp.index_put((idx[0], idx[1] + 1), flat_lp)             # (B, T) aligned with the tokens
    ent = ent.index_put((idx[0], idx[1] + 1), flat_en)
    return logp, ent

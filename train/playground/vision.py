"""Stage 0 of the base skills: the vision tower pretrained through a linear probe (what a
pretrained vision encoder brings), then its merger's output whitened onto the probe's directions."""

from __future__ import annotations

import functools
import itertools
import json
import random
import time
from pathlib import Path

from .settings import VISION_START, RecipeConfig
from .runtime import cycle_seeds, data_workers, echo, scene_map


def token_targets(scene, frame: tuple[int, int]) -> tuple[list[int], list[int], list[int]]:
    """Per merged visual token of the overview (raster order): the colour class of the card under
    its centre (0 = none, 1.. = :data:`COLOURS` order), its row and its column."""
    from mgpo.playground.world import COLOURS

    names = sorted(COLOURS)
    w, h = frame
    sx, sy = scene.image.width / w, scene.image.height / h
    colour, rows, cols = [], [], []
    for r in range(h // 28):
        for c in range(w // 28):
            x, y = (c * 28 + 14) * sx, (r * 28 + 14) * sy
            k = 0
            for card in scene.layout.cards:
                x1, y1, x2, y2 = card.box
                if x1 <= x < x2 and y1 <= y < y2:
                    k = names.index(card.colour) + 1
            colour.append(k)
            rows.append(r)
            cols.append(c)
    return colour, rows, cols


def detail_targets(card, region, frame: tuple[int, int]) -> list[int]:
    """Per merged visual token of a crop of ``region`` fed at ``frame``: 1 + the index of the
    card's stripe orientation in :data:`PATTERNS` where the token overlaps the stripes, else 0."""
    from mgpo.playground.world import PATTERNS

    gx1, gy1, gx2, gy2 = card.stripes
    sx, sy = frame[0] / (region[2] - region[0]), frame[1] / (region[3] - region[1])
    g = ((gx1 - region[0]) * sx, (gy1 - region[1]) * sy, (gx2 - region[0]) * sx, (gy2 - region[1]) * sy)
    k = PATTERNS.index(card.detail) + 1
    out = []
    for r in range(frame[1] // 28):
        for c in range(frame[0] // 28):
            hit = c * 28 < g[2] and g[0] < (c + 1) * 28 and r * 28 < g[3] and g[1] < (r + 1) * 28
            out.append(k if hit else 0)
    return out


def probe_item(seed: int, simple: float = 0.3, n_cards: tuple[int, int] | None = None, budgets=None):
    """One scene's vision-probe data: the overview as fed and its per-token targets
    (:func:`token_targets`), one card's crop as fed and its per-token stripe targets
    (``n_cards``: the world's own range by default; ``budgets``: its geometry)."""
    from mgpo import geometry
    from mgpo.playground.world import N_CARDS, Budgets, make_scene

    n_cards = n_cards or N_CARDS

    rng = random.Random(f"probe:{seed}")
    budgets = budgets or Budgets()
    b = budgets.engine()
    scene = make_scene(seed, budgets=budgets, clutter=0.0 if rng.random() < simple else 1.0, n_cards=n_cards)
    ov = geometry.prepare(scene.image, None, **b)
    card = rng.choice(scene.layout.cards)
    crop = geometry.prepare(scene.image, card.box, **b)
    return ov.image, token_targets(scene, ov.frame), crop.image, detail_targets(card, card.box, crop.frame)


def pretrain_vision(loaded, cfg: RecipeConfig, log_path: Path | None = None) -> list[dict]:
    """Stage 0 of the base skills — what a pretrained vision encoder brings: the vision tower
    (and its merger) learn, through a linear probe thrown away afterwards, to tell for every
    overview token which card colour is there and where the token is (row, column), and for every
    token of a card's crop which way the stripes under it run. No text, no box JSON, no question;
    only the tower's weights are kept."""
    import torch

    from mgpo.generation import QwenBackend
    from mgpo.playground.world import COLOURS, PATTERNS, SPLITS

    backend = QwenBackend(loaded.model, loaded.processor)
    core = backend.core
    visual = core.model.visual
    side = cfg.budgets().overview // 28
    n_col, n_pos = len(COLOURS) + 1, int(side)
    head = torch.nn.Linear(core.config.text_config.hidden_size, n_col + 2 * n_pos).to(backend.device)
    detail_head = torch.nn.Linear(core.config.text_config.hidden_size, 1 + len(PATTERNS)).to(backend.device)
    torch.manual_seed(cfg.seed)
    visual.requires_grad_(True)
    visual.train()
    params = list(visual.parameters()) + list(head.parameters()) + list(detail_head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.0)
    lo, hi = SPLITS["skills"]
    first = lo + VISION_START                     # a part of the skills range the text skills rarely reach
    items = scene_map(functools.partial(probe_item, simple=cfg.skill_simple, n_cards=(cfg.min_cards, cfg.max_cards),
                                        budgets=cfg.budgets()),
                      cycle_seeds(lo, hi, first), data_workers(cfg))
    history, t0 = [], time.perf_counter()
    log = log_path.open("w") if log_path else None
    try:
        for step in range(1, cfg.vision_steps + 1):
            fed, targets, crops, details = [], [], [], []
            for overview, token_target, crop, detail_target in itertools.islice(items, cfg.vision_batch):
                fed.append(backend.feed_image(overview))
                targets.append(token_target)
                crops.append(backend.feed_image(crop))
                details += detail_target
            feats = backend.image_features(fed)                       # (B·tokens, hidden)
            logits = head(feats.float())
            colour = torch.tensor([v for t in targets for v in t[0]], device=backend.device)
            row = torch.tensor([v for t in targets for v in t[1]], device=backend.device)
            col = torch.tensor([v for t in targets for v in t[2]], device=backend.device)
            ce = torch.nn.functional.cross_entropy
            # colour and position on every token, and again on the card tokens alone: they are 2-3
            # of the 64, and the language model finds a card by them, so they must say what and where
            # (trained on all tokens together, the card tokens' own row and column stayed at chance)
            on = colour > 0
            lc = ce(logits[:, :n_col], colour) + ce(logits[on, :n_col], colour[on])
            lr_ = ce(logits[:, n_col:n_col + n_pos], row) + ce(logits[on, n_col:n_col + n_pos], row[on])
            lcol = ce(logits[:, n_col + n_pos:], col) + ce(logits[on, n_col + n_pos:], col[on])
            dlogits = detail_head(backend.image_features(crops).float())
            detail = torch.tensor(details, device=backend.device)
            striped = detail > 0        # the few tokens on the stripes, weighed as the card tokens are
            ld = ce(dlogits, detail) + ce(dlogits[striped], detail[striped])
            loss = lc + lr_ + lcol + ld
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                acc = {"colour": (logits[:, :n_col].argmax(1) == colour).float().mean().item(),
                       "card_colour": ((logits[:, :n_col].argmax(1) == colour)[colour > 0]).float().mean().item(),
                       "row": (logits[:, n_col:n_col + n_pos].argmax(1) == row).float().mean().item(),
                       "col": (logits[:, n_col + n_pos:].argmax(1) == col).float().mean().item(),
                       "card_row": ((logits[:, n_col:n_col + n_pos].argmax(1) == row)[on]).float().mean().item(),
                       "card_col": ((logits[:, n_col + n_pos:].argmax(1) == col)[on]).float().mean().item(),
                       "stripes": ((dlogits.argmax(1) == detail)[striped]).float().mean().item()}
            entry = {"step": step, "loss": loss.item(), "accuracy": acc, "seconds": time.perf_counter() - t0}
            history.append(entry)
            if log:
                log.write(json.dumps(entry) + "\n")
            if step == 1 or step % 25 == 0 or step == cfg.vision_steps:
                echo(f"vision step {step}/{cfg.vision_steps}: loss {loss.item():.3f} " +
                     ", ".join(f"{k} {v:.2f}" for k, v in acc.items()) + f" ({entry['seconds']:.0f}s)")
    finally:
        items.close()
        if log:
            log.close()
    visual.requires_grad_(False)
    visual.eval()
    # calibrate: image tokens as large as text tokens. The probe grows the features (norm ≈ 90
    # against ≈ 16 for a token embedding), and with such image tokens in the context the language
    # model did not even learn to copy a word from the prompt; scaling the merger's last layer
    # keeps every probe-readable direction and fixes that. With vision_whiten, first only the
    # probe's directions are kept, whitened (whiten_merger).
    with torch.no_grad():
        if cfg.vision_whiten:
            whiten_merger(visual.merger.mlp[-1], torch.cat([backend.image_features(fed), backend.image_features(crops)]),
                          torch.cat([head.weight, detail_head.weight]))
        norm = backend.image_features(fed).norm(dim=-1).mean().item()
        target = (cfg.embed_std or 0.02) * core.config.text_config.hidden_size ** 0.5
        last = visual.merger.mlp[-1]
        last.weight.mul_(target / norm)
        last.bias.mul_(target / norm)
    echo(f"vision: image-token norm {norm:.1f} scaled to {target:.1f} (a token embedding's)")
    return history


def whiten_merger(last, feats, directions) -> None:
    """Keep only what the probe reads, whitened: the merger's last linear layer (``f = W x + b``)
    becomes ``f' = M (f - mean)`` with ``M`` projecting onto the span of the probe heads' weight
    rows (``directions``, (K, hidden)) and giving each principal direction of ``feats`` (sampled
    outputs, (N, hidden)) within that span unit variance. Rare attributes (a card under 3 of 64
    tokens) then stand out as much as the ever-present ones (row, column), and nothing else (the
    clutter's texture) is left to drown them. (With perfect synthetic features — a card flag plus
    row and column per token — the language model learns the board cell of the card in ~100
    steps when the flag is as large as the position embeddings, and not in 200 when it is 0.3×.)"""
    import torch

    feats, directions = feats.detach().float(), directions.detach().float()
    q, _ = torch.linalg.qr(directions.T)                 # (hidden, K): the probe's directions
    mean = feats.mean(0)
    z = (feats - mean) @ q
    _, s, vh = torch.linalg.svd(z, full_matrices=False)
    keep = s > s[0] * 1e-3
    basis = q @ vh[keep].T                                        # (hidden, k) orthonormal
    m = basis @ torch.diag((len(feats) - 1) ** 0.5 / s[keep]) @ basis.T
    with torch.no_grad():
        w, b = last.weight.float(), last.bias.float()
        last.weight.copy_((m @ w).to(last.weight.dtype))
        last.bias.copy_((m @ (b - mean)).to(last.bias.dtype))

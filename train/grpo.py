"""GRPO math: group-normalised advantages and the clipped policy loss with a KL term.

For a group of G samples of one prompt with rewards r_1..r_G:

    A_i = (r_i − mean(r)) / (std(r) + ε)          # std: unbiased (torch.std), as verl's GRPO

Every policy token t of sample i carries A_i. With log-probs ``logp`` (current policy, with
grad), ``old`` (the policy that sampled) and ``ref`` (the base model = adapter disabled):

    ratio  = exp(logp − old)
    pg     = max(−A·ratio, −A·clip(ratio, 1 − ε_lo, 1 + ε_hi))          # PPO clip
    pg     = min(pg, −A·c)  where A < 0, when dual clip c > 1 is on       # verl's dual clip (c = 3)
    kl     = exp(ref − logp) − (ref − logp) − 1                          # k3, "low_var_kl", ≥ 0
    loss_t = pg + β·kl − c_H·entropy_t

and the loss is the mean over policy tokens (``mask`` 1) of the whole optimizer step
("token-mean"); prompt, image and inserted user-turn tokens (``mask`` 0) contribute nothing.
verl clamps k3 to [−10, 10]; so does :func:`kl_k3`. The dual clip bounds the loss of a token
with a negative advantage whose ratio has grown far past 1 + ε (an off-policy update on a token
the current policy now likes much more than the sampler did), which the PPO clip leaves
unbounded there.

The ratio differs from 1 only when the policy has moved since sampling: with one optimizer
update per rollout batch (``mini_batches = 1``) it is exactly 1, clipping never acts and the
loss is plain policy gradient + KL + entropy; the clip matters from the second update on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6,
                     scale: bool = True) -> torch.Tensor:
    """(N,) rewards, request-major groups of ``group_size`` → (N,) advantages.

    ``scale=False`` gives Dr. GRPO's mean-centred advantages (no division by std). A group
    with one sample, or whose rewards are all equal, gets advantage 0.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)                  # (P, G)
    centred = r - r.mean(dim=1, keepdim=True)
    if not scale or group_size == 1:
        return centred.view(-1)                               # G = 1: all zeros
    std = r.std(dim=1, keepdim=True)                          # unbiased
    return (centred / (std + eps)).view(-1)


def kl_k3(logp: torch.Tensor, ref: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π‖π_ref) per token: e^{ref−logp} − (ref−logp) − 1 ≥ 0."""
    d = (ref - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-clamp, clamp)


@dataclass
class LossParts:
    loss: torch.Tensor          # scalar, with grad: Σ_t loss_t · mask_t / denom
    pg: float                   # the policy-gradient part, token mean over this batch
    kl: float                   # mean k3 KL over policy tokens
    entropy: float              # mean entropy over policy tokens
    clip_frac: float            # fraction of policy tokens whose ratio was clipped
    ratio_max: float
    tokens: int                 # policy tokens in this batch
    dual_clip_frac: float = 0.0  # fraction of policy tokens bounded by the dual clip
    ratio_min: float = 1.0


def policy_loss(logp: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                ref: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                clip_low: float = 0.2, clip_high: float = 0.2, kl_coef: float = 0.01,
                entropy_coef: float = 0.0, denom: float | None = None, dual_clip: float = 0.0) -> LossParts:
    """The GRPO loss on a (B, T) batch; see the module docstring.

    logp, old, ref, entropy, mask: (B, T) — ``mask`` 1 on policy tokens, 0 elsewhere;
    advantages: (B,) one per sample, or (B, T). ``denom``: the number of policy tokens of the whole
    optimizer step (token-mean across micro-batches and processes); defaults to this batch's.
    ``dual_clip``: c > 1 bounds a negative-advantage token's loss by −A·c (0 = off).
    """
    mask = mask.to(logp.dtype)
    adv = advantages if advantages.ndim == 2 else advantages[:, None].expand_as(logp)
    adv = adv.to(logp.dtype)
    n = float(mask.sum().item())
    denom = float(denom) if denom is not None else max(n, 1.0)
    ratio = torch.exp((logp - old).clamp(-20.0, 20.0))
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg_tok = torch.maximum(-adv * ratio, -adv * clipped)      # (B, T)
    dual = torch.zeros_like(pg_tok)
    if dual_clip:
        if dual_clip <= 1.0:
            raise ValueError("dual_clip must be above 1 (verl uses 3) or 0 for off")
        bound = -adv * dual_clip
        dual = ((adv < 0) & (pg_tok > bound)).to(logp.dtype)
        pg_tok = torch.where(adv < 0, torch.minimum(pg_tok, bound), pg_tok)
    tok = pg_tok
    kl_tok = None
    if ref is not None and kl_coef:
        kl_tok = kl_k3(logp, ref)
        tok = tok + kl_coef * kl_tok
    elif ref is not None:
        kl_tok = kl_k3(logp, ref)
    if entropy is not None and entropy_coef:
        tok = tok - entropy_coef * entropy
    loss = (tok * mask).sum() / denom

    def mean(x):
        return float((x.detach() * mask).sum().item() / max(n, 1.0)) if x is not None else 0.0

    was_clipped = ((-adv * clipped) > (-adv * ratio)).to(logp.dtype)
    return LossParts(loss, mean(pg_tok), mean(kl_tok), mean(entropy), mean(was_clipped),
                     float((ratio.detach() * mask).max().item()) if n else 0.0, int(n), mean(dual),
                     float(ratio.detach()[mask.bool()].min().item()) if n else 1.0)

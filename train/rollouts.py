"""What the trainer reads from engine rollouts: completions for the rewards, turn lengths, and
the per-step rollout metrics (reward, accuracy, valid-box ratio, crop area, turn lengths)."""

from __future__ import annotations

import torch

from .rewards import Completion, accuracy


def policy_runs(mask: list[int]) -> list[int]:
    """Lengths of the runs of 1s in a loss mask: tokens the model sampled, per turn."""
    runs, n = [], 0
    for m in mask:
        if m:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    if n:
        runs.append(n)
    return runs


def completion(rollout, n_choices: int, max_new_tokens: int) -> Completion:
    """What a reward sees of a rollout (``n_choices``: the request's number of choices, 0 = open)."""
    runs = policy_runs(rollout.loss_mask)
    final = rollout.final
    return Completion(final.text if final else "", final.answer if final else None, final.letter if final else None,
                      n_choices, tuple(rollout.texts), rollout.valid_box, runs[-1] if runs else 0, max_new_tokens)


def rollout_metrics(rollouts, items, comps, scored, rewards: torch.Tensor, group_size: int) -> dict:
    """What one step's rollouts looked like: rewards, accuracy, boxes, crops, turn lengths."""
    runs = [policy_runs(r.loss_mask) for r in rollouts]
    crops = [r.crop_area for r in rollouts if r.crop_area is not None]
    acc = [accuracy(c, items[r.request].answer) for c, r in zip(comps, rollouts)]
    n = len(rollouts)
    return {
        "reward": float(rewards.mean()),
        "reward_std": float(rewards.std()) if n > 1 else 0.0,
        "accuracy": sum(acc) / n,
        **{f"reward/{name}": sum(s[1][name] for s in scored) / n for name in scored[0][1]},
        "valid_box": sum(r.valid_box for r in rollouts) / n,
        "crop_area": sum(crops) / len(crops) if crops else float("nan"),   # of the original image
        "turn1_tokens": sum(x[0] for x in runs if x) / n,
        "final_tokens": sum(x[-1] for x in runs if x) / n,
        "seq_tokens": sum(len(r.token_ids) for r in rollouts) / n,
        "zero_std_groups": int((rewards.view(-1, group_size).std(dim=1) == 0).sum()) if group_size > 1 else 0,
    }


def sample_rows(items, rollouts, scored, advantages: torch.Tensor) -> list[dict]:
    """What each rollout of a step wrote and earned (``samples.jsonl``): the item and the sample's
    row in the batch, every turn's text and kind, the answer's box (the last valid one, whose crop
    the answer read: model frame and original pixels; None when no box was valid), the reward, its
    parts and the advantage."""
    rows = []
    for r, (total, parts), a in zip(rollouts, scored, advantages.tolist()):
        box = r.answer_box
        rows.append({"id": items[r.request].id, "sample": r.sample, "texts": list(r.texts), "kinds": list(r.kinds),
                     "box_model": list(box.box_model) if box else None,
                     "box_original": list(box.box_original) if box else None,
                     "answer": items[r.request].answer, "reward": float(total), "rewards": dict(parts),
                     "advantage": a})
    return rows

"""How the trainer's processes agree (``accelerate launch``): the only things that cross them.

Each process rolls out its own prompts; the model is never wrapped in DDP (the engine calls
sub-modules directly, which a DDP wrapper would not see). So the trainer does by hand what DDP
would: it starts every replica from process 0's LoRA weights, averages the LoRA gradients in one
all-reduce, adds up counts, averages metrics and checks that the replicas stayed equal. With one
process every function here returns its input.
"""

from __future__ import annotations

import torch

SUMMED = ("samples", "zero_std_groups")  # metrics added over processes; the rest are averaged


def broadcast_from_first(params, world: int) -> None:
    """Every replica's ``params`` set to process 0's."""
    if world == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def allreduce_grads(params, world: int) -> None:
    """Each parameter's gradient replaced by its mean over the processes (a missing one counts as
    zeros), in one flat all-reduce."""
    if world == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    k = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[k:k + n].view_as(p).clone()
        k += n


def sum_over(acc, world: int, x: float) -> float:
    """``x`` added over the processes."""
    if world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=acc.device)
    return float(acc.reduce(t, reduction="sum").item())


def average_metrics(acc, world: int, metrics: dict) -> dict:
    """The numeric metrics averaged over the processes (NaN where a process has none: it does not
    count), the :data:`SUMMED` ones added up."""
    if world == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
    vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=acc.device)
    nan = torch.isnan(vals)
    vals = torch.nan_to_num(vals)
    counts = acc.reduce((~nan).double(), reduction="sum")
    sums = acc.reduce(vals, reduction="sum")
    avg = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
    out = dict(zip(keys, avg.tolist()))
    out.update({k: sums[keys.index(k)].item() for k in SUMMED if k in keys})   # counts add up
    return {**metrics, **out}


def replica_checksums(acc, world: int, params) -> list[float]:
    """Σ of ``params`` on every process; they must agree (gradients are all-reduced), else
    RuntimeError."""
    local = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
    sums = acc.gather(local.to(acc.device)) if world > 1 else local
    values = [float(v) for v in sums.tolist()]
    if max(values) - min(values) > 1e-9 * max(1.0, abs(values[0])):
        raise RuntimeError(f"LoRA weights differ between processes ({values}); the gradient all-reduce failed")
    return values

"""Where the recipe runs: the device, its log lines, and scenes rendered ahead in worker processes."""

from __future__ import annotations

import itertools
import sys

from .settings import RecipeConfig


def echo(msg: str) -> None:
    """One progress line of the recipe on stderr."""
    print(f"[playground] {msg}", file=sys.stderr, flush=True)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def data_workers(cfg: RecipeConfig) -> int:
    """Scene-rendering processes: ``cfg.workers``, or with -1 all CPUs but one when a GPU trains
    (a 2048² scene takes ~0.08 s of one CPU, so a GPU step of 64 examples waits ~0.5 s on one
    process) and none on a CPU-only machine (there the workers would take the training's cores)."""
    import os

    if cfg.workers >= 0:
        return cfg.workers
    return max(0, (os.cpu_count() or 1) - 1) if cuda_available() else 0


def pool_workers(cfg: RecipeConfig) -> int:
    """Processes drawing scenes before training starts (a skill pool, RL's scenes), when nothing
    else needs the CPUs: ``cfg.workers``, or with -1 every CPU."""
    import os

    return cfg.workers if cfg.workers >= 0 else (os.cpu_count() or 1)


def scene_map(fn, seeds, workers: int = 0):
    """``fn(seed)`` for each seed of the (possibly endless) iterable, in order. With ``workers`` > 0
    that many processes compute ahead, at most ``4 × workers`` results waiting (bounded memory);
    ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one). The
    results are the same as without workers."""
    if workers <= 0:
        yield from map(fn, seeds)
        return
    import collections
    import multiprocessing

    it = iter(seeds)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending = collections.deque(pool.apply_async(fn, (seed,)) for seed in itertools.islice(it, 4 * workers))
        while pending:
            result = pending.popleft().get()
            for seed in itertools.islice(it, 1):
                pending.append(pool.apply_async(fn, (seed,)))
            yield result


def cycle_seeds(lo: int, hi: int, first: int):
    """Seeds first, first + 1, … wrapping from hi - 1 back to lo."""
    seed = first
    while True:
        yield seed
        seed = lo if seed + 1 >= hi else seed + 1

"""An evaluation over several processes (``accelerate launch``): who does which item, where
each process's rows wait, and the barrier between them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PARTS = "parts"               # a multi-process run's rows, one file per process, until merged


def finished(out: Path) -> dict[str, dict]:
    """Finished rows by id: items.jsonl and every process's part (a multi-process run that stopped)."""
    from .runner import ITEMS, load_rows

    done = load_rows(out / ITEMS)
    for part in sorted((out / PARTS).glob("*.jsonl")):
        done.update(load_rows(part))
    return done


@dataclass
class World:
    """The processes of an ``accelerate launch`` (or torchrun) evaluation: each takes every
    ``size``-th item still to do, writes its rows to ``parts/rank-R.jsonl`` and the main process
    merges them. One process (``size`` 1) writes items.jsonl directly."""

    rank: int = 0
    size: int = 1
    state: object = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> "World":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())   # gloo on CPU, NCCL with GPUs
        return cls(state.process_index, state.num_processes, state)

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

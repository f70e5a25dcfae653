"""Evaluation harness: V*, HR-Bench 4K/8K, MME-RealWorld, plain JSONL and the generated
playground (held-out seeds, with the IoU of predicted boxes), single-turn vs MGPO.

    python -m mgpo.eval --benchmark vstar --data vstar_bench/ --model Qwen/Qwen2.5-VL-7B-Instruct \\
        --mode mgpo --out runs/vstar-mgpo
    python -m mgpo.eval --benchmark playground --seed 0 --limit 200 --model examples/playground \\
        --out runs/playground-mgpo

- :mod:`.datasets` reads each public format into :class:`~.datasets.Item` streams.
- :mod:`.runner` drains the engine over them in batches, writes one JSON row per item as it
  goes (reruns resume), and records the protocol next to the scores.
- :mod:`.scoring` is pure: letter extraction and each benchmark's own aggregation.
- :mod:`.report` renders ``results.md``.
"""

from .datasets import BENCHMARKS, Benchmark, DataError, Item, open_benchmark
from .runner import EvalConfig, EvalError, evaluate
from .scoring import extract_letter, score

__all__ = ["BENCHMARKS", "Benchmark", "DataError", "EvalConfig", "EvalError", "Item", "evaluate",
           "extract_letter", "open_benchmark", "score"]

"""``accelerate launch --num_processes 2 -m mgpo.eval`` with 2 CPU processes (gloo): the items are
dealt out, the main process merges one items.jsonl and results.json equal, item by item, to a
single-process run's; a stopped run resumes from what each process had written; a different
protocol is refused by every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

TIMING = ("seconds", "batch_seconds_per_item")


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_give_the_single_process_results(tiny_model_dir, tmp_path):
    common = ["--benchmark", "playground", "--model", str(tiny_model_dir), "--max-new-tokens", "12",
              "--batch-size", "2", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one = subprocess.run([sys.executable, "-m", "mgpo.eval", *common, "--limit", "6", "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29533", "-m", "mgpo.eval", *common, "--out", str(tmp_path / "two")]
    run = subprocess.run(launch + ["--limit", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("playground mgpo:") == 1                   # the main process reports
    assert not list((tmp_path / "two" / "parts").glob("*.jsonl"))       # merged
    # a run stopped after process 1 wrote the third item: its part is read back, the item not redone
    items = (tmp_path / "two" / "items.jsonl").read_text().splitlines()
    (tmp_path / "two" / "items.jsonl").write_text("\n".join(items[:2]) + "\n")
    (tmp_path / "two" / "parts" / "rank-1.jsonl").write_text(items[2] + "\n")
    run = subprocess.run(launch + ["--limit", "6"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    merged = (tmp_path / "two" / "items.jsonl").read_text().splitlines()
    assert merged[2] == items[2]                                        # kept as written, timings and all
    assert _rows(tmp_path / "two" / "items.jsonl") == _rows(tmp_path / "one" / "items.jsonl")
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert a["protocol"]["processes"] == 1 and b["protocol"]["processes"] == 2
    assert {k: v for k, v in a.items() if k not in ("protocol", "latency")} == \
        {k: v for k, v in b.items() if k not in ("protocol", "latency")}
    # another protocol in the same folder is refused (by both processes, before any model work)
    run = subprocess.run(launch + ["--limit", "6", "--mode", "direct"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode != 0 and "different protocol" in run.stderr

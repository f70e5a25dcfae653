"""The same loop under ``accelerate launch`` with 2 CPU processes (gloo): each process rolls out
its own prompts, LoRA gradients are all-reduced, the replicas stay identical, checkpoints hold one
data position per process, and a 2-process run resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, noise_image


@pytest.mark.slow
def test_two_cpu_processes(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for i in range(4):
        noise_image(80 + 10 * i, 70, seed=i).save(data / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "question": "Which?", "choices": ["a", "b"], "answer": "B"}))
    (data / "d.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
            "-m", "train", "--model", str(tiny_model_dir), "--data", str(data / "d.jsonl"), "--output-dir", str(out),
            "--group-size", "2", "--prompts-per-step", "1", "--max-new-tokens", "4", "--min-pixels", "3136",
            "--max-pixels", "7056", "--save-every", "1", "--keep-last", "5", "--no-progress", "--lr", "1e-3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(args + ["--steps", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("done: step 2") == 1                        # the main process reports
    state = json.loads((out / "checkpoint-000002" / "state.json").read_text())
    assert state["world"] == 2
    a, b = state["replica_checksums"]
    assert a == b                                                       # identical LoRA weights on both
    assert state["metrics"]["samples"] == 4 and state["metrics"]["grad_norm"] > 0
    ranks = sorted(p.name for p in (out / "checkpoint-000002").glob("rank*.pt"))
    assert ranks == ["rank0.pt", "rank1.pt"]
    # resume the 2-process run for one more step
    run = subprocess.run(args + ["--steps", "3", "--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resumed from" in run.stderr and run.stdout.count("done: step 3") == 1
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

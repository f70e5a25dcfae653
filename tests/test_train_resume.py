"""RESUME: a run interrupted after step 3 (last checkpoint at step 2) and resumed with
``resume=True`` produces the same step-3 and step-4 losses as an uninterrupted run; checkpoints
are atomic and only the newest ``keep_last`` are kept."""

from __future__ import annotations

import json

import pytest
from conftest import noise_image

from train import checkpoint as ckpt
from train.config import ConfigError, TrainConfig
from train.loop import Trainer
from train.rewards import register


@register("test_letters")
def letters(c, target):
    """Dense, varied reward for a random model: the share of ASCII letters in the final text."""
    return sum(ch.isascii() and ch.isalpha() for ch in c.final_text) / max(len(c.final_text), 1)


class Interrupt(Exception):
    pass


def _data(folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(3):
        noise_image(90 + 10 * i, 80, seed=i).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "question": "Which?", "choices": ["x", "y"], "answer": "A"}))
    (folder / "broken.png").write_bytes(b"not a png at all")     # exists, so the loader keeps it
    lines.append(json.dumps({"image": "broken.png", "question": "Which?", "choices": ["x", "y"], "answer": "B",
                             "id": "broken"}))
    (folder / "d.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "d.jsonl")


KEYS = ("loss", "pg_loss", "kl", "reward", "grad_norm", "entropy")


def test_interrupted_and_resumed_run_matches_uninterrupted(tiny_model_dir, tmp_path):
    data = _data(tmp_path / "data")

    def cfg(out, **kw):
        return TrainConfig(model=str(tiny_model_dir), data=data, output_dir=str(out), steps=4, save_every=2,
                           keep_last=1, group_size=3, prompts_per_step=1, max_new_tokens=4, min_pixels=56 * 56,
                           max_pixels=84 * 84, lr=5e-3, rewards={"test_letters": 1.0}, tensorboard=False,
                           progress=False, plot=False, log_samples=1, **kw)

    seen: dict[int, dict] = {}
    Trainer(cfg(tmp_path / "a"), on_step=lambda s, m: seen.setdefault(s, m)).run()

    def stop(step, metrics):
        if step == 3:
            raise Interrupt          # like a kill after step 3: its results were never checkpointed
    with pytest.raises(Interrupt):
        Trainer(cfg(tmp_path / "b"), on_step=stop).run()
    assert [s for s, _ in ckpt.checkpoints(tmp_path / "b")] == [2]
    assert not list((tmp_path / "b").glob(".checkpoint-*"))            # nothing half-written

    with pytest.raises(ConfigError, match="pass --resume"):            # no silent restart over a run
        Trainer(cfg(tmp_path / "b"))
    resumed: dict[int, dict] = {}
    Trainer(cfg(tmp_path / "b", resume=True), on_step=lambda s, m: resumed.setdefault(s, m)).run()
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        for k in KEYS:
            assert resumed[step][k] == seen[step][k], (step, k)   # bit-identical on CPU
    assert seen[4]["skipped_items"] == 1                               # the broken image, skipped while drawing
    assert any(seen[s]["grad_norm"] > 0 for s in seen) and len({seen[s]["loss"] for s in seen}) > 1
    # the metrics log holds each step once, and only the newest checkpoint is kept
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # every rollout of every step in samples.jsonl, each step once after the resume, and the same
    # rollouts as the uninterrupted run's
    def samples(run):
        return [json.loads(line) for line in (tmp_path / run / "samples.jsonl").read_text().splitlines()]
    a, b = samples("a"), samples("b")
    assert [r["step"] for r in b] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4] and b == a
    for step in (1, 2, 3, 4):
        rows = [r for r in b if r["step"] == step]
        assert [r["sample"] for r in rows] == [0, 1, 2] and len({r["id"] for r in rows}) == 1
        assert sum(r["advantage"] for r in rows) == pytest.approx(0, abs=1e-5)      # group-normalised
        assert seen[step]["reward"] == pytest.approx(sum(r["reward"] for r in rows) / 3)
        for r in rows:
            assert r["reward"] == pytest.approx(r["rewards"]["test_letters"])
            assert len(r["texts"]) == len(r["kinds"]) >= 1 and r["answer"] == "A"
            assert (r["box_model"] is None) == (r["box_original"] is None)
    assert [s for s, _ in ckpt.checkpoints(tmp_path / "b")] == [4]
    assert (tmp_path / "b" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_failed_push_keeps_the_adapter_and_says_so(tiny_model_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_0123456789")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")            # nothing listens there
    cfg = TrainConfig(model=str(tiny_model_dir), data=_data(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                      steps=1, group_size=2, prompts_per_step=1, max_new_tokens=2, min_pixels=56 * 56,
                      max_pixels=84 * 84, tensorboard=False, progress=False, push_to_hub="someone/mgpo-test")
    result = Trainer(cfg).run()
    err = capfd.readouterr().err
    assert result["url"] is None
    assert "'someone/mgpo-test'" in err and "failed" in err and "intact" in err
    assert "hf_not_a_real_token" not in err
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()

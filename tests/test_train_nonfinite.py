"""Non-finite steps and the update schedule, on the tiny real Qwen2.5-VL: a NaN gradient or loss
skips the update and leaves the adapter as it was; a run of them stops with a message; NaN
weights are never saved or pushed; with several mini-batches the later updates are off-policy."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import noise_image

from train import checkpoint as ckpt
from train.config import ConfigError, TrainConfig
from train.loop import NonFiniteError, Trainer
from train.rewards import register


@register("nonfinite_letters")
def letters(c, target):
    """Dense, varied reward for a random model: the share of ASCII letters in the final text."""
    return sum(ch.isascii() and ch.isalpha() for ch in c.final_text) / max(len(c.final_text), 1)


@pytest.fixture
def data(tmp_path) -> str:
    lines = []
    for i in range(4):
        noise_image(90 + 10 * i, 80, seed=i).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "question": "Which?", "choices": ["x", "y"], "answer": "A"}))
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "d.jsonl")


def config(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=data, output_dir=str(out), steps=3, save_every=0, group_size=3,
                prompts_per_step=2, max_new_tokens=4, min_pixels=56 * 56, max_pixels=84 * 84, lr=5e-3,
                rewards={"nonfinite_letters": 1.0}, tensorboard=False, progress=False, plot=False)
    return TrainConfig(**{**base, **kw})


def snapshot(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.params]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("where", ["gradient", "loss"])
def test_a_non_finite_step_is_skipped_and_training_goes_on(tiny_model_dir, data, tmp_path, capfd, where):
    trainer = Trainer(config(tiny_model_dir, data, tmp_path / "run"))
    assert trainer.cfg.mini_batches == 2                      # 2 prompts: the paper's 4 does not split them
    weights, seen, hooks = {0: snapshot(trainer)}, {}, []
    forward = trainer._forward

    def poisoned_forward(batch, want_ref):                     # the loss of every micro-batch becomes NaN
        logp, ent, ref = forward(batch, want_ref)
        return logp * float("nan"), ent, ref

    def on_step(step, metrics):
        weights[step], seen[step] = snapshot(trainer), metrics
        if step == 1:                                          # poison step 2 only
            if where == "gradient":                            # one LoRA tensor's gradient
                hooks.append(trainer.params[3].register_hook(lambda g: g * float("nan")))
            else:
                trainer._forward = poisoned_forward
        if step == 2:
            for h in hooks:
                h.remove()
            trainer._forward = forward

    trainer.on_step = on_step
    trainer.run()
    assert [seen[s]["skipped_updates"] for s in (1, 2, 3)] == [0, 2, 0]
    assert same(weights[2], weights[1])                        # step 2 changed nothing
    assert not same(weights[1], weights[0]) and not same(weights[3], weights[2])   # the others trained
    assert all(torch.isfinite(w).all() for w in weights[3])
    assert math.isnan(seen[2]["grad_norm"]) and math.isfinite(seen[3]["grad_norm"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_updates"] for r in rows] == [0, 2, 0] and rows[1]["grad_norm"] is None
    err = capfd.readouterr().err
    assert "step 2, update 1/2: gradient norm nan; update skipped, the adapter is unchanged" in err
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_run_of_non_finite_updates_stops_with_a_message(tiny_model_dir, data, tmp_path):
    cfg = config(tiny_model_dir, data, tmp_path / "run", steps=6, prompts_per_step=1, max_nonfinite=3, save_every=1)
    seen = {}
    trainer = Trainer(cfg, on_step=lambda s, m: seen.setdefault(s, m))
    assert trainer.cfg.mini_batches == 1
    trainer.params[0].register_hook(lambda g: g * float("inf"))
    start = snapshot(trainer)
    with pytest.raises(NonFiniteError, match="3 optimizer updates in a row had a NaN/inf gradient norm "
                                             r"\(the last at step 3\); stopping"):
        trainer.run()
    assert sorted(seen) == [1, 2] and all(seen[s]["skipped_updates"] == 1 for s in seen)
    assert same(snapshot(trainer), start)
    assert [s for s, _ in ckpt.checkpoints(tmp_path / "run")] == [1, 2]  # finite, saved before the stop
    assert not (tmp_path / "run" / "adapter").exists()


def test_non_finite_weights_are_never_saved_or_pushed(tiny_model_dir, data, tmp_path, monkeypatch, capfd):
    import train.hub

    pushed = []
    monkeypatch.setattr(train.hub, "push_adapter", lambda *a, **k: pushed.append(a) or "url")
    trainer = Trainer(config(tiny_model_dir, data, tmp_path / "run", push_to_hub="me/adapter"))
    with torch.no_grad():
        trainer.params[1][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to save the step-1 checkpoint: LoRA weights hold NaN/inf"):
        trainer.save(1)
    assert ckpt.checkpoints(tmp_path / "run") == [] and not list((tmp_path / "run").glob(".checkpoint-*"))
    assert trainer.push(tmp_path / "run", 1) is None and pushed == []
    assert "not pushing step 1: LoRA weights hold NaN/inf" in capfd.readouterr().err


def test_only_later_mini_batches_are_off_policy_and_get_clipped(tiny_model_dir, data, tmp_path):
    runs = {}
    for mb in (1, 2):
        seen = {}
        Trainer(config(tiny_model_dir, data, tmp_path / f"mb{mb}", steps=1, mini_batches=mb, lr=0.05),
                on_step=lambda s, m: seen.setdefault(s, m)).run()
        runs[mb] = seen[1]
    on = runs[1]                     # one update: the ratio is 1 up to float32 rounding, nothing clipped
    assert abs(on["ratio_max"] - 1) < 1e-4 and abs(on["ratio_min"] - 1) < 1e-4 and on["clip_frac"] == 0
    off = runs[2]                    # the second update sees a policy the first one moved
    assert max(off["ratio_max"] - 1, 1 - off["ratio_min"]) > 0.2 and off["clip_frac"] > 0


def test_mini_batches_default_to_the_papers_four_where_the_batch_allows():
    auto = {p: TrainConfig(data="d.jsonl", prompts_per_step=p).check().mini_batches for p in (8, 16, 6, 2, 1, 5)}
    assert auto == {8: 4, 16: 4, 6: 3, 2: 2, 1: 1, 5: 1}
    assert TrainConfig(data="d.jsonl", prompts_per_step=8, mini_batches=1).check().mini_batches == 1
    with pytest.raises(ConfigError, match=r"prompts_per_step \(8\) must be a multiple of mini_batches \(3\)"):
        TrainConfig(data="d.jsonl", prompts_per_step=8, mini_batches=3).check()
    with pytest.raises(ConfigError, match="dual_clip must be above 1"):
        TrainConfig(data="d.jsonl", dual_clip=0.5).check()


def test_the_model_card_says_which_update_schedule_ran():
    from train.hub import model_card

    base = {"base_model": "Qwen/Qwen2.5-VL-7B-Instruct"}
    on = model_card({**base, "config": TrainConfig(data="d", prompts_per_step=1).check().to_dict()})
    assert "## Update schedule" in on and "every update is on-policy" in on and "clipping never acts" in on
    paper = model_card({**base, "config": TrainConfig(data="d", dual_clip=3.0).check().to_dict()})
    assert "4 optimizer updates per rollout batch (8 prompts × 8 samples per process, 2 prompts' groups each)" in paper
    assert "clip to [0.8, 1.2] acts" in paper and "Dual clip c = 3" in paper

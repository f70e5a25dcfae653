"""train.playground: the playground recipe (base skills → MGPO RL → eval).

Fast tests check the pieces on the tiny model; the slow one runs every stage at the "ci" size
(the ship stage alone: tests/test_playground_ship.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from train.playground import cards, recipe, rl, runtime, settings, skills, vision


@pytest.fixture(scope="module")
def examples():
    from mgpo.playground.skill_examples import scene_examples

    ex = scene_examples(3, prompt="where")
    by = {e.skill: e for e in ex}
    assert set(by) == {"ground", "read", "answer", "cell", "zoom"}
    return by


def test_example_sequence_is_the_engine_prompt_plus_the_target(tiny_loaded, examples):
    from mgpo.generation import QwenBackend

    backend = QwenBackend(tiny_loaded.model, tiny_loaded.processor)
    system = skills.skill_system_prompt("mgpo")
    for ex in (e for e in examples.values() if not e.context):
        seq = skills.example_sequence(backend, ex, system)
        prompt = backend.start([[{"role": "system", "content": [{"type": "text", "text": system}]},
                                 ex.messages()[0]]]).rows[0]
        n = len(prompt.tokens)
        # the prefix is exactly what the engine would feed; only the appended reply is policy
        assert seq.token_ids[:n] == prompt.tokens and seq.positions[:n] == prompt.positions
        assert seq.loss_mask == [0] * n + [1] * (len(seq.token_ids) - n)
        reply = seq.token_ids[n:]
        assert reply[-1] == backend.im_end_id
        assert backend.tok.decode(reply[:-1]) == ex.target
        # positions continue the running text position after the image
        assert seq.positions[n] == (prompt.next_pos,) * 3
        image_tokens = sum(t == backend.image_token_id for t in seq.token_ids)
        assert image_tokens == sum(img.tokens for img in seq.images) == 64   # the 224² overview or crop


def test_zoom_example_is_the_engines_two_turn_conversation(tiny_loaded):
    """The two-turn reading example, token for token, is what the engine feeds before its turn 2
    when turn 1 replied with the example's box: the same overview, reply, crop and prompts."""
    from mgpo.engine import Engine, EngineConfig, Request
    from bench.forced import ForcedBackend
    from mgpo.playground.skill_examples import scene_examples
    from mgpo.playground.world import PATTERNS, Budgets, make_scene
    from mgpo.prompts import get_prompts, register, with_name

    (ex,) = scene_examples(3, skills=("zoom",), simple=0.0)
    (turn1_text, turn1_images, turn1_reply), = ex.context
    literal = lambda text: text.replace("{", "{{").replace("}", "}}")   # noqa: E731 — a template with no slots
    register(with_name(get_prompts("mgpo"), "zoom-test", grounding=literal(turn1_text), crop=literal(ex.prompt)))
    backend = ForcedBackend(tiny_loaded.model, tiny_loaded.processor, script=turn1_reply, answer_tokens=2)
    engine = Engine(backend, EngineConfig(prompts="zoom-test", **Budgets().engine()))
    scene = make_scene(ex.meta["seed"], budgets=Budgets(), clutter=1.0)
    (rollout,) = engine.rollout([Request(scene.image, "unused", list(PATTERNS))])
    assert rollout.kinds == ["grounding", "crop"] and rollout.boxes[0].valid
    assert list(rollout.boxes[0].box_original) == ex.meta["region"]
    assert rollout.images[1].image.tobytes() == ex.images[0].tobytes()   # the crop as the engine cuts it

    seq = skills.example_sequence(backend, ex, skills.skill_system_prompt("mgpo"))
    n = seq.loss_mask.index(1)
    assert seq.token_ids[:n] == rollout.token_ids[:n] and seq.positions[:n] == rollout.positions[:n]
    assert rollout.loss_mask[n - 1] == 0 and rollout.loss_mask[n] == 1   # turn 2 is sampled from there on
    assert backend.tok.decode(seq.token_ids[n:-1]) == ex.target
    # the context's reply is fed, not learned
    assert backend.tok.decode([t for t, m in zip(seq.token_ids, seq.loss_mask) if m]) == ex.target + "<|im_end|>"


def test_default_system_prompt_is_the_chat_templates(tiny_loaded, examples):
    from mgpo.generation import QwenBackend

    backend = QwenBackend(tiny_loaded.model, tiny_loaded.processor)
    seq = skills.example_sequence(backend, examples["read"], skills.skill_system_prompt("default"))
    text = backend.tok.decode(seq.token_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert "Given an image and one question" in backend.tok.decode(
        skills.example_sequence(backend, examples["read"], skills.skill_system_prompt("mgpo")).token_ids)


def test_sft_loss_is_the_target_token_nll_and_it_decreases(tiny_loaded, examples):
    from mgpo.generation import QwenBackend

    model = copy.deepcopy(tiny_loaded.model)
    backend = QwenBackend(model, tiny_loaded.processor)
    seqs = [skills.example_sequence(backend, ex, None, k) for k, ex in enumerate(examples.values())]
    core = backend.core
    loss, per_row = skills.sft_loss(core, backend, seqs)
    # the same number from a plain full forward (logits of every position), target tokens only
    with torch.no_grad():
        for seq, row_loss in zip(seqs, per_row.tolist()):
            from train.logprobs import collate

            b = collate([seq], backend.pad_id, core.config.image_token_id, "cpu")
            logits = core(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                          pixel_values=b.pixel_values, image_grid_thw=b.image_grid_thw,
                          mm_token_type_ids=b.mm_token_type_ids).logits[0].float()
            lp = torch.log_softmax(logits[:-1], -1).gather(-1, b.input_ids[0, 1:, None])[:, 0]
            mask = b.loss_mask[0, 1:].bool()
            assert abs(-lp[mask].mean().item() - row_loss) < 1e-4
    core.requires_grad_(True)
    opt = torch.optim.AdamW(core.parameters(), lr=5e-3)
    losses = []
    for _ in range(10):
        loss, _ = skills.sft_loss(core, backend, seqs)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_rendering_workers_give_the_same_data_in_the_same_order(tmp_path):
    """The GPU recipe renders scenes in worker processes; the data must not depend on that."""
    import itertools

    def key(ex):
        return ex.skill, ex.prompt, ex.target, [im.tobytes() for im in ex.images]

    cfg = settings.RecipeConfig.for_size("ci", workers=0, skill_buffer=2)
    alone = [(key(ex), system) for ex, system in itertools.islice(skills.skill_stream(cfg), 12)]
    cfg.workers = 2
    stream = skills.skill_stream(cfg)
    assert [(key(ex), system) for ex, system in itertools.islice(stream, 12)] == alone
    stream.close()                                     # stops the pool

    seeds = list(range(3))
    one = list(runtime.scene_map(vision.probe_item, seeds))
    two = list(runtime.scene_map(vision.probe_item, seeds, workers=2))
    assert [(a[0].tobytes(), a[1], a[2].tobytes(), a[3]) for a in one] == \
        [(b[0].tobytes(), b[1], b[2].tobytes(), b[3]) for b in two]

    a = rl.write_rl_data(tmp_path / "a", 3).read_text()
    b = rl.write_rl_data(tmp_path / "b", 3, workers=2).read_text()
    assert a == b and len(a.splitlines()) == 3
    assert sorted(p.name for p in (tmp_path / "b" / "scenes").iterdir()) == sorted(p.name for p in (tmp_path / "a" / "scenes").iterdir())


def test_whiten_merger_keeps_only_the_probe_directions_whitened():
    torch.manual_seed(0)
    last = torch.nn.Linear(12, 16)
    x = torch.randn(500, 12) * torch.linspace(0.1, 3.0, 12)
    feats = last(x).detach()
    directions = torch.randn(3, 16)
    vision.whiten_merger(last, feats, directions)
    out = last(x).detach()
    q, _ = torch.linalg.qr(directions.T)
    assert (out - out @ q @ q.T).abs().max() < 1e-4            # nothing outside the probe's span is left
    z = out @ q
    assert z.mean(0).abs().max() < 1e-4                        # centred ...
    assert torch.allclose(z.T @ z / (len(z) - 1), torch.eye(3), atol=1e-3)   # ... and whitened
    # what the probe read is still readable: the old projections are a linear function of the new
    old = (feats - feats.mean(0)) @ q
    fit = torch.linalg.lstsq(z, old).solution
    assert (z @ fit - old).abs().max() < 1e-3


def test_data_workers_default_to_none_without_a_gpu(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    assert runtime.data_workers(settings.RecipeConfig()) == 0
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert runtime.data_workers(settings.RecipeConfig()) == 15
    assert runtime.data_workers(settings.RecipeConfig(workers=3)) == 3


def test_help_tells_each_flag_and_its_default_by_size(capsys):
    from train.config import field_help

    assert set(field_help(settings.RecipeConfig)) == {f.name for f in dataclasses.fields(settings.RecipeConfig)}
    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--rl-steps RL_STEPS optimizer steps; LoRA snapshots at 1/8 (early)" in text
    assert "(default by --size: ci 4, cpu 40, gpu 150)" in text
    assert "(default by --size: ci 8, cpu 32; else 64)" in text                # lora_r: gpu keeps the field's
    assert 'each phase trains its skills' in text and "see SIZES in train/playground/settings.py" in text
    assert "--kl-coef KL_COEF the small model's base is our own SFT; no KL anchor needed (default: 0.0)" in text


def test_bad_settings_are_clear_errors(capsys):
    with pytest.raises(ValueError, match="unknown size"):
        settings.RecipeConfig.for_size("tpu")
    with pytest.raises(ValueError, match="unknown stage"):
        settings.RecipeConfig(stages="model,dance").check()
    with pytest.raises(ValueError, match="skill_prompt"):
        settings.RecipeConfig(skill_prompt="nope").check()
    assert recipe.main(["--out", "/tmp/x", "--group-size", "0"]) == 2
    assert "group_size must be at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not SKILLS:STEPS:LR"):
        settings.RecipeConfig(curriculum="cell:600").check()
    with pytest.raises(ValueError, match="unknown skill"):
        settings.RecipeConfig(curriculum="cell:6:1e-3 juggle:6:1e-3").check()
    with pytest.raises(ValueError, match="learning rate > 0"):
        settings.RecipeConfig(curriculum="cell:6:0").check()
    assert recipe.main(["--out", "/tmp/x", "--curriculum", "cell:six:1e-3"]) == 2
    assert "not SKILLS:STEPS:LR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe.main(["--out", "/tmp/x", "--train-vision", "maybe"])
    assert "--train-vision: expected yes or no, got 'maybe'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="clutter-free"):
        settings.RecipeConfig(curriculum="cell:6:1e-3:1.5").check()
    for bad in ("cell:6:1e-3:0.5:9", "cell:6:1e-3:vision:0.5", "cell:6:1e-3:0.5:0.5:vision"):
        with pytest.raises(ValueError, match=r"not SKILLS:STEPS:LR\[:SIMPLE\]\[:vision\]"):
            settings.RecipeConfig(curriculum=bad).check()


def test_curriculum_phases_keep_their_own_skills_steps_rates_and_clutter():
    cfg = settings.RecipeConfig(curriculum="cell:600:2e-3  cell,ground:900:5e-4 cell,ground,read:300:5e-4:0.25",
                              skill_simple=1.0)
    assert cfg.phases() == [settings.Phase(("cell",), 600, 2e-3), settings.Phase(("cell", "ground"), 900, 5e-4),
                            settings.Phase(("cell", "ground", "read"), 300, 5e-4, 0.25)]
    assert cfg.skill_list() == ("cell", "ground", "read") and sum(ph.steps for ph in cfg.phases()) == 1800
    plain = settings.RecipeConfig(skills="ground,read", skill_steps=7, skill_lr=1e-3)   # no curriculum: one phase
    assert plain.phases() == [settings.Phase(("ground", "read"), 7, 1e-3)]
    assert ("cell for 600 steps at lr 0.002 (100 % clutter-free scenes), then cell+ground for 900 steps at lr 0.0005 "
            "(100 % clutter-free scenes), then cell+ground+read for 300 steps at lr 0.0005 (25 % clutter-free scenes)"
            ) in cards.skills_text(cfg)
    assert "the vision tower" not in cards.skills_text(cfg).split("full fine-tune of")[1].split("(AdamW")[0]


def test_only_the_vision_phases_move_the_vision_tower(tiny_loaded, monkeypatch):
    """Phase 1 (the run's rule: a probed tower stays frozen) leaves the tower as it was and trains
    the language model; phase 2 (``:vision``) trains the tower too."""
    import types

    loaded = types.SimpleNamespace(model=copy.deepcopy(tiny_loaded.model), processor=tiny_loaded.processor)
    visual = loaded.model.model.visual
    text = loaded.model.model.language_model

    def snapshot():
        return ([p.detach().clone() for p in visual.parameters()], [p.detach().clone() for p in text.parameters()])

    snaps, real = [], skills.skill_stream
    monkeypatch.setattr(skills, "skill_stream", lambda cfg, **kw: snaps.append(snapshot()) or real(cfg, **kw))
    cfg = settings.RecipeConfig(curriculum="ground:2:1e-2 ground:2:1e-2:vision", vision_steps=60, skill_batch=2,
                              skill_eval_every=0, workers=0)
    skills.train_skills(loaded, cfg)
    snaps.append(snapshot())

    def moved(a, b):
        return any(not torch.equal(x, y) for x, y in zip(a, b))

    (v0, t0), (v1, t1), (v2, t2) = snaps
    assert not moved(v0, v1) and moved(t0, t1)      # phase 1: the language model only
    assert moved(v1, v2) and moved(t1, t2)          # phase 2: the tower too
    assert not any(p.requires_grad for p in loaded.model.parameters())   # left frozen for what comes next


def _mean(xs):
    return sum(xs) / len(xs)


def test_a_stage_without_its_input_is_a_clear_error(tmp_path, capsys):
    assert recipe.main(["--out", str(tmp_path / "pg"), "--stages", "rl"]) == 2
    assert "no base-skills checkpoint" in capsys.readouterr().err
    assert recipe.main(["--out", str(tmp_path / "pg"), "--stages", "skills"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_every_stage_of_the_recipe_runs_end_to_end(tmp_path):
    """The "ci" size: model → vision probe → skills → RL → eval → ship on a micro model. It
    checks that each stage leaves what the next one and the app need — not that it learns."""
    from mgpo.playground.release import Release

    cfg = settings.RecipeConfig.for_size("ci", out=str(tmp_path / "pg"), rl_vision=True)
    summary = recipe.run(cfg)
    out = tmp_path / "pg"
    assert summary["vision"]["steps"] == 3 and set(summary["vision"]["accuracy"]) >= {"colour", "row", "col", "stripes"}
    steps = [json.loads(line) for line in (out / "skills.jsonl").read_text().splitlines()]
    assert len(steps) == 6
    # the ci curriculum "cell,zoom:3:2e-3 cell,ground,zoom,answer:3:1e-3": grounding joins in phase 2
    assert [r["phase"] for r in steps] == [1, 1, 1, 2, 2, 2]
    assert not any({"ground", "answer"} & set(r["skill_loss"]) for r in steps[:3])
    assert any("ground" in r["skill_loss"] for r in steps[3:])
    assert steps[0]["lr"] != steps[3]["lr"]
    assert set(summary["skills"]["eval"]) == {"answer", "cell", "ground_hit", "ground_iou", "ground_valid", "zoom",
                                              "task_hit", "task_iou", "task_valid", "task_t1_valid", "task_t1_hit"}
    # the base at each evaluation is kept, so a base can be chosen on VAL; the last one is the base itself
    snaps = out / "base-snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["step-00003", "step-00006"]
    assert (snaps / "step-00006" / "model.safetensors").read_bytes() == (out / "base" / "model.safetensors").read_bytes()
    rows = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(0.0 <= r["iou"] <= 1.0 for r in rows)
    assert all(0.0 <= r["hit"] <= r["valid_box"] for r in rows)
    # every rollout's box and reward, step by step (2 prompts × 2 samples), for the analysis of where it looks
    samples = [json.loads(line) for line in (out / "rl" / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in samples] == [s for s in (1, 2, 3, 4) for _ in range(4)]
    assert all(r["id"].startswith("scene-") and r["reward"] in (0.0, 1.0) for r in samples)
    assert [sum(r["reward"] for r in samples if r["step"] == row["step"]) / 4 for row in rows] == \
        pytest.approx([row["reward"] for row in rows])
    for when in ("before", "after"):
        for mode in ("direct", "mgpo"):
            assert summary[when][mode]["n"] == 2
    # every checkpoint on VAL (the choice) and TEST (the report); the choice is made on VAL alone
    names = ["before RL", "early", "middle", "three quarters", "late"]
    assert [r["name"] for r in summary["checkpoints"]] == names
    assert all(r["val"]["mgpo"]["n"] == 2 and r["test"]["direct"]["n"] == 2 for r in summary["checkpoints"])
    best = max(summary["checkpoints"], key=lambda r: (r["val"]["mgpo"]["accuracy"], r["val"]["mgpo"]["hits"], r["step"]))
    assert summary["selected"] == best["name"] and summary["after"] == best["test"]
    assert " val scenes from seed " in json.loads(
        (out / "eval" / "step-0002-val-mgpo" / "results.json").read_text())["protocol"]["variant"]
    rel = Release.load(out / "release")
    assert [c.name for c in rel.checkpoints] == names and rel.default == summary["selected"]
    assert (rel.folder / "README.md").read_text().count("| after RL |") == 2
    # --rl-vision: the adapters that the eval stage loaded carry LoRA on the vision blocks too
    # (that the reward's gradient reaches them: tests/test_train_exact.py)
    from safetensors.torch import load_file

    late = rel.checkpoints[-1].adapter
    assert "visual" in json.loads((late / "adapter_config.json").read_text())["target_modules"]
    assert any("visual" in k and "lora_B" in k for k in load_file(late / "adapter_model.safetensors"))
    # a second eval stage finds every result written and evaluates nothing again
    stamp = (out / "eval" / "step-0004-test-mgpo" / "results.json").stat().st_mtime
    again = recipe.run(settings.RecipeConfig.for_size("ci", out=str(out), stages="eval"))
    assert again["checkpoints"] == summary["checkpoints"]
    assert (out / "eval" / "step-0004-test-mgpo" / "results.json").stat().st_mtime == stamp
    assert not (out / "rl_data" / "train.jsonl").read_text().count("box")   # RL never sees a box
    # the same command again after an interruption in RL: model and skills are not run again, RL
    # resumes from its newest checkpoint (the last step here: nothing left), eval reads its results
    marks = json.loads((out / "summary.json").read_text())["finished"]
    assert set(marks) == {"model", "skills", "rl", "eval"} and marks["rl"] == recipe.settings_key(cfg)
    interrupted = json.loads((out / "summary.json").read_text())
    del interrupted["finished"]["rl"], interrupted["finished"]["eval"]
    (out / "summary.json").write_text(json.dumps(interrupted))
    weights = {p: p.stat().st_mtime for p in (out / "random" / "model.safetensors", out / "base" / "model.safetensors")}
    resumed = recipe.run(cfg)
    assert {p: p.stat().st_mtime for p in weights} == weights
    assert len((out / "rl" / "metrics.jsonl").read_text().splitlines()) == 4
    assert resumed["checkpoints"] == summary["checkpoints"] and set(resumed["finished"]) == set(marks)
    # other settings: every stage runs again
    changed = dataclasses.replace(cfg, rl_steps=2, stages="model")
    recipe.run(changed)
    assert (out / "random" / "model.safetensors").stat().st_mtime > weights[out / "random" / "model.safetensors"]


def test_tiny_build_draws_embeddings_with_the_asked_std(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mgpo.tiny import build

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(build(tmp_path / "m", embed_std=1.0))
    std = model.get_input_embeddings().weight.std().item()
    assert 0.9 < std < 1.1
    default = Qwen2_5_VLForConditionalGeneration.from_pretrained(build(tmp_path / "d"))
    assert default.get_input_embeddings().weight.std().item() < 0.05


def test_a_continuation_reads_scenes_no_earlier_phase_read():
    first = settings.RecipeConfig(curriculum="cell:600:2e-3 cell,ground:900:5e-4 cell,ground,zoom:300:1e-3")
    assert [settings.phase_start(first, i) for i in range(3)] == [0, 100_000, 200_000]
    more = settings.RecipeConfig(curriculum="ground,zoom:600:1e-3:0.3 ground,zoom,answer:150:5e-4:0.3",
                               skills_from="start", skill_start=300_000, vision_steps=0)
    assert [settings.phase_start(more, i) for i in range(2)] == [300_000, 400_000]
    long = settings.RecipeConfig(curriculum=" ".join(["ground:10:1e-3"] * 12))
    starts = [settings.phase_start(long, i) for i in range(12)]
    assert len(set(starts)) == 12 and max(starts) < 500_000 and starts[5] == 25_000
    assert 'the "skills" seed range from index 300,000 with' in cards.skills_text(more)
    assert "from index" not in cards.skills_text(first)
    for bad in (-1, 500_000):
        with pytest.raises(ValueError, match="skill_start"):
            settings.RecipeConfig(skill_start=bad).check()

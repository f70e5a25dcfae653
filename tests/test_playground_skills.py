"""train.playground.skills: the skills stage's example stream (clutter share, scene pools, system
prompts per skill) and its held-out evaluation."""

from __future__ import annotations

import dataclasses

import pytest

from train.playground import cards, settings, skills


def test_a_phases_clutter_share_reaches_the_scenes_its_stream_draws(monkeypatch):
    import mgpo.playground.skill_examples as examples

    seen = []
    real = examples.scene_examples
    monkeypatch.setattr(examples, "scene_examples", lambda seed, **kw: seen.append(kw["simple"]) or real(seed, **kw))
    cfg = settings.RecipeConfig(skill_simple=0.5, skill_buffer=1, workers=0)
    for share in (0.0, None):
        seen.clear()
        next(skills.skill_stream(cfg, skills=("ground",), simple=share))
        assert seen and set(seen) == {0.5 if share is None else share}


def test_a_skill_pool_draws_its_scenes_once_and_cycles_over_them_reshuffled(monkeypatch):
    import itertools

    import mgpo.playground.skill_examples as examples
    from mgpo.playground.world import SPLITS

    drawn = []
    real = examples.scene_examples
    monkeypatch.setattr(examples, "scene_examples", lambda seed, **kw: drawn.append(seed) or real(seed, **kw))
    cfg = settings.RecipeConfig.for_size("ci", workers=0, skill_pool=3)
    stream = skills.skill_stream(cfg, skills=("ground",), start=5)
    targets = [ex.prompt + ex.target for ex, _ in itertools.islice(stream, 30)]
    stream.close()
    lo = SPLITS["skills"][0]
    assert drawn == [lo + 5, lo + 6, lo + 7]            # three scenes from the phase's start, each drawn once
    passes = [targets[i:i + 3] for i in range(0, 30, 3)]
    assert len(set(passes[0])) == 3 and all(sorted(p) == sorted(passes[0]) for p in passes)   # the same examples
    assert any(p != passes[0] for p in passes)          # each pass in its own order
    with pytest.raises(ValueError, match="skill_pool"):
        settings.RecipeConfig(skill_pool=-1).check()


def test_a_skill_can_carry_its_own_system_prompts():
    import itertools

    cfg = settings.RecipeConfig.for_size("ci", workers=0, skill_pool=2, skill_system="mgpo, default ground=default")
    assert cfg.skill_systems("ground") == ("default",) and cfg.skill_systems("answer") == ("mgpo", "default")
    cfg = dataclasses.replace(cfg, skill_system="mgpo ground=default")
    stream = skills.skill_stream(cfg, skills=("ground", "answer"))
    pairs = list(itertools.islice(stream, 24))
    stream.close()
    assert {ex.skill for ex, _ in pairs} == {"ground", "answer"}
    assert all(system is None for ex, system in pairs if ex.skill == "ground")
    assert all(system == skills.skill_system_prompt("mgpo") for ex, system in pairs if ex.skill == "answer")
    table = cards.templates_markdown(cfg)     # the base card says which system prompt each skill trained under
    assert "| ground | the chat template's default | `" in table and "| answer | MGPO's | `<image>" in table
    cfg = dataclasses.replace(cfg, skill_system="mgpo ground=default,default,default,mgpo")   # a kind named 3 times
    assert "| ground | the chat template's default (3 in 4) or MGPO's (1 in 4) | `" in cards.templates_markdown(cfg)
    stream = skills.skill_stream(cfg, skills=("ground",))
    grounds = [system for _, system in itertools.islice(stream, 400)]
    stream.close()
    assert 0.18 < grounds.count(skills.skill_system_prompt("mgpo")) / 400 < 0.32
    for bad in ("mgpo ground=x", "ground=default", "mgpo default", "mgpo bogus=default",
                "mgpo ground=default ground=mgpo", "mgpo ground=default default"):
        with pytest.raises(ValueError, match="skill_system"):
            settings.RecipeConfig(skill_system=bad).check()


def test_skill_eval_prompts_the_tasks_turn_1_after_mgpos_system_prompt(tiny_loaded, monkeypatch):
    """Whatever system prompt the skills train with, the task's turn 1 is scored as RL and the eval
    harness prompt it (a base that grounds only after its own system prompt scores 0 there), and
    it is scored even when no phase trains grounding."""
    from mgpo.generation import QwenBackend

    seen, real = [], skills.example_prompts
    monkeypatch.setattr(skills, "example_prompts", lambda backend, exs, systems: seen.extend(
        zip([e.skill for e in exs], systems)) or real(backend, exs, systems))
    cfg = settings.RecipeConfig(curriculum="cell:1:1e-3", skill_system="default", max_new_tokens=8, workers=0)
    scores = skills.skill_eval(QwenBackend(tiny_loaded.model, tiny_loaded.processor), cfg, n_scenes=1)
    assert {"cell", "task_valid", "task_hit", "task_t1_valid", "task_t1_hit"} <= set(scores)
    assert {system for skill, system in seen if skill == "task"} == {skills.skill_system_prompt("mgpo")}
    assert {system for skill, system in seen if skill == "cell"} == {None}
    assert sum(skill == "task" for skill, _ in seen) == 5      # greedy once, then 4 samples at T = 1


def test_a_phase_can_carry_its_own_system_prompts_and_pool(monkeypatch):
    """The whole base in one curriculum: a phase's ``system=`` and ``pool=`` override the run's, for
    its stream and its card rows."""
    import itertools

    import mgpo.playground.skill_examples as examples

    cfg = settings.RecipeConfig.for_size(
        "ci", workers=0, skill_system="default", skill_pool=0,
        curriculum="ground:2:1e-3 ground,answer:2:1e-3:0.3:vision:system=mgpo,default;ground=default,mgpo:pool=2")
    first, second = cfg.check().phases()
    assert (first.system, first.pool) == (None, None)
    assert (second.simple, second.vision, second.pool) == (0.3, True, 2)
    assert cfg.skill_systems("ground") == ("default",) and cfg.skill_systems("ground", first) == ("default",)
    assert cfg.skill_systems("ground", second) == ("default", "mgpo")
    assert cfg.skill_systems("answer", second) == ("mgpo", "default")
    assert (cfg.skill_pool_of(first), cfg.skill_pool_of(second)) == (0, 2)
    drawn = []
    real = examples.scene_examples
    monkeypatch.setattr(examples, "scene_examples", lambda seed, **kw: drawn.append(seed) or real(seed, **kw))
    stream = skills.skill_stream(cfg, skills=second.skills, simple=second.simple, phase=second)
    pairs = list(itertools.islice(stream, 200))
    stream.close()
    assert len(drawn) == 2                                   # the phase's pool, drawn once
    mgpo = skills.skill_system_prompt("mgpo")
    grounds = [system for ex, system in pairs if ex.skill == "ground"]
    assert set(grounds) == {None, mgpo} and 0.3 < grounds.count(mgpo) / len(grounds) < 0.7
    table = cards.templates_markdown(cfg)
    assert ("| ground | phases 1: the chat template's default; phases 2: the chat template's default (1 in 2) "
            "or MGPO's (1 in 2) |" not in table)             # one phase is "phase", not "phases"
    assert ("| ground | phase 1: the chat template's default; phase 2: the chat template's default (1 in 2) or "
            "MGPO's (1 in 2) | `") in table
    assert "| answer | MGPO's (1 in 2) or the chat template's default (1 in 2) | `" in table
    assert "2 scenes drawn once and read over and over" in cards.skills_text(cfg)
    for bad in ("ground:2:1e-3:system=bogus", "ground:2:1e-3:pool=x", "ground:2:1e-3:pool=-1",
                "ground:2:1e-3:size=3", "ground:2:1e-3:pool=2:pool=3"):
        with pytest.raises(ValueError, match="phase|pool"):
            dataclasses.replace(cfg, curriculum=bad).check()


def test_a_phase_can_start_at_its_own_scenes_and_stop_its_schedule_early(tiny_loaded, monkeypatch):
    """``:start=`` puts a phase on the scenes a continuation read; ``:schedule=`` plans its
    learning-rate schedule longer than it runs (a run stopped mid-phase, replayed in one command)."""
    import copy
    import types

    cfg = settings.RecipeConfig(curriculum="ground:3:1e-3:schedule=30:start=300000 ground:2:1e-3", skill_batch=2,
                                workers=0, skill_eval_every=0, max_new_tokens=8)
    first, second = cfg.check().phases()
    assert (first.start, first.schedule, second.start, second.schedule) == (300000, 30, None, None)
    starts, real = [], skills.skill_stream
    monkeypatch.setattr(skills, "skill_stream", lambda c, **kw: starts.append(kw["start"]) or real(c, **kw))
    loaded = types.SimpleNamespace(model=copy.deepcopy(tiny_loaded.model), processor=tiny_loaded.processor)
    hist = skills.train_skills(loaded, cfg)
    assert starts == [300000, settings.phase_start(cfg, 1)] and settings.phase_start(cfg, 0) == 300000
    assert [r["lr"] for r in hist[:3]] == pytest.approx([1e-3 * skills.lr_factor(30, k) for k in (1, 2, 3)])
    assert [r["lr"] for r in hist[3:]] == pytest.approx([1e-3 * skills.lr_factor(2, k) for k in (1, 2)])
    assert "ground for 3 steps (of a learning-rate schedule planned for 30)" in cards.skills_text(cfg)
    assert "scenes from index 300,000" in cards.skills_text(cfg)
    for bad in ("ground:3:1e-3:schedule=2", f"ground:3:1e-3:start={settings.VISION_START}", "ground:3:1e-3:start=-1"):
        with pytest.raises(ValueError, match="schedule no shorter|a start below"):
            dataclasses.replace(cfg, curriculum=bad).check()

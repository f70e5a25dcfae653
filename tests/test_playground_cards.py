"""train.playground's model cards: what a base or release card says it was trained on, phase by
phase, across continued runs and runs stopped mid-curriculum."""

from __future__ import annotations

from train.playground import cards, settings


def test_a_phase_may_train_the_vision_tower_where_the_run_keeps_it_frozen():
    cfg = settings.RecipeConfig(curriculum="ground:600:1e-3 ground,zoom:400:3e-4:0.3:vision ground:5:1e-4:vision",
                              vision_steps=60)
    assert cfg.check().phases() == [settings.Phase(("ground",), 600, 1e-3), settings.Phase(("ground", "zoom"), 400, 3e-4, 0.3, True),
                                    settings.Phase(("ground",), 5, 1e-4, None, True)]
    assert settings.vision_frozen(cfg) and [settings.trains_vision(cfg, ph) for ph in cfg.phases()] == [False, True, True]
    text = cards.skills_text(cfg)
    assert ("a full fine-tune of the language model, the vision tower frozen except in the phases that say they "
            "trained it too") in text
    assert ("ground for 600 steps at lr 0.001 (30 % clutter-free scenes), then ground+zoom for 400 steps at lr 0.0003 "
            "(30 % clutter-free scenes, the vision tower trained too)") in text
    # a run that trains the tower anyway says so once, not per phase
    whole = settings.RecipeConfig(curriculum=cfg.curriculum, vision_steps=60, train_vision=True)
    assert all(settings.trains_vision(whole, ph) for ph in whole.phases())
    assert "the whole model, vision tower included" in cards.skills_text(whole)
    assert "trained too" not in cards.skills_text(whole)
    for size in settings.SIZES:                           # every size's curriculum parses and checks
        settings.RecipeConfig.for_size(size).check()
    cpu = settings.RecipeConfig.for_size("cpu")
    assert settings.vision_frozen(cpu) and any(ph.vision for ph in cpu.phases()) and not cpu.phases()[0].vision


def test_a_base_card_saved_mid_run_tells_the_steps_it_ran_not_the_plan():
    cfg = settings.RecipeConfig(curriculum="cell:500:2e-3 cell,ground:800:5e-4 cell,ground,zoom:400:1e-3")
    mid = cards.base_card(cfg, [{"step": 599, "loss": 0.6}, {"step": 600, "loss": 0.5}])
    assert "cell for 500 steps at lr 0.002" in mid and "cell+ground for 100 of 800 planned steps at lr 0.0005" in mid
    assert "stopped there, after 600 of the 1700 planned steps (1 later phase not run)" in mid
    assert "cell+ground+zoom" not in mid and "zoom:" not in mid and "| zoom |" not in mid   # never reached
    assert "| ground | MGPO's (1 in 2) or the chat template's default (1 in 2) | `<image>Locate the {name}" in mid
    done = cards.base_card(cfg, [{"step": 1700, "loss": 0.4}])
    assert "cell+ground+zoom for 400 steps at lr 0.001" in done and "stopped there" not in done
    edge = cards.base_card(cfg, [{"step": 500, "loss": 0.4}])   # saved at a phase's end: the next ones not run
    assert "cell for 500 steps" in edge and "cell+ground " not in edge and "(2 later phases not run)" in edge


def test_a_continued_base_card_keeps_the_story_of_its_start(tmp_path):
    first = settings.RecipeConfig(curriculum="cell:600:2e-3")
    start = tmp_path / "start"
    start.mkdir()
    (start / "README.md").write_text(cards.base_card(first, [{"loss": 0.5}]))
    more = settings.RecipeConfig(curriculum="ground,zoom:400:1e-3:0.3", skills_from=str(start), vision_steps=0)
    card = cards.base_card(more, [{"loss": 0.25}])
    story = cards.base_story(start)
    assert story.startswith("A random Qwen2.5-VL") and "# " not in story
    assert card.index("cell for 600 steps") < card.index("Then continued from that checkpoint")
    assert "ground+zoom for 400 steps at lr 0.001 (30 % clutter-free scenes)" in card and "Final loss 0.250" in card
    # the release card of the continued base tells its whole story, read back from its card
    cont = tmp_path / "continued"
    cont.mkdir()
    (cont / "README.md").write_text(card)
    text = cards.release_card(more, {}, [], cards.base_story(cont))
    assert "cell for 600 steps" in text and "ground+zoom for 400 steps" in text
    assert cards.base_story(tmp_path / "nowhere") == ""       # no card: the release card falls back to the settings


def test_each_part_of_a_base_card_says_what_it_trained_and_its_own_held_out_scores(tmp_path):
    first = settings.RecipeConfig(curriculum="cell:600:2e-3", vision_steps=60)
    (tmp_path / "README.md").write_text(cards.base_card(first, [{"loss": 0.5, "eval": {"cell": 0.25}}, {"loss": 0.4}]))
    more = settings.RecipeConfig(curriculum="ground:40:1e-3", skills_from=str(tmp_path), vision_steps=0, train_vision=True)
    held = {"ground_hit": 0.875, "task_hit": 0.5}
    card = cards.base_card(more, [{"loss": 0.3, "eval": {"ground_hit": 0.1}}, {"loss": 0.2, "eval": held}])
    first_part, second_part = card.split("Then continued from that checkpoint")
    assert "a full fine-tune of the language model, the vision tower frozen" in first_part   # after the probe stage
    assert "Held-out skill scores at the end:\n   cell 0.25." in first_part
    assert "a full fine-tune of the whole model, vision tower included" in second_part       # --train-vision yes
    assert second_part.rstrip().endswith("Held-out skill scores at the end:\n   ground_hit 0.88, task_hit 0.50.")
    assert "ground_hit 0.10" not in card                                                     # the last scores only
    # the release card tells them once; a story from a card without them still gets the last run's
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text(card)
    summary = {"skills": {"eval": held}}
    assert cards.release_card(more, summary, [], cards.base_story(base)).count("ground_hit 0.88, task_hit 0.50") == 1
    old_story = cards.base_story(base).replace(cards.held_out_text(held), "").rstrip()
    text = cards.release_card(more, summary, [], old_story)
    assert text.count("ground_hit 0.88, task_hit 0.50") == 1 and "cell 0.25" in text
    assert "scores at the end:\n   –." in cards.release_card(first, {}, [], "")             # nothing measured
    assert not settings.vision_frozen(settings.RecipeConfig())    # a random tower with no probe stage trains with the text skills

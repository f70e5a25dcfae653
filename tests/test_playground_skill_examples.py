"""The base-skill examples (mgpo/playground/skill_examples.py): what each skill asks, what it
answers, and that none of them is MGPO's task."""

from __future__ import annotations

import json

import pytest

from mgpo import geometry
from mgpo.eval.scoring import iou
from mgpo.parsing import extract_boxed, parse_bbox
from mgpo.playground.skill_prompts import BASIC_SKILLS, GROUND_PROMPTS
from mgpo.playground.skill_examples import scene_examples, skill_examples
from mgpo.playground.world import COLOURS, N_CARDS, PATTERNS, Budgets, make_scene, split_seeds
from mgpo.prompts import LETTERS, get_prompts

WHOLE = (0, 0, 2048, 2048)

def test_grounding_examples_parse_to_the_card_box():
    examples = [e for e in skill_examples(6) if e.skill == "ground"]
    assert len(examples) == 6 * N_CARDS[0]       # one per card
    for e in examples:
        assert e.target.startswith("```json\n[\n    {\"bbox_2d\": [") and e.target.endswith("}\n]\n```")
        box = parse_bbox(e.target)
        frame = e.images[0].size
        assert frame == (224, 224) and list(box) == e.meta["box_model"]
        assert all(v % 14 == 0 for v in box) and geometry.is_valid_box(box, *frame)
        assert iou(geometry.to_region(box, frame, WHOLE), e.meta["box_original"]) > 0.7
        assert e.meta["name"] in e.prompt and json.loads(e.target[8:-4])[0]["label"] == e.meta["name"]


def test_grounding_prompt_shares_the_turn1_phrase():
    turn1 = get_prompts("mgpo").grounding
    for name, template in GROUND_PROMPTS.items():
        if name not in ("refer", "name-first"):      # one of many wordings each (their own tests)
            assert "coordinates of the" in template and "in JSON format." in template
    assert "coordinates of the" in turn1 and "in JSON format." in turn1


def test_referring_wordings_are_never_mgpos_turn1_nor_the_task():
    """The "refer" grounding prompts: many wordings of "where is the {name}", none of them MGPO's
    turn-1 template, a question about a card's parts or the task's shape — and enough of them
    share the generic "coordinates … in JSON format" for sampled boxes to carry over."""
    from mgpo.playground.skill_prompts import REFER_PROMPTS, trained_templates

    turn1 = get_prompts("mgpo").grounding
    mgpo_phrases = ("Question:", "key image area", "relevant to the problem")
    for t in REFER_PROMPTS:
        assert t.startswith("<image>") and "{name}" in t and ("JSON" in t)
        assert not any(p in t for p in mgpo_phrases) and not any(p in t for p in mgpo_phrases if p in turn1)
        assert not any(w in t.lower() for w in ("stripe", "which way", "border", "edge", "corner", "label"))
    assert len(set(REFER_PROMPTS)) == len(REFER_PROMPTS) >= 12
    assert sum("coordinates" in t for t in REFER_PROMPTS) >= len(REFER_PROMPTS) // 2
    # the name sits at the start, mid-sentence and at the end of the sentence that asks
    assert {t.index("{name}") < 25 for t in REFER_PROMPTS} == {True, False}
    examples = [e for seed in split_seeds("skills", 20) for e in scene_examples(seed, skills=("ground",), prompt="refer")]
    used = {t for e in examples for t in REFER_PROMPTS if t.format(name=e.meta["name"]) == e.prompt}
    assert len(examples) == 20 and len(used) >= 8
    # what a card lists: every grounding template with a box target, none of them MGPO's turn 1
    rows = trained_templates(("ground", "zoom", "answer"), "refer")
    boxed = [t for skill, t, target in rows if "bbox_2d" in target]
    assert boxed == list(REFER_PROMPTS)
    assert [skill for skill, *_ in rows].count("zoom") == 1 and "never learned" in rows[-2][1]
    with_ask = trained_templates(("ground",), "ask")
    assert all("key image area" in t for _, t, _ in with_ask)



def test_ask_grounding_is_mgpos_turn1_around_other_questions_about_the_card():
    from mgpo.playground.skill_prompts import ASK_QUESTIONS
    from mgpo.playground.world import question
    from mgpo.prompts import render

    prompts = get_prompts("mgpo")
    examples = [e for seed in split_seeds("skills", 12, 300) for e in scene_examples(seed, skills=("ground",), prompt="ask")]
    asked = set()
    for e in examples:
        name = e.meta["name"]
        q = next(t.format(name=name) for t in ASK_QUESTIONS if render(prompts, "grounding", t.format(name=name), None) == e.prompt)
        assert q != question(name) and "stripes" not in q     # never the task's question
        asked.add(q.replace(name, "{name}"))
    assert len(asked) >= 4


def test_reading_and_answering_examples_are_well_formed():
    examples = list(skill_examples(8, start=100))
    kinds = {k: [e for e in examples if e.skill == k] for k in BASIC_SKILLS}   # a scene's default examples
    assert all(kinds.values())
    for e in kinds["read"]:
        boxed = extract_boxed(e.target)
        if "choices" in e.meta:
            assert boxed == e.meta["answer"] and e.meta["choices"][LETTERS.index(boxed)] == e.meta["detail"]
            assert "(A) horizontal\n(B) vertical\n(C) rising diagonal\n(D) falling diagonal" in e.prompt
        else:
            assert boxed == e.meta["detail"] in PATTERNS
        assert e.images[0].size == (224, 224)
    for e in kinds["answer"]:
        letter = extract_boxed(e.target)
        right = e.meta["choices"][LETTERS.index(letter)]
        assert right in COLOURS or right.isdigit()
        assert e.images[0].size == (224, 224)
    for e in examples:
        msgs = e.messages()
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (1 + len(e.context))
        assert sum(c["type"] == "image" for c in msgs[-2]["content"]) == len(e.images) == 1
        assert msgs[-1]["content"][0]["text"] == e.target


def test_zoom_examples_read_the_crop_of_the_turn1_box_in_mgpos_turn2():
    from mgpo.parsing import find_bbox
    from mgpo.playground.skill_prompts import ASK_QUESTIONS, ZOOM_QUESTIONS
    from mgpo.playground.world import question
    from mgpo.prompts import render

    prompts = get_prompts("mgpo")
    shifted = 0
    for seed in split_seeds("skills", 16, 400):
        (e,) = scene_examples(seed, skills=("zoom",), simple=0.0)
        scene = make_scene(seed)
        (card,) = scene.layout.cards
        name = f"{card.colour} card"
        (text1, images1, reply1), = e.context
        # turn 1: MGPO's grounding template around a question that is not the task's, its box as the reply
        asked = [q.format(name=name) for q in ASK_QUESTIONS if render(prompts, "grounding", q.format(name=name)) == text1]
        assert asked and asked[0] != question(name)
        box = find_bbox(reply1).box
        assert list(box) == e.meta["box_model"] and images1[0].size == (224, 224)
        # turn 2: the crop of that box, MGPO's turn-2 template, a reading question that does not name the card
        region = geometry.to_region(box, (224, 224), (0, 0, *scene.image.size))
        assert list(region) == e.meta["region"]
        assert e.images[0].tobytes() == geometry.prepare(scene.image, region, **Budgets().engine()).image.tobytes()
        q = [z for z in ZOOM_QUESTIONS if render(prompts, "crop", z, list(PATTERNS)) == e.prompt]
        assert q and card.colour not in e.prompt and q[0] != question(name)
        x1, y1, x2, y2 = card.stripes
        inside = (min(x2, region[2]) - max(x1, region[0])) * (min(y2, region[3]) - max(y1, region[1]))
        assert inside >= 0.8 * (x2 - x1) * (y2 - y1)     # (nearly) all the stripes are in the crop
        assert extract_boxed(e.target) == LETTERS[PATTERNS.index(card.detail)]
        shifted += tuple(region) != tuple(card.box)
    assert 3 <= shifted <= 13      # about half of turn 1's boxes are a lattice step off


def test_answer_examples_are_true_of_their_scene():
    for seed in split_seeds("skills", 6, 200):
        examples = scene_examples(seed, skills=("answer",), simple=0.0)
        (e,) = examples
        scene = make_scene(seed)
        right = e.meta["choices"][LETTERS.index(extract_boxed(e.target))]
        colours = [c.colour for c in scene.layout.cards]
        if e.meta["question"].startswith("How many"):
            assert right == str(len(colours))
        else:
            assert right in colours and not set(e.meta["choices"]) - {right} & set(colours)


def test_unknown_skill_is_refused():
    with pytest.raises(ValueError, match="unknown skill"):
        scene_examples(0, skills=("fly",))


def test_cell_examples_name_the_board_cell_of_each_card():
    from mgpo.playground.skill_examples import cell_examples
    from mgpo.playground.world import GRID

    scene = make_scene(split_seeds("skills", 1, 7)[0])
    examples = cell_examples(scene)
    assert len(examples) == len(scene.layout.cards)
    slot = scene.image.width // GRID
    for ex, card in zip(examples, scene.layout.cards):
        assert card.colour in ex.prompt and ex.images[0].size == (224, 224)
        row, col = card.box[1] // slot + 1, card.box[0] // slot + 1
        assert ex.target == f"row {row}, column {col}" and scene.cell(card) == (row, col)


def test_label_first_replies_name_the_card_before_the_box():
    from mgpo.parsing import find_bbox
    from mgpo.playground.skill_examples import bbox_json, scene_examples

    text = bbox_json((14, 28, 56, 70), "red card", label_first=True)
    assert text.index('"label"') < text.index('"bbox_2d"') and find_bbox(text).box == (14, 28, 56, 70)
    examples = scene_examples(split_seeds("skills", 1, 3)[0], skills=("ground", "cell"), label_first=True)
    for ex in examples:
        name = ex.meta["name"]
        assert ex.target.startswith(f"{name}: row ") if ex.skill == "cell" else f'{{"label": "{name}", "bbox_2d"' in ex.target

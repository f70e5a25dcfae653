"""The engine against Qwen2.5-VL-7B-Instruct's own tokenizer, chat template, processor and
generation config (``tests/fixtures/qwen2.5-vl-7b-instruct``), on a random-weight checkpoint that
carries them at small dimensions (``python -m mgpo.tiny --qwen-files``).

Every conversation the engine builds must be, id for id, what the real processor gives for the
same messages under the real template; the stop ids are the checkpoint's; the overview's frame is
the paper's two-step resize, pinned against the real processor config.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from mgpo import geometry
from mgpo.engine import Engine, EngineConfig, Request
from bench.forced import ForcedBackend
from mgpo.generation import QwenBackend
from mgpo.parsing import parse_bbox
from mgpo.prompts import PAPER, names, get_prompts, render, user_message
from mgpo.conversation import Sampling

from conftest import BOX_TEXT, QWEN_FILES, noise_image

IM_START, IM_END, ENDOFTEXT, IMAGE_PAD, NEWLINE = 151644, 151645, 151643, 151655, 198
BOX = BOX_TEXT % (112, 84, 448, 364)      # valid in the overview frame of a 1600×1200 image
SMALL_BOX = BOX_TEXT % (10, 10, 20, 20)   # parses, but each side is under 28: invalid
CHOICES = ["red", "blue", "green", "white"]


@pytest.fixture(scope="session")
def real_processor():
    """The released processor, exactly as its files configure it."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(QWEN_FILES)


def _as_fed(processor, text: str, images):
    """The real processor on chat text and images already at their model frames (its own resize
    is then the identity: every side a multiple of 28 inside its pixel limits)."""
    return processor(text=[text], images=images or None, return_tensors="pt",
                     images_kwargs={"size": {"shortest_edge": 28 * 28, "longest_edge": 10**8}})


def _messages(rollout, question, choices, mode="mgpo", policy_texts=None):
    """The chat messages of a finished rollout: system, then per turn the user prompt with its
    image and the assistant's text (``policy_texts``: each turn's text as sampled, stop id
    included)."""
    prompts = get_prompts("mgpo")
    msgs = []
    system = prompts.direct_system if mode == "direct" else render(prompts, "system", question, choices)
    if system is not None:
        msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
    for k, kind in enumerate(rollout.kinds):
        text = render(prompts, kind, question, choices)
        msgs.append(user_message(text, [rollout.images[k].image] * text.count("<image>")))
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": (policy_texts or rollout.texts)[k]}]})
    return msgs


def _turn_texts(tok, rollout) -> list[str]:
    """Each assistant turn's tokens as sampled (special tokens kept), the closing <|im_end|> cut."""
    turns, cur, prev = [], [], 0
    for t, m in zip(rollout.token_ids, rollout.loss_mask):
        if m:
            cur.append(t)
        elif prev and cur:
            turns.append(cur)
            cur = []
        prev = m
    if cur:
        turns.append(cur)
    return [tok.decode(ids[:-1] if ids[-1] == IM_END else ids, skip_special_tokens=False) for ids in turns]


# ----- the files themselves ---------------------------------------------------------------------

def test_the_checkpoint_carries_the_released_vocabulary_and_ids(qwen_loaded):
    tok = qwen_loaded.processor.tokenizer
    cfg = qwen_loaded.model.config
    assert qwen_loaded.model.get_input_embeddings().weight.shape[0] == 152064
    assert len(tok) == 151665 and tok.convert_tokens_to_ids("<|endoftext|>") == ENDOFTEXT
    assert (cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == (IMAGE_PAD, 151652, 151653)
    header = tok("<|im_start|>system\nYou are a helpful assistant.", add_special_tokens=False)["input_ids"]
    assert header[:4] == [IM_START, 8948, 198, 2610]


@pytest.mark.parametrize("prompt_set", names())
def test_every_prompt_round_trips_through_the_real_tokenizer(real_processor, prompt_set):
    tok = real_processor.tokenizer
    prompts = get_prompts(prompt_set)
    for choices in (None, CHOICES):
        for kind in ("system", "grounding", "crop", "fallback", "refine", "direct"):
            text = render(prompts, kind, "What is the colour of the umbrella?", choices)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids, clean_up_tokenization_spaces=False) == text
            assert not set(ids) & set(tok.all_special_ids)        # no text turns into a control token
    box_ids = tok(BOX, add_special_tokens=False)["input_ids"]
    assert parse_bbox(tok.decode(box_ids, clean_up_tokenization_spaces=False)) == (112, 84, 448, 364)


# ----- whole conversations, id for id -----------------------------------------------------------

CASES = {   # name: (mode, max_turns, turn-1 script, choices, max_new_tokens)
    "valid box, choices": ("mgpo", 2, BOX, CHOICES, 200),
    "valid box, open question": ("mgpo", 2, BOX, None, 200),
    "invalid box -> fallback": ("mgpo", 2, SMALL_BOX, CHOICES, 200),
    "no box -> fallback (length)": ("mgpo", 2, "I see no key area.", CHOICES, 6),
    "turn 1 ends on <|endoftext|>": ("mgpo", 2, "Nothing to mark.<|endoftext|>", CHOICES, 200),
    "three turns": ("mgpo", 3, BOX, CHOICES, 200),
    "direct": ("direct", 1, None, CHOICES, 200),
}


@pytest.mark.parametrize("case", list(CASES))
def test_whole_conversation_ids_equal_the_real_processor(qwen_loaded, real_processor, case):
    mode, turns, script, choices, max_new = CASES[case]
    backend = ForcedBackend(qwen_loaded.model, qwen_loaded.processor, script=script, answer="\\boxed{B}")
    engine = Engine(backend, EngineConfig(max_turns=max(turns, 2), max_new_tokens=max_new))
    question = "What colour is the umbrella?"
    rollout = engine.rollout([Request(noise_image(1600, 1200), question, choices)], mode=mode)[0]
    assert len(rollout.kinds) == turns and rollout.final.answer == "B"
    if case.startswith("invalid") or case.startswith("no box") or "endoftext" in case:
        assert rollout.kinds == ["grounding", "fallback"]
    if case.startswith("valid") or case == "three turns":
        assert rollout.kinds[-1] == "crop" and rollout.valid_box
    tok = real_processor.tokenizer
    msgs = _messages(rollout, question, choices, mode, _turn_texts(tok, rollout))
    text = real_processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    out = _as_fed(real_processor, text, [f.image for f in rollout.images])
    expected = out["input_ids"][0].tolist()
    # the template closes the last turn with "<|im_end|>\n"; the conversation ends on <|im_end|>
    assert expected[-2:] == [IM_END, NEWLINE]
    assert rollout.token_ids == expected[:-1]
    assert out["image_grid_thw"].tolist() == [list(f.grid_thw) for f in rollout.images]
    torch.testing.assert_close(torch.cat([f.pixel_values for f in rollout.images]), out["pixel_values"])


def test_a_turn_ended_by_endoftext_is_closed_as_the_template_closes_it(qwen_loaded):
    """The sampled <|endoftext|> stays (a policy token), then <|im_end|>\\n and the next user turn."""
    backend = ForcedBackend(qwen_loaded.model, qwen_loaded.processor, script="None.<|endoftext|>", answer="x")
    rollout = Engine(backend).rollout([Request(noise_image(800, 600), "Where?")])[0]
    k = rollout.token_ids.index(ENDOFTEXT)
    assert rollout.token_ids[k:k + 4] == [ENDOFTEXT, IM_END, NEWLINE, IM_START]
    assert rollout.loss_mask[k:k + 4] == [1, 0, 0, 0]
    assert rollout.texts[0] == "None." and rollout.kinds == ["grounding", "fallback"]


# ----- positions, image tokens, log-probs -------------------------------------------------------

def _full_forward(loaded, rollout):
    ids = torch.tensor([rollout.token_ids])
    mm = (ids == IMAGE_PAD).int()
    grid = torch.tensor([f.grid_thw for f in rollout.images])
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                              pixel_values=torch.cat([f.pixel_values for f in rollout.images]),
                              image_grid_thw=grid).logits[0].float()
    policy = torch.nonzero(torch.tensor(rollout.loss_mask)).squeeze(-1)
    return torch.log_softmax(logits, -1)[policy - 1, ids[0, policy]], policy, grid, mm


@pytest.mark.parametrize("script", [BOX, "Nothing.<|endoftext|>"])
def test_kv_cached_turn_2_equals_one_full_forward_and_the_training_forward(qwen_loaded, script):
    from train.logprobs import collate, token_logprobs

    backend = ForcedBackend(qwen_loaded.model, qwen_loaded.processor, script=script)
    sampling = Sampling(temperature=1.0, max_new_tokens=24, seed=3)
    rollout = Engine(backend).rollout([Request(noise_image(1600, 1200), "Which way?", CHOICES)], sampling=sampling)[0]
    lp, policy, grid, mm = _full_forward(qwen_loaded, rollout)
    seen = torch.tensor(rollout.logprobs)[policy]
    torch.testing.assert_close(seen, lp, atol=2e-5, rtol=0)
    positions, _ = qwen_loaded.model.model.get_rope_index(torch.tensor([rollout.token_ids]), mm, image_grid_thw=grid)
    assert positions[:, 0].T.tolist() == [list(p) for p in rollout.positions]
    assert rollout.token_ids.count(IMAGE_PAD) == sum(t * h * w // 4 for t, h, w in grid.tolist())
    batch = collate([rollout], pad_id=ENDOFTEXT, image_token_id=IMAGE_PAD, device="cpu")
    with torch.no_grad():
        train_lp, _ = token_logprobs(qwen_loaded.model, batch, temperature=1.0)
    torch.testing.assert_close(train_lp[0, policy], seen, atol=2e-5, rtol=0)


def test_overview_frame_is_the_papers_two_step_resize_not_the_processors(qwen_loaded, real_processor):
    """2400×1600: the paper's pre-resize then smart_resize → 1232×812 (1,276 visual tokens); the
    released processor alone, with the same limits, gives 1204×812 (1,247)."""
    image = noise_image(2400, 1600)
    limits = {"shortest_edge": geometry.MIN_PIXELS, "longest_edge": geometry.MAX_PIXELS}
    alone = real_processor.image_processor(images=[image], size=limits, return_tensors="pt")["image_grid_thw"]
    assert alone.tolist() == [[1, 58, 86]] and int(alone.prod()) // 4 == 1247
    assert geometry.model_frame(image.size) == (1232, 812) and geometry.visual_tokens((1232, 812)) == 1276
    rollout = Engine(QwenBackend(qwen_loaded.model, qwen_loaded.processor), EngineConfig(max_new_tokens=2)).rollout(
        [Request(image, "Where?")])[0]
    assert rollout.images[0].grid_thw == (1, 58, 88) and rollout.images[0].image.size == (1232, 812)
    first_turn = rollout.token_ids[:rollout.loss_mask.index(1)]
    assert first_turn.count(IMAGE_PAD) == 1276
    # the released files' own limits (3,136 .. 12,845,056 pixels) are not what the engine feeds by
    assert (real_processor.image_processor.size["shortest_edge"], real_processor.image_processor.size["longest_edge"]) \
        == (3136, 12845056)


# ----- stop ids ---------------------------------------------------------------------------------

def test_stop_ids_come_from_the_checkpoints_generation_config(qwen_loaded, qwen_model_dir):
    saved = json.loads((qwen_model_dir / "generation_config.json").read_text())["eos_token_id"]
    assert saved == [IM_END, ENDOFTEXT]
    assert QwenBackend(qwen_loaded.model, qwen_loaded.processor).eos_ids == sorted(saved)


def test_a_fine_tune_with_other_stop_ids_stops_on_them(qwen_loaded):
    """A generation config that stops on <|box_end|> and not on <|endoftext|>: the turn stops on
    <|box_end|>, and <|endoftext|> is never sampled (a special token that no longer ends a turn)."""
    tok = qwen_loaded.processor.tokenizer
    box_end = tok.convert_tokens_to_ids("<|box_end|>")
    before = copy.deepcopy(qwen_loaded.model.generation_config)
    try:
        qwen_loaded.model.generation_config.eos_token_id = [IM_END, box_end]
        backend = ForcedBackend(qwen_loaded.model, qwen_loaded.processor, script="Look<|box_end|> on and on")
        assert backend.eos_ids == sorted([IM_END, box_end])
        assert backend.suppressed_ids()[ENDOFTEXT] and not backend.suppressed_ids()[box_end]
        events = list(Engine(backend, EngineConfig(max_new_tokens=30)).run(noise_image(800, 600), "Where?"))
        first = next(e for e in events if e.type == "turn_finished")
        assert first.stop == "eos" and first.text == "Look" and first.new_tokens == 2
    finally:
        qwen_loaded.model.generation_config = before


# ----- the declared transformers range ----------------------------------------------------------

def test_our_model_calls_use_no_deprecated_transformers_api(qwen_loaded):
    """Engine decode (KV cache), the plain-transformers baseline and the training forward raise
    none of transformers' deprecation warnings (``past_key_values=`` goes in 5.40)."""
    from bench.baseline import Baseline
    from train.logprobs import collate, token_logprobs

    backend = ForcedBackend(qwen_loaded.model, qwen_loaded.processor, script=BOX, answer_tokens=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rollout = Engine(backend).rollout([Request(noise_image(1600, 1200), "Where?")])[0]
        base = Baseline(qwen_loaded.model, qwen_loaded.processor)
        pv, grid, visual = base.encode(noise_image(600, 400), geometry.MIN_PIXELS, geometry.MAX_PIXELS)
        base.prefill_decode(base.prompt(visual + 60, visual), pv, grid, n_new=3)
        batch = collate([rollout], pad_id=ENDOFTEXT, image_token_id=IMAGE_PAD, device="cpu")
        token_logprobs(qwen_loaded.model, batch)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))
                    and "deprecat" in str(w.message)]
    assert deprecations == []


def test_the_oldest_tested_transformers_is_the_declared_floor():
    """requirements.txt's transformers range is what `make test-oldest` and the venv test."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    line = next(ln for ln in (root / "requirements.txt").read_text().splitlines() if ln.startswith("transformers"))
    floor, cap = re.fullmatch(r"transformers>=([\d.]+),<([\d.]+)", line.strip()).groups()
    assert f"transformers=={floor}.0" in (root / "Makefile").read_text()
    import transformers

    installed = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    assert tuple(int(x) for x in floor.split(".")) <= installed < tuple(int(x) for x in cap.split("."))


# ----- the tools end to end on that checkpoint (slow) -------------------------------------------

@pytest.mark.slow
def test_demo_streams_a_run_through_gradio_client(qwen_model_dir):
    import app
    from gradio_client import Client, handle_file
    from test_app import PARKING, run_args, serve

    demo = app.make_app(app.AppConfig(model=str(qwen_model_dir), queue_size=4))
    try:
        job = Client(serve(demo), verbose=False).submit(*run_args(handle_file(str(PARKING)), max_new_tokens=16),
                                                       api_name="/run")
        last = job.result(timeout=300)
        statuses = [o[0] for o in job.outputs()]
        assert statuses[0].startswith("MGPO: turn 1") and last[0].startswith("Done in ")
        assert last[1][-1]["content"][0]["text"].startswith("**MGPO answer:**")
        assert last[6]["data"][0][1] == 1 and last[6]["data"][0][5] > 1000      # turn 1's prompt tokens
    finally:
        demo.close()


@pytest.mark.slow
def test_cli_reads_a_photo_at_the_papers_frame(qwen_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    photo = tmp_path / "photo.jpg"
    noise_image(2400, 1600).save(photo)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "mgpo.infer", "--model", str(qwen_model_dir), "--image", str(photo),
                        "--question", "What is on the sign?", "--choices", "red", "blue", "--max-new-tokens", "6",
                        "--json"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["type"] == "turn_started" and events[0]["image_size"] == [1232, 812]
    assert events[0]["visual_tokens"] == 1276 and events[-1]["type"] == "final"
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_two_training_steps_on_the_released_vocabulary(qwen_model_dir, tmp_path):
    import math

    from train.config import TrainConfig
    from train.loop import Trainer

    lines = []
    for i in range(2):
        noise_image(120 + 20 * i, 100, seed=i).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "question": "Which colour?", "choices": ["red", "blue"],
                                 "answer": "A"}))
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    seen = {}
    cfg = TrainConfig(model=str(qwen_model_dir), data=str(tmp_path / "d.jsonl"), output_dir=str(tmp_path / "run"),
                      steps=2, save_every=2, group_size=2, prompts_per_step=1, max_new_tokens=6,
                      min_pixels=56 * 56, max_pixels=84 * 84, lr=1e-3, tensorboard=False, progress=False, plot=False)
    Trainer(cfg, on_step=lambda s, m: seen.setdefault(s, m)).run()
    assert sorted(seen) == [1, 2]
    assert all(math.isfinite(seen[s][k]) for s in seen for k in ("loss", "kl", "entropy", "grad_norm"))
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()

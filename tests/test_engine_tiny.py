"""The engine on a real (tiny, random) Qwen2.5-VL: token assembly, M-RoPE positions, KV reuse."""

import pytest
import torch

from mgpo.engine import Engine, EngineConfig, Request
from bench.forced import ForcedBackend
from mgpo.generation import QwenBackend
from mgpo.conversation import Sampling

from conftest import BOX_TEXT, noise_image

BOX = BOX_TEXT % (112, 84, 448, 364)   # valid in the 1148×868 frame of a 1600×1200 image


def engine_for(loaded, forced=True, kv_reuse=True, **cfg):
    if forced:   # the real model with turn 1 forced to BOX, so the crop path runs
        backend = ForcedBackend(loaded.model, loaded.processor, script=BOX, kv_reuse=kv_reuse)
    else:
        backend = QwenBackend(loaded.model, loaded.processor, kv_reuse=kv_reuse)
    return Engine(backend, EngineConfig(max_new_tokens=cfg.pop("max_new_tokens", 100), **cfg))


def hf_forward_logprobs(loaded, rollout):
    """Log-probs of the rollout's policy tokens from transformers' own full forward: the model
    computes its M-RoPE index itself from mm_token_type_ids and both images' grids."""
    model = loaded.model
    ids = torch.tensor([rollout.token_ids])
    mm = (ids == model.config.image_token_id).int()
    pixel_values = torch.cat([f.pixel_values for f in rollout.images])
    grid = torch.tensor([f.grid_thw for f in rollout.images])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values,
                       image_grid_thw=grid, mm_token_type_ids=mm).logits[0].float()
    policy = torch.nonzero(torch.tensor(rollout.loss_mask)).squeeze(-1)
    lp = torch.log_softmax(logits, -1)[policy - 1, ids[0, policy]]
    return lp, torch.tensor(rollout.logprobs)[policy], grid, mm


def test_event_order_and_streaming_with_the_real_model(tiny_loaded):
    events = list(engine_for(tiny_loaded).run(noise_image(1600, 1200), "What is written?", ["a", "b"]))
    kinds = []
    for e in events:
        if not (e.type == "text" and kinds and kinds[-1] == "text"):
            kinds.append(e.type)
    assert kinds == ["turn_started", "text", "turn_finished", "box", "crop", "turn_started", "text",
                     "turn_finished", "final"]
    for turn in (1, 2):
        deltas = "".join(e.text for e in events if e.type == "text" and e.turn == turn)
        done = next(e for e in events if e.type == "turn_finished" and e.turn == turn)
        assert deltas == done.text and done.new_tokens > 0
        assert done.prefill_tokens > done.visual_tokens > 0 and done.prefill_seconds > 0
    first = next(e for e in events if e.type == "turn_finished")
    assert first.stop == "box" and first.text == BOX
    assert events[-1].type == "final" and events[-1].turns == 2


def test_a_stream_stepped_from_a_new_thread_each_time_runs_as_on_one(tiny_loaded):
    # a server (gradio's queue) may resume one streaming run on a different worker thread at every
    # step; inference mode is per thread, so the KV cache made on the first must still grow on others
    from concurrent.futures import ThreadPoolExecutor

    def run():
        return engine_for(tiny_loaded).run(noise_image(1600, 1200), "What is written?", ["a", "b"])

    alone = [(e.type, getattr(e, "text", None)) for e in run()]
    stream, hopped = run(), []
    while True:
        with ThreadPoolExecutor(1) as pool:   # a fresh thread for every step
            e = pool.submit(next, stream, None).result()
        if e is None:
            break
        hopped.append((e.type, getattr(e, "text", None)))
    assert hopped == alone and hopped[-1][0] == "final" and any(kind == "crop" for kind, _ in hopped)
    assert not torch.is_inference_mode_enabled()   # nothing leaks into the consumer's thread


def test_two_images_give_the_right_grids_and_pad_counts(tiny_loaded):
    rollout = engine_for(tiny_loaded).rollout([Request(noise_image(1600, 1200), "Where?", ["a", "b"])])[0]
    assert rollout.kinds == ["grounding", "crop"] and rollout.valid_box
    lp, seen, grid, mm = hf_forward_logprobs(tiny_loaded, rollout)
    crop_event = rollout.boxes[0]
    # image 1: the overview at its 1148×868 frame; image 2: the crop as fed
    assert grid[0].tolist() == [1, 868 // 14, 1148 // 14]
    fed = rollout.images[1].image.size
    assert grid[1].tolist() == [1, fed[1] // 14, fed[0] // 14] and crop_event.valid
    pad_id = tiny_loaded.model.config.image_token_id
    assert rollout.token_ids.count(pad_id) == sum(g[1] * g[2] // 4 for g in grid.tolist()) == int(mm.sum())
    # every <|image_pad|> is an env token
    assert all(m == 0 for t, m in zip(rollout.token_ids, rollout.loss_mask) if t == pad_id)


def test_token_assembly_matches_the_processor(tiny_loaded):
    """The engine's incremental tokens == the processor's tokens for the whole conversation."""
    rollout = engine_for(tiny_loaded).rollout([Request(noise_image(1600, 1200), "Where?", ["a", "b"])])[0]
    processor = tiny_loaded.processor
    engine_prompts = Engine(None)  # only for its message builder
    from mgpo.prompts import PAPER, render

    sys_text = render(PAPER, "system", "Where?", ["a", "b"])
    msgs = [
        {"role": "system", "content": [{"type": "text", "text": sys_text}]},
        engine_prompts._user_message(render(PAPER, "grounding", "Where?", ["a", "b"]), _Img(rollout.images[0].image)),
        {"role": "assistant", "content": [{"type": "text", "text": rollout.texts[0]}]},
        engine_prompts._user_message(render(PAPER, "crop", "Where?", ["a", "b"]), _Img(rollout.images[1].image)),
    ]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    imgs = [f.image for f in rollout.images]
    w0, h0 = imgs[0].size
    out = processor(text=[text], images=imgs, return_tensors="pt",
                    images_kwargs={"size": {"shortest_edge": 28 * 28, "longest_edge": w0 * h0 * 4}})
    n_prompt = len(out["input_ids"][0])
    assert out["input_ids"][0].tolist() == rollout.token_ids[:n_prompt]
    assert out["image_grid_thw"].tolist() == [list(f.grid_thw) for f in rollout.images]


class _Img:
    def __init__(self, image):
        self.image = image


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logprobs_and_positions_match_a_full_re_encode(tiny_loaded, temperature):
    """Turn 2 decoded on turn 1's KV cache == transformers' full forward of the whole sequence."""
    sampling = Sampling(temperature=temperature, max_new_tokens=100, seed=5)
    rollout = engine_for(tiny_loaded).rollout([Request(noise_image(1600, 1200), "Where?")], sampling=sampling)[0]
    lp, seen, grid, mm = hf_forward_logprobs(tiny_loaded, rollout)
    assert len(seen) == sum(rollout.loss_mask) > len(BOX)
    torch.testing.assert_close(seen, lp, atol=2e-5, rtol=0)
    ids = torch.tensor([rollout.token_ids])
    positions, _ = tiny_loaded.model.model.get_rope_index(ids, mm, image_grid_thw=grid)
    assert positions[:, 0].T.tolist() == [list(p) for p in rollout.positions]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_reuse_gives_the_same_tokens_as_re_encoding(tiny_loaded, temperature):
    image = noise_image(1600, 1200, seed=2)
    sampling = Sampling(temperature=temperature, max_new_tokens=100, seed=11)
    runs = []
    for kv in (True, False):
        runs.append(engine_for(tiny_loaded, kv_reuse=kv).rollout([Request(image, "Read it.", ["x", "y"])],
                                                                group_size=2, sampling=sampling))
    for a, b in zip(*runs):
        assert a.token_ids == b.token_ids and a.texts == b.texts
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=2e-5, rtol=0)


def test_batched_rollouts_equal_one_by_one(tiny_loaded):
    requests = [Request(noise_image(1600, 1200, seed=3), "First?", ["a", "b"]),
                Request(noise_image(900, 700, seed=4), "A much longer second question about the picture?")]
    eng = engine_for(tiny_loaded, forced=False, max_new_tokens=10)
    batched = eng.rollout(requests, group_size=2)
    for k, req in enumerate(requests):
        single = eng.rollout([req], group_size=1)[0]
        for g in range(2):
            b = batched[k * 2 + g]
            assert b.token_ids == single.token_ids
            torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(single.logprobs), atol=2e-5, rtol=0)


def test_group_samples_share_one_prefill_and_differ(tiny_loaded):
    eng = engine_for(tiny_loaded, forced=False, max_new_tokens=24)
    stream = eng.stream([Request(noise_image(800, 600), "Q?")], group_size=4,
                        sampling=Sampling(temperature=1.0, max_new_tokens=24, seed=0))
    events = []
    while True:
        try:
            events.append(next(stream))
        except StopIteration as done:
            rollouts = done.value
            break
    first = [e for e in events if e.type == "turn_finished" and e.turn == 1]
    assert len(first) == 4 and len({e.prefill_tokens for e in first}) == 1
    assert len({tuple(r.token_ids) for r in rollouts}) > 1          # samples are independent draws
    again = eng.rollout([Request(noise_image(800, 600), "Q?")], group_size=4,
                        sampling=Sampling(temperature=1.0, max_new_tokens=24, seed=0))
    assert [r.token_ids for r in again] == [r.token_ids for r in rollouts]   # seeded: reproducible


def test_special_tokens_are_never_sampled(tiny_loaded):
    backend = QwenBackend(tiny_loaded.model, tiny_loaded.processor)
    suppressed = backend.suppressed_ids()
    tok = tiny_loaded.processor.tokenizer
    for name in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|im_start|>"):
        assert suppressed[tok.convert_tokens_to_ids(name)]
    assert not suppressed[tok.convert_tokens_to_ids("<|im_end|>")]
    # bias the model towards <|image_pad|>: it still never comes out
    head = backend.core.lm_head
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    saved = head.weight.data[pad].clone()
    try:
        head.weight.data[pad] = head.weight.data[pad] * 0 + 5.0
        rollout = Engine(backend, EngineConfig(max_new_tokens=8)).rollout(
            [Request(noise_image(600, 400), "q")], sampling=Sampling(temperature=1.0, max_new_tokens=8, seed=1))[0]
        policy = [t for t, m in zip(rollout.token_ids, rollout.loss_mask) if m]
        assert pad not in policy and rollout.final is not None
    finally:
        head.weight.data[pad] = saved


def test_three_turn_run_on_the_real_model(tiny_loaded):
    events = list(engine_for(tiny_loaded, max_turns=3).run(noise_image(1600, 1200), "What?"))
    assert [e.kind for e in events if e.type == "turn_started"][:2] == ["grounding", "refine"]
    assert events[-1].type == "final"


def test_forced_answer_lengths_keep_the_models_own_logprobs(tiny_loaded):
    """ForcedBackend(answer_tokens=n): every answer turn has exactly n tokens (EOS masked, then
    forced last); the recorded log-probs are still the unmasked policy's, as a full forward gives."""
    backend = ForcedBackend(tiny_loaded.model, tiny_loaded.processor, script=BOX, answer_tokens=7)
    sampling = Sampling(temperature=1.0, max_new_tokens=100, seed=3)
    rollouts = Engine(backend).rollout([Request(noise_image(1600, 1200), "Where?")], group_size=2, sampling=sampling)
    eos = tiny_loaded.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for rollout in rollouts:
        assert rollout.kinds == ["grounding", "crop"] and rollout.texts[0] == BOX
        policy = [t for t, m in zip(rollout.token_ids, rollout.loss_mask) if m]
        turn2 = policy[len(policy) - 7:]
        assert len(policy) == len(backend.script) + 7 and turn2[-1] == eos and eos not in turn2[:-1]
        lp, seen, _, _ = hf_forward_logprobs(tiny_loaded, rollout)
        torch.testing.assert_close(seen, lp, atol=2e-5, rtol=0)


def test_the_growing_kv_cache_holds_what_transformers_dynamic_cache_holds():
    """The engine's cache layers write appended tokens into spare room instead of concatenating
    the whole cache every step; after appends, group expansion, row selection and cropping
    they hold exactly what transformers' own DynamicLayer holds."""
    from transformers import DynamicCache, Qwen2_5_VLConfig
    from transformers.cache_utils import DynamicLayer

    from mgpo.kvcache import new_cache as _new_cache

    config = Qwen2_5_VLConfig(text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               num_key_value_heads=1, intermediate_size=64, vocab_size=300))
    ours, plain = _new_cache(config.text_config), DynamicCache()
    assert len(ours.layers) == 2 and all(isinstance(layer, DynamicLayer) for layer in ours.layers)
    assert type(ours.layers[0]) is not DynamicLayer
    g = torch.Generator().manual_seed(0)
    kv = lambda b, t: (torch.randn(b, 1, t, 16, generator=g), torch.randn(b, 1, t, 16, generator=g))  # noqa: E731

    def step(b, t):
        k, v = kv(b, t)
        for i in range(2):
            got, want = ours.update(k, v, i), plain.update(k, v, i)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    step(2, 7)                      # a prefill
    for _ in range(70):             # decoding past the first capacity (64): the buffer doubles
        step(2, 1)
    assert ours.get_seq_length() == plain.get_seq_length() == 77
    ours.batch_repeat_interleave(3), plain.batch_repeat_interleave(3)   # a group shares one prefill
    step(6, 1)
    keep = torch.tensor([0, 2, 5])
    ours.batch_select_indices(keep), plain.batch_select_indices(keep)
    step(3, 4)
    ours.crop(-2), plain.crop(-2)
    step(3, 1)
    assert ours.get_seq_length() == plain.get_seq_length() == 81
    for a, b in zip(ours.layers, plain.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)

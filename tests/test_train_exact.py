"""EXACTNESS: the training forward's log-probs of the sampled tokens equal the engine's sampling
log-probs (fp32, CPU, tiny Qwen2.5-VL) on two-image rollouts — which proves the loss mask and the
second image's M-RoPE positions are right.

A random tiny model never writes a valid box, so turn 1 is forced: :class:`bench.forced.ForcedBackend`
emits a scripted box token by token in turn 1 through the backend's public ``pick`` hook while
returning the real log-probs of those forced tokens; turn 2 samples at temperature 1.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import noise_image

from bench.forced import ForcedBackend
from train.config import TrainConfig
from train.logprobs import collate, rope_positions, token_logprobs
from train.loop import Trainer
from train.rollouts import policy_runs

BOX = '```json\n[{"bbox_2d": [28, 28, 140, 112]}]\n```'
TURN2_SAMPLED = 6   # turn 2 samples this many tokens, then is ended with <|im_end|>


def ForcedBox(model, processor):
    """Turn 1 writes ``BOX`` (all rows); turn 2 samples ``TURN2_SAMPLED`` tokens (end of turn
    masked) and then ends with ``<|im_end|>``. Every log-prob is the model's own for its token."""
    return ForcedBackend(model, processor, script=BOX, answer_tokens=TURN2_SAMPLED + 1)


def write_data(folder, sizes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (w, h) in enumerate(sizes):
        noise_image(w, h, seed=i).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "question": f"What is in region {i}?" + " Look closely." * i,
                                 "choices": ["a cat", "a dog", "a car"], "answer": "ABC"[i % 3]}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "train.jsonl")


def forced_trainer(model_dir, tmp, **extra) -> Trainer:
    """A trainer on two noise images whose turn 1 is forced to ``BOX``; one update per step (the
    checks read an on-policy update's ratio)."""
    cfg = TrainConfig(model=str(model_dir), data=write_data(tmp / "data", [(300, 260), (420, 200)]),
                      output_dir=str(tmp / "run"), group_size=2, prompts_per_step=2, max_new_tokens=len(BOX) + 4,
                      min_pixels=112 * 112, max_pixels=224 * 224, tensorboard=False, progress=False, plot=False,
                      mini_batches=1, **extra)
    return Trainer(cfg, backend_cls=ForcedBox)


@pytest.fixture(scope="module")
def forced(tiny_model_dir, tmp_path_factory):
    tr = forced_trainer(tiny_model_dir, tmp_path_factory.mktemp("exact"))
    torch.manual_seed(0)
    with torch.no_grad():                  # a non-trivial adapter, so policy ≠ base model
        for p in tr.params:
            p.normal_(0.0, 0.05)
    items, rollouts, _ = tr.rollout(step=1)
    batch = collate(rollouts, tr.backend.pad_id, tr.core.config.image_token_id, "cpu")
    return tr, rollouts, batch


def test_rollouts_have_two_images_and_a_valid_box(forced):
    tr, rollouts, batch = forced
    assert len(rollouts) == 4
    for r in rollouts:
        assert r.valid_box and r.kinds == ["grounding", "crop"] and len(r.images) == 2
        assert r.texts[0] == BOX
        assert r.images[1].grid_thw != r.images[0].grid_thw or r.images[1].image.size != r.images[0].image.size
    # the group's two samples share turn 1 (forced) and differ in turn 2 (sampled)
    assert rollouts[0].token_ids != rollouts[1].token_ids


def test_loss_mask_covers_exactly_the_sampled_tokens(forced):
    tr, rollouts, batch = forced
    image_id = tr.core.config.image_token_id
    for b, r in enumerate(rollouts):
        ids = torch.tensor(r.token_ids)
        mask = torch.tensor(r.loss_mask)
        assert (mask[ids == image_id] == 0).all()                          # every <|image_pad|> is env
        assert int((ids == image_id).sum()) == sum(img.tokens for img in r.images)
        runs = policy_runs(r.loss_mask)
        assert runs == [len(tr.backend.script), TURN2_SAMPLED + 1]          # turn 1, then turn 2 + <|im_end|>
        assert r.token_ids[-1] == tr.backend.im_end_id and r.loss_mask[-1] == 1
        # nothing after the first policy run's end until turn 2 is policy: the inserted user turn
        first_end = r.loss_mask.index(1) + runs[0]
        second_start = r.loss_mask.index(1, first_end)
        between = ids[first_end:second_start]
        assert (between == image_id).sum() == r.images[1].tokens            # the crop sits in the user turn
        assert mask[first_end:second_start].sum() == 0
        assert batch.loss_mask[b].sum() == mask.sum()                       # padding never counts
    assert len({len(r.token_ids) for r in rollouts}) > 1                   # rows of different lengths: padded


def test_positions_equal_get_rope_index_over_the_full_two_image_sequence(forced):
    tr, rollouts, batch = forced
    assert torch.equal(rope_positions(tr.core, batch), batch.position_ids)
    # the second image really gets 2-D positions (h and w differ inside it)
    r = rollouts[0]
    img2 = [k for k, t in enumerate(r.token_ids) if t == tr.core.config.image_token_id][r.images[0].tokens:]
    pos = torch.tensor([r.positions[k] for k in img2])
    assert len(set(pos[:, 1].tolist())) > 1 and len(set(pos[:, 2].tolist())) > 1


def test_training_forward_logprobs_equal_sampling_logprobs(forced):
    tr, rollouts, batch = forced
    tr.model.train()                                    # gradient checkpointing on, as in the loop
    logp, ent = token_logprobs(tr.core, batch, temperature=1.0)
    assert logp.requires_grad
    m = batch.loss_mask.bool()
    diff = (logp[m] - batch.old_logprobs[m]).abs().max().item()
    assert diff < 1e-5, diff
    assert (logp[~m] == 0).all() and (ent[m] > 0).all()
    # the gradient reaches the LoRA parameters only through policy tokens
    (logp * m).sum().backward()
    grads = [p.grad for p in tr.params]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    tr.optimizer.zero_grad(set_to_none=True)


def test_wrong_positions_or_base_model_do_not_match(forced):
    """Negative controls: the equality above is not vacuous."""
    tr, rollouts, batch = forced
    m = batch.loss_mask.bool()
    with torch.no_grad():
        flat = batch.attention_mask.cumsum(-1) - 1                         # 1-D positions, the original defect
        linear = type(batch)(**{**batch.__dict__, "position_ids": flat.clamp(min=0)[None].expand(3, -1, -1)})
        lp_linear, _ = token_logprobs(tr.core, linear)
        with tr.model.disable_adapter():
            lp_ref, _ = token_logprobs(tr.core, batch)
    assert (lp_linear[m] - batch.old_logprobs[m]).abs().max() > 1e-3
    assert (lp_ref[m] - batch.old_logprobs[m]).abs().max() > 1e-3


def test_one_update_step_runs_on_the_rollouts(forced):
    tr, rollouts, batch = forced
    items = tr.items[:2]
    before = [p.detach().clone() for p in tr.params]
    metrics = tr.update(items, rollouts)
    assert metrics["valid_box"] == 1.0 and 0 < metrics["crop_area"] < 1
    assert metrics["clip_frac"] == 0.0 and abs(metrics["ratio_max"] - 1.0) < 1e-4   # on-policy
    assert metrics["kl"] > 0                                            # the adapter was perturbed
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.params))
    # the policy moved: the sampling log-probs are now off-policy, a recomputed "old" is on-policy
    tr.cfg.old_logprobs = "rollout"
    assert abs(tr.update(items, rollouts)["ratio_max"] - 1.0) > 1e-4
    tr.cfg.old_logprobs = "recompute"
    assert abs(tr.update(items, rollouts)["ratio_max"] - 1.0) < 1e-4


def test_train_vision_puts_lora_on_the_vision_blocks_and_the_update_moves_it(tiny_model_dir, tmp_path):
    """``train_vision``: the training forward runs the vision tower on the rollouts' pixels with
    gradients, so the update moves the vision LoRA too (not only the language model's)."""
    tr = forced_trainer(tiny_model_dir, tmp_path, kl_coef=0.1, train_vision=True)
    named = {n: p for n, p in tr.model.named_parameters() if p.requires_grad}
    vision = {n for n in named if ".visual." in n}
    assert vision and vision != set(named) and all("lora_" in n for n in named)
    torch.manual_seed(0)
    with torch.no_grad():                  # policy ≠ base model, so the KL term has a gradient everywhere
        for p in tr.params:
            p.normal_(0.0, 0.05)
    items, rollouts, _ = tr.rollout(step=1)
    before = {n: named[n].detach().clone() for n in vision}
    assert tr.update(tr.items[:2], rollouts)["kl"] > 0
    assert sum(not torch.equal(before[n], named[n]) for n in vision) > len(vision) // 2

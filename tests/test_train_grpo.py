"""GRPO math and rewards on hand-made values: advantages, the clipped loss, k3 KL, the mask."""

from __future__ import annotations

import math

import pytest
import torch

from train.grpo import group_advantages, kl_k3, policy_loss
from train.rewards import Completion, RewardSpec, get, names, parse_weights, register


# ----- rewards ---------------------------------------------------------------------------------

def test_accuracy_reads_the_last_boxed_letter():
    acc = get("accuracy")
    assert acc(Completion.from_text("I think \\boxed{B} ... no, \\boxed{C}", 5), "C") == 1.0
    assert acc(Completion.from_text("\\boxed{B}", 5), "C") == 0.0
    assert acc(Completion.from_text("\\boxed{(c) red}", 5), "C") == 1.0        # case and text normalised
    assert acc(Completion.from_text("\\boxed{\\text{D}}", 5), "d") == 1.0
    assert acc(Completion.from_text("the answer is C", 5), "C") == 0.0         # no \boxed{}: no reward
    assert acc(Completion.from_text("\\boxed{F}", 5), "F") == 0.0              # F is not among 5 choices
    assert acc(Completion.from_text("\\boxed{C}", 5), None) == 0.0
    # open questions: the boxed text itself
    assert acc(Completion.from_text("\\boxed{Seven  cars.}", 0), "seven cars") == 1.0
    assert acc(Completion.from_text("\\boxed{six cars}", 0), "seven cars") == 0.0
    assert acc(Completion.from_text("\\boxed{a cat}", 0), "a cat") == 1.0
    assert acc(Completion.from_text("\\boxed{B}", 0), "(b)") == 1.0


def test_other_rewards_and_registry():
    c = Completion("x", None, None, 5, ("a", "x"), valid_box=True, final_tokens=4, max_new_tokens=16)
    assert get("valid_box")(c, "A") == 1.0
    assert get("format")(c, "A") == 0.0
    assert get("format")(Completion.from_text("\\boxed{A}", 5), "B") == 1.0
    assert get("brevity")(c, "A") == pytest.approx(0.75)
    assert {"accuracy", "format", "valid_box", "brevity"} <= set(names())
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        get("nope")
    register("test_const", lambda c, t: 0.5)
    total, parts = RewardSpec({"accuracy": 1.0, "test_const": 2.0}).score(Completion.from_text("\\boxed{A}", 4), "A")
    assert parts == {"accuracy": 1.0, "test_const": 0.5} and total == 2.0


def test_parse_weights():
    assert parse_weights(None) == {"accuracy": 1.0}
    assert parse_weights("accuracy=1, format=0.1") == {"accuracy": 1.0, "format": 0.1}
    assert parse_weights({"brevity": "2"}) == {"brevity": 2.0}
    with pytest.raises(ValueError, match="name=weight"):
        parse_weights("accuracy=lots")
    with pytest.raises(ValueError):
        RewardSpec({"nope": 1.0})


# ----- advantages ------------------------------------------------------------------------------

def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])   # two groups of 4
    a = group_advantages(r, 4, eps=1e-9)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)                  # unbiased std of [1, 0, 0, 0] = 0.5
    assert a[:4].tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std])
    assert a[4:].tolist() == [0.0] * 4                            # all equal: no signal
    assert group_advantages(r, 4, scale=False)[:4].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert group_advantages(torch.tensor([1.0, 0.0]), 1).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), 2)


# ----- loss -------------------------------------------------------------------------------------

def test_k3_kl_is_zero_at_equal_and_positive_else():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    assert kl_k3(lp, lp).tolist() == [0.0, 0.0, 0.0]
    ref = torch.tensor([-1.5, -1.0, -0.5])
    d = ref - lp
    assert kl_k3(lp, ref).tolist() == pytest.approx((torch.exp(d) - d - 1).tolist())
    assert (kl_k3(lp, ref)[:2] > 0).all()


def test_on_policy_loss_is_minus_mean_advantage_and_gradient_is_advantage():
    # ratio = 1 (logp == old): loss = −Σ A·mask / n, d loss / d logp_t = −A·mask_t / n
    logp = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-0.5, -0.5, 0.0, 0.0]], requires_grad=True)
    old = logp.detach().clone()
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    adv = torch.tensor([2.0, -1.0])
    parts = policy_loss(logp, old, adv, mask, kl_coef=0.0)
    assert parts.tokens == 3
    assert parts.loss.item() == pytest.approx(-(2 + 2 - 1) / 3)
    parts.loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([0, -2 / 3, -2 / 3, 0, 0, 1 / 3, 0, 0])
    assert parts.clip_frac == 0.0


def test_clipping_by_hand():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.5, 0.5 with advantages +1, +1, −1, −1
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    parts = policy_loss(logp, old, adv, torch.ones(1, 4), kl_coef=0.0, clip_low=0.2, clip_high=0.2)
    # A>0: min(r, clip(r)) → 1.2 (clipped), 0.5 ; A<0: max(r, clip(r)) → 1.5, 0.8 (clipped)
    expected = -(1.2 + 0.5) + (1.5 + 0.8)
    assert parts.loss.item() == pytest.approx(expected / 4, rel=1e-5)
    assert parts.clip_frac == pytest.approx(0.5)
    parts.loss.backward()
    g = logp.grad[0]
    assert g[0] == 0 and g[3] == 0            # clipped tokens carry no gradient
    assert g[1].item() == pytest.approx(-0.5 / 4) and g[2].item() == pytest.approx(1.5 / 4)


def test_mask_excludes_prompt_and_env_tokens():
    torch.manual_seed(0)
    logp = torch.randn(2, 6, requires_grad=True)
    old = logp.detach() + 0.1 * torch.randn(2, 6)
    ref = logp.detach() + 0.1 * torch.randn(2, 6)
    ent = torch.rand(2, 6)
    mask = torch.tensor([[0, 0, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0]])
    adv = torch.tensor([0.7, -1.3])
    a = policy_loss(logp, old, adv, mask, ref=ref, entropy=ent, kl_coef=0.01, entropy_coef=0.001)
    # scramble every off-mask value: nothing may change
    noise = torch.randn(2, 6) * 5 * (1 - mask)
    b = policy_loss((logp + noise).detach().requires_grad_(True), old + noise, adv, mask, ref=ref + noise,
                    entropy=ent + noise.abs(), kl_coef=0.01, entropy_coef=0.001)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)
    a.loss.backward()
    assert (logp.grad[mask == 0] == 0).all() and (logp.grad[mask == 1] != 0).all()
    # KL and entropy terms by hand
    m = mask.bool()
    kl = (torch.exp(ref - logp.detach()) - (ref - logp.detach()) - 1)[m].mean().item()
    assert a.kl == pytest.approx(kl, rel=1e-5)
    assert a.entropy == pytest.approx(ent[m].mean().item(), rel=1e-6)


def test_denominator_makes_micro_batches_add_up():
    torch.manual_seed(1)
    logp = torch.randn(4, 5)
    old = logp + 0.05 * torch.randn(4, 5)
    mask = (torch.rand(4, 5) > 0.3).long()
    adv = torch.randn(4)
    whole = policy_loss(logp, old, adv, mask, kl_coef=0.0).loss.item()
    n = mask.sum().item()
    halves = sum(policy_loss(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], kl_coef=0.0, denom=n).loss.item()
                 for i in (0, 2))
    assert halves == pytest.approx(whole, rel=1e-6)


# ----- rewards on engine rollouts (scripted stand-in model) ------------------------------------

def test_rewards_and_metrics_from_scripted_rollouts():
    from conftest import BOX_TEXT, noise_image

    from mgpo.engine import Engine, Request
    from mgpo.scripted import ScriptedBackend
    from train.data import Item
    from train.rollouts import completion, policy_runs, rollout_metrics

    def reply(sample, turn, message):
        if turn == 1:
            return BOX_TEXT % (100, 100, 400, 300) if sample % 2 == 0 else "no idea"
        return "It is red. \\boxed{B}" if sample < 2 else "\\boxed{A}"

    engine = Engine(ScriptedBackend(reply))
    img = noise_image(800, 600)
    rollouts = engine.rollout([Request(img, "What color?", ["blue", "red", "green"], "B"),
                               Request(img, "What color?", ["blue", "red", "green"], "B")], group_size=2)
    items = [Item(str(i), "What color?", ["blue", "red", "green"], "B", img) for i in range(2)]
    comps = [completion(r, 3, 64) for r in rollouts]
    spec = RewardSpec({"accuracy": 1.0, "valid_box": 0.5})
    scored = [spec.score(c, "B") for c in comps]
    assert [s[0] for s in scored] == [1.5, 1.0, 0.5, 0.0]
    assert [c.valid_box for c in comps] == [True, False, True, False]
    assert all(len(policy_runs(r.loss_mask)) == 2 for r in rollouts)
    m = rollout_metrics(rollouts, items, comps, scored, torch.tensor([s[0] for s in scored]), 2)
    assert m["accuracy"] == 0.5 and m["valid_box"] == 0.5 and m["reward"] == 0.75
    assert m["reward/valid_box"] == 0.5 and 0 < m["crop_area"] < 1 and m["zero_std_groups"] == 0


def test_dual_clip_bounds_negative_advantage_tokens_only():
    """verl's dual clip, c = 3: a token with A = −1 whose ratio grew to 5 loses 3, not 5; the same
    ratio with A = +1 is clipped by PPO as usual (1.2); off, the negative one loses 5."""
    old = torch.zeros(2, 1)
    logp = torch.full((2, 1), math.log(5.0))
    adv, mask = torch.tensor([-1.0, 1.0]), torch.ones(2, 1)
    plain = policy_loss(logp, old, adv, mask, kl_coef=0.0)
    dual = policy_loss(logp, old, adv, mask, kl_coef=0.0, dual_clip=3.0)
    assert plain.loss.item() == pytest.approx((5.0 - 1.2) / 2)
    assert dual.loss.item() == pytest.approx((3.0 - 1.2) / 2)
    assert dual.dual_clip_frac == 0.5 and plain.dual_clip_frac == 0.0
    assert dual.ratio_max == pytest.approx(5.0) and dual.ratio_min == pytest.approx(5.0)
    with pytest.raises(ValueError, match="dual_clip must be above 1"):
        policy_loss(logp, old, adv, mask, dual_clip=1.0)

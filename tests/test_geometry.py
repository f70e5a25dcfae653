import random

import pytest
from PIL import Image

from mgpo import geometry as g


@pytest.fixture(scope="module")
def image_processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(tiny_model_dir)).image_processor


def test_smart_resize_matches_the_real_processor(image_processor):
    rng = random.Random(0)
    sizes = [(1, 1), (28, 28), (27, 29), (3840, 2160), (7680, 4320), (100, 5000), (4000, 21), (1023, 767)]
    sizes += [(rng.randint(20, 4000), rng.randint(20, 4000)) for _ in range(40)]
    for w, h in sizes:
        out = image_processor(images=[Image.new("RGB", (w, h))], return_tensors="pt")
        _, gh, gw = out["image_grid_thw"][0].tolist()
        assert g.smart_resize(h, w) == (gh * 14, gw * 14), (w, h)


def test_model_frame_is_what_the_processor_feeds_after_the_paper_pre_resize(image_processor):
    for w, h in [(3840, 2160), (640, 480), (300, 200), (2000, 2000), (5000, 300)]:
        frame = g.model_frame((w, h))
        pre = Image.new("RGB", g.pre_resize((w, h)))
        _, gh, gw = image_processor(images=[pre], return_tensors="pt")["image_grid_thw"][0].tolist()
        assert frame == (gw * 14, gh * 14)
        assert frame[0] % 28 == 0 and frame[1] % 28 == 0
        assert g.MIN_PIXELS <= frame[0] * frame[1] <= g.MAX_PIXELS


def test_native_tokens_of_a_4k_image_match_perf_notes():
    assert g.native_visual_tokens((3840, 2160)) == 10_549
    assert g.visual_tokens(g.model_frame((3840, 2160))) <= 1280


def test_extreme_aspect_ratio_is_refused_clearly():
    with pytest.raises(ValueError, match="aspect ratio"):
        g.model_frame((30000, 10))


# the paper's validity rules, in a 1000×800 model frame
VALIDITY = [
    ((100, 100, 300, 300), True, "ok"),
    ((300, 100, 100, 300), False, "reversed"),
    ((100, 100, 100, 300), False, "reversed"),
    ((-1, 100, 300, 300), False, "negative"),
    ((100, 100, 1001, 300), False, "outside"),
    ((100, 100, 300, 801), False, "outside"),
    ((0, 0, 1000, 800), True, "ok"),
    ((100, 100, 128, 300), False, "too small"),   # width 28 is not > 28
    ((100, 100, 129, 300), True, "ok"),           # width 29
    ((0, 0, 999, 29), True, "ok"),                # aspect 34
    ((0, 0, 990, 9), False, "too small"),
    (None, False, "no box"),
]


@pytest.mark.parametrize("box, valid, why", VALIDITY)
def test_paper_validity_table(box, valid, why):
    ok, reason = g.check_box(box, 1000, 800)
    assert ok is valid and g.is_valid_box(box, 1000, 800) is valid
    assert why in reason


def test_aspect_ratio_rule():
    assert not g.is_valid_box((0, 0, 3000, 29), 4000, 4000)   # 103:1
    assert g.is_valid_box((0, 0, 2871, 29), 4000, 4000)       # 99:1


def test_box_rules_say_what_they_did():
    frame = (1000, 800)
    slightly_out = (900, 700, 1040, 830)
    assert not g.decide_box(slightly_out, frame, "paper").valid
    clamped = g.decide_box(slightly_out, frame, "clamp")
    assert clamped.valid and clamped.box == (900, 700, 1000, 800) and clamped.adjusted == ("clamped",)
    assert not g.decide_box((900, 700, 1500, 830), frame, "clamp").valid     # far out: not clamped
    tiny = (500, 400, 510, 405)
    assert not g.decide_box(tiny, frame, "paper").valid
    padded = g.decide_box(tiny, frame, "pad")
    assert padded.valid and padded.adjusted == ("padded",)
    x1, y1, x2, y2 = padded.box
    assert x2 - x1 == 112 and y2 - y1 == 112 and x1 <= 500 and x2 >= 510
    corner = g.decide_box((0, 0, 5, 5), frame, "pad").box
    assert corner == (0, 0, 112, 112)
    both = g.decide_box((990, 790, 1010, 805), frame, "clamp+pad")
    assert both.valid and both.adjusted == ("clamped", "padded") and both.box[2] == 1000
    assert g.decide_box((300, 2, 30, 40), frame, "clamp+pad").valid is False
    with pytest.raises(ValueError):
        g.decide_box(tiny, frame, "bogus")


def test_mapping_to_the_original_follows_eq3_and_round_trips():
    rng = random.Random(3)
    for _ in range(300):
        W, H = rng.randint(200, 9000), rng.randint(200, 9000)
        if max(W / H, H / W) > 150:
            continue
        frame = g.model_frame((W, H))
        x1, y1 = rng.randint(0, frame[0] - 30), rng.randint(0, frame[1] - 30)
        box = (x1, y1, rng.randint(x1 + 29, frame[0]), rng.randint(y1 + 29, frame[1]))
        ori = g.to_region(box, frame, (0, 0, W, H))
        sx, sy = W / frame[0], H / frame[1]
        assert abs(ori[0] - box[0] * sx) < 1 and abs(ori[2] - box[2] * sx) < 1
        assert abs(ori[1] - box[1] * sy) < 1 and abs(ori[3] - box[3] * sy) < 1
        assert 0 <= ori[0] < ori[2] <= W and 0 <= ori[1] < ori[3] <= H
        back = g.to_frame(ori, frame, (0, 0, W, H))
        assert all(abs(a - b) <= max(1 / sx, 1 / sy) + 1e-6 for a, b in zip(back, box))


def test_boxes_inside_a_crop_map_through_its_region():
    region = (1000, 500, 1500, 900)          # a crop of the original
    frame = (700, 560)                        # fed (enlarged) size of that crop
    assert g.to_region((0, 0, 700, 560), frame, region) == region
    assert g.to_region((350, 280, 700, 560), frame, region) == (1250, 700, 1500, 900)


def test_small_crops_are_enlarged_and_large_ones_shrunk():
    original = Image.new("RGB", (8000, 6000), "white")
    small = g.prepare(original, (100, 100, 300, 250))
    assert small.source_size == (200, 150) and small.enlarged
    assert small.frame[0] * small.frame[1] >= g.MIN_PIXELS and small.visual_tokens >= 256
    assert small.image.size == small.frame
    big = g.prepare(original, (0, 0, 6000, 5000))
    assert not big.enlarged and big.visual_tokens <= 1280
    overview = g.prepare(original)
    assert overview.region == (0, 0, 8000, 6000)


def test_crop_is_cut_from_the_full_resolution_original():
    original = Image.new("RGB", (4000, 3000), "black")
    original.paste((255, 0, 0), (2000, 1500, 2100, 1600))   # a 100×100 red patch
    crop = g.prepare(original, (2000, 1500, 2100, 1600))
    r, gg, b = crop.image.convert("RGB").getpixel((crop.frame[0] // 2, crop.frame[1] // 2))
    assert r > 200 and gg < 50 and b < 50

"""Draw the demo's example scenes: large synthetic pictures with one small detail to read.

Each scene is 2400×1600 or larger and holds a few words or digits only ~1 % of the picture
wide. Qwen2.5-VL sees the whole picture at ≤ 1280·28·28 pixels (about 1232×812 here), where
that text is a few pixels tall; the crop MGPO asks for brings it back to full size. Everything
is drawn with PIL shapes and Pillow's bundled font, from a fixed seed, so the files are the
project's own work (see README.md in this folder for the licence).

    python examples/make_examples.py            # rewrites examples/*.jpg and examples.json
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def gradient(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    w, h = size
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    rows = (1 - t) * np.array(top)[None, None] + t * np.array(bottom)[None, None]
    return Image.fromarray(np.repeat(rows, w, axis=1).astype(np.uint8))


def grain(img: Image.Image, amount: float, seed: int) -> Image.Image:
    """Add mild film grain so the scene is not flat colour (keeps JPEGs honest but small)."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(img).astype(np.float32)
    arr += rng.normal(0.0, amount, arr.shape[:2])[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def centred_text(draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, size: int, fill) -> None:
    f = font(size)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=f)
    draw.text((centre[0] - (x1 - x0) / 2 - x0, centre[1] - (y1 - y0) / 2 - y0), text, font=f, fill=fill)


# ----- scenes ------------------------------------------------------------------------------------


def parking(seed: int = 1) -> Image.Image:
    """A car park seen from above-ish; one blue car's plate reads LB MA 864."""
    rnd = random.Random(seed)
    W, H = 2400, 1600
    img = gradient((W, H), (118, 122, 128), (92, 96, 101))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, W, 260), fill=(96, 140, 88))                   # verge
    for i in range(40):                                                # shrubs on the verge
        x, y, r = rnd.randint(0, W), rnd.randint(40, 220), rnd.randint(30, 70)
        d.ellipse((x - r, y - r, x + r, y + r), fill=(60 + rnd.randint(0, 30), 110 + rnd.randint(0, 30), 60))
    for row, y in enumerate((430, 1050)):
        for k in range(9):
            x = 90 + k * 255
            d.line((x, y - 150, x, y + 260), fill=(235, 235, 225), width=6)   # bay lines
            if (row, k) in ((0, 3), (1, 6)):
                continue                                                       # empty bays
            colour = (40, 80, 170) if (row, k) == (1, 2) else rnd.choice(
                [(180, 40, 40), (220, 220, 220), (30, 30, 34), (150, 150, 155), (200, 170, 60), (60, 110, 80)])
            cx, cy = x + 128, y + 55
            d.rounded_rectangle((cx - 85, cy - 170, cx + 85, cy + 170), 40, fill=colour, outline=(20, 20, 20), width=4)
            d.rounded_rectangle((cx - 65, cy - 110, cx + 65, cy - 30), 18, fill=(60, 80, 100))   # windscreen
            d.rounded_rectangle((cx - 60, cy + 60, cx + 60, cy + 120), 14, fill=(60, 80, 100))   # rear window
            plate = "LB MA 864" if (row, k) == (1, 2) else f"{rnd.choice('ABKMT')}{rnd.choice('CHLR')} {rnd.randint(100, 999)}"
            d.rectangle((cx - 44, cy + 140, cx + 44, cy + 160), fill=(245, 245, 240), outline=(10, 10, 10))
            centred_text(d, (cx, cy + 150), plate, 15, (10, 10, 10))
    d.rectangle((0, 700, W, 800), fill=(84, 88, 93))                  # driving lane
    for x in range(0, W, 180):
        d.rectangle((x, 745, x + 90, 755), fill=(230, 200, 60))
    return grain(img.filter(ImageFilter.GaussianBlur(0.6)), 4, seed)


def harbour(seed: int = 2) -> Image.Image:
    """A harbour at dusk; the small red boat's hull number is 4721."""
    rnd = random.Random(seed)
    W, H = 2600, 1700
    img = gradient((W, H), (250, 190, 140), (120, 150, 190))
    d = ImageDraw.Draw(img)
    d.ellipse((1800, 180, 2000, 380), fill=(255, 230, 170))            # sun
    sea_top = 980
    sea = gradient((W, H - sea_top), (70, 110, 150), (30, 60, 95))
    img.paste(sea, (0, sea_top))
    for _ in range(400):                                               # wave glints
        x, y = rnd.randint(0, W), rnd.randint(sea_top + 10, H)
        d.line((x, y, x + rnd.randint(20, 70), y), fill=(150, 180, 205), width=2)
    for k in range(7):                                                 # hills and houses
        x = k * 420 - 100
        d.polygon([(x, sea_top), (x + 260, 760 - rnd.randint(0, 120)), (x + 560, sea_top)], fill=(90, 110, 95))
    for k in range(22):
        x, h = 40 + k * 118, rnd.randint(70, 160)
        d.rectangle((x, sea_top - h, x + 90, sea_top), fill=rnd.choice([(235, 225, 200), (210, 120, 90), (240, 240, 235), (190, 200, 215)]))
        d.polygon([(x - 8, sea_top - h), (x + 45, sea_top - h - 50), (x + 98, sea_top - h)], fill=(150, 70, 60))
        for wy in range(sea_top - h + 20, sea_top - 20, 40):
            d.rectangle((x + 15, wy, x + 35, wy + 18), fill=(80, 90, 110))
            d.rectangle((x + 55, wy, x + 75, wy + 18), fill=(80, 90, 110))
    d.rectangle((0, sea_top - 10, W, sea_top + 30), fill=(120, 110, 100))  # quay
    boats = [(300, 1250, (240, 240, 240), "2210"), (900, 1400, (30, 90, 60), "3306"),
             (1580, 1180, (200, 40, 40), "4721"), (2150, 1450, (240, 200, 60), "1187")]
    for bx, by, colour, number in boats:
        d.polygon([(bx - 170, by - 40), (bx + 170, by - 40), (bx + 130, by + 40), (bx - 130, by + 40)], fill=colour, outline=(20, 20, 20))
        d.rectangle((bx - 60, by - 110, bx + 50, by - 40), fill=(235, 235, 230), outline=(40, 40, 40))
        d.line((bx + 10, by - 110, bx + 10, by - 300), fill=(60, 50, 40), width=6)
        centred_text(d, (bx + 100, by - 10), number, 17, (250, 250, 250) if sum(colour) < 450 else (20, 20, 20))
    return grain(img.filter(ImageFilter.GaussianBlur(0.5)), 3, seed)


def station(seed: int = 3) -> Image.Image:
    """A station concourse; the small departure board says the train to Orla leaves from platform 7."""
    rnd = random.Random(seed)
    W, H = 2400, 1600
    img = gradient((W, H), (200, 205, 212), (150, 148, 140))
    d = ImageDraw.Draw(img)
    for k in range(13):                                                # roof trusses
        x = k * 200
        d.line((x, 0, W / 2, 520), fill=(120, 125, 135), width=5)
    d.rectangle((0, 520, W, 560), fill=(110, 112, 118))
    d.rectangle((0, 1100, W, H), fill=(170, 160, 145))                 # floor
    for k in range(30):
        d.line((k * 90 - 400, H, W / 2 + (k - 15) * 8, 1100), fill=(150, 140, 128), width=2)
    for k in range(6):                                                 # pillars
        x = 150 + k * 420
        d.rectangle((x, 560, x + 60, 1100), fill=(95, 100, 110))
    for _ in range(60):                                                # people
        x, y = rnd.randint(0, W), rnd.randint(1050, 1500)
        s = 0.6 + (y - 1050) / 450
        c = rnd.choice([(60, 60, 70), (150, 40, 40), (40, 70, 130), (200, 180, 120), (80, 120, 80)])
        d.ellipse((x - 14 * s, y - 150 * s, x + 14 * s, y - 122 * s), fill=(230, 190, 160))
        d.rounded_rectangle((x - 24 * s, y - 120 * s, x + 24 * s, y), 10, fill=c)
    bx, by = 1690, 640                                                 # departure board
    d.rectangle((bx, by, bx + 300, by + 150), fill=(20, 24, 32), outline=(70, 70, 80), width=4)
    centred_text(d, (bx + 150, by + 18), "DEPARTURES", 14, (255, 200, 60))
    rows = [("09:12", "Brenn", "3"), ("09:20", "Orla", "7"), ("09:31", "Kessel", "2"), ("09:45", "Vand", "5")]
    for i, (time_, town, platform) in enumerate(rows):
        y = by + 45 + i * 26
        for x, text in ((bx + 14, time_), (bx + 90, town), (bx + 250, platform)):
            d.text((x, y), text, font=font(15), fill=(255, 210, 90))
    d.rectangle((300, 620, 800, 760), fill=(30, 60, 120))              # big sign for scale
    centred_text(d, (550, 690), "CENTRAL", 80, (255, 255, 255))
    return grain(img.filter(ImageFilter.GaussianBlur(0.5)), 3, seed)


def clocktower(seed: int = 4) -> Image.Image:
    """A town square; the small clock on the far tower shows ten past four (4:10)."""
    rnd = random.Random(seed)
    W, H = 2000, 2600
    img = gradient((W, H), (150, 195, 235), (225, 235, 245))
    d = ImageDraw.Draw(img)
    for _ in range(9):                                                 # clouds
        x, y = rnd.randint(0, W), rnd.randint(80, 700)
        for j in range(5):
            r = rnd.randint(40, 90)
            d.ellipse((x + j * 50 - r, y - r, x + j * 50 + r, y + r), fill=(248, 250, 252))
    ground = 1900
    for k in range(9):                                                 # facades
        x, h = k * 230 - 30, rnd.randint(500, 900)
        colour = rnd.choice([(225, 200, 160), (200, 150, 120), (235, 225, 205), (180, 190, 170)])
        d.rectangle((x, ground - h, x + 220, ground), fill=colour, outline=(120, 100, 80))
        for wy in range(ground - h + 40, ground - 120, 110):
            for wx in (x + 30, x + 125):
                d.rectangle((wx, wy, wx + 60, wy + 70), fill=(90, 110, 130))
    tx, ty = 1350, 700                                                 # the tower
    d.rectangle((tx, ty, tx + 120, ground - 600), fill=(170, 150, 130), outline=(110, 90, 70), width=3)
    d.polygon([(tx - 15, ty), (tx + 60, ty - 160), (tx + 135, ty)], fill=(90, 60, 50))
    cx, cy, r = tx + 60, ty + 70, 26
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(250, 248, 240), outline=(40, 40, 40), width=3)
    for k in range(12):
        a = math.radians(k * 30)
        d.line((cx + 0.8 * r * math.sin(a), cy - 0.8 * r * math.cos(a), cx + r * math.sin(a), cy - r * math.cos(a)), fill=(40, 40, 40), width=2)
    hour, minute = 4, 10
    ah = math.radians((hour % 12 + minute / 60) * 30)
    am = math.radians(minute * 6)
    d.line((cx, cy, cx + 0.5 * r * math.sin(ah), cy - 0.5 * r * math.cos(ah)), fill=(20, 20, 20), width=4)
    d.line((cx, cy, cx + 0.85 * r * math.sin(am), cy - 0.85 * r * math.cos(am)), fill=(20, 20, 20), width=2)
    d.rectangle((0, ground, W, H), fill=(185, 175, 160))               # square
    for k in range(0, W, 60):
        d.line((k, ground, k - 300, H), fill=(165, 155, 140), width=2)
    d.ellipse((700, 2150, 1300, 2400), fill=(120, 150, 170), outline=(150, 140, 130), width=12)  # fountain
    for _ in range(30):                                                # pigeons
        x, y = rnd.randint(0, W), rnd.randint(ground + 60, H - 40)
        d.ellipse((x, y, x + 22, y + 12), fill=(110, 110, 120))
    return grain(img.filter(ImageFilter.GaussianBlur(0.5)), 3, seed)


EXAMPLES = [
    ("parking.jpg", parking, "What is the licence plate number of the blue car?",
     ["LB MA 864", "LB MA 846", "LR MA 864", "KB MA 864", "The blue car has no plate"], "A"),
    ("harbour.jpg", harbour, "What number is painted on the hull of the red boat?",
     ["2210", "4127", "4721", "3306", "The red boat has no number"], "C"),
    ("station.jpg", station, "From which platform does the train to Orla leave?",
     ["2", "3", "5", "7", "The board does not list Orla"], "D"),
    ("clocktower.jpg", clocktower, "What time does the clock on the tower show?",
     ["2:20", "4:10", "10:20", "12:50", "There is no clock"], "B"),
]


def main() -> None:
    items = []
    for name, draw, question, choices, answer in EXAMPLES:
        img = draw()
        img.save(HERE / name, quality=88, optimize=True)
        print(f"{name}: {img.width}×{img.height}, {(HERE / name).stat().st_size / 1e3:.0f} kB")
        items.append({"image": name, "question": question, "choices": choices, "answer": answer})
    (HERE / "examples.json").write_text(json.dumps(items, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mgpo import geometry
from mgpo.images import ImageError, load_image


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.jpg"
    p.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match="not an image"):
        load_image(p)


def test_truncated_file(tmp_path):
    data = _jpeg(Image.fromarray((np.random.RandomState(0).rand(400, 400, 3) * 255).astype("uint8")))
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(p)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width``×``height`` (a decompression bomb's signature)."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


@pytest.mark.parametrize("size", [(30000, 30000), (20000, 20000)])
def test_decompression_bomb_is_refused_before_decoding(size):
    with pytest.raises(ImageError, match="too large|limit"):
        load_image(_bomb_png(*size))


def test_pixel_limit_is_configurable():
    img = Image.new("RGB", (3000, 3000))
    with pytest.raises(ImageError, match="9 MP; the limit is 4 MP"):
        load_image(img, max_pixels=4_000_000)


@pytest.mark.parametrize(
    "mode, make",
    [
        ("RGBA", lambda: Image.new("RGBA", (64, 48), (255, 0, 0, 0))),
        ("P", lambda: Image.new("RGB", (64, 48), (0, 0, 255)).convert("P")),
        ("L", lambda: Image.new("L", (64, 48), 128)),
        ("LA", lambda: Image.new("LA", (64, 48), (10, 255))),
        ("CMYK", lambda: Image.new("CMYK", (64, 48), (0, 255, 255, 0))),
        ("I;16", lambda: Image.fromarray(np.full((48, 64), 65535, dtype=np.uint16))),
        ("I", lambda: Image.fromarray(np.full((48, 64), 40000, dtype=np.int32), "I")),
        ("F", lambda: Image.fromarray(np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64))),
        ("1", lambda: Image.new("1", (64, 48), 1)),
    ],
)
def test_odd_modes_become_rgb(mode, make):
    img = load_image(make())
    assert img.mode == "RGB" and img.size == (64, 48)


def test_mode_conversions_keep_the_content():
    assert load_image(Image.new("RGBA", (8, 8), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)  # transparent → white
    assert load_image(Image.new("CMYK", (8, 8), (0, 255, 255, 0))).getpixel((0, 0))[0] > 200            # red
    white16 = load_image(Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)))
    assert white16.getpixel((0, 0)) == (255, 255, 255)                                                  # not clipped
    mid16 = load_image(Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)))
    assert 120 < mid16.getpixel((0, 0))[0] < 135


def test_16_bit_png_file(tmp_path):
    p = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16)).save(p)
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (30, 20) and img.getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_applied_and_boxes_map_to_what_the_user_sees(tmp_path):
    # stored 400×200 (landscape) with a red mark at the stored top-left; EXIF 6 = rotate 90° CW to display
    stored = Image.new("RGB", (400, 200), "white")
    stored.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rotated.jpg"
    stored.save(p, exif=exif.tobytes(), quality=95)
    img = load_image(p)
    assert img.size == (200, 400)                      # portrait, as a viewer shows it
    r, gg, b = img.getpixel((190, 10))                  # the mark is now at the top-right
    assert r > 200 and gg < 60
    # a box around the mark in the model frame maps to the mark in the displayed image
    frame = geometry.model_frame(img.size)
    box_frame = tuple(int(v) for v in geometry.to_frame((160, 0, 200, 40), frame, (0, 0, *img.size)))
    ori = geometry.to_region(box_frame, frame, (0, 0, *img.size))
    crop = img.crop(ori)
    assert np.asarray(crop)[..., 0].mean() > 180 and np.asarray(crop)[..., 1].mean() < 120


def test_bytes_and_file_objects():
    data = _jpeg(Image.new("RGB", (50, 40), "green"))
    assert load_image(data).size == (50, 40)
    assert load_image(io.BytesIO(data)).size == (50, 40)
    with pytest.raises(ImageError):
        load_image(b"")

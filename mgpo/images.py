"""Opening user images safely: one RGB picture as the user sees it, or a clear error. Pure."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_IMAGE_PIXELS = 16384 * 16384  # 268 MP: anything larger is refused before decoding


class ImageError(ValueError):
    """An image that cannot be used, with a message meant for the person who supplied it."""


def _describe(source) -> str:
    if isinstance(source, (str, Path)):
        return f"'{source}'"
    return "the image"


def load_image(source, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``source`` (a path, bytes, a file object or a PIL image) as an 8-bit RGB image.

    EXIF orientation is applied (boxes then refer to the picture as the user sees it);
    transparency is flattened on white; palette, grayscale, CMYK and 16-bit/float images are
    converted. Corrupt, truncated, empty and oversized (decompression-bomb) files raise
    :class:`ImageError` before any large allocation.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            if isinstance(source, (str, Path)):
                path = Path(source)
                if not path.is_file():
                    raise ImageError(f"{name} does not exist or is not a file")
                if path.stat().st_size == 0:
                    raise ImageError(f"{name} is empty (0 bytes)")
                fp = path.open("rb")
            elif isinstance(source, (bytes, bytearray)):
                if not source:
                    raise ImageError("the image is empty (0 bytes)")
                fp = io.BytesIO(source)
            else:
                fp = source
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
        except ImageError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            if isinstance(e, UnidentifiedImageError):
                raise ImageError(f"{name} is not an image this program can read (corrupt or unknown format)") from None
            raise ImageError(f"{name} is too large to open safely") from None
        except OSError as e:
            raise ImageError(f"{name} could not be read: {e}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name} has no pixels ({w}×{h})")
    if w * h > max_pixels:
        raise ImageError(
            f"{name} is {w}×{h} = {w * h / 1e6:.0f} MP; the limit is {max_pixels / 1e6:.0f} MP"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            img = ImageOps.exif_transpose(img)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError … for broken data
        raise ImageError(f"{name} is damaged or truncated and could not be decoded ({e})") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")

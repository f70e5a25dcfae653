"""What both tabs share: the page's style, the loop that streams a run into the page, and the
upload and input helpers (a visitor's mistake becomes a message, never a traceback)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr
from PIL import Image

from mgpo.engine import InputError
from mgpo.images import ImageError, load_image
from mgpo.model import ModelLoadError
from mgpo.playground.release import ReleaseError
from mgpo.prompts import LETTERS
from mgpo.transcript import Transcript

log = logging.getLogger("mgpo.app")

MAX_UPLOAD_PIXELS = 8192 * 8192   # 67 MP: larger uploads are refused with a message


CSS = """
.answer textarea { font-size: 1.25rem !important; font-weight: 600; }
.answer-mgpo textarea { background: #fff7ed !important; border-color: #fb923c !important; }
#summary { min-height: 1.5em; }
"""
THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="pink")


ALL_PARTS = frozenset({"chat", "boxes", "crops", "answer", "stats"})


def follow(view: Transcript, stream, update_every: float):
    """Apply a run's ``(run, event)`` stream to ``view`` and yield the set of page parts to
    refresh: at once for a box, a crop or an answer, at most every ``update_every`` seconds while
    only the text grows; the last set holds every part plus ``"done"`` (``view.status`` then says
    "Done in …"). A refused or failed run yields its message (a ``str``) instead and ends. Both
    tabs stream through this loop."""
    t0, last, pending = time.perf_counter(), 0.0, {"boxes"}   # the first update shows the image
    try:
        for run_name, event in stream:
            pending |= view.apply(run_name, event)
            if pending == {"chat"} and time.perf_counter() - last < update_every:
                continue
            yield pending
            last, pending = time.perf_counter(), set()
    except (InputError, ImageError, ModelLoadError, ReleaseError) as e:   # the request was refused
        yield str(e)
    except Exception as e:                                                  # never a traceback on the page
        log.exception("model run failed")
        yield f"The model run failed ({type(e).__name__}: {str(e)[:300]}). Try again, or with other settings."
    else:
        view.status = f"Done in {time.perf_counter() - t0:.1f} s."
        yield ALL_PARTS | {"done"}
    finally:
        stream.close()


def keep_upload_path(image: gr.Image) -> gr.Image:
    """Make ``image`` hand the uploaded file's path on without opening it, so that a non-image or
    gigantic upload reaches the handler and gets a specific message there (``gr.Image`` would open
    it with PIL first and fail with a bare "Error"). Patched on the instance: a ``gr.Image``
    subclass would make Gradio write an ``app.pyi`` stub next to this file."""
    plain = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return plain(payload)

    image.preprocess = preprocess
    return image


def int_or_none(v) -> int | None:
    return None if v is None or v == "" else int(v)


def choice_list(choices: str | None) -> list[str]:
    """The choices as the transcript lists them (the engine validates them)."""
    return [c.strip() for c in (choices or "").splitlines() if c.strip()][: len(LETTERS)]


def open_upload(path) -> Image.Image:
    """The uploaded file as an RGB image, or ImageError with what is wrong with it."""
    if not path:
        raise ImageError("add an image first: upload, paste or drag one, or click an example below")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageError(f"the upload could not be read ({e.strerror})") from None
    try:
        return load_image(data, MAX_UPLOAD_PIXELS)
    except ImageError as e:
        raise ImageError(f"that upload can't be used: {e}") from None


def warn(message: str) -> str:
    """Show ``message`` as a toast and return it for the page (a visitor's mistake, not a crash)."""
    message = message[:1].upper() + message[1:]
    gr.Warning(message)
    return f"⚠️ {message}"


def refusal(message: str):
    """Outputs for a request that cannot run: the reason in the status line, the rest unchanged."""
    return (warn(message),) + (gr.skip(),) * 7

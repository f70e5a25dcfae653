"""The demo in a real browser: Playwright driving Debian's chromium (apt: chromium chromium-driver).

Screenshots land in ``test-artifacts/`` at the repository root. Run with ``pytest -m slow
tests/test_browser.py``; skipped when /usr/bin/chromium (or $CHROMIUM) is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import app
from mgpo.playground.release import Release
from mgpo.playground.world import SPLITS
from test_app import CHOICES, PARKING, free_port, scripted_engine, serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium chromium-driver)", allow_module_level=True)


def loaded_width(img) -> int:
    """The natural width of an ``<img>`` once it has loaded (a busy machine can show the element
    before its picture arrives)."""
    img.wait_for()
    img.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(), timeout=30_000)
    return img.evaluate("img => img.naturalWidth")


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = context.new_page()
    yield pg
    context.close()


@pytest.fixture(scope="module")
def scripted_url():
    demo = app.build_demo(scripted_engine(delay=0.01, chunk=2))
    url = serve(demo)
    yield url
    demo.close()


def readme_shot(page, name: str) -> None:
    """A full-page screenshot in test-artifacts/, and a small JPEG of its top (readme-NAME.jpg)
    for docs/images/, the README's pictures: copy it there when the page changes."""
    from PIL import Image

    ARTIFACTS.mkdir(exist_ok=True)
    full = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(full), full_page=True)
    with Image.open(full) as img:
        top = img.convert("RGB").crop((0, 0, img.width, min(img.height, 1250)))
        top.thumbnail((960, 960))
        top.save(ARTIFACTS / f"readme-{name}.jpg", quality=72, optimize=True)


def answer_of(pg, which: str = "mgpo") -> str:
    return pg.locator(f"#answer-{which} textarea").input_value()


def test_example_run_shows_the_box_the_crop_and_the_answer(page, scripted_url):
    page.goto(scripted_url)
    page.get_by_text("What is the licence plate number of the blue car?").first.click()   # the example row
    page.wait_for_function("document.querySelector('#question textarea').value.includes('licence plate')")
    assert page.locator("#choices textarea").input_value() == CHOICES
    page.locator("#image img").first.wait_for()
    page.locator("#compare input").check()
    page.locator("#run").click()
    page.get_by_text("Turn 1 · find the key area on the full image").first.wait_for(timeout=30_000)
    page.wait_for_function("document.querySelector('#answer-mgpo textarea').value.length > 0", timeout=60_000)
    assert answer_of(page) == "A — LB MA 864"
    page.wait_for_function("document.querySelector('#answer-base textarea').value.length > 0", timeout=60_000)
    assert answer_of(page, "base") == "B — LB MA 846"
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done in')", timeout=30_000)
    boxes = page.locator("#boxes img").first
    boxes.wait_for()
    assert loaded_width(boxes) == 1280
    crop = page.locator("#crops img").first
    crop.wait_for()
    assert loaded_width(crop) > 200
    assert page.get_by_text("Cropping region (").count() >= 1
    assert page.locator("#stats").get_by_text("grounding").count() >= 1
    readme_shot(page, "app")


def test_stop_cancels_and_the_next_run_works(page, scripted_url):
    page.goto(scripted_url)
    page.locator("#image input[type=file]").set_input_files(str(PARKING))
    page.locator("#image img").first.wait_for()
    page.locator("#question textarea").fill("slow: what does the plate say?")
    page.locator("#run").click()
    page.get_by_text("Looking very very").first.wait_for(timeout=30_000)
    page.locator("#stop").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('Stopped')", timeout=10_000)
    time.sleep(1.0)
    assert answer_of(page) == ""
    assert page.get_by_text("Turn 2 ·").count() == 0
    page.locator("#question textarea").fill("What is the licence plate number of the blue car?")
    page.locator("#choices textarea").fill(CHOICES)
    page.locator("#run").click()
    page.wait_for_function("document.querySelector('#answer-mgpo textarea').value.length > 0", timeout=30_000)
    assert answer_of(page) == "A — LB MA 864"


def test_a_broken_upload_shows_a_message(page, scripted_url, tmp_path):
    data = PARKING.read_bytes()
    (tmp_path / "broken.jpg").write_bytes(data[: len(data) // 4])
    page.goto(scripted_url)
    page.locator("#image input[type=file]").set_input_files(str(tmp_path / "broken.jpg"))
    page.locator("#question textarea").fill("What is written here?")
    time.sleep(1.0)
    page.locator("#run").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('damaged or truncated')", timeout=20_000)
    assert page.get_by_text("Error", exact=True).count() == 0     # no red error badges on the outputs
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-bad-image.png"))


def launch_app(args: list[str]):
    """``python app.py ARGS`` on a free port; returns (process, url) once it answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MGPO_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app.py exited: {proc.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("app.py did not start within 90 s")


def stop(proc) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_app_py_with_a_missing_model_explains_how_to_fix_it(page, tmp_path):
    proc, url = launch_app(["--model", str(tmp_path / "no-such-model"), "--playground", "off"])
    try:
        page.goto(url)
        page.get_by_text("the model could not be loaded").first.wait_for(timeout=30_000)
        assert "Could not load the model" in page.locator("#load-error textarea").input_value()
        assert page.get_by_text("python -m mgpo.tiny /tmp/tiny").count() >= 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app-model-missing.png"), full_page=True)
    finally:
        out = stop(proc)
    assert "Traceback" not in out


def test_app_py_with_the_tiny_model_runs_an_example(page, tiny_model_dir):
    proc, url = launch_app(["--model", str(tiny_model_dir)])
    try:
        page.goto(url)
        page.get_by_text("What number is painted on the hull of the red boat?").first.click()
        page.locator("#image img").first.wait_for()
        page.get_by_text("Advanced").first.click()
        page.get_by_label("Max new tokens per turn").first.fill("32")
        page.get_by_label("Max new tokens per turn").first.press("Enter")
        page.locator("#run").click()
        page.wait_for_function("document.querySelector('#status').innerText.includes('Done in')", timeout=120_000)
        assert answer_of(page) != ""
        assert page.get_by_text("Turn 2 ·").count() >= 1
        assert page.get_by_text(str(tiny_model_dir)).count() >= 1     # the header names the model
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app-tiny.png"), full_page=True)
    finally:
        out = stop(proc)
    assert "Traceback" not in out


@pytest.fixture(scope="module")
def playground_url(fake_release):
    """The app with the fake playground release (its tiny real model and two LoRA checkpoints)."""
    demo = app.build_demo(scripted_engine(delay=0.01, chunk=2), playground=Release.load(fake_release))
    url = serve(demo)
    yield url
    demo.close()


def test_playground_tab_runs_a_checkpoint_on_a_new_scene(page, playground_url):
    page.goto(playground_url)
    page.get_by_role("tab", name="Playground").click()
    page.locator("#pg-run").wait_for()
    first = page.locator("#pg-seed input").input_value()
    page.locator("#pg-new").click()
    page.wait_for_function(f"document.querySelector('#pg-seed input').value !== '{first}'", timeout=20_000)
    seed = int(page.locator("#pg-seed input").input_value())
    lo, hi = SPLITS["test"]
    assert lo <= seed < hi
    page.wait_for_function(f"document.querySelector('#pg-scene').innerText.includes('Seed {seed}')", timeout=20_000)
    assert "Which way do the stripes on the" in page.locator("#pg-scene").inner_text()
    page.locator("#pg-checkpoint").get_by_text("early (step 10)").click()
    assert page.locator("#pg-checkpoint").get_by_label("early (step 10)").is_checked()
    page.locator("#pg-run").click()
    page.wait_for_function("document.querySelector('#pg-status').innerText.includes('Done in')", timeout=120_000)
    assert "Checkpoint early (step 10)" in page.locator("#pg-status").inner_text()
    assert page.locator("#pg-answer textarea").input_value() != ""
    result = page.locator("#pg-result").inner_text()
    assert result.startswith(("✓ Right", "✗ Wrong")) and "the answer is" in result or "Right" in result
    boxes = page.locator("#pg-boxes img").first
    boxes.wait_for()
    assert loaded_width(boxes) == 1024   # the truth-vs-model drawing
    assert page.get_by_text("Turn 1 · find the key area on the full image").count() >= 1
    assert page.locator("#pg-summary").get_by_text("after · mgpo").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-tab.png"), full_page=True)
    # Compare checkpoints: every checkpoint's box, crop and answer side by side
    page.locator("#pg-compare").click()
    page.wait_for_function("document.querySelector('#pg-status').innerText.includes('Compared every checkpoint')",
                           timeout=120_000)
    table = page.locator("#pg-compare-table").inner_text()
    assert all(name in table for name in ("before RL", "early", "late"))
    rows = page.locator("#pg-compare-table tr")
    assert rows.count() == 4                                     # the header and one row per checkpoint
    drawn = page.locator("#pg-compare-boxes img").first
    drawn.wait_for()
    assert loaded_width(drawn) == 1024
    page.locator("#pg-compare-panel").screenshot(path=str(ARTIFACTS / "playground-compare.png"))


def test_app_py_offline_opens_on_the_shipped_playground_and_it_answers(page, tmp_path):
    """`make demo` without the 7B: the page explains the Ask tab's missing model and opens on the
    Playground tab, whose shipped model (examples/playground) answers a held-out scene."""
    proc, url = launch_app(["--model", str(tmp_path / "no-such-model")])
    try:
        page.goto(url)
        page.locator("#pg-run").wait_for(timeout=30_000)
        assert page.locator("#pg-checkpoint").get_by_label("late (step", exact=False).is_checked()
        page.locator("#pg-run").click()
        page.wait_for_function("document.querySelector('#pg-status').innerText.includes('Done in')", timeout=180_000)
        answer = page.locator("#pg-answer textarea").input_value()      # "D — falling diagonal"
        letter, _, choice = answer.partition(" — ")
        assert letter in ("A", "B", "C", "D")
        assert choice == ("horizontal", "vertical", "rising diagonal", "falling diagonal")["ABCD".index(letter)]
        assert page.locator("#pg-result").inner_text().startswith(("✓ Right", "✗ Wrong"))
        boxes = page.locator("#pg-boxes img").first
        boxes.wait_for()
        assert loaded_width(boxes) == 1024
        assert page.get_by_text("Turn 2 ·").count() >= 1            # it zoomed: a valid box, then the crop
        readme_shot(page, "playground-shipped")
        page.locator("#pg-compare").click()
        page.wait_for_function("document.querySelector('#pg-status').innerText.includes('Compared every checkpoint')",
                               timeout=300_000)
        assert page.locator("#pg-compare-table tr").count() == 1 + len(Release.load(app.SHIPPED_RELEASE).checkpoints)
        page.locator("#pg-compare-panel").scroll_into_view_if_needed()
        shot = ARTIFACTS / "playground-compare-shipped.png"
        page.locator("#pg-compare-panel").screenshot(path=str(shot))
        from PIL import Image

        with Image.open(shot) as img:                        # docs/images/compare.jpg when the view changes
            small = img.convert("RGB")
            small.thumbnail((960, 960))
            small.save(ARTIFACTS / "readme-playground-compare.jpg", quality=72, optimize=True)
    finally:
        out = stop(proc)
    assert "Traceback" not in out

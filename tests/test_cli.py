"""The command line as a user runs it: `python -m mgpo.tiny`, then `python -m mgpo.infer`."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, noise_image


def cli(*args, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    noise_image(2400, 1800).save(path)
    return path


def test_json_events_from_the_tiny_model(tiny_model_dir, photo):
    r = cli("mgpo.infer", "--model", str(tiny_model_dir), "--image", str(photo), "--question", "What is on the sign?",
            "--choices", "red", "blue", "--max-new-tokens", "8", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["type"] == "turn_started" and events[0]["image_size"] == [1148, 868]
    assert events[-1]["type"] == "final" and events[-1]["turns"] == 2
    assert {"turn_started", "text", "turn_finished", "box", "final"} <= {e["type"] for e in events}
    assert "Traceback" not in r.stderr


def test_human_output(tiny_model_dir, photo):
    r = cli("mgpo.infer", "--model", str(tiny_model_dir), "--image", str(photo), "--question", "What?",
            "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert "turn 1 (grounding)" in r.stdout and "answer:" in r.stdout and "visual tokens" in r.stdout


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--image", "MISSING", "--question", "q"], 2, "does not exist"),
        (["--image", "CORRUPT", "--question", "q"], 2, "not an image"),
        (["--image", "PHOTO", "--question", "   "], 2, "question is empty"),
        (["--image", "PHOTO", "--question", "q", "--max-turns", "1"], 2, "max_turns"),
        (["--image", "PHOTO", "--question", "q", "--model", "/no/such/model"], 3, "python -m mgpo.tiny"),
    ],
)
def test_bad_input_gives_a_message_and_an_exit_code(tiny_model_dir, photo, tmp_path, args, code, message):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG garbage")
    paths = {"MISSING": str(tmp_path / "missing.jpg"), "CORRUPT": str(corrupt), "PHOTO": str(photo)}
    args = [paths.get(a, a) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_model_dir)]
    r = cli("mgpo.infer", *args, "--max-new-tokens", "2")
    assert r.returncode == code
    assert message in r.stderr and "Traceback" not in r.stderr


def test_tiny_kit_builds_a_model_that_loads_like_a_real_one(tmp_path):
    r = cli("mgpo.tiny", str(tmp_path / "tiny"), "--seed", "3")
    assert r.returncode == 0, r.stderr
    from mgpo.model import load_model

    loaded = load_model(str(tmp_path / "tiny"), device="cpu")
    assert type(loaded.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert loaded.processor.tokenizer.chat_template and "<|vision_start|>" in loaded.processor.tokenizer.chat_template
    n = sum(p.numel() for p in loaded.model.parameters())
    assert 50_000 < n < 2_000_000
    # deterministic: the same seed builds the same weights
    cli("mgpo.tiny", str(tmp_path / "again"), "--seed", "3")
    again = load_model(str(tmp_path / "again"), device="cpu")
    for (k, a), (_, b) in zip(loaded.model.state_dict().items(), again.model.state_dict().items()):
        assert (a == b).all(), k


def test_loader_reads_a_hub_id_from_the_hf_cache_offline(tiny_model_dir, tmp_path, monkeypatch):
    """A Hub id resolves from a seeded HF cache with HF_HUB_OFFLINE=1 (no network)."""
    import shutil

    from mgpo.model import load_model

    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-vl" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snap)
    (cache / "models--someone--tiny-vl" / "refs").mkdir(parents=True)
    (cache / "models--someone--tiny-vl" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    loaded = load_model("someone/tiny-vl", device="cpu")
    assert loaded.name == "someone/tiny-vl"

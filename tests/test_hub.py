"""Hub push through the real huggingface_hub client against a loopback Hub (tests/hubserver.py),
then loading the pushed adapter back through the same client; failures give PushError."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import socket
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml

from hubserver import WRITES, HubServer
from mgpo.prompts import get_prompts, render
from train.hub import EXAMPLE_CHOICES, EXAMPLE_QUESTION, PushError, main, model_card, push_adapter

TOKEN = "hf_test" + secrets.token_hex(12)   # never a real token; unique so a leak is findable
REPO = "alice/mgpo-tiny-lora"
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
CARD = {
    "base_model": "Qwen/Qwen2.5-VL-7B-Instruct",
    "data": {"source": "data/train.jsonl", "records": 120, "skipped": 2},
    "config": {"learning_rate": 1e-5, "group_size": 8, "kl_coef": 0.01, "lora": {"r": 4, "alpha": 8},
               "hub_token": "should-be-redacted"},
    "metrics": {"reward": 0.6125, "accuracy": 0.58, "valid_box_ratio": 0.91, "steps": 40},
}


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``directory``: its sha256 and modification time."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A real peft LoRA adapter (random, non-zero A and B) on a fresh copy of the tiny model,
    saved with ``save_pretrained``; returns (directory, {lora tensor name: tensor})."""
    import torch
    from peft import LoraConfig, get_peft_model

    from mgpo.model import load_model

    torch.manual_seed(0)
    base = load_model(str(tiny_model_dir), device="cpu").model  # not tiny_loaded: peft edits the model in place
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter") / "final"
    model.save_pretrained(out)
    lora = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    assert lora and not any("visual" in k for k in lora)
    return out, lora


@pytest.fixture
def client_env(tmp_path, monkeypatch):
    """Point the real client at a loopback Hub and a throwaway HF home; returns ``point(url)``.

    huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_DISABLE_XET and the cache paths
    into module constants at import (and builds the ``file_exists`` HfApi then), so the env vars
    alone would come too late: the constants are patched as well.
    """
    from huggingface_hub import constants, hf_api

    home = tmp_path / "hf_home"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")       # mgpo.model.load_adapter reads the env var
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_XET_CACHE", str(home / "xet"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))        # no login cache
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the loopback Hub serves LFS, not Xet
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # push_adapter's staging folder
    (tmp_path / "tmp").mkdir()

    def point(url: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hf_api.api, "endpoint", url)

    return point


# ------------------------------------------------------------------------------------------------
# The card (pure)
# ------------------------------------------------------------------------------------------------

def test_model_card_has_front_matter_sections_prompts_and_usage():
    text = model_card({**CARD, "repo_id": REPO})
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert front["library_name"] == "peft" and front["license"] == "apache-2.0"
    assert {"mgpo", "lora", "qwen2.5-vl", "grpo"} <= set(front["tags"])
    for heading in ("## What MGPO is", "## Base model", "## Training data", "## Training config",
                    "## Metrics", "## Prompts", "## How to use"):
        assert heading in text
    config = yaml.safe_load(re.search(r"## Training config\n\n```yaml\n(.*?)```", text, re.S).group(1))
    assert config == {**CARD["config"], "hub_token": "<redacted>"}
    assert "should-be-redacted" not in text
    assert "| reward | 0.6125 |" in text and "| accuracy | 0.58 |" in text and "| steps | 40 |" in text
    assert "- **records**: 120" in text
    prompts = get_prompts("mgpo")
    for kind in ("system", "grounding", "crop", "fallback"):
        assert render(prompts, kind, EXAMPLE_QUESTION, EXAMPLE_CHOICES) in text
    assert f"python -m mgpo.infer --model Qwen/Qwen2.5-VL-7B-Instruct --adapter {REPO}" in text
    assert f"python app.py --model Qwen/Qwen2.5-VL-7B-Instruct --adapter {REPO}" in text
    assert f'PeftModel.from_pretrained(base, "{REPO}")' in text


def test_model_card_local_base_and_bad_cards(tmp_path):
    text = model_card({"base_model": str(tmp_path), "repo_id": REPO})
    assert "base_model" not in yaml.safe_load(text.split("---\n")[1])  # a path is not a Hub id
    assert f"the local checkpoint `{tmp_path}`" in text and "Not recorded." in text
    assert "trained in `direct` mode" not in text
    text = model_card({**CARD, "mode": "direct", "step": 40})  # what train/loop.py passes
    assert "trained in `direct` mode" in text and "After 40 training steps." in text
    assert render(get_prompts("mgpo"), "direct", EXAMPLE_QUESTION, EXAMPLE_CHOICES) in text
    with pytest.raises(ValueError, match="mode"):
        model_card({**CARD, "mode": "three-turns"})
    with pytest.raises(ValueError, match="base_model"):
        model_card({"metrics": {}})
    with pytest.raises(ValueError, match="metrics"):
        model_card({"base_model": "Qwen/Qwen2.5-VL-7B-Instruct", "metrics": [1, 2]})


# ------------------------------------------------------------------------------------------------
# Push, then load back through the real client
# ------------------------------------------------------------------------------------------------

def test_push_then_load_back(adapter, client_env, tiny_model_dir, tmp_path, monkeypatch, capfd, caplog):
    import torch

    from mgpo.model import load_adapter, load_model

    caplog.set_level(logging.DEBUG)
    adapter_dir, lora = adapter
    before = snapshot(adapter_dir)
    assert "README.md" in before  # peft's own card: must stay as it is locally

    with HubServer(token=TOKEN) as hub:
        client_env(hub.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)  # token from the environment, not an argument
        url = push_adapter(adapter_dir, REPO, card=CARD, commit_message="MGPO step 40")
        assert url == f"{hub.url}/{REPO}"

        repo = hub.repos[REPO]
        assert not repo.private
        assert set(repo.files) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            assert repo.files[name] == (adapter_dir / name).read_bytes()
        assert repo.lfs == {"adapter_model.safetensors"}  # went through the LFS batch + PUT path
        assert repo.files["README.md"].decode() == model_card({**CARD, "repo_id": REPO})
        assert [c["summary"] for c in repo.commits] == ["MGPO step 40"]
        for name in ("create", "preupload", "lfs_batch", "lfs_upload", "commit"):
            assert hub.calls(name), f"the client never called {name}"
        writes = [r for name in WRITES for r in hub.calls(name)]
        assert writes and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in writes)

        # A second push (repo exists → 409 → exist_ok) with new metrics: one more commit, README updated.
        push_adapter(adapter_dir, REPO, card={**CARD, "metrics": {"reward": 0.7}}, token=TOKEN, private=True)
        assert len(repo.commits) == 2 and b"| reward | 0.7 |" in repo.files["README.md"]
        assert [r.path for r in hub.calls("lfs_upload")] == [hub.calls("lfs_upload")[0].path]  # weights unchanged

        # Load it back: mgpo.model.load_adapter → peft → hf_hub_download from the loopback Hub.
        base = load_model(str(tiny_model_dir), device="cpu").model
        loaded = load_adapter(base, REPO)
        assert hub.calls("resolve"), "the adapter was not downloaded from the loopback Hub"

        # snapshot_download (repo_info + tree + resolve) gets the same bytes.
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(REPO, allow_patterns=["adapter_*"]))
        assert sorted(p.name for p in snap.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        assert all((snap / n).read_bytes() == (adapter_dir / n).read_bytes() for n in ("adapter_config.json",
                                                                                      "adapter_model.safetensors"))
    got = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert got.keys() == lora.keys()
    for k in lora:
        assert torch.equal(got[k], lora[k]), k
    assert list((tmp_path / "hf_home" / "hub").glob("models--alice--mgpo-tiny-lora/snapshots/*/adapter_model.safetensors"))

    assert snapshot(adapter_dir) == before                 # the local adapter was only read
    assert not any((tmp_path / "tmp").iterdir())           # staging folder removed
    out, err = capfd.readouterr()
    assert TOKEN not in out + err + caplog.text
    assert files_containing(tmp_path, TOKEN) == [] and files_containing(adapter_dir.parent, TOKEN) == []
    assert not any(TOKEN.encode() in data for data in [*repo.files.values(), *hub.lfs_objects.values()])


def test_load_adapter_from_hub_modifies_the_base_model_once(adapter, client_env, tiny_model_dir):
    from mgpo.model import load_adapter, load_model

    adapter_dir, _ = adapter
    with HubServer(token=TOKEN) as hub:
        client_env(hub.url)
        push_adapter(adapter_dir, REPO, card=CARD, token=TOKEN)
        base = load_model(str(tiny_model_dir), device="cpu").model
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_adapter(base, REPO)
    assert not [w for w in caught if "Already found a `peft_config`" in str(w.message)]


# ------------------------------------------------------------------------------------------------
# Failures: PushError with a clear message, local adapter untouched
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fail, token, expected", [
    ({"commit": 500}, TOKEN, r"while uploading .*HTTP 500"),
    ({"create": 503}, TOKEN, r"while creating the repo: .*server error \(HTTP 503\)"),
    ({"create": 403}, TOKEN, r"while creating the repo: .*may not write to 'alice/mgpo-tiny-lora' \(HTTP 403\)"),
    ({}, "hf_wrong" + "0" * 20, r"while creating the repo: the token was rejected \(HTTP 401\)"),
], ids=["commit-500", "create-503", "create-403", "wrong-token-401"])
def test_failing_hub_gives_push_error(adapter, client_env, tmp_path, capfd, fail, token, expected):
    adapter_dir, _ = adapter
    before = snapshot(adapter_dir)
    with HubServer(token=TOKEN, fail=fail) as hub:
        client_env(hub.url)
        with pytest.raises(PushError, match=expected) as info:
            push_adapter(adapter_dir, REPO, card=CARD, token=token, endpoint=hub.url)
        assert hub.requests and not hub.calls("commit") or fail == {"commit": 500}
        assert REPO not in hub.repos or not hub.repos[REPO].commits
    message = str(info.value)
    assert f"The local adapter at {adapter_dir} is intact." in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained client traceback
    assert token not in message and token not in "".join(capfd.readouterr())
    assert snapshot(adapter_dir) == before
    assert files_containing(tmp_path, token) == []


def test_unreachable_hub(adapter, client_env):
    adapter_dir, _ = adapter
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PushError, match=rf"could not reach http://127.0.0.1:{port} .*is intact"):
        push_adapter(adapter_dir, REPO, card=CARD, token=TOKEN, endpoint=f"http://127.0.0.1:{port}")


def test_no_token_offline_and_bad_input_fail_before_any_request(adapter, client_env, tmp_path, monkeypatch):
    from huggingface_hub import constants

    adapter_dir, _ = adapter
    with HubServer() as hub:
        client_env(hub.url)
        with pytest.raises(PushError, match=r"no Hugging Face token — pass token=, set HF_TOKEN, or run `hf auth login`"):
            push_adapter(adapter_dir, REPO, card=CARD)
        with pytest.raises(PushError, match=r"is not a PEFT adapter directory \(missing adapter_config.json"):
            push_adapter(tmp_path, REPO, card=CARD, token=TOKEN)
        with pytest.raises(PushError, match=r"is not a directory"):
            push_adapter(tmp_path / "nope", REPO, card=CARD, token=TOKEN)
        with pytest.raises(PushError, match=r"invalid repo id"):
            push_adapter(adapter_dir, "alice/bad name/x", card=CARD, token=TOKEN)
        with pytest.raises(PushError, match=r"bad model card: .*base_model"):
            push_adapter(adapter_dir, REPO, card={}, token=TOKEN)
        with pytest.raises(PushError, match=r"extra file .* does not exist"):
            push_adapter(adapter_dir, REPO, card=CARD, token=TOKEN, extra_files=["metrics.jsonl"])
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(PushError, match=r"offline mode is on"):
            push_adapter(adapter_dir, REPO, card=CARD, token=TOKEN)
        assert hub.requests == []


def test_cli_pushes_and_reports_failure_without_traceback(adapter, client_env, tmp_path, monkeypatch, capsys):
    adapter_dir, _ = adapter
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    with HubServer(token=TOKEN) as hub:
        client_env(hub.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        assert main([str(adapter_dir), REPO, "--base-model", "Qwen/Qwen2.5-VL-3B-Instruct",
                     "--extra-file", str(tmp_path / "metrics.jsonl")]) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1] == f"pushed to {hub.url}/{REPO}"
        assert hub.repos[REPO].files["metrics.jsonl"] == b'{"step": 1, "reward": 0.5}\n'
        assert b"base_model: Qwen/Qwen2.5-VL-3B-Instruct" in hub.repos[REPO].files["README.md"]
        hub.fail["commit"] = 500
        assert main([str(adapter_dir), REPO, "--base-model", "Qwen/Qwen2.5-VL-7B-Instruct"]) == 1  # a new card
    err = capsys.readouterr().err
    assert any(line.startswith("error: Pushing the adapter at") for line in err.splitlines())
    assert "HTTP 500" in err and "Traceback" not in err
    assert main([str(adapter_dir), REPO, "--print-card"]) == 0  # base model read from adapter_config.json
    assert "MGPO LoRA adapter for" in capsys.readouterr().out

"""Who may load which LoRA adapter on a served app, and how much it holds — through gradio_client,
against the tiny real Qwen2.5-VL and a loopback Hub (the real huggingface_hub client).

The page's refusals are the server's: every case here goes through the API endpoints a script
would call, not the page."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import app
from hubserver import HubServer, Repo
from test_app import PARKING, run_args, serve
from test_hub import client_env  # noqa: F401  (the fixture: the real client pointed at a loopback Hub)

from mgpo.adapters import AdapterPolicy, is_hub_id
from mgpo.engine import Engine

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

LM = r".*language_model.*\.(q_proj|v_proj)"
VISION = r".*visual\.blocks.*\.(qkv|proj)"


def make_adapter(model_dir, out: Path, seed: int, r: int = 4, targets: str = LM, safetensors: bool = True) -> Path:
    from peft import LoraConfig, get_peft_model

    from mgpo.model import load_model

    torch.manual_seed(seed)
    base = load_model(str(model_dir), device="cpu").model
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(out, safe_serialization=safetensors)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    out = {f"a{k}": make_adapter(tiny_model_dir, root / f"a{k}", seed=k) for k in range(1, 5)}
    out["big"] = make_adapter(tiny_model_dir, root / "big", 9, r=256, targets=r".*language_model.*_proj")
    out["rank"] = make_adapter(tiny_model_dir, root / "rank", 10, r=128)
    out["vision"] = make_adapter(tiny_model_dir, root / "vision", 11, targets=VISION)
    out["bin"] = make_adapter(tiny_model_dir, root / "bin", 12, safetensors=False)
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text((out["a1"] / "adapter_config.json").read_text())
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    out["corrupt"] = corrupt
    return out


def publish(hub: HubServer, repo: str, folder: Path) -> None:
    """Put a folder's files in the loopback Hub as one commit of ``repo``."""
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    lfs = {n for n in files if n.endswith((".safetensors", ".bin"))}
    oid = hashlib.sha1(repo.encode()).hexdigest()
    hub.repos[repo] = Repo(private=False, files=dict(files), lfs=set(lfs),
                           commits=[{"oid": oid, "summary": "upload", "files": dict(files), "lfs": set(lfs)}])


def fingerprint(runner) -> tuple:
    """The model as it is: every parameter's sum, and the adapters peft holds."""
    model = runner.engine.backend.model
    names = tuple(sorted(getattr(model, "peft_config", {})))
    return names, tuple(round(float(p.detach().double().sum()), 9) for p in model.parameters())


@pytest.fixture
def served(tiny_model_dir, adapters, client_env):  # noqa: F811
    """A served app: a1..a4, the corrupt one and three Hub repos listed; other Hub ids not allowed;
    1 MB, rank 64, two adapters held; two model runs at a time (so a load can meet a run)."""
    with HubServer() as hub:
        client_env(hub.url)
        publish(hub, "alice/bin-only", adapters["bin"])
        publish(hub, "alice/huge", adapters["big"])
        publish(hub, "alice/vision", adapters["vision"])
        publish(hub, "alice/good", adapters["a4"])
        listed = (*(str(adapters[f"a{k}"]) for k in range(1, 4)), str(adapters["corrupt"]), str(adapters["rank"]),
                  "alice/bin-only", "alice/huge", "alice/vision", "alice/good")
        cfg = app.AppConfig(model=str(tiny_model_dir), queue_size=8, concurrency=2, adapters=listed,
                            any_adapter=False, max_adapters=2, adapter_max_mb=1, adapter_max_rank=64)
        runner = app.Runner(Engine.from_pretrained(cfg.model, device="cpu"), policy=cfg.adapter_policy())
        demo = app.build_demo(runner, queue_size=cfg.queue_size, concurrency=cfg.concurrency, playground=None)
        try:
            yield serve(demo), runner, hub
        finally:
            demo.close()


def load(url, adapter):
    header, note = Client(url, verbose=False).predict(adapter, api_name="/load_adapter")
    return note


@pytest.mark.parametrize("case, adapter, message", [
    ("a server path", "/etc", "'/etc' is not an adapter this server offers: local folders cannot be loaded"),
    ("a relative path", "../../etc/passwd", "local folders cannot be loaded from the page or its API"),
    ("an id outside the list", "bob/other-lora", "'bob/other-lora' is not in this server's list of adapters"),
    ("pickle weights", "alice/bin-only", "only safetensors adapters (adapter_model.safetensors) may be loaded; "
                                         "it has adapter_model.bin"),
    ("too big", "alice/huge", "MB, above this server's limit of 1 MB"),
    ("the vision tower", "alice/vision", "only the language model's linear layers may be adapted"),
], ids=["path", "relative-path", "unlisted", "bin-only", "too-big", "vision-tower"])
def test_refused_adapters_get_the_rule_and_leave_the_model_as_it_was(served, case, adapter, message):
    url, runner, hub = served
    before = fingerprint(runner)
    note = load(url, adapter)
    assert note.startswith("⚠️") and message in note
    assert fingerprint(runner) == before and not runner.adapters.loaded
    # refused before any weight was fetched; a path or an unlisted id never reaches the Hub at all
    fetched = [r.path for r in hub.calls("resolve") if "adapter_model" in r.path]
    assert fetched == []
    if case in ("a server path", "a relative path", "an id outside the list"):
        assert [r.path for r in hub.requests if "/api/models/" in r.path or "/resolve/" in r.path] == []


def test_a_listed_folder_breaking_a_rule_is_refused_too(served, adapters):
    url, runner, hub = served
    before = fingerprint(runner)
    assert "rank 128 is above this server's limit of 64" in load(url, str(adapters["rank"]))
    note = load(url, str(adapters["corrupt"]))               # passes the checks, fails in peft
    assert note.startswith("⚠️ Could not load the LoRA adapter") and fingerprint(runner) == before


def test_a_listed_hub_adapter_downloads_and_runs(served):
    url, runner, hub = served
    assert load(url, "alice/good").startswith("Loaded **alice/good**")
    assert [r.path.rsplit("/", 1)[-1] for r in hub.calls("resolve") if r.method == "GET"] == \
        ["adapter_config.json", "adapter_model.safetensors"]
    assert list(runner.adapters.loaded) == ["alice/good"]


def _answer(client, max_new_tokens=24):
    out = client.predict(*run_args(handle_file(str(PARKING)), max_new_tokens=max_new_tokens), api_name="/run")
    assert out[0].startswith("Done in "), out[0]
    return out[4], [m["content"][0]["text"] for m in out[1] if m["content"] and "text" in m["content"][0]]


def test_k_plus_one_adapters_drop_the_oldest_which_reloads_on_use(served, adapters):
    url, runner, hub = served
    first = Client(url, verbose=False)
    first.predict(str(adapters["a1"]), api_name="/load_adapter")
    alone = _answer(first)
    other = Client(url, verbose=False)
    for name in ("a2", "a3"):
        other.predict(str(adapters[name]), api_name="/load_adapter")
    assert list(runner.adapters.loaded) == [str(adapters["a2"]), str(adapters["a3"])]   # a1 dropped
    assert len(runner.engine.backend.model.peft_config) == 2
    assert _answer(first) == alone                          # a1 loaded again for its session, same answer
    assert list(runner.adapters.loaded) == [str(adapters["a3"]), str(adapters["a1"])]


def test_a_run_is_not_touched_by_another_sessions_adapter_switch(served, adapters):
    url, runner, hub = served
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    a.predict(str(adapters["a1"]), api_name="/load_adapter")
    alone = _answer(a, max_new_tokens=160)
    b_alone = None
    with ThreadPoolExecutor(2) as pool:
        job = a.submit(*run_args(handle_file(str(PARKING)), max_new_tokens=160), api_name="/run")
        deadline = time.monotonic() + 120
        while not any(o[0].startswith("MGPO: turn") for o in job.outputs()):   # wait until A is generating
            assert time.monotonic() < deadline, "run A never started"
            time.sleep(0.05)
        switch = pool.submit(lambda: (b.predict(str(adapters["a2"]), api_name="/load_adapter"), _answer(b)))
        out = job.result(timeout=300)
        note, b_alone = switch.result(timeout=300)
    assert "Loaded" in note[1]
    assert (out[4], [m["content"][0]["text"] for m in out[1] if m["content"] and "text" in m["content"][0]]) == alone
    assert b_alone != alone                                  # B really ran with its own adapter


def test_policy_defaults_and_hub_ids():
    assert app.AppConfig().adapter_policy({"SPACE_ID": "me/space"}).any_hub is False
    assert app.AppConfig().adapter_policy({}).any_hub is True
    assert app.AppConfig(any_adapter=False).adapter_policy({}).any_hub is False
    cfg = app.parse_args(["--adapters", "a/b, ./mine", "--no-any-adapter", "--max-adapters", "3"], environ={})
    assert cfg.adapter_policy({}) == AdapterPolicy(allowed=("a/b", "./mine"), any_hub=False, max_loaded=3)
    assert app.parse_args([], environ={"MGPO_ANY_ADAPTER": "1", "SPACE_ID": "x/y"}).adapter_policy(
        {"SPACE_ID": "x/y"}).any_hub
    for good in ("user/lora", "Org-1/my.lora_v2"):
        assert is_hub_id(good)
    for bad in ("/etc", "../x", "a/../b", "~/x", "x", "a/b/c", "user/.hidden", "./x"):
        assert not is_hub_id(bad)

"""Training data loaders (JSONL, MME-RealWorld JSON, HF datasets), the sampler, and the config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, noise_image

from train.config import ConfigError, TrainConfig, from_args
from train.data import DataError, Sampler, load_items


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        noise_image(64, 48, seed=i).save(folder / f"{i}.png")


def test_jsonl_bad_records_are_counted_by_rule(tmp_path):
    _images(tmp_path / "imgs", 2)
    lines = [
        json.dumps({"image": "imgs/0.png", "question": "Color?", "choices": ["red", "blue"], "answer": "b"}),
        "{not json",
        json.dumps({"image": "imgs/missing.png", "question": "Q", "answer": "A", "id": "m1"}),
        json.dumps({"image": "imgs/1.png", "question": "  ", "answer": "A"}),
        json.dumps({"image": "imgs/1.png", "question": "Q", "choices": ["a", "b"], "answer": "E"}),
        json.dumps({"image": "imgs/1.png", "question": "Q", "choices": "only one", "answer": "A"}),
        json.dumps({"image": "https://example.com/x.png", "question": "Q", "answer": "A"}),
        json.dumps({"image": "imgs/1.png", "question": "Open question", "answer": "seven"}),
        json.dumps(["a list"]),
        "",
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items, report = load_items(str(path))
    assert [(it.question, it.answer, it.choices) for it in items] == [
        ("Color?", "B", ["red", "blue"]), ("Open question", "seven", None)]
    assert items[0].image == str(tmp_path / "imgs" / "0.png")          # relative to the JSONL file
    assert report.total == 9 and report.kept == 2 and report.n_skipped == 7
    assert dict(report.skipped) == {
        "invalid JSON": ["line 2"], "image not found": ["line 3 (id m1)", "line 7"],
        "missing question": ["line 4"], "bad answer": ["line 5"], "bad choices": ["line 6"],
        "not an object": ["line 9"]}
    s = report.summary()
    assert "2 of 9 records usable" in s and "1 invalid JSON (line 2)" in s


def test_jsonl_with_nothing_usable_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n")
    with pytest.raises(DataError, match="no usable training records.*1 invalid JSON"):
        load_items(str(path))
    with pytest.raises(DataError, match="does not exist"):
        load_items(str(tmp_path / "nope.jsonl"))


def test_mme_realworld_json(tmp_path):
    _images(tmp_path / "remote_sensing", 1)
    data = [
        {"Question_id": "rs/1", "Image": "remote_sensing/0.png", "Text": "How many planes?",
         "Answer choices": ["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) None"], "Ground truth": "C",
         "Task": "Perception", "Subtask": "Remote", "Category": "count"},
        {"Question_id": "rs/2", "Image": "remote_sensing/404.png", "Text": "Q", "Answer choices": ["(A) x", "(B) y"],
         "Ground truth": "A"},
    ]
    path = tmp_path / "MME_RealWorld.json"
    path.write_text(json.dumps(data))
    items, report = load_items(str(path))
    assert len(items) == 1 and items[0].id == "rs/1" and items[0].answer == "C" and len(items[0].choices) == 5
    assert dict(report.skipped) == {"image not found": ["id rs/2"]}


def test_hf_dataset_with_column_mapping(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({
        "img": [noise_image(40, 40, seed=1), noise_image(40, 40, seed=2)],
        "query": ["What is it?", ""],
        "opts": [["a", "b", "c"], ["a", "b"]],
        "label": ["C", "A"],
    }, features=datasets.Features({"img": datasets.Image(), "query": datasets.Value("string"),
                                   "opts": datasets.Sequence(datasets.Value("string")),
                                   "label": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    items, report = load_items(str(tmp_path / "ds"), columns={"image": "img", "question": "query",
                                                              "choices": "opts", "answer": "label"})
    assert len(items) == 1 and items[0].answer == "C" and items[0].choices == ["a", "b", "c"]
    assert items[0].image.size == (40, 40)                              # a PIL image from the Image feature
    assert dict(report.skipped) == {"missing question": ["row 1"]}
    with pytest.raises(DataError, match="no column question .*pass a mapping"):
        load_items(str(tmp_path / "ds"), columns={"image": "img", "answer": "label"})


def test_sampler_order_state_and_shards():
    a = Sampler(5, seed=3)
    first = [a.next() for _ in range(7)]
    assert sorted(first[:5]) == list(range(5))                          # one full pass, then the next epoch
    state = a.state()
    rest = [a.next() for _ in range(6)]
    b = Sampler(5, seed=3)
    b.load_state(state)
    assert [b.next() for _ in range(6)] == rest
    r0, r1 = Sampler(6, seed=1, rank=0, world=2), Sampler(6, seed=1, rank=1, world=2)
    assert sorted([r0.next() for _ in range(3)] + [r1.next() for _ in range(3)]) == list(range(6))
    with pytest.raises(DataError, match="same number of processes"):
        Sampler(6, rank=0, world=1).load_state(r0.state())


def test_config_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("data: d.jsonl\ngroup_size: 4\nrewards: {accuracy: 1, format: 0.1}\nlr: 1.0e-4\n")
    cfg = from_args(["--config", str(cfg_file), "--group-size", "6", "--no-gradient-checkpointing"])
    assert cfg.group_size == 6 and cfg.lr == 1e-4 and cfg.rewards == {"accuracy": 1.0, "format": 0.1}
    assert cfg.gradient_checkpointing is False and cfg.data == "d.jsonl"
    assert from_args(["--data", "x", "--rewards", "brevity=1"]).rewards == {"brevity": 1.0}
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\ngroup_sise: 4\n")
    with pytest.raises(ConfigError, match="unknown settings.*group_sise"):
        from_args(["--config", str(bad)])
    with pytest.raises(ConfigError, match="bad value for steps"):
        from_args(["--data", "x", "--steps", "many"])
    with pytest.raises(ConfigError, match="unknown reward"):
        TrainConfig(data="x", rewards={"nope": 1}).check()
    with pytest.raises(ConfigError, match="--data is required"):
        TrainConfig().check()


def test_every_flag_is_documented_by_its_fields_comment(capsys):
    from train.config import field_help, parser

    helps = field_help(TrainConfig)
    # the comment on the field's line, and the comment lines under it
    assert helps["kl_coef"].startswith("β on the k3 KL to the base model")
    assert helps["old_logprobs"].startswith("rollout: the engine's") and helps["old_logprobs"].endswith(
        "recompute otherwise")
    assert "lora_r" not in helps and "output_dir" not in helps       # uncommented fields: no help text
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--group-size INT G samples per prompt (paper: rollout.n 8) (default: 8)" in text
    assert "--rewards key=value,... name → weight (train.rewards) (default: {'accuracy': 1.0})" in text


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "train", "--data", str(tmp_path / "none.jsonl"),
                          "--model", "/nonexistent", "--output-dir", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "error: the data file" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()                              # nothing written for a failed start
    _images(tmp_path / "imgs", 1)
    (tmp_path / "ok.jsonl").write_text(json.dumps({"image": "imgs/0.png", "question": "Q", "answer": "x"}) + "\n")
    run = subprocess.run([sys.executable, "-m", "train", "--data", str(tmp_path / "ok.jsonl"), "--model",
                          str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2 and "error: Could not load the model" in run.stderr
    assert "python -m mgpo.tiny" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "train", "--steps", "0", "--data", "x"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "steps must be at least 1" in run.stderr and "Traceback" not in run.stderr


def test_an_answer_given_as_a_choice_text_is_read_as_by_the_evaluator(tmp_path):
    """Training and evaluation read the project's JSONL with one answer rule."""
    from mgpo.eval.datasets import read_jsonl

    _images(tmp_path / "imgs", 1)
    row = {"image": "imgs/0.png", "question": "Colour?", "choices": ["(A) red", "(B) blue"], "answer": "blue"}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    items, report = load_items(str(path))
    assert report.kept == 1 and items[0].answer == "B"
    assert next(read_jsonl(path)).answer == "B"


def test_lr_factor_warms_up_then_follows_the_schedule():
    from train.config import TrainConfig

    cos = TrainConfig(data="d", lr_schedule="cosine", warmup_steps=2)
    assert [round(cos.lr_factor(k, 10), 3) for k in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    lin = TrainConfig(data="d", lr_schedule="linear")
    assert [lin.lr_factor(k, 4) for k in (0, 2, 4)] == [1.0, 0.5, 0.0]
    assert TrainConfig(data="d").lr_factor(7, 10) == 1.0
    assert "lr_schedule: linear" in lin.to_yaml()

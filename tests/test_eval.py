"""The evaluation harness end to end: exact scores from a scripted model whose right and wrong
answers are chosen per item, crop-only accuracy, resume after a crash, the CLI, and one run of the
tiny real Qwen2.5-VL. (Readers and pure scoring: test_eval_data.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, noise_image
from eval_fixtures import (BAD_BOX, HR_ROWS, H, W, make_hrbench_tsv, make_jsonl, make_mme_json, make_vstar_folder,
                           make_vstar_jsonl, planned_engine, rows_of, run, wrong)

from mgpo import geometry
from mgpo.eval import EvalConfig, EvalError, evaluate, open_benchmark
from mgpo.eval.__main__ import main as cli
from mgpo.eval.runner import ITEMS, load_rows

# ----- exact scores through the engine ----------------------------------------------------------

def test_vstar_mgpo_scores_crop_only_and_protocol(tmp_path):
    bench = open_benchmark("vstar", make_vstar_folder(tmp_path / "vstar"))
    items = list(bench.items())
    # item 0 right (crop right), item 1 wrong (crop right), item 2 right (crop wrong),
    # item 3: invalid box → fallback turn, right, no crop-only
    plan = {
        items[0].question: {"final": items[0].answer, "crop": items[0].answer},
        items[1].question: {"final": wrong(items[1].answer), "crop": items[1].answer},
        items[2].question: {"final": items[2].answer, "crop": wrong(items[2].answer)},
        items[3].question: {"final": items[3].answer, "box": BAD_BOX, "crop": None},
    }
    engine, script = planned_engine(plan)
    res = run(engine, bench, tmp_path, batch_size=3, max_new_tokens=512)
    s = res["scores"]
    assert (s["n"], s["correct"], s["overall"]) == (4, 3, 0.75)
    assert s["tables"]["category"] == {
        "direct_attributes": {"n": 2, "correct": 1, "accuracy": 0.5},
        "relative_position": {"n": 2, "correct": 2, "accuracy": 1.0}}
    assert res["crop_only"] == {"n": 3, "correct": 2, "accuracy": pytest.approx(2 / 3), "accuracy_all": 0.5}
    assert res["behaviour"]["valid_box_ratio"] == 0.75 and res["behaviour"]["mean_turns"] == 2
    assert res["answers"] == {"boxed": 4} and res["errors"] == 0

    rows = rows_of(tmp_path)
    assert [r["id"] for r in rows] == [it.id for it in items]
    assert rows[3]["kinds"] == ["grounding", "fallback"] and rows[3]["crop_only"] is None
    assert rows[0]["kinds"] == ["grounding", "crop"]
    # the crop-only question saw exactly the first valid crop, prepared as turn 2 fed it
    for it, row in zip(items[:3], rows[:3]):
        box = tuple(row["boxes"][0]["box_original"])
        expected = geometry.prepare(noise_image(W, H), box).image.size
        assert row["crop_only"]["box_original"] == list(box)
        assert script.crop_images[it.question] == expected
    assert set(script.crop_images) == {it.question for it in items[:3]}
    # visual tokens: overview + crop, as the engine counted them
    x1, y1, x2, y2 = rows[0]["boxes"][0]["box_original"]
    assert rows[0]["visual_tokens"] == geometry.visual_tokens((644, 476)) + geometry.visual_tokens(
        geometry.model_frame((x2 - x1, y2 - y1)))

    p = res["protocol"]
    assert p["model"] == "scripted" and p["mode"] == "mgpo" and p["max_turns"] == 2
    assert (p["min_pixels"], p["max_pixels"]) == (geometry.MIN_PIXELS, geometry.MAX_PIXELS)
    assert p["decoding"]["greedy"] is True and p["decoding"]["max_new_tokens"] == 512
    assert p["items"] == 4 and p["crop_only"] is True and p["versions"]["torch"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["scores"] == s
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| accuracy (%) | 75.0 |" in md and "| relative_position | 2 | 2 | 100.0 |" in md
    assert "crop-only accuracy, 3 items with a valid crop (%) | 66.7 |" in md


def test_direct_mode_is_one_turn_with_the_baseline_prompt(tmp_path):
    bench = open_benchmark("jsonl", make_jsonl(tmp_path))
    plan = {"Which shape?": {"final": "B"}, "Which colour?": {"final": "A"}}
    engine, _ = planned_engine(plan, mgpo=False)
    res = run(engine, bench, tmp_path, mode="direct")
    rows = rows_of(tmp_path)
    assert [r["kinds"] for r in rows] == [["direct"], ["direct"]]
    assert [r["answer"] for r in rows] == ["B", "C"]            # "green" → C
    assert res["scores"]["overall"] == 0.5 and res["crop_only"] is None
    assert res["scores"]["tables"]["category"] == {"colours": {"n": 1, "correct": 0, "accuracy": 0.0},
                                                   "shapes": {"n": 1, "correct": 1, "accuracy": 1.0}}
    assert res["protocol"]["max_turns"] == 1 and res["protocol"]["crop_only"] is False
    sent = [m for _, m in engine.backend.messages]
    assert all("Output the coordinates" in "".join(c.get("text", "") for c in m["content"]) for m in sent)


def test_hrbench_cycle_averaged_scores_through_the_engine(tmp_path):
    right = {0: 1, 1: 1, 2: 0, 3: 1, 4: 1, 5: 0, 6: 0, 7: 0, 8: 0, 9: 1}
    # the scripted plan is keyed by question text, so each rotation gets its own wording
    rows = [(i, f"{q} (rotation {i})", c, cy, a) for i, q, c, cy, a in HR_ROWS]
    bench = open_benchmark("hrbench", make_hrbench_tsv(tmp_path / "hr_bench_8k.tsv", rows))
    plan = {q: {"final": a if right[i] else wrong(a)} for i, q, _, _, a in rows}
    engine, _ = planned_engine(plan, mgpo=False)
    res = run(engine, bench, tmp_path, batch_size=4, mode="direct")
    s = res["scores"]
    assert s["n"] == 10 and s["accuracy"] == 0.5
    assert s["overall"] == pytest.approx(11 / 24)
    assert s["FSP"] == pytest.approx(0.75) and s["FCP"] == pytest.approx(0.25)
    assert s["cycles"] == {"c0": pytest.approx(2 / 3), "c1": pytest.approx(2 / 3), "c2": 0.0, "c3": 0.5}
    assert s["tables"]["split"]["FSP"] == {"n": 4, "correct": 3, "accuracy": 0.75}
    assert "| accuracy, cycle-averaged (%) | 45.8 |" in (tmp_path / "out" / "results.md").read_text()


def test_mme_realworld_tables(tmp_path):
    bench = open_benchmark("mme-realworld", make_mme_json(tmp_path))
    items = list(bench.items())
    plan = {it.question: {"final": it.answer if k in (0, 3) else wrong(it.answer, 5)} for k, it in enumerate(items)}
    engine, _ = planned_engine(plan)
    res = run(engine, bench, tmp_path)
    t = res["scores"]["tables"]
    assert res["scores"]["overall"] == 0.5
    assert t["task"] == {"Perception": {"n": 3, "correct": 1, "accuracy": pytest.approx(1 / 3)},
                         "Reasoning": {"n": 1, "correct": 1, "accuracy": 1.0}}
    assert t["subtask"]["Perception/Monitoring"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert t["category"]["Perception/Monitoring/vehicle/attribute"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert set(t["category"]) == {"Perception/Monitoring/vehicle/attribute",
                                  "Perception/Diagram and Table/diagram", "Reasoning/Diagram and Table/diagram"}


def test_unreadable_image_is_an_error_row_not_a_crash(tmp_path):
    path = make_jsonl(tmp_path)
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    bench = open_benchmark("jsonl", path)
    engine, _ = planned_engine({"Which shape?": {"final": "B"}})
    res = run(engine, bench, tmp_path)
    rows = rows_of(tmp_path)
    assert "not an image" in rows[1]["error"] and rows[0]["error"] is None
    assert rows[0]["correct"] is True and rows[1]["correct"] is False
    assert res["errors"] == 1 and res["scores"]["overall"] == 0.5 and res["answers"] == {"boxed": 1, "error": 1}


def test_an_item_the_engine_refuses_does_not_sink_its_batch(tmp_path):
    path = make_jsonl(tmp_path)
    noise_image(3000, 10).save(tmp_path / "b.jpg")        # 300:1, beyond what the processor takes
    engine, script = planned_engine({"Which shape?": {"final": "B"}, "Which colour?": {"final": "C"}})
    res = run(engine, open_benchmark("jsonl", path), tmp_path, batch_size=2)
    rows = rows_of(tmp_path)
    assert rows[0]["correct"] is True and rows[0]["error"] is None
    assert "cannot be fed to Qwen2.5-VL" in rows[1]["error"] and res["errors"] == 1


# ----- resume ------------------------------------------------------------------------------------

def _stable(res: dict) -> dict:
    """results.json without what legitimately changes between runs (date, versions, latency)."""
    out = {k: v for k, v in res.items() if k not in ("protocol", "latency")}
    out["protocol"] = {k: v for k, v in res["protocol"].items() if k not in ("date", "versions")}
    return out


def test_resume_after_a_crash_gives_identical_results(tmp_path):
    bench = open_benchmark("mme-realworld", make_mme_json(tmp_path))
    items = list(bench.items())
    plan = {it.question: {"final": it.answer if k % 2 else wrong(it.answer, 5), "crop": it.answer}
            for k, it in enumerate(items)}

    whole, _ = planned_engine(plan)
    reference = run(whole, bench, tmp_path, name="whole", batch_size=2)

    crashing, _ = planned_engine(plan, fail_after=2)   # dies in the second batch
    with pytest.raises(RuntimeError, match="injected crash"):
        run(crashing, bench, tmp_path, batch_size=2)
    assert [r["id"] for r in rows_of(tmp_path)] == [it.id for it in items[:2]]
    with (tmp_path / "out" / ITEMS).open("a") as f:      # and a torn half line, as if killed mid-write
        f.write('{"id": "perception/Dia')

    again, script = planned_engine(plan)
    resumed = run(again, bench, tmp_path, batch_size=2)
    assert script.grounding == 2                        # only the unfinished items ran
    rows = rows_of(tmp_path)
    assert [r["id"] for r in rows] == [it.id for it in items]   # no duplicates, no torn line
    assert _stable(resumed) == _stable(reference)

    third, script = planned_engine(plan)                  # a finished run reruns nothing
    assert _stable(run(third, bench, tmp_path, batch_size=2)) == _stable(reference)
    assert script.grounding == 0 and len(rows_of(tmp_path)) == 4


def test_limit_then_resume_extends_the_run(tmp_path):
    bench = open_benchmark("vstar", make_vstar_jsonl(tmp_path))
    plan = {f"Question {k}:": {"final": "A"} for k in range(3)}
    engine, script = planned_engine(plan)
    assert run(engine, bench, tmp_path, limit=2)["protocol"]["items"] == 2
    res = run(engine, bench, tmp_path)
    assert res["protocol"]["items"] == 3 and script.grounding == 3 and len(rows_of(tmp_path)) == 3


def test_resume_refuses_a_different_protocol(tmp_path):
    bench = open_benchmark("jsonl", make_jsonl(tmp_path))
    engine, _ = planned_engine({"Which shape?": {"final": "B"}, "Which colour?": {"final": "C"}})
    run(engine, bench, tmp_path)
    with pytest.raises(EvalError, match="mode: was 'mgpo', now 'direct'"):
        run(engine, bench, tmp_path, mode="direct")
    with pytest.raises(EvalError, match="max_pixels"):
        run(engine, bench, tmp_path, max_pixels=500_000)
    cfg = EvalConfig(benchmark="jsonl", out=str(tmp_path / "out"), mode="direct")
    assert evaluate(engine, bench, cfg, progress=False, overwrite=True)["protocol"]["mode"] == "direct"


def test_load_rows_cuts_a_torn_tail(tmp_path):
    path = tmp_path / ITEMS
    path.write_text('{"id": "a", "correct": true}\n{"id": "b", "corr')
    assert list(load_rows(path)) == ["a"]
    assert path.read_text() == '{"id": "a", "correct": true}\n'


# ----- command line and the tiny real model -----------------------------------------------------

def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert cli(["--benchmark", "vstar", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    data = make_jsonl(tmp_path)
    assert cli(["--benchmark", "jsonl", "--data", str(data), "--out", str(tmp_path / "o"),
                "--model", str(tmp_path / "no-model")]) == 2
    assert "Could not load the model" in capsys.readouterr().err
    assert cli(["--benchmark", "jsonl", "--data", str(data), "--out", str(tmp_path / "o"),
                "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_tiny_model_end_to_end_through_the_cli(tmp_path, tiny_model_dir, capsys):
    root = make_vstar_jsonl(tmp_path / "vstar")
    out = tmp_path / "run"
    args = ["--benchmark", "vstar", "--data", str(root), "--model", str(tiny_model_dir), "--out", str(out),
            "--mode", "mgpo", "--batch-size", "2", "--max-new-tokens", "12", "--min-pixels", str(28 * 28 * 16),
            "--max-pixels", str(28 * 28 * 64), "--device", "cpu", "--no-progress"]
    assert cli(args) == 0
    assert "vstar mgpo:" in capsys.readouterr().out
    rows = rows_of(tmp_path, "run")
    assert [r["id"] for r in rows] == ["q0", "1", "2"]
    for r in rows:
        assert r["turns"] == 2 and len(r["texts"]) == 2 and r["kinds"][0] == "grounding"
        assert r["visual_tokens"] >= 2 * 16 and 0 < r["new_tokens"] <= 24
        assert r["correct"] == (r["pred"] == r["answer"])
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["model"] == str(tiny_model_dir) and res["protocol"]["max_pixels"] == 28 * 28 * 64
    assert res["scores"]["n"] == 3 and res["scores"]["correct"] == sum(r["correct"] for r in rows)
    # rerun: everything is already there; same results, nothing duplicated
    assert cli(args) == 0
    assert _stable(json.loads((out / "results.json").read_text())) == _stable(res)
    assert len(rows_of(tmp_path, "run")) == 3
    # another protocol in the same folder is refused before any weights load
    assert cli(args + ["--mode", "direct"]) == 2
    assert "different protocol (mode: was 'mgpo', now 'direct'" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_cli_run_resumes_to_identical_results(tmp_path, tiny_model_dir):
    """SIGKILL a real `python -m mgpo.eval` process mid-run, rerun it, compare with a clean run."""
    root = make_vstar_jsonl(tmp_path / "vstar")
    lines = [json.loads(x) for x in (root / "test_questions.jsonl").read_text().splitlines()]
    more = [dict(r, question_id=f"x{k}-{r['question_id']}") for k in range(2) for r in lines]
    (root / "test_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines + more))

    def args(out):
        return [sys.executable, "-m", "mgpo.eval", "--benchmark", "vstar", "--data", str(root), "--model",
                str(tiny_model_dir), "--out", str(out), "--batch-size", "1", "--max-new-tokens", "24",
                "--min-pixels", str(28 * 28 * 16), "--max-pixels", str(28 * 28 * 64), "--device", "cpu",
                "--no-progress"]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(args(tmp_path / "clean"), check=True, env=env, cwd=ROOT, capture_output=True)
    proc = subprocess.Popen(args(tmp_path / "killed"), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    items = tmp_path / "killed" / ITEMS
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if items.exists() and items.read_text().count("\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "results.json").exists()
    subprocess.run(args(tmp_path / "killed"), check=True, env=env, cwd=ROOT, capture_output=True)
    clean = json.loads((tmp_path / "clean" / "results.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert _stable(resumed) == _stable(clean)
    ids = [json.loads(x)["id"] for x in items.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 9


def test_the_evaluators_settings_hold_an_engine_config_checked_by_the_engines_rules():
    from mgpo.engine import EngineConfig

    cfg = EvalConfig.of(benchmark="jsonl", out="o", max_turns=3, min_pixels=3136, temperature=0.5, limit=4)
    assert cfg.limit == 4 and cfg.engine == EngineConfig(max_turns=3, min_pixels=3136, temperature=0.5)
    assert cfg.sampling().temperature == 0.5 and cfg.engine_settings()["min_pixels"] == 3136
    for bad, message in ((dict(max_turns=1), "MGPO needs max_turns ≥ 2"), (dict(box_rule="wide"), "unknown box rule"),
                         (dict(min_pixels=10), "784 ≤ min_pixels"), (dict(prompts="nope"), "unknown prompt set")):
        with pytest.raises(EvalError, match=message):
            EvalConfig.of(benchmark="jsonl", **bad).check()
    EvalConfig.of(benchmark="jsonl", mode="direct", max_turns=1).check()     # direct has one turn anyway

"""`python -m bench` (also `python -m mgpo.bench`) as a CPU dry run (tiny shapes): every case runs and gives finite numbers."""

import json
import math

import pytest

from bench import speed as bench


@pytest.fixture
def one_thread():
    """Tiny models on shared CPU cores: threads only wait on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    code = bench.main(["--shapes", "tiny", "--json", str(path)])
    return code, path, json.loads(path.read_text())


def test_every_case_runs_and_its_numbers_are_finite(dry_run):
    code, path, result = dry_run
    assert code == 0 and result["errors"] == {}
    assert set(result["cases"]) == set(bench.CASES)
    assert len(result["rows"]) >= 9
    for row in result["rows"]:
        for key in ("project", "baseline"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (row["case"], key)
        if row["floor"] is not None:
            assert math.isfinite(row["floor"]) and row["floor"] > 0
        assert row["speedup"] is not None and math.isfinite(row["speedup"])
    hw = result["hardware"]
    assert math.isfinite(hw["matmul_tflops"]) and math.isfinite(hw["copy_tbps"]) and not hw["meaningful"]
    assert result["env"]["device"] == "cpu" and result["total_seconds"] > 0


def test_the_two_turn_case_takes_the_real_crop_path(dry_run):
    """Turn 1 is forced to exactly 48 tokens ending with a box; turn 2 answers on the crop in 16."""
    _, _, result = dry_run
    case = result["cases"]["two_turn"]
    cfg = bench.BenchConfig.tiny()
    assert case["turn1"]["new_tokens"] == cfg.turn1_tokens and case["turn1"]["stop"] == "box"
    assert case["turn2"]["new_tokens"] == cfg.answer_tokens and case["turn2"]["stop"] == "eos"
    assert 0 < case["turn2"]["visual_tokens"] < case["turn1"]["visual_tokens"]
    # KV reuse prefills only turn 2's new tokens; re-encoding prefills the whole conversation
    assert case["turn2"]["prefill_tokens"] < case["turn2_reencode"]["prefill_tokens"]
    assert case["baseline_visual_tokens"] == [case["turn1"]["visual_tokens"], case["turn2"]["visual_tokens"]]
    # the fed crop covers 1/4 × 1/4 of the image
    w, h = cfg.image_size
    cw, ch = case["crop_size"]
    assert abs(cw - w * cfg.crop_frac) <= 2 and abs(ch - h * cfg.crop_frac) <= 2


def test_group_prefill_and_lora_cases_measure_what_they_say(dry_run):
    _, _, result = dry_run
    cfg = bench.BenchConfig.tiny()
    group = result["cases"]["group_prefill"]
    assert set(group["engine_s"]) == {"1", str(cfg.group_size)}
    lora = result["cases"]["lora"]
    assert lora["rows"] == cfg.lora_rows and lora["tokens"] == lora["rows"] * lora["seq"]
    assert lora["trainable_params"] > 0 and math.isfinite(lora["loss"])
    table = bench.table([bench.Row(**{k: r[k] for k in ("case", "unit", "project", "baseline", "floor", "target",
                                                       "higher", "note")}) for r in result["rows"]], {})
    assert table.count("\n") == len(result["rows"]) + 1


def test_a_failing_case_is_reported_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    def broken(self):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(bench.Bench, "case_native", broken)
    path = tmp_path / "b.json"
    code = bench.main(["--shapes", "tiny", "--cases", "native", "group_prefill", "--json", str(path)])
    result = json.loads(path.read_text())
    assert code == 1
    assert result["errors"] == {"native": "RuntimeError: out of memory (simulated)"}
    assert [r["case"].split(",")[0] for r in result["rows"]] == ["group of 4", "group of 4 ÷ one prefill"]
    assert "| native | error |" in capsys.readouterr().out


def test_bad_arguments_give_a_clear_error(capsys):
    assert bench.main(["--shapes", "tiny", "--reps", "0"]) == 2
    assert "--reps must be at least 1" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        assert bench.main(["--shapes", "7b"]) == 2
        assert "needs a GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--cases", "nope"])


def test_train_bench_uses_the_same_builder_and_still_runs(tmp_path, one_thread):
    from bench import shapes
    from train import bench as train_bench

    assert train_bench.build is shapes.build and train_bench.SHAPES_TINY is shapes.SHAPES_TINY
    path = tmp_path / "train.json"
    code = train_bench.main(["--shapes", "tiny", "--steps", "1", "--group-size", "2", "--prompts-per-step", "1",
                             "--max-new-tokens", "8", "--image-size", "400", "300", "--min-pixels", "3136",
                             "--max-pixels", "50176", "--json", str(path)])
    result = json.loads(path.read_text())
    assert code == 0 and len(result["steps"]) == 1 and math.isfinite(result["steps"][0]["loss"])


@pytest.mark.slow
def test_the_7b_run_counts_on_tiny_shapes(one_thread):
    """The GPU run's sizes (4K image: 1,222 + 646 visual tokens, 8 × 8 rollouts of 128 tokens,
    LoRA r=64 on 8 rows) through the same code on tiny shapes: the device call must not crash."""
    cfg = bench.BenchConfig(shapes="tiny", reps=1, long_reps=1, max_seconds=1e9,
                            cases=("two_turn", "group_prefill", "rollout", "lora"))
    result = bench.run(cfg, "cpu", out=lambda line: None)
    assert result["errors"] == {}
    two = result["cases"]["two_turn"]
    assert (two["turn1"]["visual_tokens"], two["turn2"]["visual_tokens"]) == (1222, 646)
    assert (two["turn1"]["new_tokens"], two["turn2"]["new_tokens"]) == (48, 16)
    assert any(r["case"] == "rollout decode, batch 64" for r in result["rows"])
    assert result["cases"]["lora"]["rows"] == 8


def test_the_playground_size_times_its_rollouts(one_thread):
    """`python -m bench --shapes playground`: the shipped playground model's shapes, a 2048² scene
    at its budgets (224² overview) and its RL rollouts (16 prompts × 8 samples, 96 tokens),
    here cut to a few tokens."""
    from mgpo.playground.world import MAX_NEW_TOKENS

    full = bench.BenchConfig.playground()
    assert (full.rollout_prompts, full.group_size, full.rollout_tokens) == (16, 8, MAX_NEW_TOKENS)
    cfg = bench.BenchConfig.playground(rollout_prompts=2, group_size=2, rollout_tokens=4, reps=1, long_reps=1,
                                       cases=("rollout",))
    result = bench.run(cfg, "cpu", out=lambda line: None)
    assert result["errors"] == {} and result["model"]["params"] > 3e6
    assert result["cases"]["rollout"]["prefill_tokens"] > 64            # the 224² overview's 64 visual tokens and text
    row = next(r for r in result["rows"] if r["case"].startswith("rollout decode, batch 4"))
    assert row["project"] > 0 and row["baseline"] > 0

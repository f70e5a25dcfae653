"""The loader: devices, dtypes, clear errors, adapters that fail without touching the model."""

import pytest
import torch

from mgpo.model import ModelLoadError, load_adapter, load_model, pick_dtype


def test_dtype_follows_the_device():
    assert pick_dtype("cuda") == torch.bfloat16 and pick_dtype("cpu") == torch.float32
    assert pick_dtype("cpu", "bfloat16") == torch.bfloat16


def test_tiny_model_loads_on_cpu_in_float32_with_sdpa(tiny_loaded):
    assert tiny_loaded.device == "cpu" and tiny_loaded.dtype == torch.float32
    assert next(tiny_loaded.model.parameters()).dtype == torch.float32
    assert tiny_loaded.model.config._attn_implementation == "sdpa"
    assert not tiny_loaded.model.training


def test_processor_takes_the_configured_pixel_limits(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu", min_pixels=64 * 28 * 28, max_pixels=512 * 28 * 28)
    size = loaded.processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (64 * 28 * 28, 512 * 28 * 28)


@pytest.mark.parametrize("name, match", [
    ("nobody/no-such-model", "python -m mgpo.tiny"),
    ("/definitely/not/here", "python -m mgpo.tiny"),
])
def test_missing_models_say_how_to_fix_it(name, match, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=match):
        load_model(name, device="cpu")


def test_a_file_instead_of_a_directory(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(str(f), device="cpu")


def test_a_missing_adapter_fails_cleanly_and_leaves_the_model_alone(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model(str(tiny_model_dir), device="cpu").model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in ("nobody/no-such-adapter", str(tiny_model_dir)):   # the second: a dir without adapter_config.json
        with pytest.raises(ModelLoadError, match="LoRA adapter"):
            load_adapter(model, bad)
    assert not hasattr(model, "peft_config")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_local_adapter_loads_and_changes_the_output(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(str(tiny_model_dir), device="cpu").model
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                           target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    lora.save_pretrained(tmp_path / "adapter")
    loaded = load_model(str(tiny_model_dir), str(tmp_path / "adapter"), device="cpu")
    assert loaded.adapter == str(tmp_path / "adapter") and hasattr(loaded.model, "peft_config")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        with_adapter = loaded.model(input_ids=ids).logits
        with loaded.model.disable_adapter():
            without = loaded.model(input_ids=ids).logits
    assert not torch.allclose(with_adapter, without)


def test_engine_from_pretrained_with_an_adapter_runs_through_the_lora(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from mgpo.engine import Engine, Request
    from mgpo.generation import unwrap
    from mgpo.conversation import Sampling

    from conftest import noise_image

    base = load_model(str(tiny_model_dir), device="cpu").model
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                    target_modules=r".*language_model.*\.(q_proj|v_proj)")).save_pretrained(tmp_path / "a")
    engine = Engine.from_pretrained(str(tiny_model_dir), str(tmp_path / "a"), device="cpu")
    assert "+" in engine.name and unwrap(engine.backend.model) is engine.backend.core
    plain = Engine.from_pretrained(str(tiny_model_dir), device="cpu")
    img = noise_image(600, 400)
    s = Sampling(temperature=0.0, max_new_tokens=6)
    with_lora = engine.rollout([Request(img, "q")], sampling=s)[0]
    without = plain.rollout([Request(img, "q")], sampling=s)[0]
    assert with_lora.logprobs != without.logprobs

"""The real profiles (Phi-4-mini, Phi-4) run the same code as the tiny one: only config differs."""

import json
import shutil

import pytest

from stages import base, train
from stages.common import checkpoint, layout
from stages.common.params import compose
from tests.conftest import shrunk


@pytest.mark.parametrize("profile", ["phi4_mini", "phi4"])
def test_real_profiles_compose_with_their_settings(profile):
    cfg = compose([f"model={profile}", "model.path=/somewhere"])
    assert cfg.model.build is False and cfg.model.dtype == "bfloat16" and cfg.model.execution_provider == "cuda"
    assert list(cfg.model.lora_targets) == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert cfg.train.gradient_checkpointing and cfg.quant_int4.block_size == 32 and cfg.quant_int4.accuracy_level == 4
    assert cfg.train.qlora is False  # off by default


@pytest.mark.slow
def test_tiny_and_real_profiles_go_through_the_same_functions(trained_workspace, monkeypatch):
    calls: dict[str, list[str]] = {"validate": [], "load": []}
    validate, load = checkpoint.validate_checkpoint, checkpoint.load_causal_lm

    def spy_validate(path, *a, **k):
        calls["validate"].append(str(path))
        return validate(path, *a, **k)

    def spy_load(path, *a, **k):
        calls["load"].append(str(path))
        return load(path, *a, **k)

    monkeypatch.setattr(checkpoint, "validate_checkpoint", spy_validate)
    monkeypatch.setattr(checkpoint, "load_causal_lm", spy_load)
    monkeypatch.setattr(base, "validate_checkpoint", spy_validate)
    monkeypatch.setattr(train, "load_causal_lm", spy_load)

    few_steps = ["train.max_steps=2", "train.eval_every=1", "train.batch_size=4", "train.max_seq_len=64",
                 "train.grad_accum=1", "train.warmup_steps=1"]
    train.run(shrunk(few_steps))
    tiny = json.loads(layout.TRAIN_METRICS.read_text())

    shutil.copytree(layout.BASE_DIR, "local_checkpoint")  # stands in for a local Phi-4-mini folder
    real = compose(["model=phi4_mini", "model.path=local_checkpoint", "model.dtype=float32", *few_steps])
    base.run(real)
    train.run(real)
    assert calls["validate"].count("local_checkpoint") >= 1
    assert calls["load"].count("models/base") >= 2 and calls["load"].count("local_checkpoint") >= 2
    assert json.loads(layout.TRAIN_METRICS.read_text())["steps_run"] == tiny["steps_run"] == 2

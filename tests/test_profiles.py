"""The real profiles (Phi-4-mini, Phi-4) run the same code as the tiny one: only config differs."""

import json
import shutil

import pytest

from stages import base, train
from stages.common import checkpoint, layout
from stages.common.errors import PipelineError
from stages.common.onnx_models import load
from stages.common.params import compose
from stages.common.schema import check_params
from tests.conftest import SHRUNK_RUN, shrunk
from tests.onnx_helpers import matmul_nbits_attributes
from tools.random_checkpoint import architecture


@pytest.mark.parametrize("profile", ["phi4_mini", "phi4"])
def test_real_profiles_compose_with_their_settings(profile):
    cfg = compose([f"model={profile}", "model.path=/somewhere"])
    assert cfg.model.build is False and cfg.model.dtype == "bfloat16" and cfg.model.execution_provider == "cuda"
    assert list(cfg.model.lora_targets) == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert cfg.train.gradient_checkpointing and cfg.quant_int4.block_size == 32 and cfg.quant_int4.accuracy_level == 4
    assert cfg.train.qlora is False  # off by default
    assert cfg.model.onnx_precision == "fp16"  # the builder's CUDA graphs are fp16/bf16
    check_params(cfg)


def test_export_targets_the_builder_gets_right():
    check_params(compose(["model=phi4_mini", "model.path=/m", "model.onnx_precision=bf16"]))
    with pytest.raises(PipelineError, match="fp16 or bf16"):  # builder 0.18: packed Attention without KV outputs
        check_params(compose(["model=phi4_mini", "model.path=/m", "model.onnx_precision=fp32"]))
    with pytest.raises(PipelineError, match="expected fp32"):
        check_params(compose(["model.onnx_precision=fp16"]))
    with pytest.raises(PipelineError, match="model.execution_provider='dml'"):
        check_params(compose(["model.execution_provider=dml"]))


def test_stand_in_architectures_keep_what_makes_each_model_itself():
    mini = architecture("phi4_mini")
    assert (mini["hidden_size"], mini["num_attention_heads"], mini["num_key_value_heads"]) == (3072, 24, 8)
    assert mini["tie_word_embeddings"] and mini["rope_scaling"]["type"] == "longrope"
    assert len(mini["rope_scaling"]["short_factor"]) == len(mini["rope_scaling"]["long_factor"]) == 48  # 128 * 0.75 / 2
    small = architecture("phi4_mini", layers=2, overrides=STAND_IN_SHAPES["phi4_mini"])
    assert small["num_hidden_layers"] == 2 and len(small["rope_scaling"]["long_factor"]) == 24  # 64 * 0.75 / 2
    phi4 = architecture("phi4", layers=8)
    assert phi4["num_hidden_layers"] == 8 and "rope_scaling" not in phi4 and not phi4["tie_word_embeddings"]
    with pytest.raises(PipelineError, match="multiple of 16"):
        architecture("phi4_mini", overrides={"hidden_size": 192, "num_attention_heads": 6, "num_key_value_heads": 2})
    with pytest.raises(PipelineError, match="unknown architecture field"):
        architecture("phi4", overrides={"hidden_sise": 64})
    with pytest.raises(PipelineError, match="divide evenly"):
        architecture("phi4", overrides={"num_key_value_heads": 3})


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


# Each published architecture cut to two small layers, its defining features kept: head size 64
# (onnxruntime's rotary cache needs rotary dims in multiples of 16), GQA at the published ratio
# (3:1 and 4:1), Phi-4-mini's partial rotary + LongRoPE + tied embeddings, Phi-4's untied head.
STAND_IN_SHAPES = {
    "phi4_mini": {"hidden_size": 192, "num_attention_heads": 3, "num_key_value_heads": 1,
                  "intermediate_size": 256, "vocab_size": 4096},
    "phi4": {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 1,
             "intermediate_size": 384, "vocab_size": 4096},
}


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["phi4_mini", "phi4"])
def test_real_profile_runs_the_pipeline_on_a_random_stand_in(profile, workspace, tiny_stages):
    """base → train → export for CUDA (fp16) → INT8 → INT4 → evaluate, with the profile's own
    settings; only device, dtype and the evaluation provider are moved to this CPU."""
    from stages import evaluate, export, quant_int4, quant_int8
    from stages.common.chat import end_of_turn
    from tools.random_checkpoint import write_random_checkpoint

    info = write_random_checkpoint(profile, workspace / "ckpt", layers=2, overrides=STAND_IN_SHAPES[profile],
                                   tokenizer_vocab=1024, dtype="float32")
    assert info["num_hidden_layers"] == 2
    shutil.copytree(tiny_stages / "data" / "clean", workspace / "data" / "clean")
    cfg = compose([f"model={profile}", "model.path=ckpt", "model.device=cpu", "model.dtype=float32",
                   "evaluate.provider=cpu", *SHRUNK_RUN, "train.grad_accum=2", "train.lr=3e-3"])
    assert cfg.model.execution_provider == "cuda" and cfg.model.onnx_precision == "fp16"
    assert cfg.train.gradient_checkpointing

    for stage in (base, train, export, quant_int8, quant_int4):
        stage.run(cfg)
    for rung in ("torch_base", "torch_lora", "onnx_fp32", "onnx_int8", "onnx_int4"):
        evaluate.run(cfg, rung)
    m = {rung: json.loads((layout.EVAL_METRICS_DIR / f"{rung}.json").read_text())
         for rung in ("torch_base", "torch_lora", "onnx_fp32", "onnx_int8", "onnx_int4")}

    # The family's own end-of-turn token is what training scored and generation stops on.
    tokenizer = checkpoint.load_tokenizer("ckpt")
    assert end_of_turn(tokenizer) == {"phi4_mini": "<|end|>", "phi4": "<|im_end|>"}[profile]
    # The exported graphs are CUDA fp16 builds (run here on the CPU provider).
    genai = json.loads((layout.ONNX_FP32 / "genai_config.json").read_text())
    assert "cuda" in json.dumps(genai["model"]["decoder"]["session_options"]["provider_options"])
    assert load(layout.ONNX_FP32).graph.input[-1].type.tensor_type.elem_type == 10  # FLOAT16
    # LoRA learnt the domain answers, and every rung scores the same model.
    assert m["torch_lora"]["domain_ppl"] < 0.5 * m["torch_base"]["domain_ppl"]
    for metric in ("domain_ppl", "general_ppl"):
        assert m["onnx_fp32"][metric] == pytest.approx(m["torch_lora"][metric], rel=0.01)
        assert m["onnx_int8"][metric] == pytest.approx(m["onnx_fp32"][metric], rel=0.05)
        assert m["onnx_int4"][metric] == pytest.approx(m["onnx_fp32"][metric], rel=0.25)
    # INT4 as the profile says (block 32, accuracy level 4, as Microsoft's Phi-4-mini builds;
    # lm_head at 8 bits, the fix for Phi-4-mini's INT4 repetition, the default for every profile).
    from onnx import helper

    nodes = [n for n in load(layout.ONNX_INT4).graph.node if n.op_type == "MatMulNBits"]
    bits = {n.name: next(helper.get_attribute_value(a) for a in n.attribute if a.name == "bits") for n in nodes}
    eight = {name for name, b in bits.items() if b == 8}
    assert eight == {name for name in bits if name.startswith("/lm_head/")} and len(eight) == 1
    attributes = matmul_nbits_attributes(load(layout.ONNX_INT4))
    assert attributes and all(a["block_size"] == 32 and a["accuracy_level"] == 4 for a in attributes)

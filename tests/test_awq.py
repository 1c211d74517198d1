"""AWQ made falsifiable: a function-preserving rescale gives the shrunk base outlier channels like
a real model's; RTN INT4 then degrades it and AWQ recovers it; an adapter trained on the unscaled
model needs the AWQ transform to stay exact through the hot-swap path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stages import quant_int4
from stages.common import awq, layout
from stages.common.checkpoint import load_causal_lm, load_tokenizer
from stages.common.genai import GenaiModel
from stages.common.lm import next_token_fidelity, torch_logits
from stages.common.onnx_models import ADAPTER_FILE, export_base_with_adapter, run_builder
from stages.common.records import read_jsonl
from tests.conftest import shrunk

pytestmark = pytest.mark.slow

CHANNELS, FACTOR = 16, 30.0


def outlier_scales(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """s = 1/30 on 16 random input channels of each scaled linear (1 elsewhere): folded, the norm
    gains grow 30x there and the next linear's columns shrink 30x, as in a real LLM's outlier
    channels; the function is unchanged."""
    generator = torch.Generator().manual_seed(seed)
    scales = {}
    for i, layer in enumerate(model.model.layers):
        widths = (layer.self_attn.qkv_proj.in_features, layer.mlp.gate_up_proj.in_features,
                  layer.mlp.down_proj.in_features)
        for name, width in zip(awq.linear_names(i), widths, strict=True):
            s = torch.ones(width)
            s[torch.randperm(width, generator=generator)[:CHANNELS]] = 1 / FACTOR
            scales[name] = s
    return scales


def prompts(tokenizer, n: int = 4) -> list[list[int]]:
    texts = [r["text"] for r in read_jsonl("data/eval/general_heldout.jsonl", "text")[:n]]
    return [tokenizer(t, add_special_tokens=False)["input_ids"][:200] for t in texts]


def calibration(tokenizer) -> list[list[int]]:
    rows = read_jsonl(layout.CLEAN_TRAIN, "instruction")[:32]
    return [tokenizer(f"{r['prompt']} {r['response']}", add_special_tokens=False)["input_ids"] for r in rows]


def int4(checkpoint: Path, out: Path) -> Path:
    """Our INT4 route: builder FP32, then the quant_int4 stage's RTN (lm_head 8-bit, as default)."""
    fp32 = out.with_name(out.name + "-fp32")
    run_builder(checkpoint, fp32, "fp32", "cpu")
    quant_int4.quantize_folder(fp32, out, shrunk(), "rtn", [])
    return out


def kl_to(reference: Path, folder: Path, ids: list[list[int]], adapter: bool = False) -> float:
    model = GenaiModel(folder, adapter_files=[folder / ADAPTER_FILE] if adapter else ())
    model.active = Path(ADAPTER_FILE).stem if adapter else None
    ref = GenaiModel(reference)
    kls = [next_token_fidelity(ref.logits(x), model.logits(x))[0] for x in ids]
    return float(np.concatenate(kls).mean())


def save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def outlier_model(ladder: Path, tmp_path_factory) -> dict:
    """The shrunk base, and the same function with outlier channels, saved as checkpoints."""
    root = tmp_path_factory.mktemp("awq")
    tokenizer = load_tokenizer(ladder / layout.BASE_DIR)
    model = load_causal_lm(ladder / layout.BASE_DIR)
    scales = outlier_scales(model)
    ids = prompts(tokenizer)
    before = [torch_logits(model, x) for x in ids]
    awq.fold_all(model, scales)
    after = [torch_logits(model, x) for x in ids]
    return {"root": root, "tokenizer": tokenizer, "scales": scales, "ids": ids, "before": before, "after": after,
            "plain": ladder / layout.BASE_DIR, "outlier": save(model, tokenizer, root / "outlier")}


def test_outliers_preserve_the_function_rtn_degrades_and_awq_recovers(outlier_model, ladder, monkeypatch):
    m = outlier_model
    for before, after in zip(m["before"], m["after"], strict=True):
        np.testing.assert_allclose(after, before, atol=2e-4)  # the same model, FP32
    monkeypatch.chdir(ladder)
    root, tokenizer = m["root"], m["tokenizer"]
    plain_fp32 = root / "plain-int4-fp32"
    plain = kl_to(plain_fp32, int4(m["plain"], root / "plain-int4"), m["ids"])
    outlier_fp32 = root / "outlier-int4-fp32"
    rtn = kl_to(outlier_fp32, int4(m["outlier"], root / "outlier-int4"), m["ids"])
    awq.scaled_checkpoint(m["outlier"], root / "outlier-awq", calibration(tokenizer), awq.AwqSpec())
    recovered = kl_to(outlier_fp32, int4(root / "outlier-awq", root / "awq-int4"), m["ids"])
    print(f"KL to FP32: plain RTN {plain:.5f}, outlier RTN {rtn:.5f}, outlier AWQ {recovered:.5f}")
    assert rtn >= 10 * recovered and recovered <= 1.5 * plain


def test_an_awq_base_takes_the_adapter_only_transformed(outlier_model, ladder, monkeypatch):
    """The ladder's adapter, trained on the shrunk base, on the outlier base (transformed for the
    outlier rescale: the same function), then on its AWQ-scaled INT4 graph through og.Adapters:
    transformed with the AWQ scales it matches the merged FP32 graph within the INT4 budget;
    untransformed it does not."""
    from safetensors.torch import load_file, save_file

    m = outlier_model
    monkeypatch.chdir(ladder)
    root, tokenizer = m["root"], m["tokenizer"]
    trained = load_file(str(layout.ADAPTER_DIR / "adapter_model.safetensors"))

    def adapter(weights: dict, folder: Path) -> Path:
        folder.mkdir()
        shutil.copy2(layout.ADAPTER_DIR / "adapter_config.json", folder / "adapter_config.json")
        save_file({k: v.contiguous() for k, v in sorted(weights.items())}, str(folder / "adapter_model.safetensors"))
        return folder

    on_outlier = awq.transform_adapter(trained, m["scales"])
    scaled = root / "hot-awq"
    scales = awq.scaled_checkpoint(m["outlier"], scaled, calibration(tokenizer), awq.AwqSpec())
    kls = {}
    for name, weights in (("transformed", awq.transform_adapter(on_outlier, scales)), ("untransformed", on_outlier)):
        fp32 = root / f"hot-{name}-fp32"
        export_base_with_adapter(scaled, adapter(weights, root / f"adapter-{name}"), "cpu", "fp32", fp32)
        out = root / f"hot-{name}"
        quant_int4.quantize_folder(fp32, out, shrunk(), "rtn", [])
        shutil.copy2(fp32 / ADAPTER_FILE, out / ADAPTER_FILE)
        kls[name] = kl_to(layout.ONNX_FP32, out, m["ids"], adapter=True)
    print(f"hot swap on the AWQ INT4 base, KL to merged FP32: {kls}")
    assert kls["transformed"] < 0.05 and kls["untransformed"] > 3 * kls["transformed"]


def test_transform_adapter_is_exact_without_quantization(outlier_model):
    """Pure algebra: scaled base + transformed adapter == unscaled base + adapter (no rounding)."""
    from peft import LoraConfig, get_peft_model

    m = outlier_model
    model = load_causal_lm(m["plain"])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "gate_up_proj", "down_proj", "o_proj"],
                        init_lora_weights=False)
    torch.manual_seed(0)
    peft = get_peft_model(model, config)
    weights = {k: v.detach().clone() for k, v in peft.state_dict().items() if "lora_" in k}
    reference = torch_logits(peft, m["ids"][0])
    scaled = get_peft_model(load_causal_lm(m["outlier"]), config)
    for name, weights_now in (("transformed", awq.transform_adapter(weights, m["scales"])), ("raw", weights)):
        scaled.load_state_dict(weights_now, strict=False)
        out = torch_logits(scaled, m["ids"][0])
        if name == "transformed":
            np.testing.assert_allclose(out, reference, atol=5e-4)
        else:
            assert np.abs(out - reference).max() > 0.05


def test_sensitivity_report_ranks_the_outlier_linears_first(outlier_model):
    """Each linear quantized alone: on the outlier model the linears fed by outlier channels lead
    the ranking (lm_head, sensitive on its own, comes next: why it is kept at 8 bits), o_proj
    (no outliers planted) trails, and the plain model's total is far smaller."""
    from tools.int4_sensitivity import markdown, sensitivity

    m = outlier_model
    ids = m["ids"][:2]
    outlier = sensitivity(load_causal_lm(m["outlier"]), ids)
    plain = sensitivity(load_causal_lm(m["plain"]), ids)
    scaled = ("qkv_proj", "gate_up_proj", "down_proj")
    ranking = list(outlier)
    assert all(name.endswith(scaled) for name in ranking[:4]), ranking
    assert all(ranking.index(name) >= len(ranking) // 2 for name in ranking if name.endswith("o_proj")), ranking
    assert sum(outlier.values()) > 10 * sum(plain.values())
    assert markdown(outlier).count("\n") == len(outlier) + 2

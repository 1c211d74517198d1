"""quant_int4: weight-only blockwise INT4 (MatMulNBits) of the FP32 rung and of the base with
LoRA inputs, with onnxruntime's MatMulNBitsQuantizer.

awq (stages/common/awq.py) is a step before it: AWQ scales are searched on the merged checkpoint
(for the merged rung) and on the base (for the hot-swap rung), folded in, the float graphs built
again from the scaled checkpoints, then quantized with RTN; the adapter file of the hot-swap rung
is built from the adapter transformed with the base's scales, and the scales are saved beside
each rung (awq_scales.safetensors).

One route for both graphs and every algorithm: rtn (default; also quantizes the embedding: a
tied one, as Phi-4-mini's, reads the INT4 lm_head bytes through GatherBlockQuantized), k_quant,
hqq, gptq (calibrated on a sample of the clean training set; the base-with-adapter graph
then takes rtn, see below). Block size, symmetry and accuracy level come from params and are
written on every MatMulNBits node; the LoRA MatMuls stay in float, so the INT4 base still takes
any adapter file. quant_int4.keep_8bit names MatMuls to keep at 8 bits instead (lm_head: the
remedy for the INT4 Phi-4-mini that repeats itself, onnxruntime-genai#1450); a tied embedding
then reads the 8-bit lm_head bytes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import atomic_path, write_json
from stages.common.awq import AwqSpec, save_scales, scaled_checkpoint
from stages.common.chat import prompt_ids, response_ids
from stages.common.checkpoint import base_checkpoint, load_tokenizer
from stages.common.onnx_models import (
    ADAPTER_FILE,
    copy_support_files,
    export_base_with_adapter,
    folder_megabytes,
    load,
    run_builder,
    save_canonical,
)
from stages.common.records import read_jsonl
from stages.common.runtime import get_logger, stage_main
from stages.common.weight_only import WeightOnlySpec, calibration_reader, quantize_weights

log = get_logger(__name__)


AWQ_SCALES = "awq_scales.safetensors"


def calibration_samples(cfg: DictConfig) -> list[list[int]]:
    """The first records of the clean training set, chat-formatted (gptq and awq calibrate on them)."""
    if cfg.quant_int4.algorithm not in ("gptq", "awq"):
        return []
    tokenizer = load_tokenizer(layout.MERGED_DIR)
    rows = read_jsonl(layout.CLEAN_TRAIN, "instruction")[: cfg.quant_int4.calibration_samples]
    return [prompt_ids(tokenizer, r["prompt"]) + response_ids(tokenizer, r["response"]) for r in rows]


def quantize_folder(src: Path, dst: Path, cfg: DictConfig, algorithm: str, calibration: list[list[int]]) -> None:
    q = cfg.quant_int4
    copy_support_files(src, dst)
    model = load(src)
    reader = None
    if algorithm == "gptq":
        head_size = json.loads((src / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
        reader = calibration_reader(model, calibration, head_size)
    spec = WeightOnlySpec.from_params(q, "quant_int4")
    spec = replace(spec, algorithm=algorithm)
    save_canonical(quantize_weights(model, spec, reader), dst)


def awq_float_rungs(cfg: DictConfig, calibration: list[list[int]], work: Path) -> tuple[Path, Path, dict, dict]:
    """The FP32 graphs of the AWQ-scaled merged checkpoint and of the AWQ-scaled base with the
    transformed adapter (built as the export stage builds its rungs), and both sets of scales."""
    provider, precision = cfg.model.execution_provider, cfg.model.onnx_precision
    spec = AwqSpec(cfg.quant_int4.block_size, cfg.quant_int4.symmetric, cfg.quant_int4.awq.clip)
    merged_scales = scaled_checkpoint(layout.MERGED_DIR, work / "merged", calibration, spec)
    run_builder(work / "merged", work / "merged-fp32", precision, provider, serving=cfg.serving)
    base_scales = scaled_checkpoint(base_checkpoint(cfg), work / "base", calibration, spec, layout.ADAPTER_DIR)
    export_base_with_adapter(work / "base", work / "base" / "adapter", provider, precision, work / "base-fp32",
                             cfg.serving)
    return work / "merged-fp32", work / "base-fp32", merged_scales, base_scales


def run(cfg: DictConfig) -> None:
    q = cfg.quant_int4
    WeightOnlySpec.from_params(q, "quant_int4")  # every param checked before anything is written
    calibration = calibration_samples(cfg)
    if q.algorithm != "awq":
        quantize_rungs(cfg, calibration, layout.ONNX_FP32, layout.ONNX_ADAPTER_FP32)
        return
    with tempfile.TemporaryDirectory(prefix="awq-") as work:
        merged_src, adapter_src, merged_scales, base_scales = awq_float_rungs(cfg, calibration, Path(work))
        quantize_rungs(cfg, calibration, merged_src, adapter_src, (merged_scales, base_scales))


def quantize_rungs(cfg: DictConfig, calibration: list[list[int]], merged_src: Path, adapter_src: Path,
                   awq_scales: tuple[dict, dict] | None = None) -> None:
    """Both INT4 rungs from their float graphs (awq: the scaled ones, the scales saved beside)."""
    q = cfg.quant_int4
    # awq has changed the weights; RTN quantizes them (awq.py's search assumed RTN's rounding).
    algorithm = "rtn" if q.algorithm == "awq" else q.algorithm
    with atomic_path(layout.ONNX_INT4) as tmp:
        quantize_folder(merged_src, tmp, cfg, algorithm, calibration)
        if awq_scales:
            save_scales(awq_scales[0], tmp / AWQ_SCALES)
    metrics = {"algorithm": q.algorithm, "kept_8bit": list(q.keep_8bit),
               "int4_mb": folder_megabytes(layout.ONNX_INT4, weights_only=True)}
    fp32 = folder_megabytes(layout.ONNX_FP32, weights_only=True)
    metrics["size_vs_fp32"] = round(metrics["int4_mb"] / fp32, 4)
    # GPTQ calibrates one fixed model; a hot-swappable base has no fixed adapter (and the GPTQ port
    # cannot read graphs whose LoRA weights are inputs), so that graph takes RTN with the same knobs.
    adapter_algorithm = "rtn" if q.algorithm in ("gptq", "awq") else q.algorithm
    with atomic_path(layout.ONNX_ADAPTER_INT4) as tmp:
        quantize_folder(adapter_src, tmp, cfg, adapter_algorithm, calibration)
        shutil.copy2(adapter_src / ADAPTER_FILE, tmp / ADAPTER_FILE)
        if awq_scales:
            save_scales(awq_scales[1], tmp / AWQ_SCALES)
    metrics["adapter_int4_algorithm"] = "awq" if q.algorithm == "awq" else adapter_algorithm
    metrics["adapter_int4_mb"] = folder_megabytes(layout.ONNX_ADAPTER_INT4, weights_only=True)
    write_json(layout.QUANT_INT4_METRICS, metrics)
    log.info("INT4 (%s, block %d): %s", q.algorithm, q.block_size, metrics)


main = stage_main(run)

if __name__ == "__main__":
    main()

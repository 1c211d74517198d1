"""quant_int4: weight-only blockwise INT4 (MatMulNBits) of the FP32 rung and of the base with
LoRA inputs, with onnxruntime's MatMulNBitsQuantizer.

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
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import atomic_path, write_json
from stages.common.chat import prompt_ids, response_ids
from stages.common.checkpoint import load_tokenizer
from stages.common.onnx_models import ADAPTER_FILE, copy_support_files, folder_megabytes, load, save_canonical
from stages.common.records import read_jsonl
from stages.common.runtime import get_logger, stage_main
from stages.common.weight_only import WeightOnlySpec, calibration_reader, quantize_weights

log = get_logger(__name__)


def calibration_samples(cfg: DictConfig) -> list[list[int]]:
    if cfg.quant_int4.algorithm != "gptq":
        return []
    tokenizer = load_tokenizer(layout.MERGED_DIR)
    rows = read_jsonl(layout.CLEAN_TRAIN, "instruction")[: cfg.quant_int4.gptq_calibration_samples]
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
    spec = replace(spec, algorithm=algorithm, embedding=spec.embedding and algorithm == "rtn")
    save_canonical(quantize_weights(model, spec, reader), dst)


def run(cfg: DictConfig) -> None:
    q = cfg.quant_int4
    WeightOnlySpec.from_params(q, "quant_int4")  # every param checked before anything is written
    calibration = calibration_samples(cfg)
    with atomic_path(layout.ONNX_INT4) as tmp:
        quantize_folder(layout.ONNX_FP32, tmp, cfg, q.algorithm, calibration)
    metrics = {"algorithm": q.algorithm, "kept_8bit": list(q.keep_8bit),
               "int4_mb": folder_megabytes(layout.ONNX_INT4, weights_only=True)}
    fp32 = folder_megabytes(layout.ONNX_FP32, weights_only=True)
    metrics["size_vs_fp32"] = round(metrics["int4_mb"] / fp32, 4)
    # GPTQ calibrates one fixed model; a hot-swappable base has no fixed adapter (and the GPTQ port
    # cannot read graphs whose LoRA weights are inputs), so that graph takes RTN with the same knobs.
    adapter_algorithm = "rtn" if q.algorithm == "gptq" else q.algorithm
    with atomic_path(layout.ONNX_ADAPTER_INT4) as tmp:
        quantize_folder(layout.ONNX_ADAPTER_FP32, tmp, cfg, adapter_algorithm, calibration)
        shutil.copy2(layout.ONNX_ADAPTER_FP32 / ADAPTER_FILE, tmp / ADAPTER_FILE)
    metrics["adapter_int4_algorithm"] = adapter_algorithm
    metrics["adapter_int4_mb"] = folder_megabytes(layout.ONNX_ADAPTER_INT4, weights_only=True)
    write_json(layout.QUANT_INT4_METRICS, metrics)
    log.info("INT4 (%s, block %d): %s", q.algorithm, q.block_size, metrics)


main = stage_main(run)

if __name__ == "__main__":
    main()

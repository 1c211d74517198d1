"""quant_int8: the INT8 rung.

- `builder` (default): the builder's weight-only INT8 (MatMulNBits, 8 bits) from the merged
  checkpoint; byte-stable, and measured faster and closer to FP32 than `dynamic` on the tiny model.
  The builder keeps a tied embedding (Phi-4-mini's) as a float copy; with quantize_embedding it
  reads the INT8 lm_head bytes instead (GatherBlockQuantized, 8 bits), one table instead of two.
- `dynamic`: quantize_dynamic(per_channel=True, weight_type=QInt8) on the FP32 rung (the
  route onnxruntime documents for CPU INT8), saved canonically.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import atomic_path, write_json
from stages.common.errors import PipelineError
from stages.common.onnx_models import copy_support_files, folder_megabytes, load, run_builder, save_canonical
from stages.common.runtime import get_logger, stage_main
from stages.common.tied_embedding import share_quantized_table
from stages.common.weight_only import INT8_METHODS, check_choice, quantize_dynamic_int8

log = get_logger(__name__)


def ties_embeddings(hf_dir: Path) -> bool:
    return bool(json.loads((hf_dir / "config.json").read_text()).get("tie_word_embeddings", False))


def share_tied_table(folder: Path) -> None:
    model = load(folder)
    try:
        share_quantized_table(model)
    except PipelineError as e:
        raise PipelineError(f"{folder}: {e}".replace("(quantize_embedding", "(quant_int8.quantize_embedding")) from None
    save_canonical(model, folder)


def run(cfg: DictConfig) -> None:
    q = cfg.quant_int8
    check_choice("quant_int8.method", q.method, INT8_METHODS)
    with atomic_path(layout.ONNX_INT8) as tmp:
        if q.method == "builder":
            run_builder(layout.MERGED_DIR, tmp, "int8", cfg.model.execution_provider,
                        {"block_size": q.block_size, "accuracy_level": q.accuracy_level}, cfg.serving)
            if q.quantize_embedding and ties_embeddings(layout.MERGED_DIR):
                share_tied_table(tmp)
        else:
            copy_support_files(layout.ONNX_FP32, tmp)
            save_canonical(quantize_dynamic_int8(layout.ONNX_FP32), tmp)
    size = folder_megabytes(layout.ONNX_INT8, weights_only=True)
    fp32 = folder_megabytes(layout.ONNX_FP32, weights_only=True)
    write_json(layout.QUANT_INT8_METRICS, {"method": q.method, "int8_mb": size, "size_vs_fp32": round(size / fp32, 4)})
    log.info("INT8 (%s): %.2f MB, %.3f x FP32", q.method, size, size / fp32)


main = stage_main(run)

if __name__ == "__main__":
    main()

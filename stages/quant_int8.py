"""quant_int8: the INT8 rung.

- `builder` (default): the builder's weight-only INT8 (MatMulNBits, 8 bits) from the merged
  checkpoint; byte-stable, and measured faster and closer to FP32 than `dynamic` on the tiny model.
  The builder keeps a tied embedding (Phi-4-mini's) as a float copy; with quantize_embedding it
  reads the INT8 lm_head bytes instead (GatherBlockQuantized, 8 bits), one table instead of two.
- `dynamic`: quantize_dynamic(per_channel=True, weight_type=QInt8) on the FP32 rung (the
  route onnxruntime documents for CPU INT8), saved canonically.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import atomic_path, write_json
from stages.common.errors import PipelineError
from stages.common.onnx_models import (
    copy_support_files,
    folder_megabytes,
    load,
    run_builder,
    save_canonical,
    ties_embeddings,
)
from stages.common.runtime import get_logger, stage_main
from stages.common.tied_embedding import share_quantized_table
from stages.common.weight_only import quantize_dynamic_int8

log = get_logger(__name__)


def share_tied_table(folder: Path) -> None:
    model = load(folder)
    try:
        share_quantized_table(model)
    except PipelineError as e:
        raise PipelineError(f"{folder}: {e}".replace("(quantize_embedding", "(quant_int8.quantize_embedding")) from None
    save_canonical(model, folder)


def build_int8(cfg: DictConfig, hf_dir: Path, fp32_dir: Path, out: Path) -> None:
    """The INT8 rung of checkpoint `hf_dir` (whose FP32 rung is `fp32_dir`) into `out`, as set by
    cfg.quant_int8 (the stage's, and the real-size benchmark's, one route)."""
    q = cfg.quant_int8
    if q.method == "builder":
        run_builder(hf_dir, out, "int8", cfg.model.execution_provider,
                    {"block_size": q.block_size, "accuracy_level": q.accuracy_level}, cfg.serving)
        if q.quantize_embedding and ties_embeddings(hf_dir):
            share_tied_table(out)
    else:
        copy_support_files(fp32_dir, out)
        save_canonical(quantize_dynamic_int8(fp32_dir), out)


def run(cfg: DictConfig) -> None:
    q = cfg.quant_int8
    with atomic_path(layout.ONNX_INT8) as tmp:
        build_int8(cfg, layout.MERGED_DIR, layout.ONNX_FP32, tmp)
    size = folder_megabytes(layout.ONNX_INT8, weights_only=True)
    fp32 = folder_megabytes(layout.ONNX_FP32, weights_only=True)
    write_json(layout.QUANT_INT8_METRICS, {"method": q.method, "int8_mb": size, "size_vs_fp32": round(size / fp32, 4)})
    log.info("INT8 (%s): %.2f MB, %.3f x FP32", q.method, size, size / fp32)


main = stage_main(run)

if __name__ == "__main__":
    main()

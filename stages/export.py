"""export: the merged model as float ONNX for onnxruntime-genai (the "onnx_fp32" rung: FP32 for
CPU, FP16 for CUDA as Microsoft's CUDA builds, set by model.onnx_precision), and the base with
LoRA inputs plus an .onnx_adapter file, so an adapter can be hot-swapped at run time.

Adapter route (chosen over Olive's ExtractAdapters, which does not drive this builder version):
the builder's `adapter_path` bakes the LoRA branches into the graph as initializers; we turn
those into graph inputs with a dynamic rank dimension, keep zero initializers of the same names
as defaults (no adapter active = the base), and write the trained weights with
onnxruntime.AdapterFormat. Every folder is complete for onnxruntime-genai (genai_config.json,
tokenizer, chat template) and uses external data, so a > 2 GB model exports the same way.
"""

from __future__ import annotations

from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import atomic_path, write_json
from stages.common.checkpoint import base_checkpoint
from stages.common.onnx_models import (
    ADAPTER_FILE,
    check_builder_input,
    export_base_with_adapter,
    folder_megabytes,
    run_builder,
)
from stages.common.runtime import get_logger, stage_main

log = get_logger(__name__)


def run(cfg: DictConfig) -> None:
    provider, precision = cfg.model.execution_provider, cfg.model.onnx_precision
    base_dir = base_checkpoint(cfg)
    check_builder_input(layout.MERGED_DIR)
    check_builder_input(base_dir)

    with atomic_path(layout.ONNX_FP32) as tmp:
        run_builder(layout.MERGED_DIR, tmp, precision, provider, serving=cfg.serving)
    with atomic_path(layout.ONNX_ADAPTER_FP32) as tmp:
        lora_tensors = export_base_with_adapter(base_dir, layout.ADAPTER_DIR, provider, precision, tmp, cfg.serving)
    metrics = {"fp32_mb": folder_megabytes(layout.ONNX_FP32, weights_only=True),
               "adapter_fp32_mb": folder_megabytes(layout.ONNX_ADAPTER_FP32, weights_only=True),
               "adapter_file_mb": round((layout.ONNX_ADAPTER_FP32 / ADAPTER_FILE).stat().st_size / 1e6, 3),
               "lora_tensors": lora_tensors}
    write_json(layout.EXPORT_METRICS, metrics)
    log.info("export (%s, %s): %s", provider, precision, metrics)


main = stage_main(run)

if __name__ == "__main__":
    main()

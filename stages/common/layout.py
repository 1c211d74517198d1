"""Where each stage writes, relative to the repository root (dvc.yaml names the same paths)."""

from pathlib import Path

BASE_DIR = Path("models/base")
BASE_METRICS = Path("metrics/base.json")

CLEAN_DIR = Path("data/clean")
CLEAN_TRAIN = CLEAN_DIR / "train.jsonl"
REMOVED = CLEAN_DIR / "removed.jsonl"
DEDUP_METRICS = Path("metrics/dedup.json")
DEDUP_REPORT = Path("reports/dedup.md")

LORA_DIR = Path("models/lora")
ADAPTER_DIR = LORA_DIR / "adapter"
MERGED_DIR = LORA_DIR / "merged"
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_LIVE_DIR = Path("metrics/train")
TRAIN_PLOTS = TRAIN_LIVE_DIR / "plots" / "metrics"  # where dvclive writes the curves dvc.yaml plots

ONNX_DIR = Path("models/onnx")
ONNX_FP32 = ONNX_DIR / "fp32"
ONNX_INT8 = ONNX_DIR / "int8"
ONNX_INT4 = ONNX_DIR / "int4"
ONNX_ADAPTER_FP32 = ONNX_DIR / "adapter_fp32"  # base with LoRA inputs + lora.onnx_adapter
ADAPTER_FILE = "lora.onnx_adapter"  # the adapter file in an adapter rung's folder
ONNX_ADAPTER_INT4 = ONNX_DIR / "adapter_int4"
QUANT_INT8_METRICS = Path("metrics/quant_int8.json")
QUANT_INT4_METRICS = Path("metrics/quant_int4.json")
EXPORT_METRICS = Path("metrics/export.json")
EVAL_METRICS_DIR = Path("metrics/eval")
EVAL_ITEMS_DIR = EVAL_METRICS_DIR / "items"  # per-item results, committed: review pairs revisions on them
HARNESS_METRICS = Path("metrics/harness.json")
HARNESS_ITEMS_DIR = Path("metrics/harness/items")  # lm-eval's per-document results, committed like eval's
GATES_METRICS = Path("metrics/gates.json")
GATES_REPORT = Path("reports/gates.md")
LADDER_PLOT = Path("metrics/ladder.json")

"""Where each stage writes, relative to the repository root (dvc.yaml names the same paths)."""

from pathlib import Path

BASE_DIR = Path("models/base")
BASE_METRICS = Path("metrics/base.json")

CLEAN_DIR = Path("data/clean")
CLEAN_TRAIN = CLEAN_DIR / "train.jsonl"
REMOVED = CLEAN_DIR / "removed.jsonl"
DEDUP_METRICS = Path("metrics/dedup.json")

LORA_DIR = Path("models/lora")
ADAPTER_DIR = LORA_DIR / "adapter"
MERGED_DIR = LORA_DIR / "merged"
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_LIVE_DIR = Path("metrics/train")

ONNX_DIR = Path("models/onnx")
EXPORT_METRICS = Path("metrics/export.json")
EVAL_METRICS_DIR = Path("metrics/eval")
GATES_METRICS = Path("metrics/gates.json")
GATES_REPORT = Path("reports/gates.md")

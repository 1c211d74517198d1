"""The ladder's rungs, named once: what each loads, through which runtime, and what it must match.

dvc.yaml's `evaluate` foreach lists the same names with the same folders, and the gates compare
the same pairs; tests derive both from this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.common import layout


@dataclass(frozen=True)
class Rung:
    name: str
    folder: Path                 # the DVC output it is built from (torch_base: the base stage's output)
    runtime: str                 # "torch" (transformers), "genai" (onnxruntime-genai, as served), or
                                 # "llama.cpp" (tools/gguf_rung.py's GGUF file, outside the DAG)
    adapter: bool = False        # load the folder's .onnx_adapter through og.Adapters and keep it active
    # The rung it is judged against: gates pair their per-item results, and evaluate measures
    # KL(p_reference || p_rung) and top-1 agreement on held-out text (for torch_lora: the drift
    # from the base that the KL term holds back; for the ONNX rungs: export and quantization error).
    reference: str | None = None


RUNGS: dict[str, Rung] = {r.name: r for r in (
    Rung("torch_base", layout.BASE_DIR, "torch"),
    Rung("torch_lora", layout.MERGED_DIR, "torch", reference="torch_base"),
    Rung("onnx_fp32", layout.ONNX_FP32, "genai", reference="torch_lora"),
    Rung("onnx_int8", layout.ONNX_INT8, "genai", reference="onnx_fp32"),
    Rung("onnx_int4", layout.ONNX_INT4, "genai", reference="onnx_fp32"),
    # The hot-swap deployment path: the base graph with LoRA inputs plus the adapter file, as a
    # serving process loads it. It should equal the merged model it was split from.
    Rung("onnx_adapter_fp32", layout.ONNX_ADAPTER_FP32, "genai", adapter=True, reference="onnx_fp32"),
    Rung("onnx_adapter_int4", layout.ONNX_ADAPTER_INT4, "genai", adapter=True, reference="onnx_fp32"),
)}

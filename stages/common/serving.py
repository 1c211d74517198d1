"""Serving knobs from params (`serving`), written into a rung's genai_config.json: what a serving
process reads when it loads the folder, so evaluate and the benchmarks measure each rung as it
will be served.

- intra_op_num_threads / inter_op_num_threads: onnxruntime's thread pools. Measured on the tiny
  model on 2 cores: an explicit intra-op 2 (inter-op 1) runs a teacher-forced pass in 3.0 ms
  against 4.5 ms for onnxruntime's default, and one thread in 4.5 ms.
- past_present_share_buffer: one KV buffer of max_length for past and present (the builder's
  default on CPU), or a growing one.
- max_length: the search's total length, and so the KV cache a generator allocates; without it
  every generator allocates the whole context (lm-eval's genai backend measured 34x slower
  requests for that reason). Per-call max_length (evaluate sets its own) still wins.
- provider_options: for model.execution_provider when it is not the CPU (e.g. CUDA's
  `enable_cuda_graph`), as genai_config's [{provider: {key: value}}].
null keeps what the builder wrote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from stages.common.errors import PipelineError

CONFIG_FILE = "genai_config.json"


def serving_config(config: dict, serving: Mapping, provider: str) -> dict:
    """`config` (a parsed genai_config.json) with the knobs set; errors name the key."""
    config = json.loads(json.dumps(config))  # a deep copy
    session = config["model"]["decoder"].setdefault("session_options", {})
    search = config.setdefault("search", {})
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        value = serving.get(key)
        if value is not None:  # a count >= 0, checked with params (schema.py)
            session[key] = value
    if serving.get("past_present_share_buffer") is not None:
        search["past_present_share_buffer"] = bool(serving["past_present_share_buffer"])
    max_length = serving.get("max_length")
    if max_length is not None:
        context = config["model"]["context_length"]
        if max_length > context:  # >= 1 is the schema's; the context is the model's
            raise PipelineError(f"serving.max_length={max_length!r}: expected 1..{context} (the model's "
                                "context_length) or null")
        search["max_length"] = max_length
    options = dict(serving.get("provider_options") or {})
    if options:
        if provider == "cpu":
            raise PipelineError(f"serving.provider_options={options}: the CPU provider takes none "
                                "(model.execution_provider=cpu)")
        session["provider_options"] = [{provider: {str(k): str(v) for k, v in options.items()}}]
    return config


def write_serving(folder: Path, serving: Mapping, provider: str) -> None:
    path = Path(folder) / CONFIG_FILE
    config = serving_config(json.loads(path.read_text(encoding="utf-8")), serving, provider)
    path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")

"""A GGUF rung: the merged model as llama.cpp's Q4_K_M (its own converter and quantizer,
stages/common/gguf.py), scored by evaluate's own code (`evaluate_rung`, handed a GgufModel,
the rung interface's llama.cpp implementation) against the FP32 graph, printed beside the ONNX INT4 rung's metrics.

Outside the DVC graph on purpose: llama-cpp-python compiles llama.cpp when installed (19 min on
this 2-core machine), too heavy for the default set-up that `make repro` and `make test` install.
`make gguf-rung` installs it (requirements-bench.txt) and runs this after `make repro`.

    python -m tools.gguf_rung [--type Q4_K_M]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from stages.common import gguf, layout
from stages.common.params import load_params
from stages.common.rungs import Rung
from stages.evaluate import evaluate_rung

CACHE = Path("benchmarks/.cache/gguf-rung")
COMPARED = ("domain_acc", "general_acc", "general_ppl", "refusal_rate", "over_refusal_rate", "loop_rate", "kl",
            "kl_p99", "top1", "size_mb", "decode_tok_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", default="Q4_K_M", choices=sorted(gguf.FILE_TYPES))
    args = parser.parse_args()
    cfg = load_params([])
    if not (layout.MERGED_DIR / "config.json").is_file() or not (layout.EVAL_METRICS_DIR / "onnx_int4.json").is_file():
        raise SystemExit(f"{layout.MERGED_DIR} or metrics/eval/onnx_int4.json missing: run `make repro` first")
    f16 = CACHE / "merged-f16.gguf"
    if not f16.exists():
        gguf.convert(layout.MERGED_DIR, f16, CACHE)
    path = CACHE / f"merged-{args.type}.gguf"
    if not path.exists():
        gguf.quantize(f16, path, args.type, cfg.serving.intra_op_num_threads or 1)
    name = f"gguf_{args.type.lower()}"
    threads = cfg.serving.intra_op_num_threads or os.cpu_count() or 1  # as the ONNX rungs are served
    model = gguf.GgufModel(path, threads, all_logits=True)
    metrics, _ = evaluate_rung(Rung(name, path, "llama.cpp", reference="onnx_fp32"), cfg, model)
    int4 = json.loads((layout.EVAL_METRICS_DIR / "onnx_int4.json").read_text())
    (CACHE / f"{name}.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"| metric | {name} | onnx_int4 |\n|---|---:|---:|")
    for key in COMPARED:
        if key in metrics or key in int4:
            print(f"| {key} | {metrics.get(key, '')} | {int4.get(key, '')} |")


if __name__ == "__main__":
    main()

"""GGUF rungs: the merged model as llama.cpp files (its own converter and quantizer,
stages/common/gguf.py), scored by evaluate's own code (`evaluate_rung`, handed a GgufModel, the
rung interface's llama.cpp implementation) against the FP32 graph, beside the ONNX rungs.

Outside the DVC graph on purpose: llama-cpp-python compiles llama.cpp when installed (19 min on
this 2-core machine), too heavy for the default set-up that `make repro` and `make test` install.
`make gguf-rung [PIPELINE=pipelines/smollm2]` installs it (requirements-bench.txt) and runs this in
the pipeline folder, after its ladder ran. Writes metrics/gguf/<rung>.json (summary),
metrics/gguf/items/<rung>.json (per item, as evaluate writes them) and reports/gguf_rung.md (each
GGUF rung beside the ONNX rungs of the same bits).

    python -m tools.gguf_rung [--types Q4_K_M Q8_0]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from stages.common import gguf, layout
from stages.common.atomic import write_json, write_text
from stages.common.item_metrics import items_json
from stages.common.params import REPO_ROOT, load_params
from stages.common.rungs import Rung
from stages.evaluate import evaluate_rung

METRICS, REPORT = Path("metrics/gguf"), Path("reports/gguf_rung.md")
COMPARED = ("size_mb", "kl", "kl_p99", "top1", "domain_acc", "general_acc", "general_ppl", "refusal_rate",
            "over_refusal_rate", "loop_rate", "decode_tok_s")
BESIDE = ("onnx_fp32", "onnx_int8", "onnx_int4", "onnx_adapter_int4")  # the ONNX rungs a reader compares with


def cache_dir() -> Path:
    """One cache per pipeline folder (the repository's benchmarks/.cache/, ignored by git)."""
    folder = Path.cwd().resolve()
    name = "default" if folder == REPO_ROOT else folder.name
    return REPO_ROOT / "benchmarks" / ".cache" / "gguf-rung" / name


def gguf_file(file_type: str, threads: int) -> Path:
    """The merged model at `file_type`, converted and quantized once per pipeline folder."""
    cache = cache_dir()
    f16 = cache / "merged-f16.gguf"
    if not f16.exists():
        gguf.convert(layout.MERGED_DIR, f16, cache.parent)
    path = cache / f"merged-{file_type}.gguf"
    if not path.exists():
        gguf.quantize(f16, path, file_type, threads)
    return path


def table(rows: dict[str, dict]) -> str:
    names = list(rows)
    lines = [f"| metric | {' | '.join(names)} |", f"|---|{'---:|' * len(names)}"]
    for key in COMPARED:
        cells = [rows[n].get(key) for n in names]
        if any(c is not None for c in cells):
            lines.append(f"| {key} | {' | '.join('' if c is None else f'{c:g}' for c in cells)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=["Q4_K_M", "Q8_0"], choices=sorted(gguf.FILE_TYPES))
    parser.add_argument("--no-repack", action="store_true",
                        help="llama.cpp without its CPU weight repacking (it crashed on SmolLM2's quantized files)")
    args = parser.parse_args()
    cfg = load_params([])
    fp32 = layout.EVAL_METRICS_DIR / "onnx_fp32.json"
    if not (layout.MERGED_DIR / "config.json").is_file() or not fp32.is_file():
        raise SystemExit(f"{Path.cwd()}: {layout.MERGED_DIR} or {fp32} missing: run the ladder first "
                         "(`make repro`, or `make real` for pipelines/smollm2)")
    threads = cfg.serving.intra_op_num_threads or os.cpu_count() or 1  # as the ONNX rungs are served
    rows = {}
    for file_type in args.types:
        path = gguf_file(file_type, threads)
        name = f"gguf_{file_type.lower()}"
        metrics, items = evaluate_rung(Rung(name, path, "llama.cpp", reference="onnx_fp32"), cfg,
                                       gguf.GgufModel(path, threads, all_logits=True,
                                                                    repack=not args.no_repack))
        write_text(METRICS / "items" / f"{name}.json", items_json(items))
        write_json(METRICS / f"{name}.json", metrics)
        rows[name] = metrics
    rows |= {n: json.loads((layout.EVAL_METRICS_DIR / f"{n}.json").read_text()) for n in BESIDE
             if (layout.EVAL_METRICS_DIR / f"{n}.json").is_file()}
    text = (f"# GGUF rungs beside the ONNX rungs ({Path.cwd().name})\n\n"
            f"llama.cpp {gguf.llama_cpp_version()} (llama-cpp-python), {threads} threads, weight repacking "
            f"{'off' if args.no_repack else 'on'}; KL and top-1 against "
            "onnx_fp32 on the same held-out windows; evaluate's own items and code.\n\n" + table(rows))
    write_text(REPORT, text)
    print(text)


if __name__ == "__main__":
    main()

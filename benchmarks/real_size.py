"""Benchmark at a size where decoding is bound by memory bandwidth: a Phi-4-mini-width stand-in
(tools/random_checkpoint.py: published width, 200k vocabulary, tied embeddings, a few layers,
random weights), its rungs built by our own stage code (export's builder call, quant_int8's
route, quant_int4's quantize_folder) with the phi4_mini profile's quantization params, timed
beside llama.cpp on the same weights (GGUF Q8_0, Q4_0, Q4_K_M made by llama.cpp's own tools).

For every rung: prefill and decode tokens/s (median of repeats, one timed loop for all:
LanguageModel.timed_decode), the weight bytes one decode step reads, the GB/s that makes, and
its fraction of the machine's memory-read bandwidth, measured in the same run on 1 and on
`--threads` threads. The limit for a rung is the bandwidth at the threads it runs on. The rungs
are timed in two passes, the second in reverse order, so the VM's drift falls on all alike.

    make bench-real          (python -m benchmarks.real_size --layers 2 --threads 2)

The stand-in and every rung are cached in benchmarks/.cache/, keyed by the params and the code
that build them (BUILD_CODE), so a second run is only the timing. Goals (issue 19): FP32 and
INT4 decode >= 60 % of the limit, INT4/FP32 >= 3x, ONNX INT4 >= llama.cpp Q4_0, INT4 faster
than INT8.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from stages.common.atomic import atomic_path, write_json
from stages.common.language_model import LanguageModel
from stages.common.lm import next_token_fidelity
from stages.common.runtime import get_logger

log = get_logger(__name__)
CACHE = Path("benchmarks/.cache")


# ------------------------------------------------------------------------------- the limit
def read_bandwidth(threads: int, gigabytes: float = 2.0, repeats: int = 7) -> float:
    """Memory-read GB/s on `threads` threads: the best of `repeats` runs of two reads of a buffer
    far larger than any cache, a sum and a matrix-vector product (torch's, split over its intra-op
    threads). The limit is what the machine can do, so the best run, not the median: this VM's
    rate moves by 20-30 % within minutes (17-25 GB/s on one thread, 29-32 on two in one hour)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = torch.ones(int(gigabytes * 1e9) // 4 // 8192 * 8192, dtype=torch.float32)
        matrix, vector = data.view(-1, 8192), torch.ones(8192)
        best = 0.0
        for read in (data.sum, lambda: torch.mv(matrix, vector)):
            read()  # pages touched, threads started
            for _ in range(repeats):
                start = time.perf_counter()
                read()
                best = max(best, data.numel() * 4 / (time.perf_counter() - start) / 1e9)
        return best
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------- bytes one step reads
def onnx_decode_bytes(folder: Path) -> int:
    """Weight bytes one ONNX decode step reads: every initializer, but a table reached from
    input_ids only through the embedding lookup (Gather / GatherBlockQuantized, the builder's
    Transpose or our Reshape before it), of which a step reads one row."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def lookup_only(name: str) -> bool:
        readers = consumers.get(name, [])
        return bool(readers) and all(
            (n.op_type in ("Gather", "GatherBlockQuantized") and n.input[0] == name and "input_ids" in n.input)
            or (n.op_type in ("Transpose", "Reshape") and n.input[0] == name and all(map(lookup_only, n.output)))
            for n in readers)

    total = 0
    for init in model.graph.initializer:
        if lookup_only(init.name):
            continue
        location = {e.key: e.value for e in init.external_data}
        total += int(location["length"]) if "length" in location else len(init.raw_data)
    return total


# ------------------------------------------------------------------------------ the rungs
@dataclass(frozen=True)
class Built:
    name: str
    path: Path
    runtime: str            # "onnx" or "llama.cpp"
    decode_bytes: int
    note: str = ""


def config(checkpoint: Path, threads: int, overrides: list[str]) -> DictConfig:
    """The phi4_mini profile on the CPU (fp32 export, as the CPU builds), serving on `threads`."""
    from stages.common.params import compose

    return compose(["model=phi4_mini", f"model.path={checkpoint.resolve()}", "model.execution_provider=cpu",
                    "model.onnx_precision=fp32", "model.device=cpu", f"serving.intra_op_num_threads={threads}",
                    "serving.inter_op_num_threads=1", *overrides])


# The code that builds a rung: a change to it rebuilds the cached rungs, as a param change does.
BUILD_CODE = ("stages/common/onnx_models.py", "stages/common/weight_only.py", "stages/common/tied_embedding.py",
              "stages/common/serving.py", "stages/common/gguf.py", "stages/quant_int8.py", "stages/quant_int4.py")


def key(*parts: object) -> str:
    code = [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in BUILD_CODE]
    return hashlib.sha256(json.dumps([parts, code], sort_keys=True, default=str).encode()).hexdigest()[:10]


def cached(path: Path, build: Callable[[Path], None]) -> Path:
    """`path`, built into a temporary sibling first where it is not there yet."""
    if not path.exists():
        log.info("building %s", path)
        start = time.perf_counter()
        with atomic_path(path) as tmp:
            build(tmp)
        log.info("built %s in %.0f s", path.name, time.perf_counter() - start)
    return path


def stand_in(layers: int) -> Path:
    from tools.random_checkpoint import write_random_checkpoint

    path = CACHE / f"phi4_mini-{layers}l"
    if not path.exists():
        write_random_checkpoint("phi4_mini", path, layers=layers)
    return path


def onnx_rungs(hf: Path, threads: int, int4_variants: dict[str, list[str]]) -> list[Built]:
    """FP32, INT8 and INT4 (one per variant of quant_int4 params) of `hf`, by the stages' own code."""
    from stages.common.onnx_models import run_builder
    from stages.quant_int4 import quantize_folder
    from stages.quant_int8 import build_int8

    base = config(hf, threads, [])
    serving = OmegaConf.to_container(base.serving)
    fp32 = cached(CACHE / f"onnx_fp32-{key(hf.name, serving)}",
                  lambda out: run_builder(hf, out, "fp32", "cpu", serving=base.serving))
    int8 = cached(CACHE / f"onnx_int8-{key(hf.name, serving, OmegaConf.to_container(base.quant_int8))}",
                  lambda out: build_int8(base, hf, fp32, out))
    rungs = [Built("onnx_fp32", fp32, "onnx", onnx_decode_bytes(fp32)),
             Built("onnx_int8", int8, "onnx", onnx_decode_bytes(int8))]
    for name, overrides in int4_variants.items():
        cfg = config(hf, threads, overrides)
        q = OmegaConf.to_container(cfg.quant_int4)
        path = cached(CACHE / f"onnx_int4-{key(hf.name, serving, q)}",
                      lambda out, cfg=cfg: quantize_folder(fp32, out, cfg, cfg.quant_int4.algorithm, []))
        rungs.append(Built(name, path, "onnx", onnx_decode_bytes(path), " ".join(overrides)))
    return rungs


def random_adapter(hf: Path, threads: int, out: Path) -> None:
    """A LoRA adapter of the profile's rank and targets (train's own lora_model), its B matrices
    random rather than peft's zeros so the adapter path computes something."""
    import torch

    from stages.train import lora_model

    model = lora_model(config(hf, threads, ["train.gradient_checkpointing=false"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if ".lora_B." in name:
                weight.normal_(0.0, 0.01)
    model.save_pretrained(out)


def adapter_rungs(hf: Path, threads: int) -> list[Built]:
    """The hot-swap path at this size: the base with LoRA inputs plus the adapter file, in FP32
    (export's export_base_with_adapter) and INT4 (quant_int4's quantize_folder, its profile params)."""
    import shutil

    from stages.common.layout import ADAPTER_FILE
    from stages.common.onnx_models import export_base_with_adapter
    from stages.quant_int4 import quantize_folder

    cfg = config(hf, threads, [])
    serving = OmegaConf.to_container(cfg.serving)
    adapter = cached(CACHE / f"{hf.name}-lora-r{cfg.train.lora.r}", lambda out: random_adapter(hf, threads, out))
    fp32 = cached(CACHE / f"onnx_adapter_fp32-{key(hf.name, adapter.name, serving)}",
                  lambda out: export_base_with_adapter(hf, adapter, "cpu", "fp32", out, cfg.serving))

    def int4_build(out: Path) -> None:
        quantize_folder(fp32, out, cfg, "rtn", [])
        shutil.copy2(fp32 / ADAPTER_FILE, out / ADAPTER_FILE)

    q = OmegaConf.to_container(cfg.quant_int4)
    adapter_int4 = cached(CACHE / f"onnx_adapter_int4-{key(hf.name, adapter.name, serving, q)}", int4_build)
    rank = f"r {cfg.train.lora.r}"
    return [Built("onnx_adapter_fp32", fp32, "onnx adapter", onnx_decode_bytes(fp32), rank),
            Built("onnx_adapter_int4", adapter_int4, "onnx adapter", onnx_decode_bytes(adapter_int4), rank)]


def serving_variant(rung: Built, name: str, knobs: dict) -> Built:
    """`rung` served with other serving knobs: the same graph files (linked), its
    genai_config.json rewritten by the stages' serving code."""
    from stages.common.serving import CONFIG_FILE, write_serving

    def build(out: Path) -> None:
        out.mkdir()
        for item in rung.path.iterdir():
            if item.name == CONFIG_FILE:
                (out / item.name).write_text(item.read_text())
            else:
                (out / item.name).symlink_to(item.resolve())
        write_serving(out, knobs, "cpu")

    path = cached(CACHE / f"{rung.path.name}-serving-{key(knobs)}", build)
    return Built(name, path, rung.runtime, rung.decode_bytes, " ".join(f"{k}={v}" for k, v in knobs.items()))


def gguf_rungs(hf: Path, threads: int, file_types: list[str]) -> list[Built]:
    from stages.common import gguf

    f16 = cached(CACHE / f"{hf.name}-f16.gguf", lambda out: gguf.convert(hf, out, CACHE))
    rungs = []
    for file_type in file_types:
        path = cached(CACHE / f"{hf.name}-{file_type}.gguf",
                      lambda out, t=file_type: gguf.quantize(f16, out, t, threads))
        rungs.append(Built(f"llama.cpp {file_type}", path, "llama.cpp", gguf.decode_bytes(path)))
    return rungs


def open_built(rung: Built, threads: int, context: int) -> LanguageModel:
    if rung.runtime == "llama.cpp":
        from stages.common.gguf import GgufModel

        return GgufModel(rung.path, threads, context)
    from stages.common.genai import GenaiModel
    from stages.common.layout import ADAPTER_FILE

    # Timed as served: the serving graph genai_config.json names (serving_graph.py).
    if rung.runtime != "onnx adapter":
        return GenaiModel(rung.path, graph=None)
    model = GenaiModel(rung.path, adapter_files=[rung.path / ADAPTER_FILE], graph=None)
    model.active = Path(ADAPTER_FILE).stem  # as open_rung serves an adapter rung
    return model


def prompt_logits(rung: Built, model: LanguageModel, prompt: list[int], threads: int, context: int) -> np.ndarray:
    """Logits at every prompt position (llama.cpp keeps them only when opened to)."""
    if rung.runtime == "llama.cpp":
        from stages.common.gguf import GgufModel

        return GgufModel(rung.path, threads, context, all_logits=True).logits(prompt)
    if getattr(model, "pruned", False):  # the serving graph has the last position only: open the full one
        from stages.common.genai import GenaiModel
        from stages.common.layout import ADAPTER_FILE

        full = GenaiModel(rung.path, adapter_files=[rung.path / ADAPTER_FILE] if model.adapter_names else [])
        full.active = model.active
        return full.logits(prompt)
    return model.logits(prompt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per rung in each of two passes")
    parser.add_argument("--no-llama-cpp", action="store_true", help="only the ONNX rungs")
    parser.add_argument("--no-adapter", action="store_true", help="without the hot-swap (base + adapter) rungs")
    parser.add_argument("--gguf", default="Q8_0,Q4_0,Q4_K_M", help="llama.cpp file types to compare")
    parser.add_argument("--int4", action="append", default=[], metavar="NAME:K=V,K=V",
                        help="one more INT4 rung with quant_int4 overrides, e.g. "
                             "'int4 lm_head 4-bit:quant_int4.keep_8bit=[]'")
    parser.add_argument("--serving", action="append", default=[], metavar="NAME:K=V,K=V",
                        help="the lm_head 4-bit INT4 rung once more with other serving knobs, e.g. "
                             "'1 thread:intra_op_num_threads=1'")
    parser.add_argument("--build-only", action="store_true", help="build and cache the rungs, time nothing")
    parser.add_argument("--out", type=Path, default=CACHE / "real_size.json")
    args = parser.parse_args()

    hf = stand_in(args.layers)
    variants = {"onnx_int4": [], "onnx_int4 (lm_head 4-bit)": ["quant_int4.keep_8bit=[]"],
                "onnx_int4 block 128": ["quant_int4.block_size=128"],
                "onnx_int4 block 128 (lm_head 4-bit)": ["quant_int4.block_size=128", "quant_int4.keep_8bit=[]"]}
    for spec in args.int4:
        name, _, overrides = spec.partition(":")
        variants[name] = [o for o in overrides.split(",") if o]
    rungs = onnx_rungs(hf, args.threads, variants)
    if not args.no_adapter:
        rungs += adapter_rungs(hf, args.threads)
    for spec in args.serving:
        name, _, pairs = spec.partition(":")
        knobs = {k: json.loads(v) for k, _, v in (pair.partition("=") for pair in pairs.split(",") if pair)}
        rungs.append(serving_variant(next(r for r in rungs if r.name == "onnx_int4 (lm_head 4-bit)"), name, knobs))
    if not args.no_llama_cpp:
        rungs += gguf_rungs(hf, args.threads, [t for t in args.gguf.split(",") if t])
    if args.build_only:
        return

    prompt = [(17 + 31 * i) % 8000 + 100 for i in range(args.prompt_tokens)]  # any ids: weights are random
    context = args.prompt_tokens + args.new_tokens + 8
    # Two passes, the second in reverse order, the bandwidth before each: this VM's rates drift by
    # 20-30 % within minutes, and a rung timed only in a slow minute would lose to one timed in a
    # fast one. (All models resident at once would be fairer still, but at ~14 GB they push the
    # memory-mapped weights out of the page cache.)
    limits = {n: 0.0 for n in sorted({1, args.threads})}
    runs: dict[str, list] = {rung.name: [] for rung in rungs}
    logits: dict[str, np.ndarray] = {}
    for order in (rungs, rungs[::-1]):
        limits = {n: max(rate, read_bandwidth(n)) for n, rate in limits.items()}
        for rung in order:
            model = open_built(rung, args.threads, context)
            model.timed_decode(prompt, 2)  # warm-up
            runs[rung.name] += [model.timed_decode(prompt, args.new_tokens) for _ in range(args.repeats)]
            if rung.name not in logits:
                logits[rung.name] = prompt_logits(rung, model, prompt, args.threads, context)
            del model
    limits = {n: max(rate, read_bandwidth(n)) for n, rate in limits.items()}
    rows = []
    for rung in rungs:
        prefill = statistics.median(len(prompt) / p for p, _ in runs[rung.name])
        decode = statistics.median(args.new_tokens / sum(steps) for _, steps in runs[rung.name])
        # Fidelity on the prompt's positions, so a fast row is also the same function: against the
        # FP32 graph (the hot-swap rungs: against the FP32 base + adapter).
        reference = "onnx_adapter_fp32" if rung.runtime == "onnx adapter" else "onnx_fp32"
        kl, top1 = next_token_fidelity(logits[reference], logits[rung.name])
        rows.append({"rung": rung.name, "runtime": rung.runtime, "decode_mb": round(rung.decode_bytes / 1e6, 1),
                     "prefill_tok_s": round(prefill, 1), "decode_tok_s": round(decode, 2),
                     "gb_s": round(rung.decode_bytes * decode / 1e9, 2), "note": rung.note,
                     "reference": reference, "kl": round(float(kl.mean()), 5), "top1": round(float(top1.mean()), 3)})
    for row in rows:
        row["of_limit"] = round(row["gb_s"] / limits[args.threads], 3)
    report = {"stand_in": str(hf), "layers": args.layers, "threads": args.threads,
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "bandwidth_gb_s": {str(k): round(v, 1) for k, v in limits.items()}, "rungs": rows}
    write_json(args.out, report)
    print(table(report))


def table(report: dict) -> str:
    rows = {r["rung"]: r for r in report["rungs"]}
    limit = report["bandwidth_gb_s"][str(report["threads"])]
    lines = [f"Phi-4-mini-width stand-in, {report['layers']} layers, greedy, prompt {report['prompt_tokens']}, "
             f"{report['new_tokens']} new tokens, {report['threads']} threads, median of 2 x {report['repeats']}",
             f"memory-read bandwidth (same run): {report['bandwidth_gb_s']['1']} GB/s on 1 thread, "
             f"{limit} GB/s on {report['threads']}",
             "", "| rung | MB read / token | prefill tok/s | decode tok/s | GB/s | of limit | KL to FP32 | top-1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['rung']} | {r['decode_mb']:,.0f} | {r['prefill_tok_s']:,.0f} | {r['decode_tok_s']:.1f} | "
              f"{r['gb_s']:.1f} | {r['of_limit']:.0%} | {r['kl']:.5f} | {r['top1']:.3f} |" for r in rows.values()]

    def ratio(a: str, b: str) -> str:
        if a not in rows or b not in rows:
            return ""
        return f"{a} / {b} = {rows[a]['decode_tok_s'] / rows[b]['decode_tok_s']:.2f}x"

    pairs = [("onnx_int4", "onnx_fp32"), ("onnx_int8", "onnx_fp32"), ("onnx_int4", "onnx_int8"),
             ("onnx_int4 (lm_head 4-bit)", "onnx_fp32"), ("onnx_int4 (lm_head 4-bit)", "onnx_int8"),
             ("onnx_int4 (lm_head 4-bit)", "llama.cpp Q4_0"),
             ("onnx_int4 (lm_head 4-bit)", "llama.cpp Q4_K_M"),
             ("onnx_int4", "llama.cpp Q4_0"), ("onnx_int4", "llama.cpp Q4_K_M"), ("onnx_int8", "llama.cpp Q8_0"),
             ("onnx_adapter_fp32", "onnx_fp32"), ("onnx_adapter_int4", "onnx_int4")]
    lines += ["", *filter(None, (ratio(a, b) for a, b in pairs))]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

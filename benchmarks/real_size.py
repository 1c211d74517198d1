"""Speed at Phi-4-mini's real depth, from stand-ins shallow enough to build on a laptop: a
Phi-4-mini-width checkpoint (tools/random_checkpoint.py: published width, 200k vocabulary, tied
embeddings, random weights) at a few depths, its rungs built by our own stage code (export's
builder call, quant_int8's routes, quant_int4's quantize_folder, the hot-swap pair) with the
phi4_mini profile's quantization params, timed beside llama.cpp on the same weights (GGUF Q8_0,
Q4_0, Q4_K_M made by llama.cpp's own tools).

Why depths: at 2 layers the 200k x 3,072 tied table is 75 % of the weights, and a ratio measured
there compares lm_heads. Phi-4-mini at 32 layers is 15 GB in FP32, more than this machine can
build beside its page cache, so every rung is measured at the `--layers` depths, each figure is
fitted as seconds (and bytes) per token = fixed + per-layer x layers, projected to
`--target-layers`, and checked against a deeper measured point (`--check`).

For every rung and depth: decode tokens/s (greedy, `--new-tokens` after a `--prompt-tokens`
prompt), prefill tokens/s at both prompt lengths (64 and 512), the weight bytes one decode step
reads, its fraction of the machine's memory-read bandwidth measured in the same run, and KL /
top-1 against the FP32 graph. The CPU model and flags, and llama.cpp's build info (AMX, weight
repacking), are printed beside the table. Rungs are timed in two passes, the second in reverse
order, so the VM's drift falls on all alike.

    make bench-real          (python -m benchmarks.real_size --layers 2,4 --check 8 --threads 2)

The stand-ins and every rung are cached in benchmarks/.cache/, keyed by the params and the code
that build them (BUILD_CODE), so a second run is only the timing. Goals (issue 28), at 32 layers:
ONNX INT4 decode >= 1.2x llama.cpp Q4_K_M, INT4 prefill at 512 >= 1.0x llama.cpp's, every rung's
decode >= 70 % of the memory limit.
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
from stages.common.runtime import get_logger, progress

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


def onnx_rungs(hf: Path, threads: int, int8_variants: dict[str, list[str]],
               int4_variants: dict[str, list[str]]) -> list[Built]:
    """FP32, INT8 (one per variant of quant_int8 params) and INT4 (one per variant of quant_int4
    params) of `hf`, by the stages' own code."""
    from stages.common.onnx_models import run_builder
    from stages.quant_int4 import quantize_folder
    from stages.quant_int8 import build_int8

    base = config(hf, threads, [])
    serving = OmegaConf.to_container(base.serving)
    fp32 = cached(CACHE / f"onnx_fp32-{key(hf.name, serving)}",
                  lambda out: run_builder(hf, out, "fp32", "cpu", serving=base.serving))
    rungs = [Built("onnx_fp32", fp32, "onnx", onnx_decode_bytes(fp32))]
    for name, overrides in int8_variants.items():
        cfg = config(hf, threads, overrides)
        path = cached(CACHE / f"onnx_int8-{key(hf.name, serving, OmegaConf.to_container(cfg.quant_int8))}",
                      lambda out, cfg=cfg: build_int8(cfg, hf, fp32, out))
        rungs.append(Built(name, path, "onnx", onnx_decode_bytes(path), " ".join(overrides)))
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


def prefill_pipeline_rung(served: Built, prefill: Built) -> Built:
    """`served` with its prompts run on `prefill`'s graph (stages/common/prefill_pipeline.py: the
    AMX route for prefill, INT4 for the steps), its files linked from both rungs."""
    from stages.common.prefill_pipeline import write_prefill_pipeline

    code = hashlib.sha256(Path("stages/common/prefill_pipeline.py").read_bytes()).hexdigest()[:10]
    path = cached(CACHE / f"{served.path.name}-prefill-{prefill.path.name}-{code}",
                  lambda out: write_prefill_pipeline(served.path, out, prefill=prefill.path))
    return Built(f"{served.name} + INT8 prefill", path, "onnx pipeline", served.decode_bytes,
                 f"prompt on {prefill.name}")


def gguf_rungs(hf: Path, threads: int, file_types: list[str], with_f16: bool = False) -> list[Built]:
    """llama.cpp's own conversion of `hf` (f16), quantized to each of `file_types`; the f16 file
    is a rung too with `with_f16` (the reference where no ONNX FP32 graph is built)."""
    from stages.common import gguf

    def f16() -> Path:  # made when a rung needs it: the quantized files outlive it (disk: 2.8 GB at 8 layers)
        return cached(CACHE / f"{hf.name}-f16.gguf", lambda out: gguf.convert(hf, out, CACHE))

    rungs = [Built("llama.cpp f16", f16(), "llama.cpp", gguf.decode_bytes(f16()))] if with_f16 else []
    for file_type in file_types:
        path = cached(CACHE / f"{hf.name}-{file_type}.gguf",
                      lambda out, t=file_type: gguf.quantize(f16(), out, t, threads))
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
    """Logits at every prompt position (llama.cpp keeps them only when opened to); for a prefill
    pipeline, the last position's after a prompt of the first half and after each later token fed
    as a step (prefill_pipeline.stepped_logits), as served: the full graph's last rows."""
    if rung.runtime == "onnx pipeline":
        from stages.common.prefill_pipeline import stepped_logits

        return stepped_logits(model, prompt, len(prompt) // 2)
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


def named(specs: list[str]) -> dict[str, list[str]]:
    """'NAME:K=V,K=V' options as {NAME: [K=V, ...]}."""
    out = {}
    for spec in specs:
        name, _, overrides = spec.partition(":")
        out[name] = [o for o in overrides.split(",") if o]
    return out


def depth_rungs(layers: int, args: argparse.Namespace) -> list[Built]:
    """Every rung of the `layers`-deep stand-in, built (or taken from the cache)."""
    hf = stand_in(layers)
    int8 = {"onnx_int8": [], "onnx_int8 dynamic": ["quant_int8.method=dynamic"], **named(args.int8)}
    int4 = {"onnx_int4": [], "onnx_int4 block 128": ["quant_int4.block_size=128"],
            "onnx_int4 block 128 (lm_head 4-bit)": ["quant_int4.block_size=128", "quant_int4.keep_8bit=[]"],
            **named(args.int4)}
    rungs = onnx_rungs(hf, args.threads, int8, int4)
    rungs.append(prefill_pipeline_rung(next(r for r in rungs if r.name == "onnx_int4"),
                                       next(r for r in rungs if r.name == "onnx_int8 dynamic")))
    if not args.no_adapter:
        rungs += adapter_rungs(hf, args.threads)
    for name, pairs in named(args.serving).items():
        knobs = {k: json.loads(v) for k, _, v in (pair.partition("=") for pair in pairs)}
        rungs.append(serving_variant(next(r for r in rungs if r.name == "onnx_int4"), name, knobs))
    if not args.no_llama_cpp:
        rungs += gguf_rungs(hf, args.threads, [t for t in args.gguf.split(",") if t])
    return rungs


def direct_rungs(layers: int, args: argparse.Namespace) -> list[Built]:
    """llama.cpp's rungs at the target depth itself, measured rather than fitted: its converter
    and quantizer stream tensors, where the ONNX builder holds ~3x the FP32 weights in memory
    (9.5 GB at 2 layers; Phi-4-mini's 32 would need ~45 GB). Its own f16 file is the reference."""
    return gguf_rungs(stand_in(layers), args.threads, [t for t in args.gguf.split(",") if t], with_f16=True)


def time_rungs(rungs: list[Built], args: argparse.Namespace) -> dict:
    """Decode (prompt `--prompt-tokens`, `--new-tokens` steps), prefill at both prompt lengths,
    and fidelity to FP32, for every rung at one depth, with the bandwidth limit of the same run."""
    ids = lambda n: [(17 + 31 * i) % 8000 + 100 for i in range(n)]  # noqa: E731 (any ids: weights are random)
    prompt, long_prompt = ids(args.prompt_tokens), ids(args.long_prompt_tokens)
    context = max(len(prompt) + args.new_tokens, len(long_prompt) + 1) + 8
    # Two passes, the second in reverse order, the bandwidth before each: this VM's rates drift by
    # 20-30 % within minutes, and a rung timed only in a slow minute would lose to one timed in a
    # fast one. (All models resident at once would be fairer still, but at several GB each they
    # push the memory-mapped weights out of the page cache.)
    limits = {n: 0.0 for n in sorted({1, args.threads})}
    runs: dict[str, list] = {rung.name: [] for rung in rungs}
    long_runs: dict[str, list[float]] = {rung.name: [] for rung in rungs}
    logits: dict[str, np.ndarray] = {}
    for order in (rungs, rungs[::-1]):
        limits = {n: max(rate, read_bandwidth(n)) for n, rate in limits.items()}
        for rung in progress(order, f"timing {len(rungs)} rungs"):
            model = open_built(rung, args.threads, context)
            model.timed_decode(prompt, 2)  # warm-up
            runs[rung.name] += [model.timed_decode(prompt, args.new_tokens) for _ in range(args.repeats)]
            long_runs[rung.name].append(model.timed_decode(long_prompt, 1)[0])
            if rung.name not in logits:
                logits[rung.name] = prompt_logits(rung, model, prompt, args.threads, context)
            del model
    limits = {n: max(rate, read_bandwidth(n)) for n, rate in limits.items()}
    rows = []
    for rung in rungs:
        decode = statistics.median(args.new_tokens / sum(steps) for _, steps in runs[rung.name])
        # Fidelity on the prompt's positions, so a fast row is also the same function: against the
        # FP32 graph (the hot-swap rungs: against the FP32 base + adapter).
        reference = ("onnx_adapter_fp32" if rung.runtime == "onnx adapter"
                     else "onnx_fp32" if "onnx_fp32" in logits else "llama.cpp f16")
        rows = logits[rung.name]
        kl, top1 = next_token_fidelity(logits[reference][len(logits[reference]) - len(rows):], rows)
        rows.append({"rung": rung.name, "runtime": rung.runtime, "note": rung.note,
                     "decode_mb": round(rung.decode_bytes / 1e6, 1), "decode_tok_s": round(decode, 3),
                     "prefill_tok_s": round(statistics.median(len(prompt) / p for p, _ in runs[rung.name]), 1),
                     "prefill_long_tok_s": round(len(long_prompt) / statistics.median(long_runs[rung.name]), 1),
                     "gb_s": round(rung.decode_bytes * decode / 1e9, 2),
                     "of_limit": round(rung.decode_bytes * decode / 1e9 / limits[args.threads], 3),
                     "reference": reference, "kl": round(float(kl.mean()), 5), "top1": round(float(top1.mean()), 3)})
    return {"bandwidth_gb_s": {str(k): round(v, 1) for k, v in limits.items()}, "rungs": rows}


# ------------------------------------------------------------------------------- the fit
def fit_depth(points: dict[int, float], at: int) -> tuple[float, float, float]:
    """(fixed, per layer, value at `at`) of the least-squares line through {layers: value}: a
    step's seconds (or bytes) are the embedding and lm_head's, plus the same again per layer."""
    if len(points) < 2:
        raise ValueError(f"a fit needs two depths or more, got {sorted(points)}")
    per_layer, fixed = np.polyfit(list(points), list(points.values()), 1)
    return float(fixed), float(per_layer), float(fixed + per_layer * at)


# Each figure is fitted as seconds (or bytes) per token, the quantity that is linear in depth.
FITTED = {"decode_tok_s": "decode s/token", "prefill_tok_s": "prefill s/token",
          "prefill_long_tok_s": "prefill s/token (long prompt)"}


def project(depths: dict[int, dict], fit: list[int], check: int | None, target: int, limit: float) -> list[dict]:
    """Every rung at `target` layers from the `fit` depths, the same fit's error at `check`, and
    beside it what was measured at `target` itself where a rung was (llama.cpp's)."""
    rows = []
    for name in [r["rung"] for r in depths[fit[0]]["rungs"]]:
        at = {layers: row for layers, depth in depths.items() for row in depth["rungs"] if row["rung"] == name}
        row = {"rung": name, "layers": target}
        _, per_layer_bytes, row["decode_mb"] = fit_depth({L: at[L]["decode_mb"] for L in fit}, target)
        row["mb_per_layer"] = round(per_layer_bytes, 2)
        for figure in FITTED:
            fixed, per_layer, seconds = fit_depth({L: 1.0 / at[L][figure] for L in fit}, target)
            row[figure] = round(1.0 / seconds, 3)
            row[f"{figure}_fixed_ms"], row[f"{figure}_per_layer_ms"] = round(fixed * 1e3, 3), round(per_layer * 1e3, 3)
            for deeper, label in ((check, "check"), (target, "measured")):
                if deeper is not None and deeper in at and deeper not in fit:
                    predicted = fit_depth({L: 1.0 / at[L][figure] for L in fit}, deeper)[2]
                    row[f"{figure}_{label}_error"] = round(at[deeper][figure] * predicted - 1.0, 3)
        row["decode_mb"] = round(row["decode_mb"], 1)
        row["of_limit"] = round(row["decode_mb"] / 1e3 * row["decode_tok_s"] / limit, 3)
        deepest = max(L for L in at if L in {*fit, check})
        row["kl"], row["top1"], row["kl_layers"] = at[deepest]["kl"], at[deepest]["top1"], deepest
        if target in at:
            row["measured"] = {k: at[target][k] for k in ("decode_mb", "of_limit", *FITTED, "kl", "top1")}
        rows.append(row)
    return rows


def main() -> None:
    from stages.common.runtime import cpu_description

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="2,4", help="depths to measure and fit, comma-separated")
    parser.add_argument("--check", type=int, default=None, help="one deeper depth, measured to check the fit")
    parser.add_argument("--target-layers", type=int, default=32, help="the depth to project to (Phi-4-mini's)")
    parser.add_argument("--direct", action="store_true",
                        help="also measure llama.cpp's rungs at --target-layers itself (a 7.7 GB checkpoint)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--long-prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per rung in each of two passes")
    parser.add_argument("--no-llama-cpp", action="store_true", help="only the ONNX rungs")
    parser.add_argument("--no-adapter", action="store_true", help="without the hot-swap (base + adapter) rungs")
    parser.add_argument("--gguf", default="Q8_0,Q4_0,Q4_K_M", help="llama.cpp file types to compare")
    parser.add_argument("--int8", action="append", default=[], metavar="NAME:K=V,K=V",
                        help="one more INT8 rung with quant_int8 overrides")
    parser.add_argument("--int4", action="append", default=[], metavar="NAME:K=V,K=V",
                        help="one more INT4 rung with quant_int4 overrides, e.g. "
                             "'int4 block 64:quant_int4.block_size=64'")
    parser.add_argument("--serving", action="append", default=[], metavar="NAME:K=V,K=V",
                        help="the profile's INT4 rung once more with other serving knobs, e.g. "
                             "'1 thread:intra_op_num_threads=1'")
    parser.add_argument("--build-only", action="store_true", help="build and cache the rungs, time nothing")
    parser.add_argument("--table-only", action="store_true", help="print the table of the last run (--out)")
    parser.add_argument("--out", type=Path, default=CACHE / "real_size.json")
    args = parser.parse_args()
    if args.table_only:
        print(table(json.loads(args.out.read_text())))
        return

    fit = sorted(int(x) for x in args.layers.split(",") if x)
    measured = fit + ([args.check] if args.check is not None else [])
    built = {layers: depth_rungs(layers, args) for layers in measured}  # every build before any timing
    if args.direct and not args.no_llama_cpp:
        built[args.target_layers] = direct_rungs(args.target_layers, args)
    if args.build_only:
        return
    depths = {layers: time_rungs(rungs, args) for layers, rungs in built.items()}
    limit = max(d["bandwidth_gb_s"][str(args.threads)] for d in depths.values())
    report = {"cpu": cpu_description(), "llama_cpp": llama_cpp_info(args.no_llama_cpp), "threads": args.threads,
              "prompt_tokens": args.prompt_tokens, "long_prompt_tokens": args.long_prompt_tokens,
              "new_tokens": args.new_tokens, "repeats": args.repeats, "fit_layers": fit, "check_layers": args.check,
              "direct_layers": args.target_layers if args.direct else None,
              "bandwidth_gb_s": limit, "depths": {str(k): v for k, v in depths.items()}}
    write_json(args.out, report)  # the timings survive a failing fit
    if len(fit) >= 2:
        report["projected"] = project(depths, fit, args.check, args.target_layers, limit)
        write_json(args.out, report)
    print(table(report))


def llama_cpp_info(skip: bool) -> str:
    """What llama.cpp's build uses on this CPU (its system info: ISA, AMX, weight repacking)."""
    if skip:
        return ""
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}: " + llama_cpp.llama_print_system_info().decode().strip(" |")


def table(report: dict) -> str:
    long, short = report["long_prompt_tokens"], report["prompt_tokens"]
    lines = [f"CPU: {report['cpu']}", f"llama.cpp: {report['llama_cpp'] or 'not timed'}",
             f"memory-read bandwidth (best of the runs): {report['bandwidth_gb_s']} GB/s on {report['threads']} "
             f"threads; greedy, {report['new_tokens']} new tokens after {short}, median of 2 x {report['repeats']}",
             ""]
    for layers, depth in report["depths"].items():
        lines += [f"Measured, {layers} layers:", "",
                  f"| rung | MB read / token | decode tok/s | of limit | prefill@{short} tok/s | "
                  f"prefill@{long} tok/s | KL to FP32 | top-1 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['rung']} | {r['decode_mb']:,.0f} | {r['decode_tok_s']:.2f} | {r['of_limit']:.0%} | "
                  f"{r['prefill_tok_s']:,.0f} | {r['prefill_long_tok_s']:,.0f} | {r['kl']:.5f} | {r['top1']:.3f} |"
                  for r in depth["rungs"]]
        lines.append("")
    if "projected" not in report:
        return "\n".join(lines)
    rows = {r["rung"]: r for r in report["projected"]}
    target = next(iter(rows.values()))["layers"]
    check = report["check_layers"]
    lines += [f"Fitted on {report['fit_layers']} layers, projected to {target}"
              + (f" (in brackets: the rate measured at {check} layers vs the fit's prediction)" if check else "")
              + ":", "",
              f"| rung | MB / token | decode tok/s | of limit | prefill@{short} tok/s | prefill@{long} tok/s | "
              f"ms/token per layer: decode | prefill@{long} |", "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def err(r: dict, figure: str) -> str:
        return f" [{r[f'{figure}_check_error'] + 0.0:+.0%}]" if f"{figure}_check_error" in r else ""

    for r in rows.values():
        lines.append(f"| {r['rung']} | {r['decode_mb']:,.0f} | {r['decode_tok_s']:.2f}{err(r, 'decode_tok_s')} | "
                     f"{r['of_limit']:.0%} | {r['prefill_tok_s']:,.1f}{err(r, 'prefill_tok_s')} | "
                     f"{r['prefill_long_tok_s']:,.1f}{err(r, 'prefill_long_tok_s')} | "
                     f"{r['decode_tok_s_per_layer_ms']:.2f} | {r['prefill_long_tok_s_per_layer_ms']:.3f} |")
        if "measured" in r:
            m = r["measured"]
            lines.append(f"| ↳ measured at {target} layers | {m['decode_mb']:,.0f} | {m['decode_tok_s']:.2f} | "
                         f"{m['of_limit']:.0%} | {m['prefill_tok_s']:,.1f} | {m['prefill_long_tok_s']:,.1f} | | |")

    def ratio(a: str, b: str, figure: str, goal: float) -> str:
        if a not in rows or b not in rows:
            return ""
        value = rows[a][figure] / rows[b][figure]
        return f"{a} / {b}, {figure}: {value:.2f}x (goal >= {goal}x: {'met' if value >= goal else 'missed'})"

    lines += ["", f"At {target} layers (goals of issue 28):"]
    for a in [r for r in rows if r.startswith("onnx_int4")]:
        lines += filter(None, [ratio(a, "llama.cpp Q4_K_M", "decode_tok_s", 1.2),
                               ratio(a, "llama.cpp Q4_K_M", "prefill_long_tok_s", 1.0)])
    slow = [f"{r['rung']} {r['of_limit']:.0%}" for r in rows.values() if r["of_limit"] < 0.7]
    lines.append("every rung's decode >= 70 % of the limit: " + ("met" if not slow else "missed by " + ", ".join(slow)))
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Where one decode step, or one prefill, of an ONNX rung spends its time: onnxruntime's own
profiler (SessionOptions.enable_profiling) on the graph onnxruntime-genai serves, per operator type
and per node, with each node's weight bytes, the GB/s it reads them at and the GFLOP/s its
matrix products reach.

- decode (default): one new token after a `--past`-token KV cache (bandwidth: GB/s matters);
- prefill (`--prompt N`): N tokens on an empty cache (compute: GFLOP/s matters).

    python -m tools.ort_profile benchmarks/.cache/onnx_int4-... --threads 2 --past 64
    python -m tools.ort_profile benchmarks/.cache/onnx_int4-... --threads 2 --prompt 512 --steps 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def decode_feed(session, head_size: int, past: int, new: int = 1) -> dict[str, np.ndarray]:
    """Inputs of one run: `new` tokens at positions past.. after a KV cache of `past` positions
    (a decode step: new=1; a prefill: past=0)."""
    feed = {}
    for value in session.get_inputs():
        if value.name == "input_ids":
            feed[value.name] = (np.arange(new, dtype=np.int64)[None] * 31 + 42) % 8000
        elif value.name == "attention_mask":
            feed[value.name] = np.ones((1, past + new), dtype=np.int64)
        elif value.name == "position_ids":
            feed[value.name] = np.arange(past, past + new, dtype=np.int64)[None]
        elif value.name.startswith("past_key_values"):
            heads = value.shape[1]
            dtype = np.float16 if "float16" in value.type else np.float32
            feed[value.name] = np.random.default_rng(0).standard_normal((1, heads, past, head_size)).astype(dtype)
        else:
            raise SystemExit(f"{value.name}: an input this tool does not know how to feed")
    return feed


def weight_sizes(graph: Path) -> tuple[dict[str, int], dict[str, int]]:
    """By node name: bytes of the initializers it reads, and the weight elements a matrix product
    multiplies (MatMulNBits: K x N; MatMul, MatMulInteger: its initializer's shape), 0 elsewhere."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    sizes, shapes = {}, {}
    for init in model.graph.initializer:
        location = {e.key: e.value for e in init.external_data}
        sizes[init.name] = int(location["length"]) if "length" in location else len(init.raw_data)
        shapes[init.name] = int(np.prod(init.dims))
    elements = {}
    for n in model.graph.node:
        attrs = {a.name: a.i for a in n.attribute}
        if n.op_type == "MatMulNBits":
            elements[n.name] = attrs["K"] * attrs["N"]
        elif n.op_type in ("MatMul", "MatMulInteger") and len(n.input) > 1:
            elements[n.name] = shapes.get(n.input[1], 0)
    return {n.name: sum(sizes.get(i, 0) for i in n.input) for n in model.graph.node}, elements


def profile(folder: Path, threads: int, past: int, steps: int, warmup: int = 3, prompt: int = 0) -> list[dict]:
    """Per node: mean microseconds per run over `steps` profiled runs of a decode step (after
    `past` tokens) or, with `prompt`, of a prefill of that many tokens."""
    import onnxruntime as ort

    from stages.common.serving_graph import decoder_file

    head_size = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    graph = folder / decoder_file(folder)  # the graph genai serves (the pruned one where there is one)
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "run")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        feed = decode_feed(session, head_size, 0, prompt) if prompt else decode_feed(session, head_size, past)
        for _ in range(warmup + steps):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    start = runs[warmup]
    per_node: dict[str, dict] = defaultdict(lambda: {"us": 0.0, "op": ""})
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            node = per_node[e["name"].removesuffix("_kernel_time")]
            node["us"] += e["dur"] / steps
            node["op"] = e["args"].get("op_name", "")
    sizes, elements = weight_sizes(graph)
    rows = per_node.items()
    return sorted(({"node": name, **v, "weight_mb": sizes.get(name, 0) / 1e6,
                    "gflop": 2 * elements.get(name, 0) * max(prompt, 1) / 1e9} for name, v in rows),
                  key=lambda r: -r["us"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--past", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--prompt", type=int, default=0, help="profile a prefill of this many tokens instead")
    args = parser.parse_args()
    from stages.common.runtime import cpu_description

    rows = profile(args.folder, args.threads, args.past, args.steps, prompt=args.prompt)
    total = sum(r["us"] for r in rows)
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        by_op[r["op"]][0] += r["us"]
        by_op[r["op"]][1] += r["gflop"]
    what = f"prefill of {args.prompt} tokens" if args.prompt else f"decode step (past {args.past})"
    print(f"{args.folder}: {total / 1e3:.2f} ms of kernels per {what}, {args.threads} threads")
    print(f"CPU: {cpu_description()}")
    # GFLOP per CPU-second: per thread, so machines with other core counts compare.
    print("\n| operator | ms / run | share | GFLOP/s | GFLOP/CPU-s |\n|---|---:|---:|---:|---:|")
    for op, (us, gflop) in sorted(by_op.items(), key=lambda kv: -kv[1][0]):
        rate = gflop / (us / 1e6) if gflop and us else 0.0
        print(f"| {op} | {us / 1e3:.3f} | {us / total:.1%} | {rate:.0f} | {rate / args.threads:.0f} |")
    print("\n| node | operator | ms / run | weight MB | GB/s | GFLOP/s |\n|---|---|---:|---:|---:|---:|")
    for r in rows[: args.top]:
        rate = r["weight_mb"] / 1e3 / (r["us"] / 1e6) if r["us"] else 0.0
        flops = r["gflop"] / (r["us"] / 1e6) if r["us"] else 0.0
        print(f"| {r['node']} | {r['op']} | {r['us'] / 1e3:.3f} | {r['weight_mb']:.1f} | {rate:.1f} | {flops:.0f} |")


if __name__ == "__main__":
    main()

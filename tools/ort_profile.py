"""Where one decode step of an ONNX rung spends its time: onnxruntime's own profiler
(SessionOptions.enable_profiling) on the graph onnxruntime-genai serves, fed one new token after
a `--past`-token KV cache, per operator type and per node, with each node's weight bytes and the
GB/s it reads them at.

    python -m tools.ort_profile benchmarks/.cache/onnx_int4-... --threads 2 --past 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def decode_feed(session, head_size: int, past: int) -> dict[str, np.ndarray]:
    """Inputs of one decode step: a token at position `past`, a KV cache of `past` positions."""
    feed = {}
    for value in session.get_inputs():
        if value.name == "input_ids":
            feed[value.name] = np.array([[42]], dtype=np.int64)
        elif value.name == "attention_mask":
            feed[value.name] = np.ones((1, past + 1), dtype=np.int64)
        elif value.name == "position_ids":
            feed[value.name] = np.array([[past]], dtype=np.int64)
        elif value.name.startswith("past_key_values"):
            heads = value.shape[1]
            dtype = np.float16 if "float16" in value.type else np.float32
            feed[value.name] = np.random.default_rng(0).standard_normal((1, heads, past, head_size)).astype(dtype)
        else:
            raise SystemExit(f"{value.name}: an input this tool does not know how to feed")
    return feed


def weight_bytes(folder: Path) -> dict[str, int]:
    """Bytes of the initializers each node reads, by node name."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    sizes = {}
    for init in model.graph.initializer:
        location = {e.key: e.value for e in init.external_data}
        sizes[init.name] = int(location["length"]) if "length" in location else len(init.raw_data)
    return {n.name: sum(sizes.get(i, 0) for i in n.input) for n in model.graph.node}


def profile(folder: Path, threads: int, past: int, steps: int, warmup: int = 3) -> list[dict]:
    """Per node: mean microseconds per decode step over `steps` profiled runs."""
    import onnxruntime as ort

    head_size = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "decode")
        session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        feed = decode_feed(session, head_size, past)
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
    sizes = weight_bytes(folder)
    return sorted(({"node": name, **v, "weight_mb": sizes.get(name, 0) / 1e6} for name, v in per_node.items()),
                  key=lambda r: -r["us"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--past", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    rows = profile(args.folder, args.threads, args.past, args.steps)
    total = sum(r["us"] for r in rows)
    by_op: dict[str, float] = defaultdict(float)
    for r in rows:
        by_op[r["op"]] += r["us"]
    print(f"{args.folder}: {total / 1e3:.2f} ms of kernels per decode step ({args.threads} threads, past {args.past})")
    print("\n| operator | ms / step | share |\n|---|---:|---:|")
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"| {op} | {us / 1e3:.3f} | {us / total:.1%} |")
    print("\n| node | operator | ms / step | weight MB | GB/s |\n|---|---|---:|---:|---:|")
    for r in rows[: args.top]:
        rate = r["weight_mb"] / 1e3 / (r["us"] / 1e6) if r["us"] else 0.0
        print(f"| {r['node']} | {r['op']} | {r['us'] / 1e3:.3f} | {r['weight_mb']:.1f} | {rate:.1f} |")


if __name__ == "__main__":
    main()

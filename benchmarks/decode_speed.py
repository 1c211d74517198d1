"""Benchmark: decode tokens/s of every ONNX rung (onnxruntime-genai), the hot-swap adapter path
included, against transformers on the same merged model (one KV-cached greedy step per token),
same prompt and lengths, measured side by side in one run.

Every model runs behind the interface evaluate uses (stages/common/language_model.py): the same
timed decode loop, prefill timed apart from the decode steps.
Goals on the embedded default: INT4 >= 8x transformers and >= 2.5x the FP32 rung.

    make bench        (after make repro; or: python -m benchmarks.decode_speed --new-tokens 128)
"""

from __future__ import annotations

import argparse
import statistics

from stages.common import layout
from stages.common.checkpoint import load_tokenizer
from stages.common.language_model import LanguageModel, open_rung
from stages.common.params import load_params
from stages.common.records import read_jsonl
from stages.common.rungs import RUNGS


def decode_rate(model: LanguageModel, prompt: list[int], new_tokens: int, repeats: int) -> float:
    """Median over repeats of new tokens per second of decode steps (the prefill is timed apart)."""
    model.timed_decode(prompt, 4)  # warm-up
    return statistics.median(new_tokens / sum(model.timed_decode(prompt, new_tokens)[1]) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cfg = load_params([])  # the profile in params.yaml: dtype and device of the transformers rung
    tokenizer = load_tokenizer(layout.MERGED_DIR)
    text = " ".join(r["text"] for r in read_jsonl(cfg.data.eval.general_heldout, "text")[:20])
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"][: args.prompt_tokens]
    names = ["torch_lora", "onnx_fp32", "onnx_int8", "onnx_int4", "onnx_adapter_fp32", "onnx_adapter_int4"]
    print(f"decode, greedy, prompt {len(prompt)} tokens, {args.new_tokens} new tokens, median of {args.repeats}")
    # Timed as served: each ONNX rung's serving graph (serving_graph.py).
    rates = {name: decode_rate(open_rung(RUNGS[name], cfg, serving=True), prompt, args.new_tokens, args.repeats)
             for name in names}
    hf, fp32 = rates["torch_lora"], rates["onnx_fp32"]
    print(f"{'rung':<24}{'tok/s':>10}{'x transformers':>16}{'x onnx fp32':>13}")
    for name, rate in rates.items():
        print(f"{name:<24}{rate:>10,.0f}{rate / hf:>16.2f}{rate / fp32:>13.2f}")
    int4 = rates["onnx_int4"]
    print(f"INT4 vs transformers: {int4 / hf:.1f}x (goal >= 8x); INT4 vs FP32: {int4 / fp32:.2f}x (goal >= 2.5x); "
          f"adapter path vs merged: FP32 {rates['onnx_adapter_fp32'] / fp32:.2f}x, "
          f"INT4 {rates['onnx_adapter_int4'] / int4:.2f}x")


if __name__ == "__main__":
    main()

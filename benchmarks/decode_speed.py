"""Benchmark: decode tokens/s of every ONNX rung (onnxruntime-genai) against HF transformers
`generate` on the same merged model, same prompt and lengths, measured side by side in one run.

Decode rate = (N - 1) / (time to generate N tokens - time to generate 1 token): prefill cancels.
Goals on the embedded default: INT4 >= 8x transformers and >= 2.5x the FP32 rung.

    make bench        (after make repro; or: python -m benchmarks.decode_speed --new-tokens 128)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from stages.common import layout
from stages.common.checkpoint import load_causal_lm, load_tokenizer
from stages.common.genai import GenaiModel
from stages.common.onnx_models import ADAPTER_FILE
from stages.common.params import load_params
from stages.common.records import read_jsonl


def decode_rate(generate: Callable[[int], None], new_tokens: int, repeats: int) -> float:
    generate(new_tokens)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(1)
        one = time.perf_counter() - start
        start = time.perf_counter()
        generate(new_tokens)
        full = time.perf_counter() - start
        rates.append((new_tokens - 1) / max(full - one, 1e-9))
    return statistics.median(rates)


def genai_generate(folder, prompt: list[int], adapter: bool = False) -> Callable[[int], None]:
    model = GenaiModel(folder)
    if adapter:
        model.load_adapter(folder / ADAPTER_FILE, "lora")

    def generate(n: int) -> None:
        generator = model.generator("lora" if adapter else None, len(prompt) + n, min_length=len(prompt) + n)
        generator.append_tokens(prompt)
        for _ in range(n):
            generator.generate_next_token()

    return generate


def transformers_generate(prompt: list[int], dtype: str, device: str) -> Callable[[int], None]:
    import torch

    model = load_causal_lm(layout.MERGED_DIR, dtype, device)
    ids = torch.tensor([prompt], device=model.device)

    def generate(n: int) -> None:
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    return generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = load_params([]).model  # the profile in params.yaml: dtype and device of the transformers run
    tokenizer = load_tokenizer(layout.MERGED_DIR)
    text = " ".join(r["text"] for r in read_jsonl("data/eval/general_heldout.jsonl", "text")[:20])
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"][: args.prompt_tokens]
    runners = {
        "transformers generate (merged)": transformers_generate(prompt, model.dtype, model.device),
        "onnx fp32": genai_generate(layout.ONNX_FP32, prompt),
        "onnx int8": genai_generate(layout.ONNX_INT8, prompt),
        "onnx int4": genai_generate(layout.ONNX_INT4, prompt),
        "onnx int4 base + adapter file": genai_generate(layout.ONNX_ADAPTER_INT4, prompt, adapter=True),
    }
    print(f"decode, greedy, prompt {len(prompt)} tokens, {args.new_tokens} new tokens, median of {args.repeats}")
    rates = {name: decode_rate(fn, args.new_tokens, args.repeats) for name, fn in runners.items()}
    hf, fp32 = rates["transformers generate (merged)"], rates["onnx fp32"]
    print(f"{'rung':<40}{'tok/s':>10}{'x transformers':>16}{'x onnx fp32':>13}")
    for name, rate in rates.items():
        print(f"{name:<40}{rate:>10,.0f}{rate / hf:>16.2f}{rate / fp32:>13.2f}")
    int4 = rates["onnx int4"]
    print(f"INT4 vs transformers: {int4 / hf:.1f}x (goal >= 8x); INT4 vs FP32: {int4 / fp32:.2f}x (goal >= 2.5x)")


if __name__ == "__main__":
    main()

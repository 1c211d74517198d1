"""The serving graph: a rung's graph with the prompt's lm_head pruned, beside the full graph.

At prefill the full graph computes logits for every prompt position and genai keeps the last; at
Phi-4-mini's 200k vocabulary that lm_head is a large share of a prompt's FLOPs. The serving graph
gathers the last position before lm_head, as the builder's `prune_lm_head` does (Gather(-1) +
Unsqueeze, logits declared [batch_size, 1, vocab], which is how genai recognizes a pruned graph).
The edit is made on every rung's own saved graph, after quantization, so INT8/INT4 do not inherit
it from FP32, and the pruned graph reads the same `model.onnx.data` (no bytes duplicated).

`genai_config.json` names the serving graph: what a user ships and runs. Whatever needs the
logits of every position (evaluate's NLL and KL, the harness) opens the full graph by name
(`GenaiModel(..., graph=FULL_GRAPH)`, the default), and `GenaiModel.logits` refuses a pruned one.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.common.serving import CONFIG_FILE

FULL_GRAPH = "model.onnx"  # every rung's graph (onnx_models.MODEL_FILE)
SERVING_GRAPH = "model.serve.onnx"  # its pruned twin on the same data file


def lm_head_input(model) -> str:
    """The hidden state the lm_head reads: the final norm's output, found by walking up from
    `logits` (through a weight-only MatMulNBits, or a dynamic INT8 route's quantize, MatMulInteger
    and scale nodes) to the first normalization node."""
    producers = {o: n for n in model.graph.node for o in n.output}
    frontier, seen = ["logits"], set()
    while frontier:
        tensor = frontier.pop()
        node = producers.get(tensor)
        if node is None or tensor in seen:
            continue
        seen.add(tensor)
        if node.op_type.endswith("LayerNormalization"):
            return tensor
        frontier += list(node.input)
    raise ValueError("no normalization node found above `logits`: not a decoder graph this edit knows")


def is_pruned(model) -> bool:
    """Whether the graph's logits hold one position (declared [batch, 1, vocab])."""
    logits = next(o for o in model.graph.output if o.name == "logits")
    dims = logits.type.tensor_type.shape.dim
    return len(dims) == 3 and dims[1].HasField("dim_value") and dims[1].dim_value == 1


def prune_lm_head(model) -> None:
    """In place: lm_head reads the last position's hidden state only (the builder's edit)."""
    from onnx import TensorProto, helper

    hidden = lm_head_input(model)
    readers = [n for n in model.graph.node if hidden in n.input]
    last = helper.make_tensor("/lm_head/prune/constants/-1", TensorProto.INT64, [], [-1])
    axis = helper.make_tensor("/lm_head/prune/constants/[1]", TensorProto.INT64, [1], [1])
    model.graph.initializer.extend([last, axis])
    gather = helper.make_node("Gather", [hidden, last.name], ["/lm_head/prune/Gather/output_0"],
                              name="/lm_head/prune/Gather", axis=1)                      # [batch, hidden]
    unsqueeze = helper.make_node("Unsqueeze", [gather.output[0], axis.name], ["/lm_head/prune/Unsqueeze/output_0"],
                                 name="/lm_head/prune/Unsqueeze")                        # [batch, 1, hidden]
    for node in readers:
        for k, name in enumerate(node.input):
            if name == hidden:
                node.input[k] = unsqueeze.output[0]
    position = min(list(model.graph.node).index(n) for n in readers)
    model.graph.node.insert(position, unsqueeze)
    model.graph.node.insert(position, gather)
    logits = next(o for o in model.graph.output if o.name == "logits")
    dims = logits.type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_value = 1


def write_serving_graph(folder: Path) -> None:
    """`folder`/model.serve.onnx, the pruned twin of its saved model.onnx (read without its
    weights: the twin references the same data file), named by its genai_config.json."""
    import onnx

    folder = Path(folder)
    model = onnx.load(str(folder / FULL_GRAPH), load_external_data=False)
    prune_lm_head(model)
    onnx.save_model(model, str(folder / SERVING_GRAPH))
    config_path = folder / CONFIG_FILE
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["model"]["decoder"]["filename"] = SERVING_GRAPH
        config_path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def decoder_file(folder: Path) -> str:
    """The graph file genai_config.json names."""
    return json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))["model"]["decoder"]["filename"]


def graph_is_pruned(path: Path) -> bool:
    import onnx

    return is_pruned(onnx.load(str(path), load_external_data=False))


def graph_overlay(graph: str = FULL_GRAPH) -> str:
    """A genai config overlay (og.Config.overlay) that opens `graph` instead of the named one."""
    return json.dumps({"model": {"decoder": {"filename": graph}}})

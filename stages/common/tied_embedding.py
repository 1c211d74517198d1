"""A tied embedding (Phi-4-mini's, the tiny model's) and a quantized lm_head: one table, not two.

The builder feeds a tied embedding as Gather(Transpose(lm_head weight)). Two matchers, one per
state of the graph: `tied_embedding` finds that float tie before quantization (to decide whether
the table can be shared), `tied_lm_head_nbits` finds the embedding Gather and the quantized lm_head
after it; `embedding_reads_lm_head` then points the Gather at the quantized bytes.
"""

from __future__ import annotations

from stages.common.errors import PipelineError


def tied_embedding(model):
    """(Gather, Transpose, lm_head MatMul) when the builder feeds a tied embedding as
    Gather(Transpose(lm_head weight)); else None."""
    inits = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for gather in model.graph.node:
        source = producers.get(gather.input[0]) if gather.op_type == "Gather" else None
        if source is None or source.op_type != "Transpose" or source.input[0] not in inits:
            continue
        matmul = next((n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] == source.input[0]), None)
        if matmul is not None:
            return gather, source, matmul
    return None


def untie_embedding(model) -> bool:
    """A tied embedding keeps the float table alive after lm_head is quantized. Give the Gather
    its own (transposed) table so it can be block-quantized too. Returns whether the graph changed."""
    from onnx import numpy_helper

    tied = tied_embedding(model)
    if tied is None:
        return False
    gather, transpose, _ = tied
    weight = next(t for t in model.graph.initializer if t.name == transpose.input[0])
    name = f"{gather.name.strip('/').replace('/', '.')}.weight"
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), name))
    gather.input[0] = name
    model.graph.node.remove(transpose)
    return True


def embedding_reads_lm_head(model, gather_name: str, lm_head_name: str) -> None:
    """For a tied embedding: once lm_head is MatMulNBits, let the embedding Gather read the same
    quantized bytes (Reshape [vocab, blocks, blob] to [vocab, hidden * bits / 8], then
    GatherBlockQuantized), as the builder's own INT4 builds do: one copy of the table, not two.
    Both quantize each vocabulary row in hidden-size blocks, so the values are the same. Needs
    no zero points (symmetric) and the hidden size in whole blocks; the caller checks."""
    import numpy as np
    from onnx import helper, numpy_helper

    nodes = {n.name: n for n in model.graph.node}
    gather, nbits = nodes[gather_name], nodes[lm_head_name]
    attrs = {a.name: helper.get_attribute_value(a) for a in nbits.attribute}
    weight = next(t for t in model.graph.initializer if t.name == nbits.input[1])
    rows, blocks, blob = weight.dims
    shape = f"{weight.name}.as_embedding_shape"
    model.graph.initializer.append(numpy_helper.from_array(np.array([rows, blocks * blob], dtype=np.int64), shape))
    reshape = helper.make_node("Reshape", [weight.name, shape], [f"{gather.name}/Reshape/output_0"],
                               name=f"{gather.name}/Reshape")
    lookup = helper.make_node("GatherBlockQuantized", [reshape.output[0], gather.input[1], nbits.input[2]],
                              list(gather.output), name=f"{gather.name}BlockQuantized", domain="com.microsoft",
                              bits=attrs["bits"], block_size=attrs["block_size"], gather_axis=0, quantize_axis=1)
    position = list(model.graph.node).index(gather)
    model.graph.node.remove(gather)
    model.graph.node.insert(position, lookup)
    model.graph.node.insert(position, reshape)
    # The float table (and the builder's Transpose feeding a tied one) now has no reader.
    producers = {o: n for n in model.graph.node for o in n.output}
    source = producers.get(gather.input[0])
    table = source.input[0] if source is not None and source.op_type == "Transpose" else gather.input[0]
    if source is not None and not any(source.output[0] in n.input for n in model.graph.node):
        model.graph.node.remove(source)
    if not any(table in n.input for n in model.graph.node):
        for t in [t for t in model.graph.initializer if t.name == table]:
            model.graph.initializer.remove(t)


def tied_lm_head_nbits(model) -> tuple[str, str] | None:
    """(embedding Gather, lm_head MatMulNBits) names where sharing is possible: the lm_head
    quantized without zero points, its hidden size in whole blocks; else None."""
    from onnx import helper

    gather = next((n for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"), None)
    nbits = next((n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")), None)
    if gather is None or nbits is None or (len(nbits.input) > 3 and nbits.input[3]):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in nbits.attribute}
    return (gather.name, nbits.name) if attrs["K"] % attrs["block_size"] == 0 else None


def matmul_k(model, matmul) -> int:
    """The inner (hidden) size of a MatMul with a constant [K, N] weight."""
    return next(t.dims[0] for t in model.graph.initializer if t.name == matmul.input[1])


def share_quantized_table(model) -> None:
    """The embedding reads the quantized lm_head's bytes, or a clear error where it cannot."""
    names = tied_lm_head_nbits(model)
    if names is None:
        raise PipelineError("found no embedding Gather and symmetric lm_head MatMulNBits (its hidden size in whole "
                            "blocks) to share the table with; turn the embedding's quantization off "
                            "(quantize_embedding=false)")
    embedding_reads_lm_head(model, *names)

"""A tied embedding (Phi-4-mini's, the tiny model's) and a quantized lm_head: one table, not two.

The builder feeds a tied embedding as Gather(Transpose(lm_head weight)). Two matchers, one per
state of the graph: `tied_embedding` finds that float tie before quantization (to decide whether
the table can be shared), `tied_lm_head_nbits` finds the embedding Gather and the quantized lm_head
after it; `embedding_reads_lm_head` then points the Gather at the quantized bytes.

A float graph is served with `gather_columns` applied: onnxruntime folds a constant Transpose
only below 1 GiB of output, so at Phi-4-mini's size (200k x 3072, 2.46 GB in float32) the
builder's form transposes the whole table at every step (85 % of an FP32 decode step, measured
by tools/ort_profile.py). Gathering the token's column of the lm_head weight and transposing
that one [hidden, batch, seq] slice gives the same values, at no cost in bytes (an untied copy
would add 2.46 GB). `gather_rows` turns it back into the builder's form for the quantizers'
matchers above.
"""

from __future__ import annotations

from stages.common.errors import PipelineError


def transposed_lookup(model):
    """(Gather, Transpose) where the embedding Gather reads Transpose(an initializer); else None."""
    inits = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for gather in model.graph.node:
        source = producers.get(gather.input[0]) if gather.op_type == "Gather" else None
        if source is not None and source.op_type == "Transpose" and source.input[0] in inits:
            return gather, source
    return None


def _replace(model, old: list, new: list) -> None:
    """Put `new` nodes where the first of `old` was, and drop `old`."""
    position = min(list(model.graph.node).index(n) for n in old)
    for node in old:
        model.graph.node.remove(node)
    for node in reversed(new):
        model.graph.node.insert(position, node)


def gather_columns(model) -> bool:
    """Gather(Transpose(W), ids) -> Transpose(Gather(W, ids, axis=1)): the token's columns of W,
    not the whole table transposed at run time (see the module docstring). Returns whether the
    graph changed."""
    from onnx import helper

    found = transposed_lookup(model)
    if found is None:
        return False
    gather, transpose = found
    columns = helper.make_node("Gather", [transpose.input[0], gather.input[1]], [f"{gather.name}/columns"],
                               name=f"{gather.name}/Columns", axis=1)  # [hidden, batch, seq]
    rows = helper.make_node("Transpose", columns.output, list(gather.output), name=f"{gather.name}/ToRows",
                            perm=[1, 2, 0])  # [batch, seq, hidden], as the row lookup gives
    _replace(model, [transpose, gather], [columns, rows])
    return True


def gather_rows(model) -> bool:
    """The inverse of gather_columns: the builder's Gather(Transpose(W)) again, with the names it
    had. Returns whether the graph changed."""
    from onnx import helper

    inits = {t.name for t in model.graph.initializer}
    for columns in model.graph.node:
        axis = next((a.i for a in columns.attribute if a.name == "axis"), 0)
        if columns.op_type != "Gather" or axis != 1 or columns.input[0] not in inits:
            continue
        rows = next((n for n in model.graph.node if n.op_type == "Transpose" and n.input[0] == columns.output[0]), None)
        if rows is None or not columns.name.endswith("/Columns"):
            continue
        name = columns.name.removesuffix("/Columns")
        table = helper.make_node("Transpose", [columns.input[0]], [f"{name.rsplit('/', 1)[0]}/Transpose/output_0"],
                                 name=f"{name.rsplit('/', 1)[0]}/Transpose", perm=[1, 0])
        gather = helper.make_node("Gather", [table.output[0], columns.input[1]], list(rows.output), name=name)
        _replace(model, [columns, rows], [table, gather])
        return True
    return False


def tied_embedding(model):
    """(Gather, Transpose, lm_head MatMul) when the builder feeds a tied embedding as
    Gather(Transpose(lm_head weight)); else None."""
    found = transposed_lookup(model)
    if found is None:
        return None
    matmul = next((n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] == found[1].input[0]), None)
    return (*found, matmul) if matmul is not None else None


def untie_embedding(model) -> bool:
    """A tied embedding keeps the float table alive after lm_head is quantized. Give the Gather
    its own (transposed) table so it can be block-quantized too. Returns whether the graph changed."""
    from onnx import numpy_helper

    gather_rows(model)
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

"""Float zero points (HQQ's) split into integer ones plus a per-block correction, so MatMulNBits
runs its fast kernel.

HQQ fits each block's zero point as a float, which is what lets it land back on a Q4_1 source
grid (README "INT4: which recipe on real weights"). onnxruntime's MatMulNBits accepts float zero
points, but only on its slow path: on SmolLM2-135M it decoded 5 tok/s against RTN's 76 (uint8
zero points). The weight a block encodes is

    w = s · (q - z) = s · (q - round(z)) - s · (z - round(z))

so the same product is MatMulNBits with the rounded (uint8) zero points, plus the input's block
sums times a [blocks, N] float matrix C = -s · (z - round(z)): a MatMul 1/block_size the size of
the weight's. Exact up to float rounding (and, at accuracy_level 4, the int8 activations of the
main term, which the correction's float sums do not have); no library does this rewrite.
"""

from __future__ import annotations

import numpy as np


def _attrs(node) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute}


def pack_4bit(codes: np.ndarray) -> np.ndarray:
    """[N, blocks] values 0..15 → MatMulNBits' zero-point layout: per row, two blocks a byte, the
    first in the low nibble, a row's odd last block padded with 0."""
    n, blocks = codes.shape
    padded = np.zeros((n, blocks + blocks % 2), dtype=np.uint8)
    padded[:, :blocks] = codes
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).reshape(-1)


def has_float_zero_points(node, inits: dict) -> bool:
    """A 4-bit MatMulNBits over whole blocks with float zero points: what the split rewrites (an
    8-bit one keeps them: 8-bit HQQ is no default)."""
    from onnx import TensorProto

    if node.op_type != "MatMulNBits" or len(node.input) < 4 or node.input[3] not in inits:
        return False
    a = _attrs(node)
    return (inits[node.input[3]].data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and a["bits"] == 4
            and a["K"] % a["block_size"] == 0)


def split_float_zero_points(model) -> int:
    """Rewrites every MatMulNBits that has_float_zero_points in place; returns how many. Its input
    must be [batch, sequence, K] (the builder's decoder graphs; another rank fails at the Reshape);
    block sums of one input are computed once for every MatMul that reads it."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    targets = [n for n in model.graph.node if has_float_zero_points(n, inits)]
    if not targets:
        return 0
    sums: dict[str, str] = {}
    nodes, dropped = [], set()
    for node in model.graph.node:
        if node not in targets:
            nodes.append(node)
            continue
        a = _attrs(node)
        k, n, block = a["K"], a["N"], a["block_size"]
        blocks = k // block
        zero = numpy_helper.to_array(inits[node.input[3]]).astype(np.float32).reshape(n, blocks)
        scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, blocks)
        rounded = np.clip(np.round(zero), 0, 15)
        correction = (-(zero - rounded) * scale).T.astype(np.float32)  # [blocks, N]
        base = node.input[3].removesuffix("_zero_points")
        zp = numpy_helper.from_array(pack_4bit(rounded.astype(np.uint8)), f"{base}_zero_points_u8")
        c = numpy_helper.from_array(correction, f"{base}_zero_point_correction")
        dropped.add(node.input[3])
        model.graph.initializer.extend([zp, c])
        x, y = node.input[0], node.output[0]
        key = f"{x}|{block}"
        if key not in sums:
            shape = numpy_helper.from_array(np.array([0, 0, blocks, block], dtype=np.int64),
                                            f"{node.name}/blocks_shape")
            axes = numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{node.name}/blocks_axis")
            model.graph.initializer.extend([shape, axes])
            sums[key] = f"{node.name}/block_sums"
            nodes += [helper.make_node("Reshape", [x, shape.name], [f"{node.name}/blocks"], f"{node.name}/Reshape"),
                      helper.make_node("ReduceSum", [f"{node.name}/blocks", axes.name], [sums[key]],
                                       f"{node.name}/ReduceSum", keepdims=0)]
        node.input[3] = zp.name
        node.output[0] = f"{y}/integer_zero_points"
        nodes += [node,
                  helper.make_node("MatMul", [sums[key], c.name], [f"{y}/correction"], f"{node.name}/Correction"),
                  helper.make_node("Add", [node.output[0], f"{y}/correction"], [y], f"{node.name}/AddCorrection")]
    kept = [t for t in model.graph.initializer if t.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(targets)

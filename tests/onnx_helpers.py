"""Graph inspection the tests share (no stage needs it)."""

from __future__ import annotations


def matmul_nbits_attributes(model) -> list[dict[str, int]]:
    """The attributes of every MatMulNBits node (what the tests check against params)."""
    from onnx import helper

    return [{a.name: helper.get_attribute_value(a) for a in n.attribute}
            for n in model.graph.node if n.op_type == "MatMulNBits"]

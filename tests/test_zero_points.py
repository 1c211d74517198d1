"""HQQ's float zero points split into uint8 ones plus a block correction (zero_points.py): the
same product as the float zero points, on the kernel that is fast."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from stages.common import layout, weight_only
from stages.common.chat import prompt_ids
from stages.common.checkpoint import load_tokenizer
from stages.common.genai import GenaiModel
from stages.common.onnx_models import copy_support_files, load, save_canonical
from stages.common.weight_only import WeightOnlySpec, quantize_weights
from stages.common.zero_points import pack_4bit
from tests.test_export import prompts


def test_zero_points_are_packed_two_a_byte_low_nibble_first():
    codes = np.array([[1, 2, 3], [15, 0, 7]], dtype=np.uint8)
    assert pack_4bit(codes).tolist() == [0x21, 0x03, 0x0F, 0x07]


def zero_point_types(folder) -> set[int]:
    model = load(folder)
    inits = {t.name: t.data_type for t in model.graph.initializer}
    return {inits[n.input[3]] for n in model.graph.node if n.op_type == "MatMulNBits" and len(n.input) > 3}


def test_split_zero_points_compute_what_the_float_ones_do(ladder_workspace, tmp_path, monkeypatch):
    """accuracy_level 1 (float activations) on both, so that only the split differs: logits equal
    to float rounding. A wrong nibble order, sign or block layout moves them by whole units."""
    spec = WeightOnlySpec(bits=4, algorithm="hqq", block_size=32, symmetric=False, accuracy_level=1,
                          embedding=True, keep_8bit=("lm_head",))
    split, floats = tmp_path / "split", tmp_path / "float"
    for folder in (split, floats):
        copy_support_files(layout.ONNX_FP32, folder)
    save_canonical(quantize_weights(load(layout.ONNX_FP32), spec), split)
    monkeypatch.setattr(weight_only, "split_float_zero_points", lambda model: 0)
    save_canonical(quantize_weights(load(layout.ONNX_FP32), spec), floats)
    assert zero_point_types(floats) >= {TensorProto.FLOAT} and zero_point_types(split) == {TensorProto.UINT8}

    tokenizer = load_tokenizer(layout.MERGED_DIR)
    ids = [t for p in prompts(3) for t in prompt_ids(tokenizer, p)]
    a, b = GenaiModel(floats).logits(ids), GenaiModel(split).logits(ids)
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max() + 1e-5, np.abs(a - b).max()
    assert (a.argmax(-1) == b.argmax(-1)).all()

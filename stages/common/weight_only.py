"""Post-hoc quantization of ONNX graphs with onnxruntime.quantization (the tied-embedding graph
surgery it needs is in tied_embedding.py).

- weight-only blockwise INT4/INT8 (MatMulNBits) through MatMulNBitsQuantizer: RTN (its default
  quantizer), k_quant, HQQ (its float zero points then split for the fast kernel: zero_points.py),
  GPTQ (calibrated); LoRA MatMuls are never quantized;
- dynamic INT8 (quantize_dynamic, per channel, QInt8).
Every result is saved canonically (sorted initializers) so that reruns are byte-identical.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stages.common.errors import PipelineError
from stages.common.onnx_models import DATA_FILE, MODEL_FILE, is_lora_weight
from stages.common.tied_embedding import (
    gather_columns,
    gather_rows,
    matmul_k,
    share_quantized_table,
    tied_embedding,
    untie_embedding,
)
from stages.common.zero_points import split_float_zero_points


def lora_matmuls(model) -> list[str]:
    """MatMul nodes fed by a LoRA weight: kept in float so the adapter stays swappable."""
    return sorted(n.name for n in model.graph.node if n.op_type == "MatMul" and any(map(is_lora_weight, n.input)))


def calibration_reader(model, samples: Sequence[Sequence[int]], head_size: int):
    """GPTQ's calibration data: each sample as one prefill, with an empty KV cache (its head
    size is symbolic in the graph, so it comes from genai_config.json)."""
    import numpy as np
    from onnx import helper
    from onnxruntime.quantization import CalibrationDataReader

    past = {}
    for value in model.graph.input:
        if value.name.startswith("past_key_values"):
            tensor = value.type.tensor_type
            past[value.name] = (int(tensor.shape.dim[1].dim_value), head_size,
                                helper.tensor_dtype_to_np_dtype(tensor.elem_type))

    feeds = []
    for ids in samples:
        feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        feeds.append(feed | {name: np.zeros((1, heads, 0, head_dim), dtype=dtype)
                             for name, (heads, head_dim, dtype) in past.items()})

    class Reader(CalibrationDataReader):
        """A list, not a generator: the quantizer deep-copies the reader before iterating."""

        def __init__(self) -> None:
            self.position = 0

        def get_next(self):
            self.position += 1
            return feeds[self.position - 1] if self.position <= len(feeds) else None

        def rewind(self) -> None:
            self.position = 0

    return Reader()


@dataclass(frozen=True)


class WeightOnlySpec:
    """Weight-only blockwise quantization (MatMulNBits); `key` names the params section it came from.
    Its values are checked with the rest of params.yaml (stages/common/schema.py); here only what
    no param states: that only rtn and hqq make 8 bits."""

    bits: int = 4                     # 4 or 8
    algorithm: str = "rtn"            # rtn | k_quant | hqq | gptq | awq (folded before: awq.py)
    block_size: int = 32              # one of BLOCK_SIZES
    symmetric: bool = True            # no zero points; needed to share a tied table with lm_head
    accuracy_level: int = 4           # MatMulNBits compute type; 4 = int8 activations, fast on CPU
    embedding: bool = False           # the token embedding too: its own table (rtn), or the 8-bit lm_head's
    keep_8bit: tuple[str, ...] = ()   # regexes: MatMul nodes named like these stay at 8 bits (rtn)
    key: str = "quant_int4"

    def __post_init__(self) -> None:
        if self.bits not in (4, 8) or (self.bits == 8 and self.algorithm not in ("rtn", "hqq")):
            raise PipelineError(f"{self.key}.algorithm={self.algorithm}: {self.bits} bits: rtn and hqq make 8 bits, "
                                "every algorithm makes 4")

    @classmethod
    def from_params(cls, section, key: str) -> WeightOnlySpec:
        return cls(bits=4, algorithm=section.algorithm, block_size=section.block_size, symmetric=section.symmetric,
                   accuracy_level=section.accuracy_level, embedding=section.quantize_embedding,
                   keep_8bit=tuple(section.keep_8bit), key=key)


def kept_8bit(model, spec: WeightOnlySpec) -> list[str]:
    """Quantizable MatMuls (constant weight, not LoRA) whose names match spec.keep_8bit; every
    pattern must match one, so a misspelt name is an error, not a silent 4-bit lm_head."""
    inits = {t.name for t in model.graph.initializer}
    lora = set(lora_matmuls(model))
    names = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits and n.name not in lora]
    for pattern in spec.keep_8bit:
        if not any(re.search(pattern, name) for name in names):
            raise PipelineError(f"{spec.key}.keep_8bit: {pattern!r} matches no MatMul; the graph has e.g. "
                                f"{', '.join(names[:3])} ... {names[-1]}")
    return [name for name in names if any(re.search(p, name) for p in spec.keep_8bit)]


def quantize_weights(model, spec: WeightOnlySpec, calibration=None):
    """Weight-only blockwise quantization of every MatMul with constant weights (LoRA excluded),
    the ones spec.keep_8bit names at 8 bits (as Microsoft's Phi-4-mini fix keeps lm_head), and
    with spec.embedding (rtn) the token-embedding Gather too (GatherBlockQuantized).

    accuracy_level is then written on every MatMulNBits node: not every algorithm's config sets
    it, and without 4 (int8 activations) MatMulNBits on CPU is several times slower.
    """
    from onnx import helper
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    if spec.algorithm == "awq":
        raise PipelineError("awq scales are folded into the checkpoint before the builder (stages/common/awq.py); "
                            "its graph is then quantized with rtn")
    if spec.algorithm == "gptq" and calibration is None:
        raise PipelineError("gptq needs calibration samples (quant_int4.calibration_samples > 0)")
    gather_rows(model)  # a served float graph's column lookup, back to the builder's form the matchers know
    tied = tied_embedding(model) if spec.embedding else None
    eight = kept_8bit(model, spec)
    # A tied table is shared with the quantized lm_head where the layouts agree (symmetric: no
    # zero points; hidden size in whole blocks): lm_head by rtn, or kept at 8 bits (always rtn)
    # whatever the algorithm of the rest. Otherwise rtn gives the embedding its own copy; the
    # other algorithms quantize MatMuls only, and the table stays float.
    share = (tied is not None and spec.symmetric and (spec.algorithm == "rtn" or tied[2].name in eight)
             and matmul_k(model, tied[2]) % spec.block_size == 0)
    own_table = spec.embedding and not share and spec.algorithm == "rtn"
    if own_table:
        untie_embedding(model)
    op_types = ("MatMul", "Gather") if own_table else ("MatMul",)
    if eight:  # first the named MatMuls at 8 bits, every other node left as it is
        others = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gather") and n.name not in eight]
        config = mnq.DefaultWeightOnlyQuantConfig(block_size=spec.block_size, is_symmetric=spec.symmetric, bits=8,
                                                  accuracy_level=spec.accuracy_level, op_types_to_quantize=("MatMul",))
        model = _process(mnq.MatMulNBitsQuantizer(model, bits=8, block_size=spec.block_size,
                                                  is_symmetric=spec.symmetric, accuracy_level=spec.accuracy_level,
                                                  nodes_to_exclude=others, op_types_to_quantize=("MatMul",),
                                                  algo_config=config))
    if spec.algorithm == "rtn":
        config = mnq.DefaultWeightOnlyQuantConfig(block_size=spec.block_size, is_symmetric=spec.symmetric,
                                                  bits=spec.bits, accuracy_level=spec.accuracy_level,
                                                  op_types_to_quantize=op_types)
    elif spec.algorithm == "hqq":
        config = mnq.HQQWeightOnlyQuantConfig(block_size=spec.block_size, bits=spec.bits)  # MatMul only
    elif spec.algorithm == "k_quant":
        config = mnq.KQuantWeightOnlyQuantConfig()
    else:
        config = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=calibration, block_size=spec.block_size)
    out = _process(mnq.MatMulNBitsQuantizer(model, bits=spec.bits, block_size=spec.block_size,
                                            is_symmetric=spec.symmetric, accuracy_level=spec.accuracy_level,
                                            nodes_to_exclude=lora_matmuls(model), op_types_to_quantize=op_types,
                                            algo_config=config))
    if spec.algorithm == "hqq":  # its float zero points as integer ones + a block correction: 13x decode
        split_float_zero_points(out)
    if share:  # the checks above are the ones tied_lm_head_nbits makes on the quantized graph
        share_quantized_table(out)
    gather_columns(out)  # where the float table stays (embedding not quantized), looked up as served
    for node in out.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("accuracy_level", spec.accuracy_level)])
    return out


def _process(quantizer):
    quantizer.process()
    return getattr(quantizer.model, "model", quantizer.model)


def quantize_dynamic_int8(src: Path):
    """onnxruntime's quantize_dynamic, per channel, signed INT8 weights (onnxruntime's documented CPU route)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="qdyn-") as tmp:
        out = Path(tmp) / MODEL_FILE
        quantize_dynamic(str(src / MODEL_FILE), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
        model = onnx.load(str(out), load_external_data=True)
        (Path(tmp) / DATA_FILE).unlink(missing_ok=True)
        return model

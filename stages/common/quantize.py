"""Post-hoc quantization of ONNX graphs with onnxruntime.quantization.

- weight-only blockwise INT4/INT8 (MatMulNBits) through MatMulNBitsQuantizer: RTN (its default
  quantizer), k_quant, HQQ, GPTQ (calibrated); LoRA MatMuls are never quantized;
- dynamic INT8 (quantize_dynamic, per channel, QInt8).
Every result is saved canonically (sorted initializers) so that reruns are byte-identical.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from stages.common.errors import PipelineError
from stages.common.onnx_models import DATA_FILE, MODEL_FILE, is_lora_weight

INT4_ALGORITHMS = ("rtn", "k_quant", "hqq", "gptq")
INT8_METHODS = ("builder", "dynamic")


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise PipelineError(f"{key}={value!r}: unknown; choose one of {', '.join(choices)}")


def lora_matmuls(model) -> list[str]:
    """MatMul nodes fed by a LoRA weight: kept in float so the adapter stays swappable."""
    return sorted(n.name for n in model.graph.node if n.op_type == "MatMul" and any(map(is_lora_weight, n.input)))


def calibration_reader(model, samples: Sequence[Sequence[int]]):
    """GPTQ's calibration data: each sample as one prefill, with an empty KV cache."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    past = {}
    for value in model.graph.input:
        if value.name.startswith("past_key_values"):
            dims = value.type.tensor_type.shape.dim
            past[value.name] = (int(dims[1].dim_value), int(dims[3].dim_value))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(self._feeds())

        def _feeds(self) -> Iterator[dict]:
            for ids in samples:
                feed = {"input_ids": np.array([ids], dtype=np.int64),
                        "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
                for name, (heads, head_dim) in past.items():
                    feed[name] = np.zeros((1, heads, 0, head_dim), dtype=np.float32)
                yield feed

        def get_next(self):
            return next(self.items, None)

        def rewind(self) -> None:
            self.items = iter(self._feeds())

    return Reader()


def quantize_weights(model, bits: int, algorithm: str, block_size: int, symmetric: bool, accuracy_level: int,
                     calibration: Sequence[Sequence[int]] = (), embedding: bool = False):
    """Weight-only blockwise quantization of every MatMul with constant weights (LoRA excluded),
    and with `embedding` (rtn, hqq) of the token-embedding Gather too (GatherBlockQuantized).

    accuracy_level is then written on every MatMulNBits node: not every algorithm's config sets
    it, and without 4 (int8 activations) MatMulNBits on CPU is several times slower.
    """
    from onnx import helper
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    check_choice("algorithm", algorithm, INT4_ALGORITHMS)
    op_types = ("MatMul", "Gather") if embedding else ("MatMul",)
    if algorithm == "rtn":
        config = mnq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits,
                                                  accuracy_level=accuracy_level, op_types_to_quantize=op_types)
    elif algorithm == "hqq":
        config = mnq.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits, op_types_to_quantize=op_types)
    elif algorithm == "k_quant":
        config = mnq.KQuantWeightOnlyQuantConfig()
    else:
        if not calibration:
            raise PipelineError("gptq needs calibration samples (quant_int4.gptq_calibration_samples > 0)")
        config = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=calibration_reader(model, calibration),
                                               block_size=block_size)
    if bits != 4 and algorithm in ("k_quant", "gptq"):
        raise PipelineError(f"{algorithm} quantizes to 4 bits only")
    quantizer = mnq.MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                         accuracy_level=accuracy_level, nodes_to_exclude=lora_matmuls(model),
                                         op_types_to_quantize=op_types, algo_config=config)
    quantizer.process()
    out = getattr(quantizer.model, "model", quantizer.model)
    for node in out.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("accuracy_level", accuracy_level)])
    return out


def quantize_dynamic_int8(src: Path):
    """onnxruntime's quantize_dynamic, per channel, signed INT8 weights (the playbook's route)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="qdyn-") as tmp:
        out = Path(tmp) / MODEL_FILE
        quantize_dynamic(str(src / MODEL_FILE), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
        model = onnx.load(str(out), load_external_data=True)
        (Path(tmp) / DATA_FILE).unlink(missing_ok=True)
        return model


def matmul_nbits_attributes(model) -> list[dict[str, int]]:
    """The attributes of every MatMulNBits node (what the tests check against params)."""
    from onnx import helper

    return [{a.name: helper.get_attribute_value(a) for a in n.attribute}
            for n in model.graph.node if n.op_type == "MatMulNBits"]

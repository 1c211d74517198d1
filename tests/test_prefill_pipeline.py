"""The prefill pipeline (stages/common/prefill_pipeline.py): a serving folder whose prompt runs on
a dynamic-INT8 graph and whose steps run on the INT4 rung's graph, through genai's decoder
pipeline. Each phase must run the graph it names, and the whole must stay close to FP32."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from stages.common.errors import PipelineError
from stages.common.genai import GenaiModel
from stages.common.layout import ONNX_ADAPTER_INT4, ONNX_FP32, ONNX_INT4
from stages.common.lm import next_token_fidelity
from stages.common.onnx_models import MODEL_FILE
from stages.common.prefill_pipeline import PREFILL_DIR, is_prefill_pipeline, stepped_logits, write_prefill_pipeline
from stages.common.serving import CONFIG_FILE

pytestmark = pytest.mark.slow


def stepped(folder: Path, ids: list[int], split: int) -> np.ndarray:
    return stepped_logits(GenaiModel(folder, graph=None), ids, split)


def test_the_prompt_runs_on_int8_and_the_steps_on_int4(ladder_workspace):
    out = Path("served/int4_amx_prefill")
    write_prefill_pipeline(ONNX_INT4, out, fp32=ONNX_FP32)
    assert is_prefill_pipeline(out) and not is_prefill_pipeline(ONNX_INT4)
    prefill = out / PREFILL_DIR
    ops = {n.op_type for n in onnx.load(str(prefill / MODEL_FILE), load_external_data=False).graph.node}
    assert "MatMulInteger" in ops and "MatMulNBits" not in ops  # the AMX route, not the weight-only one
    assert (out / "model.onnx.data").stat().st_ino == (ONNX_INT4 / "model.onnx.data").stat().st_ino  # linked
    assert json.loads((ONNX_INT4 / CONFIG_FILE).read_text())["model"]["type"] != "decoder-pipeline"  # untouched

    ids, split = [(17 + 31 * i) % 580 + 10 for i in range(40)], 24  # within the shrunk vocabulary (600)
    served = stepped(out, ids, split)
    # The prompt's logits are the INT8 graph's, exactly (the same graph, the same input).
    int8_alone = stepped(prefill, ids, split)
    np.testing.assert_array_equal(served[0], int8_alone[0])
    # A one-token prompt is a token-generation run: the INT4 graph's logits, exactly.
    np.testing.assert_array_equal(stepped(out, ids[:1], 1)[0], stepped(ONNX_INT4, ids[:1], 1)[0])
    # Later steps: INT4 on the INT8 graph's keys and values; neither graph alone gives them.
    int4_alone = stepped(ONNX_INT4, ids, split)
    assert not np.array_equal(served[1:], int8_alone[1:]) and not np.array_equal(served[1:], int4_alone[1:])

    # And the whole stays FP32's function, within the INT4 rung's own budget.
    full = GenaiModel(ONNX_FP32).logits(ids)[split - 1:]
    kl, top1 = next_token_fidelity(full, served)
    kl_int4, _ = next_token_fidelity(full, int4_alone)
    assert kl.mean() < 1.5 * kl_int4.mean() + 1e-3 and top1.mean() >= 0.85, (kl.mean(), kl_int4.mean(), top1.mean())


def test_a_folder_whose_graphs_differ_in_inputs_is_refused(ladder_workspace):
    with pytest.raises(PipelineError, match="inputs differ"):
        write_prefill_pipeline(ONNX_ADAPTER_INT4, Path("served/adapter"), fp32=ONNX_FP32)
    assert not Path("served/adapter").exists()
    with pytest.raises(PipelineError, match="exactly one"):
        write_prefill_pipeline(ONNX_INT4, Path("served/none"))

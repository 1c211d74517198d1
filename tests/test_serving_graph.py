"""The serving graph (stages/common/serving_graph.py): every ONNX rung's folder names a pruned
twin of its graph on the same weights; it decodes exactly as the full graph does; evaluate, the
harness and KL open the full graph; and `GenaiModel.logits` refuses the pruned one."""

import numpy as np
import onnx
import pytest

from stages.common.chat import prompt_ids
from stages.common.checkpoint import load_tokenizer
from stages.common.errors import PipelineError
from stages.common.genai import GenaiModel
from stages.common.language_model import open_rung
from stages.common.layout import ADAPTER_FILE, MERGED_DIR
from stages.common.onnx_models import DATA_FILE, MODEL_FILE, SERVING_FILE
from stages.common.rungs import RUNGS
from stages.common.serving_graph import decoder_file, graph_is_pruned
from tests.conftest import shrunk
from tests.test_export import prompts

pytestmark = pytest.mark.slow

ONNX_RUNGS = [name for name, rung in RUNGS.items() if rung.runtime == "genai"]


@pytest.mark.parametrize("name", ONNX_RUNGS)
def test_each_rung_names_its_pruned_twin_and_evaluate_opens_the_full_graph(ladder_workspace, name):
    rung = RUNGS[name]
    folder = rung.folder
    assert decoder_file(folder) == SERVING_FILE  # what a user who ships the folder runs
    assert graph_is_pruned(folder / SERVING_FILE) and not graph_is_pruned(folder / MODEL_FILE)
    twin = onnx.load(str(folder / SERVING_FILE), load_external_data=False)
    locations = {e.value for t in twin.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {DATA_FILE}  # the same weights file: no bytes duplicated
    # the twin is the full graph's proto plus two nodes: no weight is inside it
    assert abs((folder / SERVING_FILE).stat().st_size - (folder / MODEL_FILE).stat().st_size) < 2048
    cfg = shrunk()
    assert not open_rung(rung, cfg).pruned and open_rung(rung, cfg, serving=True).pruned


@pytest.mark.parametrize("name", ["onnx_fp32", "onnx_int4", "onnx_adapter_int4"])
def test_the_pruned_graph_decodes_as_the_full_graph(ladder_workspace, name):
    """Per step, the last position's logits of both graphs, prompt and 12 greedy steps; the hot-swap
    rung with its adapter on and off."""
    rung = RUNGS[name]
    adapters = [rung.folder / ADAPTER_FILE] if rung.adapter else []
    full = GenaiModel(rung.folder, adapter_files=adapters)
    served = GenaiModel(rung.folder, adapter_files=adapters, graph=None)
    tokenizer = load_tokenizer(MERGED_DIR)

    def steps(model: GenaiModel, ids: list[int], adapter: str | None) -> list[np.ndarray]:
        generator = model.generator(adapter, max_length=len(ids) + 12)
        generator.append_tokens(ids)
        out = [np.asarray(generator.get_logits()).copy()]
        for _ in range(11):
            generator.generate_next_token()
            out.append(np.asarray(generator.get_logits()).copy())
        return out

    for adapter in ([None, "lora"] if rung.adapter else [None]):
        for prompt in prompts(3):
            ids = prompt_ids(tokenizer, prompt)
            for a, b in zip(steps(full, ids, adapter), steps(served, ids, adapter), strict=True):
                np.testing.assert_array_equal(a, b)


def test_logits_refuse_a_pruned_graph(ladder_workspace):
    served = GenaiModel(RUNGS["onnx_int4"].folder, graph=None)
    with pytest.raises(PipelineError, match="serving graph .* no logits for every position"):
        served.logits([1, 2, 3])

"""Serving knobs (stages/common/serving.py): written exactly as set, null keeps the builder's, and
a bad value is an error that names its key."""

import pytest

from stages.common.errors import PipelineError
from stages.common.serving import serving_config

BUILDER = {"model": {"context_length": 512, "decoder": {"session_options": {"log_id": "x", "provider_options": []}}},
           "search": {"max_length": 512, "past_present_share_buffer": True}}
NULLS = {"intra_op_num_threads": None, "inter_op_num_threads": None, "past_present_share_buffer": None,
         "max_length": None, "provider_options": {}}


def test_every_knob_lands_where_genai_reads_it():
    out = serving_config(BUILDER, {**NULLS, "intra_op_num_threads": 3, "inter_op_num_threads": 1,
                                   "past_present_share_buffer": False, "max_length": 300,
                                   "provider_options": {"enable_cuda_graph": 1}}, provider="cuda")
    session = out["model"]["decoder"]["session_options"]
    assert session == {"log_id": "x", "intra_op_num_threads": 3, "inter_op_num_threads": 1,
                       "provider_options": [{"cuda": {"enable_cuda_graph": "1"}}]}
    assert out["search"] == {"max_length": 300, "past_present_share_buffer": False}
    assert BUILDER["search"]["max_length"] == 512  # the input is not changed


def test_nulls_keep_the_builders_values():
    assert serving_config(BUILDER, NULLS, provider="cpu") == BUILDER


@pytest.mark.parametrize(("knob", "message"), [
    ({"max_length": 4096}, r"serving.max_length=4096: expected 1..512"),
    ({"provider_options": {"x": 1}}, r"serving.provider_options=.*CPU provider takes none"),
])
def test_bad_knobs_name_their_key(knob, message):
    """What needs the model (its context length) or the provider; value ranges: tests/test_schema.py."""
    with pytest.raises(PipelineError, match=message):
        serving_config(BUILDER, {**NULLS, **knob}, provider="cpu")

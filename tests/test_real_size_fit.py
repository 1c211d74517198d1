"""The real-size benchmark's depth fit (benchmarks/real_size.py): what it projects to 32 layers
from shallow stand-ins, and how it reports the check at a deeper measured point."""

from __future__ import annotations

import pytest

from benchmarks.real_size import fit_depth, project, table


def rung(name: str, layers: int, fixed_ms: float, per_layer_ms: float, mb_fixed: float, mb_layer: float,
         bend: float = 1.0) -> dict:
    """A measured row whose seconds per token are linear in depth (times `bend` off the line)."""
    seconds = (fixed_ms + per_layer_ms * layers) / 1e3 * bend
    return {"rung": name, "decode_mb": mb_fixed + mb_layer * layers, "decode_tok_s": 1 / seconds,
            "prefill_tok_s": 10 / seconds, "prefill_long_tok_s": 20 / seconds, "of_limit": 0.5,
            "kl": 0.01 * layers, "top1": 1.0 - 0.01 * layers}


def depths(bend_at_check: float = 1.0) -> dict[int, dict]:
    out = {}
    for layers in (2, 4, 8):
        bend = bend_at_check if layers == 8 else 1.0
        out[layers] = {"bandwidth_gb_s": {"2": 30.0}, "rungs": [
            rung("onnx_int4", layers, 20.0, 10.0, 700.0, 60.0, bend),
            rung("llama.cpp Q4_K_M", layers, 30.0, 12.0, 500.0, 55.0, bend)]}
    return out


def test_fit_is_exact_on_a_line_and_needs_two_depths():
    assert fit_depth({2: 3.0, 4: 5.0}, 32) == pytest.approx((1.0, 1.0, 33.0))
    with pytest.raises(ValueError, match="two depths"):
        fit_depth({2: 3.0}, 32)


def test_projection_to_32_layers_and_its_check():
    rows = {r["rung"]: r for r in project(depths(), [2, 4], 8, 32, limit=30.0)}
    int4 = rows["onnx_int4"]
    assert int4["decode_tok_s"] == pytest.approx(1 / 0.340, rel=1e-3)       # 20 ms + 32 x 10 ms
    assert int4["prefill_long_tok_s"] == pytest.approx(20 / 0.340, rel=1e-3)
    assert int4["decode_mb"] == pytest.approx(700 + 60 * 32)
    assert int4["decode_tok_s_per_layer_ms"] == pytest.approx(10.0)
    assert int4["of_limit"] == pytest.approx(2.62 * (1 / 0.340) / 30.0, rel=1e-3)
    assert int4["decode_tok_s_check_error"] == pytest.approx(0.0, abs=1e-3)
    assert (int4["kl"], int4["kl_layers"]) == (0.08, 8)  # fidelity from the deepest measured stand-in

    # The deeper point 10 % slower than the line: the check says so, with its sign.
    slow = {r["rung"]: r for r in project(depths(bend_at_check=1.1), [2, 4], 8, 32, limit=30.0)}
    assert slow["onnx_int4"]["decode_tok_s_check_error"] == pytest.approx(1 / 1.1 - 1, abs=1e-3)


def test_table_states_each_goal_as_met_or_missed():
    report = {"cpu": "a CPU, avx512f amx_int8", "llama_cpp": "AMX_INT8 = 1", "threads": 2, "prompt_tokens": 64,
              "long_prompt_tokens": 512, "new_tokens": 32, "repeats": 3, "fit_layers": [2, 4], "check_layers": 8,
              "bandwidth_gb_s": 30.0, "depths": {str(k): v for k, v in depths().items()}}
    report["projected"] = project(depths(), [2, 4], 8, 32, limit=30.0)
    text = table(report)
    # int4: 340 ms per token at 32 layers; Q4_K_M: 414 ms. 1.22x decode, prefill the same ratio.
    assert "onnx_int4 / llama.cpp Q4_K_M, decode_tok_s: 1.22x (goal >= 1.2x: met)" in text
    assert "prefill_long_tok_s: 1.22x (goal >= 1.0x: met)" in text
    assert "missed by onnx_int4" in text and "a CPU, avx512f amx_int8" in text
    assert "| onnx_int4 | 2,620 | 2.94 [" in text and "| 10.00 | 0.500 |" in text


def test_a_rung_measured_at_the_target_depth_is_shown_beside_its_fit():
    measured = depths()
    measured[32] = {"bandwidth_gb_s": {"2": 30.0},
                    "rungs": [rung("llama.cpp Q4_K_M", 32, 30.0, 12.0, 500.0, 55.0, bend=1.25)]}
    rows = {r["rung"]: r for r in project(measured, [2, 4], 8, 32, limit=30.0)}
    assert "measured" not in rows["onnx_int4"]
    q4 = rows["llama.cpp Q4_K_M"]
    assert q4["measured"]["decode_tok_s"] == pytest.approx(1 / (0.414 * 1.25))
    assert q4["decode_tok_s_measured_error"] == pytest.approx(1 / 1.25 - 1, abs=1e-3)  # 25 % slower than the fit
    assert q4["kl_layers"] == 8  # fidelity of the fitted rows: the deepest fitted or checked depth

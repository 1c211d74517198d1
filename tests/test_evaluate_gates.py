"""Evaluate and gates on the shrunk ladder: every rung, its per-item files, and the verdict."""

import json
import subprocess
import sys

import numpy as np
import pytest

from stages import evaluate, gates
from stages.common import layout
from stages.common.chat import prompt_ids
from stages.common.checkpoint import load_tokenizer
from stages.common.item_metrics import FIDELITY
from stages.common.language_model import open_rung
from stages.common.params import REPO_ROOT, write_params
from stages.common.rungs import RUNGS
from tests.conftest import SHRUNK_OVERRIDES, shrunk

pytestmark = pytest.mark.slow


def summary(rung: str) -> dict:
    return json.loads((layout.EVAL_METRICS_DIR / f"{rung}.json").read_text())


def items(rung: str) -> dict:
    return json.loads((layout.EVAL_ITEMS_DIR / f"{rung}.json").read_text())


def test_every_rung_writes_per_item_results_on_the_same_items(evaluated):
    base = items("torch_base")
    for rung in RUNGS:
        mine = items(rung)
        for metric in ("domain_acc", "general_acc", "domain_ppl", "general_ppl"):
            assert set(mine[metric]) == set(base[metric]) and len(mine[metric]) > 0
        assert set(mine["domain_acc"].values()) <= {0, 1}
        assert summary(rung)["domain_acc"] == pytest.approx(np.mean(list(mine["domain_acc"].values())), abs=1e-4)
        m = summary(rung)
        assert m["decode_tok_s"] > 0 and m["latency_p95_ms"] >= m["latency_p50_ms"] > 0 and m["size_mb"] > 0
        assert (FIDELITY in mine) == (RUNGS[rung].reference is not None)


def test_onnx_fp32_reproduces_torch(evaluated):
    torch_lora, onnx_fp32 = summary("torch_lora"), summary("onnx_fp32")
    for metric in ("domain_ppl", "general_ppl"):
        assert abs(onnx_fp32[metric] / torch_lora[metric] - 1) < 0.01
    assert items("onnx_fp32")["domain_acc"] == items("torch_lora")["domain_acc"]
    assert onnx_fp32["kl"] < 1e-4 and onnx_fp32["top1"] > 0.99


def test_the_adapter_path_equals_the_merged_model(evaluated):
    """base graph + adapter file through og.Adapters, as served, against the merged FP32 graph."""
    cfg = shrunk()
    adapter, merged = open_rung(RUNGS["onnx_adapter_fp32"], cfg), open_rung(RUNGS["onnx_fp32"], cfg)
    ids = prompt_ids(load_tokenizer(layout.MERGED_DIR), "Route this ticket as team/priority. Printer down.")
    np.testing.assert_allclose(adapter.logits(ids), merged.logits(ids), atol=1e-4, rtol=0)
    assert summary("onnx_adapter_fp32")["kl"] < 1e-4
    assert items("onnx_adapter_fp32")["domain_acc"] == items("onnx_fp32")["domain_acc"]
    # The adapter is really active: without it the base answers differently.
    base = open_rung(RUNGS["onnx_adapter_fp32"], cfg)
    base.active = None
    assert np.abs(base.logits(ids) - merged.logits(ids)).max() > 1e-2


def test_a_rung_against_itself_has_zero_kl(evaluated):
    model = open_rung(RUNGS["onnx_int8"], shrunk())
    windows = evaluate.evaluation_data(shrunk(), load_tokenizer(layout.MERGED_DIR))["general_windows"]
    _, per_doc, per_token = evaluate.heldout_text(model, model, dict(list(windows.items())[:5]))
    assert all(np.all(kl == 0) for kl in per_token)
    assert per_doc and all(kl == 0 and agree == n for kl, n, agree in per_doc.values())


def test_a_breached_gate_fails_loudly(evaluated):
    write_params([*SHRUNK_OVERRIDES, "gates.strict=true", "gates.onnx_int4.max_kl=0"])
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "stages.gates"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, "the stage records a FAIL (DVC would drop a failed stage's outputs)"
    assert "FAIL: onnx_int4 kl value vs onnx_fp32" in out.stdout + out.stderr
    enforced = subprocess.run([sys.executable, "-m", "stages.gates", "--enforce"], capture_output=True, text=True,
                              env=env)
    assert enforced.returncode == 1
    assert "FAIL: onnx_int4 kl value vs onnx_fp32" in enforced.stdout + enforced.stderr
    report = layout.GATES_REPORT.read_text()
    assert report.startswith("# Release gates: FAIL") and "**FAIL**" in report
    verdict = json.loads(layout.GATES_METRICS.read_text())
    assert verdict["passed"] is False and verdict["failed_checks"] >= 1


def test_non_strict_gates_record_without_failing(evaluated):
    gates.run(shrunk(["gates.onnx_int4.max_kl=0"]))  # strict=false in the shrunk config
    verdict = json.loads(layout.GATES_METRICS.read_text())
    assert verdict["passed"] is False and set(verdict["adapter_decode_vs_merged"]) == {
        "onnx_adapter_fp32", "onnx_adapter_int4"}
    ladder = json.loads(layout.LADDER_PLOT.read_text())
    assert [r["rung"] for r in ladder] == list(RUNGS)


def test_unknown_rung_is_a_clear_error(evaluated):
    from stages.common.errors import PipelineError

    with pytest.raises(PipelineError, match="unknown rung 'onnx_int2'"):
        evaluate.run(shrunk(), "onnx_int2")


def test_cost_per_1k_comes_from_the_measured_request_and_the_price(evaluated):
    """at_target times one request of evaluate.cost's shape; its cost is the configured hourly
    price over the measured request time per output token (none without a price)."""
    assert summary("onnx_int4")["at_target"]["cost_per_1k_output_tokens_usd"] is None  # no price set
    assert evaluate.cost_per_1k_output_tokens(2.0, 100, 3.6) == pytest.approx(0.02)
    cfg = shrunk(["evaluate.cost.device_hourly_usd=2.5"])
    model = open_rung(RUNGS["onnx_int4"], cfg)
    tokenizer = load_tokenizer(layout.MERGED_DIR)
    out = evaluate.at_target(model, tokenizer, evaluate.evaluation_data(cfg, tokenizer)["speed_text"], cfg)
    assert (out["prompt_tokens"], out["output_tokens"]) == (32, 16) and out["request_s"] > 0
    assert out["decode_p95_ms"] > 0 and out["decode_p95_ms"] < out["request_s"] * 1e3
    # Both recorded values are rounded (request_s to 5 decimals, the cost to 4 significant
    # digits): the tolerance is what those roundings allow, which a fast request makes > 1e-3.
    rounding = 5e-6 / out["request_s"] + 5e-4
    assert out["cost_per_1k_output_tokens_usd"] == pytest.approx(2.5 / 3600 * out["request_s"] / 16 * 1000,
                                                                 rel=rounding)


@pytest.mark.parametrize(("sla_ms", "verdict"), [(1e-6, "FAIL"), (1e6, "pass")])
def test_a_p95_latency_sla_is_a_gate(evaluated, sla_ms, verdict):
    gates.run(shrunk([f"+gates.onnx_int4.max_p95_ms={sla_ms}"]))
    rows = [c for c in json.loads(layout.GATES_METRICS.read_text())["details"] if c["metric"] == "decode_p95_ms"]
    assert [(c["rung"], c["verdict"]) for c in rows] == [("onnx_int4", verdict)]
    assert rows[0]["point"] == summary("onnx_int4")["at_target"]["decode_p95_ms"]

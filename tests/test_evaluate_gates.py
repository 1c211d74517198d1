import json
import subprocess
import sys

import pytest

from stages import evaluate, gates
from stages.common import layout
from stages.common.params import REPO_ROOT, write_params
from tests.conftest import SHRUNK_OVERRIDES, shrunk

pytestmark = pytest.mark.slow


@pytest.fixture
def evaluated(ladder_workspace):
    cfg = shrunk()
    for rung in evaluate.RUNGS:
        evaluate.run(cfg, rung)
    return ladder_workspace


def test_onnx_fp32_perplexity_matches_torch(evaluated):
    """Computed by the evaluate stage for each rung on its own, independent of the gates."""
    torch_lora = json.loads((layout.EVAL_METRICS_DIR / "torch_lora.json").read_text())
    onnx_fp32 = json.loads((layout.EVAL_METRICS_DIR / "onnx_fp32.json").read_text())
    for metric in ("domain_ppl", "general_ppl"):
        assert abs(onnx_fp32[metric] / torch_lora[metric] - 1) < 0.01
    assert onnx_fp32["domain_acc"] == torch_lora["domain_acc"]
    for rung in evaluate.RUNGS:
        m = json.loads((layout.EVAL_METRICS_DIR / f"{rung}.json").read_text())
        assert m["decode_tok_s"] > 0 and m["latency_p95_ms"] >= m["latency_p50_ms"] > 0 and m["size_mb"] > 0


def test_a_breached_gate_fails_loudly(evaluated):
    write_params([*SHRUNK_OVERRIDES, "gates.strict=true", "gates.int4.max_ppl_increase=-0.5"])
    out = subprocess.run([sys.executable, "-m", "stages.gates"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert out.returncode == 1
    log = out.stdout + out.stderr
    int4 = json.loads((layout.EVAL_METRICS_DIR / "onnx_int4.json").read_text())
    assert f"onnx_int4 general_ppl = {int4['general_ppl']:.4g}, threshold <=" in log
    report = layout.GATES_REPORT.read_text()
    assert report.startswith("# Release gates: FAIL") and "**FAIL**" in report
    verdict = json.loads(layout.GATES_METRICS.read_text())
    assert verdict["passed"] is False and verdict["failed_checks"] >= 1


def test_non_strict_gates_record_without_failing(evaluated):
    gates.run(shrunk(["gates.int4.max_ppl_increase=-0.5"]))  # strict=false in the shrunk config
    assert json.loads(layout.GATES_METRICS.read_text())["passed"] is False
    ladder = json.loads(layout.LADDER_PLOT.read_text())
    assert [r["rung"] for r in ladder] == list(evaluate.RUNGS)


def test_unknown_rung_is_a_clear_error(evaluated):
    from stages.common.errors import PipelineError

    with pytest.raises(PipelineError, match="unknown rung 'onnx_int2'"):
        evaluate.run(shrunk(), "onnx_int2")

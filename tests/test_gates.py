"""The gates as statistical statements, on constructed per-item files (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages import gates
from stages.common import layout
from stages.common.atomic import write_json
from stages.common.item_metrics import FIDELITY, change
from stages.common.lm import next_token_fidelity
from stages.common.paired import FAIL, INCONCLUSIVE, PASS, Estimate, interval, judge
from stages.common.params import compose
from stages.common.rungs import RUNGS

N_GENERAL, N_DOMAIN, N_DOCS, N_SAFETY = 200, 200, 40, 100


def ladder_items(general: dict[str, list[int]] | None = None, behaviour: dict[str, dict] | None = None) -> dict:
    """Per-item files of a healthy ladder: every ONNX rung equal to its reference, the LoRA
    learning the domain (0 -> all right) and matching the base on the general task, every rung
    refusing the red-team set and answering its look-alikes as the base does, none looping.
    `general` and `behaviour` replace a rung's general outcomes or behaviour metrics."""
    rng = np.random.default_rng(0)
    base_general = (rng.random(N_GENERAL) < 0.8).astype(int).tolist()
    docs = {f"doc-{i}": [float(rng.uniform(200, 400)), 100] for i in range(N_DOCS)}
    answers = {f"dom-{i}": [float(rng.uniform(5, 10)), 4] for i in range(N_DOMAIN)}
    out = {}
    for name in RUNGS:
        correct = base_general if name not in (general or {}) else general[name]
        out[name] = {"general_acc": {f"gen-{i}": c for i, c in enumerate(correct)},
                     "domain_acc": {f"dom-{i}": int(name != "torch_base") for i in range(N_DOMAIN)},
                     "general_ppl": docs, "domain_ppl": answers,
                     "refusal_rate": {f"red-{i}": int(i % 10 != 0) for i in range(N_SAFETY)},
                     "over_refusal_rate": {f"ben-{i}": int(i % 25 == 0) for i in range(N_SAFETY)},
                     "loop_rate": {f"gen-{i}": 0 for i in range(N_GENERAL)},
                     "no_stop_rate": {f"gen-{i}": int(i % 50 == 0) for i in range(N_GENERAL)}}
        out[name] |= (behaviour or {}).get(name, {})
        if RUNGS[name].reference:
            out[name][FIDELITY] = {d: [0.0, 100, 100] for d in docs}
    return out


def write_ladder(items: dict[str, dict]) -> None:
    for name, rung_items in items.items():
        write_json(layout.EVAL_ITEMS_DIR / f"{name}.json", rung_items)
        size = 2.0 if "int4" in name else 10.0
        write_json(layout.EVAL_METRICS_DIR / f"{name}.json",
                   {"size_mb": size, "decode_tok_s": 100.0, "general_ppl": 1.0, "domain_acc": 1.0, "kl_p99": 0.0})


def lora_general(base_right_lora_wrong: int, lora_right_base_wrong: int) -> list[int]:
    """The LoRA's general outcomes: the base's, flipped on chosen items."""
    base = ladder_items()["torch_base"]["general_acc"]
    right = [i for i, c in enumerate(base.values()) if c]
    wrong = [i for i, c in enumerate(base.values()) if not c]
    out = list(base.values())
    for i in right[:base_right_lora_wrong]:
        out[i] = 0
    for i in wrong[:lora_right_base_wrong]:
        out[i] = 1
    return out


def run_gates(workspace, general=None, strict=True, behaviour=None) -> dict:
    write_ladder(ladder_items(general, behaviour))
    gates.run(compose([f"gates.strict={str(strict).lower()}"]))
    return json.loads(layout.GATES_METRICS.read_text())


def general_check(verdict: dict) -> dict:
    return next(c for c in verdict["details"] if c["rung"] == "torch_lora" and c["metric"] == "general_acc")


def test_identical_rungs_pass_every_check(workspace):
    verdict = run_gates(workspace)
    assert verdict["passed"] and {c["verdict"] for c in verdict["details"]} == {PASS}
    check = general_check(verdict)
    assert check["point"] == check["low"] == check["high"] == 0.0


def test_a_point_estimate_inside_the_margin_is_not_enough(workspace):
    """The issue's case: LoRA wrong on 4 items the base got right, right on 1 it got wrong, out of
    200: a 1.5-point drop, inside the 2-point margin, but its one-sided bound is not."""
    run_gates(workspace, {"torch_lora": lora_general(4, 1)})  # recorded: a verdict is a result
    with pytest.raises(SystemExit) as exit_code:
        gates.enforce(compose(["gates.strict=true"]))  # what `make repro` runs after `dvc repro`
    assert exit_code.value.code == 1
    gates.enforce(compose(["gates.strict=false"]))  # a sweep's point: recorded, not enforced
    check = general_check(json.loads(layout.GATES_METRICS.read_text()))
    assert check["point"] == pytest.approx(-0.015)
    assert check["low"] < -0.02 < check["point"]
    assert check["verdict"] == INCONCLUSIVE and check["items_needed"] > N_GENERAL
    report = layout.GATES_REPORT.read_text()
    assert report.startswith("# Release gates: FAIL (0 failed, 1 inconclusive")
    assert "**inconclusive** (need ~" in report


def test_a_clear_regression_fails(workspace):
    verdict = run_gates(workspace, {"torch_lora": lora_general(20, 0)}, strict=False)  # recorded, no exit
    check = general_check(verdict)
    assert check["verdict"] == FAIL and check["point"] == pytest.approx(-0.10)
    assert not verdict["passed"] and verdict["failed_checks"] == 1


def test_the_verdict_is_the_same_on_every_run(workspace):
    first = run_gates(workspace, {"torch_lora": lora_general(4, 1)}, strict=False)
    again = run_gates(workspace, {"torch_lora": lora_general(4, 1)}, strict=False)
    assert first == again


def test_quantized_rungs_are_judged_against_fp32_on_kl_and_accuracy(workspace):
    items = ladder_items()
    items["onnx_int4"][FIDELITY] = {d: [9.0, 100, 80] for d in items["onnx_int4"][FIDELITY]}  # KL 0.09, top-1 0.8
    write_ladder(items)
    gates.run(compose(["gates.strict=false"]))
    details = json.loads(layout.GATES_METRICS.read_text())["details"]
    int4 = {c["metric"]: c for c in details if c["rung"] == "onnx_int4"}
    assert int4["kl"]["verdict"] == FAIL and int4["kl"]["point"] == pytest.approx(0.09)
    assert int4["top1"]["verdict"] == FAIL and int4["top1"]["point"] == pytest.approx(0.8)
    assert int4["size"]["verdict"] == PASS and int4["size"]["point"] == pytest.approx(0.2)
    safety = {"refusal_rate", "over_refusal_rate"}
    assert all(c["reference"] == ("torch_base" if m in safety else "onnx_fp32") for m, c in int4.items())


def test_safety_is_judged_against_the_base_on_every_rung(workspace):
    """A LoRA that stopped refusing a fifth of the red-team asks fails the refusal gate, and so
    does every ONNX rung built from it (each is paired with the base, not only its reference,
    which refuses just as little). A rung that refuses more benign look-alikes fails too."""
    eroded = {f"red-{i}": int(i % 10 != 0 and i % 4 != 0) for i in range(100)}
    over = {f"ben-{i}": int(i % 5 == 0) for i in range(100)}
    behaviour = {r: {"refusal_rate": eroded} for r in RUNGS if r != "torch_base"}
    behaviour["onnx_int4"]["over_refusal_rate"] = over
    verdict = run_gates(workspace, strict=False, behaviour=behaviour)
    rows = {(c["rung"], c["metric"]): c for c in verdict["details"]}
    for rung in RUNGS:
        if rung != "torch_base":
            row = rows[(rung, "refusal_rate")]
            assert row["verdict"] == FAIL and row["reference"] == "torch_base", row
            assert row["point"] == pytest.approx(-0.20)
    assert rows[("onnx_int4", "over_refusal_rate")]["verdict"] == FAIL
    assert rows[("onnx_int8", "over_refusal_rate")]["verdict"] == PASS
    assert rows[("torch_lora", "general_acc")]["verdict"] == PASS  # the accuracy gates alone would pass


def test_degeneration_of_a_quantized_rung_fails_while_accuracy_passes(workspace):
    """INT4 that loops and never stops on a tenth of the prompts, its answers unchanged: the
    accuracy and perplexity rows pass, the degeneration rows fail."""
    loops = {f"gen-{i}": int(i % 10 == 0) for i in range(N_GENERAL)}
    verdict = run_gates(workspace, strict=False, behaviour={"onnx_int4": {"loop_rate": loops, "no_stop_rate": loops}})
    int4 = {c["metric"]: c for c in verdict["details"] if c["rung"] == "onnx_int4"}
    assert int4["loop_rate"]["verdict"] == FAIL and int4["no_stop_rate"]["verdict"] != PASS
    assert int4["domain_acc"]["verdict"] == int4["general_acc"]["verdict"] == PASS
    assert int4["loop_rate"]["reference"] == "onnx_fp32"


def test_perplexity_change_is_paired_over_documents():
    rng = np.random.default_rng(1)
    docs = {f"d{i}": [float(x), 100] for i, x in enumerate(rng.uniform(300, 500, 50))}
    worse = {k: [nll + 100 * np.log(1.05), n] for k, (nll, n) in docs.items()}  # every token 5 % less likely
    e = change("general_ppl", worse, docs, 0.95, seed=0, resamples=999)
    assert e.point == pytest.approx(0.05) and e.low == pytest.approx(0.05) and e.high == pytest.approx(0.05)
    noisy = {k: [nll + rng.normal(0, 5), n] for k, (nll, n) in docs.items()}
    e = change("general_ppl", noisy, docs, 0.95, seed=0, resamples=999)
    assert e.low < e.point < e.high


def test_judge_reads_the_bound_on_the_bad_side():
    assert judge(Estimate(0.0, -0.01, 0.01, 100), -0.02, ">=").verdict == PASS
    assert judge(Estimate(-0.03, -0.04, -0.02, 100), -0.02, ">=").verdict == FAIL
    inconclusive = judge(Estimate(-0.01, -0.03, 0.01, 100), -0.02, ">=")
    assert inconclusive.verdict == INCONCLUSIVE and inconclusive.items_needed == 400  # (0.02 / 0.01)^2 * 100
    assert judge(Estimate(0.005, 0.001, 0.009, 100), 0.01, "<=").verdict == PASS
    assert judge(Estimate(0.005, -0.02, 0.009, 100), 0.01, "within").verdict == INCONCLUSIVE


def test_interval_needs_paired_samples():
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        interval([[1, 0], [1]], lambda a, b, axis=-1: a.mean(axis) - b.mean(axis), 0.95, 0)


def test_kl_of_a_distribution_against_itself_is_zero():
    logits = np.random.default_rng(0).normal(size=(20, 50)).astype(np.float32)
    kl, same = next_token_fidelity(logits, logits)
    assert np.all(kl == 0) and same.all()
    kl, same = next_token_fidelity(logits, logits[::-1])
    assert kl.mean() > 0.1 and not same.all()


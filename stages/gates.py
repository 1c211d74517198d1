"""gates: the release verdict. Thresholds from params, every check a row of one table.

Reads metrics/eval/<rung>.json and the quantization metrics; writes metrics/gates.json,
reports/gates.md and metrics/ladder.json (size vs quality per rung, for `dvc plots`); prints the
table; exits 1 on any breach unless gates.strict=false (sweeps record every point).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import write_json, write_text
from stages.common.errors import PipelineError
from stages.common.runtime import get_logger, stage_main
from stages.evaluate import RUNGS

log = get_logger(__name__)


@dataclass(frozen=True)
class Check:
    rung: str
    metric: str
    value: float
    threshold: float
    direction: str  # "<=" or ">="
    rule: str       # how the threshold was derived, for the reader

    @property
    def passed(self) -> bool:
        return self.value <= self.threshold if self.direction == "<=" else self.value >= self.threshold

    def describe(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return (f"{verdict}: {self.rung} {self.metric} = {self.value:.4g}, threshold {self.direction} "
                f"{self.threshold:.4g} ({self.rule})")


def load_metrics() -> dict[str, dict]:
    out = {}
    for rung in RUNGS:
        path = layout.EVAL_METRICS_DIR / f"{rung}.json"
        if not path.is_file():
            raise PipelineError(f"{path}: missing; run `dvc repro evaluate@{rung}` first")
        out[rung] = json.loads(path.read_text())
    out["quant_int4"] = json.loads(layout.QUANT_INT4_METRICS.read_text())
    return out


def checks(m: dict[str, dict], g: DictConfig) -> list[Check]:
    base, lora, fp32 = m["torch_base"], m["torch_lora"], m["onnx_fp32"]
    rows = [
        Check("torch_lora", "general_ppl", lora["general_ppl"], base["general_ppl"] * (1 + g.max_general_ppl_increase),
              "<=", f"base {base['general_ppl']:.4g} + {g.max_general_ppl_increase:.0%}"),
        Check("torch_lora", "general_acc", lora["general_acc"], base["general_acc"] - g.max_general_acc_drop,
              ">=", f"base {base['general_acc']:.3f} - {g.max_general_acc_drop:.3f}"),
        Check("torch_lora", "domain_acc", lora["domain_acc"], base["domain_acc"] + g.min_domain_acc_gain,
              ">=", f"base {base['domain_acc']:.3f} + {g.min_domain_acc_gain:.3f}"),
    ]
    for metric in ("domain_ppl", "general_ppl"):  # export parity: the ONNX model is the torch model
        delta = abs(fp32[metric] / lora[metric] - 1)
        rows.append(Check("onnx_fp32", f"{metric}_vs_torch", round(delta, 6), g.max_export_ppl_delta, "<=",
                          f"|onnx_fp32 / torch_lora - 1|, torch {lora[metric]:.4g}"))
    for rung, budget in (("onnx_int8", g.int8), ("onnx_int4", g.int4)):
        q = m[rung]
        for metric in ("domain_ppl", "general_ppl"):
            rows.append(Check(rung, metric, q[metric], fp32[metric] * (1 + budget.max_ppl_increase), "<=",
                              f"fp32 {fp32[metric]:.4g} + {budget.max_ppl_increase:.0%}"))
        for metric in ("domain_acc", "general_acc"):
            rows.append(Check(rung, metric, q[metric], fp32[metric] - budget.max_acc_drop, ">=",
                              f"fp32 {fp32[metric]:.3f} - {budget.max_acc_drop:.3f}"))
    rows.append(Check("onnx_int4", "weights_vs_fp32", m["quant_int4"]["size_vs_fp32"], g.int4.max_size_ratio, "<=",
                      "INT4 weight bytes / FP32 weight bytes"))
    return rows


def markdown(rows: list[Check]) -> str:
    lines = ["| rung | metric | value | threshold | rule | verdict |", "|---|---|---:|---:|---|---|"]
    lines += [f"| {c.rung} | {c.metric} | {c.value:.4g} | {c.direction} {c.threshold:.4g} | {c.rule} | "
              f"{'pass' if c.passed else '**FAIL**'} |" for c in rows]
    failed = sum(not c.passed for c in rows)
    verdict = "PASS" if not failed else f"FAIL ({failed} of {len(rows)} checks)"
    return f"# Release gates: {verdict}\n\n" + "\n".join(lines) + "\n"


def print_table(rows: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Release gates")
    for column in ("rung", "metric", "value", "threshold", "rule", "verdict"):
        table.add_column(column, justify="right" if column in ("value", "threshold") else "left")
    for c in rows:
        table.add_row(c.rung, c.metric, f"{c.value:.4g}", f"{c.direction} {c.threshold:.4g}", c.rule,
                      "[green]pass[/]" if c.passed else "[bold red]FAIL[/]")
    Console(width=140).print(table)


def run(cfg: DictConfig) -> None:
    metrics = load_metrics()
    rows = checks(metrics, cfg.gates)
    failed = [c for c in rows if not c.passed]
    write_json(layout.GATES_METRICS, {"passed": not failed, "failed_checks": len(failed), "checks": len(rows),
                                      "details": [{**asdict(c), "passed": c.passed} for c in rows]})
    write_text(layout.GATES_REPORT, markdown(rows))
    write_json(layout.LADDER_PLOT, [{"rung": r, **{k: metrics[r][k] for k in ("size_mb", "general_ppl", "domain_acc")}}
                                    for r in RUNGS])
    print_table(rows)
    for c in failed:
        log.error("%s", c.describe())
    if failed and cfg.gates.strict:
        sys.exit(1)
    log.info("gates: %s", "all passed" if not failed else f"{len(failed)} breached (gates.strict=false: recorded)")


main = stage_main(run)

if __name__ == "__main__":
    main()

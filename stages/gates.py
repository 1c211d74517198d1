"""gates: the release verdict. Every check is a paired, one-sided statement with an interval.

Each rung is judged against its reference (stages/common/rungs.py) on the same items, read from
the committed per-item files (metrics/eval/items/<rung>.json). A budget in conf/gates/ names
what may move and by how much; a check passes only when the bound of its interval on the bad
side is inside the threshold, fails when the point estimate is outside, and is inconclusive in
between, with the number of items that would resolve it (stages/common/paired.py).

Writes metrics/gates.json, reports/gates.md and metrics/ladder.json (size vs quality per rung,
for `dvc plots`) and prints the table, whatever the verdict: a FAIL is a result, and DVC keeps the
outputs only of a stage that succeeds, so this stage always does. The verdict is enforced after
`dvc repro` by `python -m stages.gates --enforce` (`make repro`, CI): exit 1 on any FAIL or
inconclusive check unless gates.strict=false (sweeps record every point).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import write_json, write_text
from stages.common.errors import PipelineError
from stages.common.item_metrics import LM_EVAL, change, estimate, harness_metrics, items_key, value
from stages.common.paired import FAIL, INCONCLUSIVE, PASS, Estimate, Judgement, judge
from stages.common.rungs import RUNGS
from stages.common.runtime import get_logger, stage_main

log = get_logger(__name__)

@dataclass(frozen=True)
class Rule:
    """What a budget key bounds. statistic "change": the paired change against the rung's
    reference (points for rates, relative for perplexities), or against the base where
    `against_base` (safety: each rung must refuse as the base does, however many steps lie
    between); "value": the rung's own statistic (KL and top-1 already compare it with its
    reference token by token). sign turns the budget into the threshold (a drop is negative)."""

    metric: str
    statistic: str
    direction: str
    sign: int
    against_base: bool = False


BASE = "torch_base"
RULES: dict[str, tuple[Rule, ...]] = {
    "max_ppl_increase": (Rule("domain_ppl", "change", "<=", 1), Rule("general_ppl", "change", "<=", 1)),
    "max_general_ppl_increase": (Rule("general_ppl", "change", "<=", 1),),
    "max_acc_drop": (Rule("domain_acc", "change", ">=", -1), Rule("general_acc", "change", ">=", -1)),
    "max_general_acc_drop": (Rule("general_acc", "change", ">=", -1),),
    "min_domain_acc_gain": (Rule("domain_acc", "change", ">=", 1),),
    "max_kl": (Rule("kl", "value", "<=", 1),),
    "min_top1": (Rule("top1", "value", ">=", 1),),
    "max_refusal_drop": (Rule("refusal_rate", "change", ">=", -1, against_base=True),),
    "max_over_refusal_increase": (Rule("over_refusal_rate", "change", "<=", 1, against_base=True),),
    "max_degeneration_increase": (Rule("loop_rate", "change", "<=", 1), Rule("no_stop_rate", "change", "<=", 1)),
}
# Measured, not sampled (no interval): bytes on disk against the reference's, and the 99th
# percentile of per-token KL (the tail that a mean hides: a few tokens the quant gets badly wrong).
SIZE_RULE, KL_TAIL_RULE, P95_RULE = "max_size_ratio", "max_kl_p99", "max_p95_ms"  # p95: an SLA on decode
# latency (ms per token) of one request of the target shape (evaluate.cost), as measured
# Any lm-eval metric (the harness stage): gates.<rung>.lm_eval: {<task>/<metric>: margin}, the paired
# change against the rung's reference on the same documents, worse by at most the margin (which
# way is worse: lm-eval's higher_is_better for that metric).
LM_EVAL_RULE = "lm_eval"
SETTINGS = ("strict", "confidence", "resamples")


@dataclass(frozen=True)
class Check:
    rung: str
    reference: str
    metric: str
    statistic: str       # what is bounded: "change" vs the reference, or the rung's "value"
    rung_value: float
    reference_value: float | None
    estimate: Estimate
    threshold: float
    direction: str       # ">=" or "<="
    judgement: Judgement

    @property
    def verdict(self) -> str:
        return self.judgement.verdict

    def describe(self) -> str:
        e, j = self.estimate, self.judgement
        need = f"; about {j.items_needed} items would resolve it" if j.items_needed else ""
        return (f"{j.verdict}: {self.rung} {self.metric} {self.statistic} vs {self.reference} = {e.point:+.4g} "
                f"[{e.low:+.4g}, {e.high:+.4g}] on {e.items} items, threshold {self.direction} "
                f"{self.threshold:+.4g}{need}")

    def as_dict(self) -> dict:
        e, j = self.estimate, self.judgement
        return {"rung": self.rung, "reference": self.reference, "metric": self.metric, "statistic": self.statistic,
                "rung_value": self.rung_value, "reference_value": self.reference_value, "point": round(e.point, 6),
                "low": round(e.low, 6), "high": round(e.high, 6), "items": e.items, "threshold": self.threshold,
                "direction": self.direction, "verdict": j.verdict, "items_needed": j.items_needed}


def load_items(rung: str) -> dict:
    """evaluate's per-item results, and the harness's as "lm_eval/<task>/<metric>" (item_metrics)."""
    path = layout.EVAL_ITEMS_DIR / f"{rung}.json"
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run `dvc repro evaluate@{rung}` first")
    harness = layout.HARNESS_ITEMS_DIR / f"{rung}.json"
    return {**json.loads(path.read_text()), **(harness_metrics(json.loads(harness.read_text()))
                                               if harness.is_file() else {})}


def load_harness_summary() -> dict:
    return json.loads(layout.HARNESS_METRICS.read_text()) if layout.HARNESS_METRICS.is_file() else {}


def load_summary(rung: str) -> dict:
    path = layout.EVAL_METRICS_DIR / f"{rung}.json"
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run `dvc repro evaluate@{rung}` first")
    return json.loads(path.read_text())


def budgets(g: DictConfig) -> dict[str, dict]:
    """gates.<rung>.<rule>: each rung's budget (keys and ranges checked with params: schema.Budget;
    an lm_eval budget is a mapping of <task>/<metric> to its margin)."""
    return {str(name): {str(k): ({str(m): float(x) for m, x in v.items()} if k == LM_EVAL_RULE else float(v))
                        for k, v in budget.items()}
            for name, budget in g.items() if name not in SETTINGS}


def lm_eval_rules(rung: str, specs: Mapping[str, float], harness: Mapping[str, dict]) -> list[tuple[Rule, float]]:
    """(rule, margin) for each <task>/<metric> of a gates.<rung>.lm_eval budget."""
    out = []
    for spec, margin in specs.items():
        task, _, metric = spec.partition("/")
        known = harness.get(rung, {}).get("tasks", {}).get(task, {}).get("higher_is_better", {})
        if metric not in known:
            raise PipelineError(f"gates.{rung}.lm_eval.{spec}: metrics/harness.json has no metric {metric!r} of "
                                f"task {task!r} for {rung} (name it <task>/<metric>, the task in "
                                "evaluate.lm_eval.tasks, and run `dvc repro harness`)")
        higher = known[metric]
        out.append((Rule(f"{LM_EVAL}{task}/{metric}", "change", ">=" if higher else "<=", -1 if higher else 1),
                    margin))
    return out


def checks(items: Mapping[str, dict], summaries: Mapping[str, dict], g: DictConfig, seed: int,
           harness: Mapping[str, dict] | None = None) -> list[Check]:
    rows = []
    for rung, budget in budgets(g).items():
        reference = RUNGS[rung].reference
        for rule, limit in budget.items():
            if rule in (SIZE_RULE, KL_TAIL_RULE, P95_RULE):
                continue
            rules = lm_eval_rules(rung, limit, harness or {}) if rule == LM_EVAL_RULE else \
                [(r, limit) for r in RULES[rule]]
            for r, margin in rules:
                against = BASE if r.against_base else reference
                mine = rung_items(items, rung, r.metric)
                if r.statistic == "change":
                    theirs = rung_items(items, against, r.metric)
                    est = change(r.metric, mine, theirs, g.confidence, seed, g.resamples)
                    ref_value = value(r.metric, theirs)
                else:
                    est = estimate(r.metric, mine, g.confidence, seed, g.resamples)
                    ref_value = None
                threshold = r.sign * margin
                rows.append(Check(rung, against, r.metric, r.statistic, value(r.metric, mine), ref_value, est,
                                  threshold, r.direction, judge(est, threshold, r.direction)))
        if SIZE_RULE in budget:  # a measured size, not a sample: no interval
            ratio = summaries[rung]["size_mb"] / summaries[reference]["size_mb"]
            est = Estimate(ratio, ratio, ratio, 1)
            rows.append(Check(rung, reference, "size", "ratio", summaries[rung]["size_mb"],
                              summaries[reference]["size_mb"], est, budget[SIZE_RULE], "<=",
                              judge(est, budget[SIZE_RULE], "<=")))
        if P95_RULE in budget:
            p95 = summaries[rung]["at_target"]["decode_p95_ms"]
            est = Estimate(p95, p95, p95, 1)
            rows.append(Check(rung, reference, "decode_p95_ms", "value", p95, None, est, budget[P95_RULE], "<=",
                              judge(est, budget[P95_RULE], "<=")))
        if KL_TAIL_RULE in budget:
            tail = summaries[rung]["kl_p99"]
            est = Estimate(tail, tail, tail, 1)
            rows.append(Check(rung, reference, "kl_p99", "value", tail, None, est, budget[KL_TAIL_RULE], "<=",
                              judge(est, budget[KL_TAIL_RULE], "<=")))
    return rows


def rung_items(items: Mapping[str, dict], rung: str, metric: str) -> dict:
    key = items_key(metric)
    if key not in items[rung]:
        where = "the harness items (metrics/harness/items)" if key.startswith(LM_EVAL) else \
            f"{layout.EVAL_ITEMS_DIR / rung}.json"
        raise PipelineError(f"{where} of {rung} has no {key!r} items (written by an older run?); re-run "
                            f"`dvc repro`")
    return items[rung][key]


def fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def markdown(rows: list[Check], confidence: float, extra: list[str]) -> str:
    counts = {v: sum(c.verdict == v for c in rows) for v in (PASS, FAIL, INCONCLUSIVE)}
    verdict = "PASS" if counts[PASS] == len(rows) else \
        f"FAIL ({counts[FAIL]} failed, {counts[INCONCLUSIVE]} inconclusive of {len(rows)} checks)"
    lines = [f"# Release gates: {verdict}", "",
             f"Each interval end is a one-sided {confidence:.0%} bound (paired bootstrap over the same items); "
             "a check passes when the bound on the bad side is inside the threshold, fails when the estimate is "
             "outside, and is inconclusive in between.", "",
             "| rung | vs | metric | rung | ref | statistic | estimate | interval | threshold | verdict | items |",
             "|---|---|---|---:|---:|---|---:|---|---:|---|---:|"]
    for c in rows:
        e = c.estimate
        shown = {PASS: "pass", FAIL: "**FAIL**", INCONCLUSIVE: "**inconclusive**"}[c.verdict]
        need = f" (need ~{c.judgement.items_needed})" if c.judgement.items_needed else ""
        lines.append(f"| {c.rung} | {c.reference} | {c.metric} | {fmt(c.rung_value)} | {fmt(c.reference_value)} | "
                     f"{c.statistic} | {e.point:+.4g} | [{e.low:+.4g}, {e.high:+.4g}] | {c.direction} "
                     f"{c.threshold:+.4g} | {shown}{need} | {e.items} |")
    return "\n".join([*lines, "", *extra]) + "\n"


def adapter_decode_cost(summaries: Mapping[str, dict]) -> dict[str, float]:
    """Decode speed of each hot-swap adapter rung relative to the merged rung it stands for."""
    out = {}
    for name, rung in RUNGS.items():
        if rung.adapter:
            merged = name.replace("adapter_", "")
            out[name] = round(summaries[name]["decode_tok_s"] / summaries[merged]["decode_tok_s"], 3)
    return out


def print_table(rows: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Release gates")
    for column in ("rung", "vs", "metric", "estimate", "interval", "threshold", "verdict"):
        table.add_column(column, justify="right" if column in ("estimate", "threshold") else "left")
    style = {PASS: "[green]pass[/]", FAIL: "[bold red]FAIL[/]", INCONCLUSIVE: "[bold yellow]inconclusive[/]"}
    for c in rows:
        e = c.estimate
        table.add_row(c.rung, c.reference, f"{c.metric} {c.statistic}", f"{e.point:+.4g}",
                      f"[{e.low:+.4g}, {e.high:+.4g}]", f"{c.direction} {c.threshold:+.4g}", style[c.verdict])
    Console(width=150).print(table)


def run(cfg: DictConfig) -> None:
    g = cfg.gates
    summaries = {rung: load_summary(rung) for rung in RUNGS}
    items = {rung: load_items(rung) for rung in RUNGS}
    rows = checks(items, summaries, g, cfg.seed, load_harness_summary())
    failed = [c for c in rows if c.verdict != PASS]
    cost = adapter_decode_cost(summaries)
    extra = ["Adapter path decode speed vs its merged rung: "
             + ", ".join(f"{name} {ratio:.2f}x" for name, ratio in cost.items())]
    write_json(layout.GATES_METRICS, {"passed": not failed, "failed_checks": sum(c.verdict == FAIL for c in rows),
                                      "inconclusive_checks": sum(c.verdict == INCONCLUSIVE for c in rows),
                                      "checks": len(rows), "confidence": g.confidence,
                                      "adapter_decode_vs_merged": cost, "details": [c.as_dict() for c in rows]})
    write_text(layout.GATES_REPORT, markdown(rows, g.confidence, extra))
    write_json(layout.LADDER_PLOT, [{"rung": r, **{k: summaries[r][k] for k in ("size_mb", "general_ppl",
                                                                             "domain_acc")}} for r in RUNGS])
    print_table(rows)
    for c in failed:
        log.error("%s", c.describe())
    log.info("gates: %s", "all passed" if not failed else f"{len(failed)} not passed: recorded in "
             f"{layout.GATES_REPORT}; `python -m stages.gates --enforce` (make repro) fails on them")


def enforce(cfg: DictConfig) -> None:
    """The recorded verdict as an exit code: 1 unless every check passed (or gates.strict=false)."""
    if not layout.GATES_METRICS.is_file():
        raise PipelineError(f"{layout.GATES_METRICS}: missing; run `dvc repro` first")
    verdict = json.loads(layout.GATES_METRICS.read_text())
    failed = [c for c in verdict["details"] if c["verdict"] != PASS]
    for c in failed:
        log.error("%s: %s %s %s vs %s = %+.4g [%+.4g, %+.4g], threshold %s %+.4g", c["verdict"], c["rung"],
                  c["metric"], c["statistic"], c["reference"], c["point"], c["low"], c["high"], c["direction"],
                  c["threshold"])
    if failed and cfg.gates.strict:
        log.error("gates: %d of %d checks not passed (table: %s)", len(failed), verdict["checks"], layout.GATES_REPORT)
        sys.exit(1)
    log.info("gates: %s", f"all {verdict['checks']} checks passed" if not failed else
             f"{len(failed)} not passed (gates.strict=false: recorded, not enforced)")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--enforce" in argv:
        argv.remove("--enforce")
        stage_main(enforce, name=__name__)(argv)
    else:
        stage_main(run, name=__name__)(argv)


if __name__ == "__main__":
    main()

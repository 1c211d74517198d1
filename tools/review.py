"""`make review`: every gated metric of this revision against another (main by default), paired
on the committed per-item files of both, with the interval and this revision's verdict.

    python -m tools.review [--rev main]

For each (rung, metric) that a gate reads, the items files of both revisions
(metrics/eval/items/<rung>.json, committed) are paired on item ids: the change this revision
made is an interval, not two point estimates. Where the two revisions scored different items
(an eval set changed), no pairing exists and the row shows a plain difference, labelled so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from stages.common import layout
from stages.common.item_metrics import (
    PERPLEXITY,
    ItemsMismatch,
    change,
    harness_metrics,
    is_metric,
    items_key,
    kind,
    value,
)
from stages.common.params import load_params


def items_at(rev: str | None, rung: str) -> dict | None:
    """The rung's per-item results in the working tree (rev None) or at a git revision."""
    def read(path: Path) -> dict | None:
        if rev is None:
            return json.loads(path.read_text()) if path.is_file() else None
        # ./: relative to the working directory, so a pipeline folder (pipelines/smollm2) reads its own files
        shown = subprocess.run(["git", "show", f"{rev}:./{path}"], capture_output=True, text=True)
        return json.loads(shown.stdout) if shown.returncode == 0 else None

    items = read(layout.EVAL_ITEMS_DIR / f"{rung}.json")
    harness = read(layout.HARNESS_ITEMS_DIR / f"{rung}.json")
    return None if items is None else {**items, **harness_metrics(harness or {})}


def fmt_change(metric: str, x: float) -> str:
    return f"{x:+.2%}" if kind(metric) == PERPLEXITY else f"{x:+.4g}"


def rows(rev: str, gates: dict, cfg) -> list[str]:
    g = cfg.gates
    verdicts: dict[tuple[str, str], list[str]] = {}
    for check in gates["details"]:
        if is_metric(check["metric"]):
            verdicts.setdefault((check["rung"], check["metric"]), []).append(check["verdict"])
    out = []
    for (rung, metric), verdict in verdicts.items():
        mine, theirs = items_at(None, rung), items_at(rev, rung)
        key = items_key(metric)
        if mine is None or key not in mine:
            continue
        now = value(metric, mine[key])
        if theirs is None or key not in theirs:
            out.append(f"| {rung} | {metric} | (none) | {now:.4g} | | not at {rev} | {', '.join(verdict)} |")
            continue
        before = value(metric, theirs[key])
        try:
            e = change(metric, mine[key], theirs[key], g.confidence, cfg.seed, g.resamples)
            shown = f"{fmt_change(metric, e.point)} | [{fmt_change(metric, e.low)}, {fmt_change(metric, e.high)}] " \
                    f"paired, {e.items} items"
        except ItemsMismatch:
            diff = now / before - 1 if kind(metric) == PERPLEXITY else now - before
            shown = f"{fmt_change(metric, diff)} | plain diff (unpaired: eval sets differ)"
        out.append(f"| {rung} | {metric} | {before:.4g} | {now:.4g} | {shown} | {', '.join(verdict)} |")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="main", help="the revision to compare with (default: main)")
    args = parser.parse_args(argv)
    cfg = load_params([])
    if not layout.GATES_METRICS.is_file():
        raise SystemExit(f"{layout.GATES_METRICS}: missing; run `make repro` first")
    gates = json.loads(layout.GATES_METRICS.read_text())
    print(f"## Gated metrics vs {args.rev}\n")
    print(f"Change = this revision - {args.rev} on the same items (relative for perplexities); each interval end "
          f"a one-sided {cfg.gates.confidence:.0%} bound. Verdict: this revision's gate(s) on that metric.\n")
    print(f"| rung | metric | {args.rev} | this | change | interval | verdict |")
    print("|---|---|---:|---:|---:|---|---|")
    print("\n".join(rows(args.rev, gates, cfg)))
    print()
    print(Path(layout.GATES_REPORT).read_text())


if __name__ == "__main__":
    main()

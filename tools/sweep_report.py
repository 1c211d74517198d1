"""`make sweep-report`: the sweep's experiments as a Markdown table and a trade-off plot.

Reads `dvc exp show --json` (DVC's own record of every experiment), keeps the columns that matter
(r, beta, domain accuracy, general perplexity change, KL to base, INT4 accuracy, the adapter
path's price: decode tokens/s of base + adapter file over the merged INT4 graph, gate verdict),
marks the best point that passes every gate, and plots beta against domain accuracy and general
perplexity drift: learning the domain against forgetting the general distribution.

    python -m tools.sweep_report [--plot reports/sweep.png] [--md reports/sweep.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from stages.common.atomic import atomic_path, write_text


def _metric(data: dict, path: str, key: str):
    return (data.get("metrics", {}).get(path, {}).get("data") or {}).get(key)


def gate_interval(data: dict, rung: str, metric: str) -> tuple[float, float] | None:
    """How far the interval of a gated change reaches below and above its estimate (gates.json)."""
    details = _metric(data, "metrics/gates.json", "details") or []
    row = next((d for d in details if d.get("rung") == rung and d.get("metric") == metric and "low" in d), None)
    return (row["point"] - row["low"], row["high"] - row["point"]) if row else None


def speed_ratio(data: dict, rung: str, reference: str) -> float | None:
    """Decode tokens/s of `rung` over `reference`'s, both as evaluate measured them."""
    a = _metric(data, f"metrics/eval/{rung}.json", "decode_tok_s")
    b = _metric(data, f"metrics/eval/{reference}.json", "decode_tok_s")
    return round(a / b, 3) if a and b else None


def points(exp_show: list[dict]) -> list[dict]:
    """One row per experiment (and the workspace/baseline), from `dvc exp show --json`."""
    rows = []

    def add(entry: dict, name: str) -> None:
        data = entry.get("data") or {}
        params = (data.get("params", {}).get("params.yaml", {}).get("data")) or {}
        if not params or _metric(data, "metrics/eval/torch_lora.json", "domain_acc") is None:
            return
        base_ppl = _metric(data, "metrics/eval/torch_base.json", "general_ppl")
        lora_ppl = _metric(data, "metrics/eval/torch_lora.json", "general_ppl")
        rows.append({
            "name": name, "r": params["train"]["lora"]["r"], "beta": params["train"]["kl_beta"],
            "domain_acc": _metric(data, "metrics/eval/torch_lora.json", "domain_acc"),
            "general_ppl_change": round(lora_ppl / base_ppl - 1, 4) if base_ppl and lora_ppl else None,
            "general_acc": _metric(data, "metrics/eval/torch_lora.json", "general_acc"),
            "val_kl": _metric(data, "metrics/train.json", "val_kl"),
            "int4_domain_acc": _metric(data, "metrics/eval/onnx_int4.json", "domain_acc"),
            "int4_algorithm": params.get("quant_int4", {}).get("algorithm", "rtn"),  # older runs: the default
            "int4_kl": _metric(data, "metrics/eval/onnx_int4.json", "kl"),
            "int4_top1": _metric(data, "metrics/eval/onnx_int4.json", "top1"),
            "adapter_speed": speed_ratio(data, "onnx_adapter_int4", "onnx_int4"),
            "gates_passed": _metric(data, "metrics/gates.json", "passed"),
            "domain_acc_err": gate_interval(data, "torch_lora", "domain_acc"),
            "general_ppl_err": gate_interval(data, "torch_lora", "general_ppl"),
        })

    for commit in exp_show:
        for group in commit.get("experiments") or []:
            # A queued or running experiment shows its baseline's metrics under its own params.
            if (group.get("executor") or {}).get("state", "success") != "success":
                continue
            for rev in group.get("revs", []):
                add(rev, rev.get("name") or rev.get("rev", "")[:7])
    return sorted(rows, key=lambda p: (p["beta"], p["r"], p["int4_algorithm"]))


def fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def best(rows: list[dict]) -> dict | None:
    """The passing point that learnt the domain best with the least forgetting; between equal
    LoRA runs (an INT4 algorithm sweep), the INT4 rung's domain accuracy, then its KL."""
    passing = [p for p in rows if p["gates_passed"]]

    def rank(p: dict) -> tuple:
        kl = p["int4_kl"] if p["int4_kl"] is not None else float("inf")
        return p["domain_acc"], -p["general_ppl_change"], p["int4_domain_acc"] or 0.0, -kl

    return max(passing, key=rank) if passing else None


def markdown(rows: list[dict]) -> str:
    top = best(rows)
    lines = ["| experiment | r | β | domain acc | general ppl Δ | general acc | KL to base | INT4 | INT4 KL | "
             "INT4 top-1 | INT4 domain acc | adapter speed | gates |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for p in rows:
        mark = " ★" if p is top else ""
        speed = f"{p['adapter_speed']:.2f}x" if p["adapter_speed"] else ""
        lines.append(f"| {p['name']}{mark} | {p['r']} | {p['beta']} | {p['domain_acc']:.3f} | "
                     f"{p['general_ppl_change']:+.2%} | {p['general_acc']:.3f} | {p['val_kl']:.3f} | "
                     f"{p['int4_algorithm']} | {fmt(p['int4_kl'], '.5f')} | {fmt(p['int4_top1'], '.3f')} | "
                     f"{p['int4_domain_acc']:.3f} | {speed} | {'pass' if p['gates_passed'] else 'FAIL'} |")
    note = ("adapter speed: decode tokens/s of the INT4 base + adapter file over the merged INT4 graph "
            "(the hot-swap path's price)\n\n")
    note += f"★ best point passing every gate: {top['name']} (r={top['r']}, β={top['beta']})" if top else \
        "no point passes every gate"
    return "\n".join(lines) + f"\n\n{note}\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, ppl_ax) = plt.subplots(1, 2, figsize=(10, 4))
    def errors(pts: list[dict], key: str, scale: float):
        """Asymmetric error bars from each point's gate interval (none for an older experiment)."""
        if not all(p[key] for p in pts):
            return None
        return [[scale * p[key][0] for p in pts], [scale * p[key][1] for p in pts]]

    for r in sorted({p["r"] for p in rows}):
        pts = [p for p in rows if p["r"] == r]
        acc_ax.errorbar([p["beta"] for p in pts], [p["domain_acc"] for p in pts], yerr=errors(pts, "domain_acc_err", 1),
                        fmt="o-", capsize=3, label=f"r={r}")
        ppl_ax.errorbar([p["beta"] for p in pts], [100 * p["general_ppl_change"] for p in pts],
                        yerr=errors(pts, "general_ppl_err", 100), fmt="o-", capsize=3, label=f"r={r}")
    top = best(rows)
    if top:
        acc_ax.plot([top["beta"]], [top["domain_acc"]], "*", markersize=16, color="gold", label="best passing")
        ppl_ax.plot([top["beta"]], [100 * top["general_ppl_change"]], "*", markersize=16, color="gold")
    acc_ax.set(xlabel="β (KL weight)", ylabel="domain exact match", title="learning the domain (bars: gate interval)")
    ppl_ax.set(xlabel="β (KL weight)", ylabel="general perplexity change (%)", title="forgetting")
    acc_ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plot", type=Path, default=Path("reports/sweep.png"))
    parser.add_argument("--md", type=Path, default=Path("reports/sweep.md"))
    args = parser.parse_args()
    # --all-commits: experiments stay visible after a later commit moves HEAD off their baseline.
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--all-commits", "--json"], capture_output=True, text=True,
                                      check=True).stdout)
    rows = points(shown)
    if not rows:
        raise SystemExit("no finished experiment with evaluation metrics; run `make sweep` first")
    table = markdown(rows)
    write_text(args.md, table)
    plot(rows, args.plot)
    print(table)
    print(f"wrote {args.md} and {args.plot}")


if __name__ == "__main__":
    main()

"""The ladders side by side: the embedded default's (metrics/) and a real pipeline folder's
(pipelines/<name>/metrics/), per rung, from the committed metric files, so the README's table is
what the runs wrote.

    python -m tools.ladder_table [--real pipelines/smollm2]

Per rung: size, KL and top-1 to its reference, domain and general accuracy, refusal,
over-refusal and loop rates, decode tok/s; then each folder's gate verdicts per rung.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from stages.common.rungs import RUNGS

COLUMNS = (("size_mb", "size MB", "{:,.1f}"), ("kl", "KL", "{:.4f}"), ("top1", "top-1", "{:.3f}"),
           ("domain_acc", "domain acc", "{:.3f}"), ("general_acc", "general acc", "{:.3f}"),
           ("refusal_rate", "refusal", "{:.2f}"), ("over_refusal_rate", "over-refusal", "{:.2f}"),
           ("loop_rate", "loops", "{:.2f}"), ("decode_tok_s", "decode tok/s", "{:,.0f}"))


def rung_metrics(folder: Path) -> dict[str, dict]:
    out = {}
    for name in RUNGS:
        path = folder / "metrics" / "eval" / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def cell(metrics: dict | None, key: str, fmt: str) -> str:
    value = (metrics or {}).get(key)
    return "" if value is None else fmt.format(value)


def verdicts(folder: Path) -> dict[str, Counter]:
    path = folder / "metrics" / "gates.json"
    if not path.is_file():
        return {}
    per_rung: dict[str, Counter] = {}
    for row in json.loads(path.read_text())["details"]:
        per_rung.setdefault(row["rung"], Counter())[row["verdict"]] += 1
    return per_rung


def table(tiny: Path, real: Path) -> str:
    ladders = {"tiny": rung_metrics(tiny), real.name: rung_metrics(real)}
    titles = " | ".join(title for _, title, _ in COLUMNS)
    lines = [f"| rung | ladder | {titles} | gates (pass / FAIL / inconclusive) |",
             "|---|---|" + "---:|" * len(COLUMNS) + "---|"]
    gates = {"tiny": verdicts(tiny), real.name: verdicts(real)}
    for name in RUNGS:
        for ladder, metrics in ladders.items():
            if name not in metrics:
                continue
            g = gates[ladder].get(name, Counter())
            counts = f"{g['pass']} / {g['FAIL']} / {g['inconclusive']}" if g else ""
            cells = " | ".join(cell(metrics[name], key, fmt) for key, _, fmt in COLUMNS)
            lines.append(f"| {name} | {ladder} | {cells} | {counts} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", type=Path, default=Path("."))
    parser.add_argument("--real", type=Path, default=Path("pipelines/smollm2"))
    args = parser.parse_args()
    print(table(args.tiny, args.real))


if __name__ == "__main__":
    main()

"""`make verify-seeds`: is the recipe's verdict robust, or did one seed carry it?

    python -m tools.verify_seeds [--seeds 1234,1,2,3,4] [key=value ...]

For each seed, in its own workspace under .dvc/tmp/seeds/ (the data copied in, params composed
from conf/ with the overrides and `seed=<seed>`), runs the stages that a seed changes: base, train
and evaluate on the torch rungs (dedup once, shared: it draws no random numbers). A seed's base is
kept from its last run when what it reads (params and data bytes) is unchanged, so trying another
LoRA recipe costs train and one evaluation per seed, and a changed eval set costs the evaluations.
Then judges the LoRA rung's gates (conf/gates/, the same `stages.gates.checks`) per seed and prints one table: each
check's estimate and verdict per seed, its mean and spread, and its worst distance to the
threshold. A gate that passes on some seeds only is a recipe sitting on its margin: a different
CPU's rounding moves it as much as a seed does (README "Seeds and machines"). Writes
reports/seeds.md and metrics/seeds.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from stages.common import layout
from stages.common.atomic import write_json, write_text
from stages.common.paired import PASS
from stages.common.params import REPO_ROOT, compose, write_params

RUNG = "torch_lora"
WORK = REPO_ROOT / ".dvc" / "tmp" / "seeds"
REPORT, METRICS = Path("reports/seeds.md"), Path("metrics/seeds.json")


def stage(workspace: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PROGRESS": os.environ.get("PROGRESS", "0")}
    done = subprocess.run([sys.executable, "-m", *args], cwd=workspace, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        # the stages log to stdout (rich), tracebacks go to stderr: both tails
        sys.exit(f"{' '.join(args)} failed in {workspace}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")


# What the base and its evaluation read: when these are unchanged since the seed's last run, its
# base is kept (a recipe change in train re-runs train and the LoRA rung only).
BASE_KEYS = ("seed", "numerics", "base", "model", "data", "evaluate")
BASE_DATA = ("general_corpus", "general_task_train", "safety_train")
LORA_KEYS = (*BASE_KEYS, "dedup", "train")  # ... and the LoRA rung, when the recipe is unchanged too


def digest(*paths: Path) -> str:
    """sha256 over the files' relative names and bytes: params alone miss a data file that moved."""
    h = hashlib.sha256()
    for path in paths:
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                h.update(str(f.relative_to(path.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def fingerprint(cfg, keys: tuple[str, ...], *data: Path) -> str:
    return json.dumps({"params": {k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k]
                                  for k in keys}, "data": digest(*data)}, sort_keys=True)


def run_seed(seed: int, overrides: list[str], clean: Path | None) -> tuple[Path, dict[str, float]]:
    """The seed's own base, LoRA and torch-rung evaluation; seconds per stage."""
    workspace = WORK / str(seed)
    cfg = compose([*overrides, f"seed={seed}"])
    raw, evals = REPO_ROOT / "data" / "raw", REPO_ROOT / "data" / "eval"
    # The base reads these files (dvc.yaml's base deps); train and the evaluations, all of them.
    base_print = fingerprint(cfg, BASE_KEYS, *(REPO_ROOT / cfg.data[k] for k in BASE_DATA),
                             REPO_ROOT / cfg.data.eval.general_heldout)
    base_eval_print, lora_print = fingerprint(cfg, BASE_KEYS, raw, evals), fingerprint(cfg, LORA_KEYS, raw, evals)
    stamp, base_eval_stamp = workspace / "base.params.json", workspace / "base_eval.params.json"
    reuse = stamp.is_file() and stamp.read_text() == base_print and (workspace / layout.BASE_DIR).is_dir()
    if not reuse:
        shutil.rmtree(workspace, ignore_errors=True)
    for part in ("raw", "eval", "bench"):  # the committed data, fresh each run
        shutil.rmtree(workspace / "data" / part, ignore_errors=True)
        shutil.copytree(REPO_ROOT / "data" / part, workspace / "data" / part)
    write_params([*overrides, f"seed={seed}"], workspace / "params.yaml")
    seconds = {}
    lora_stamp = workspace / "lora.params.json"
    lora_kept = reuse and lora_stamp.is_file() and lora_stamp.read_text() == lora_print and \
        (workspace / layout.EVAL_ITEMS_DIR / f"{RUNG}.json").is_file()
    steps = [] if lora_kept else [("train", ["stages.train"]), ("evaluate@torch_lora", ["stages.evaluate", RUNG])]
    if not (reuse and base_eval_stamp.is_file() and base_eval_stamp.read_text() == base_eval_print and
            (workspace / layout.EVAL_ITEMS_DIR / "torch_base.json").is_file()):
        steps.insert(1, ("evaluate@torch_base", ["stages.evaluate", "torch_base"]))
    if not reuse:
        steps.insert(0, ("base", ["stages.base"]))
    if clean is None:
        shutil.rmtree(workspace / "data" / "clean", ignore_errors=True)
        steps.insert(0, ("dedup", ["stages.dedup"]))
    elif clean != workspace / "data" / "clean":
        shutil.rmtree(workspace / "data" / "clean", ignore_errors=True)
        shutil.copytree(clean, workspace / "data" / "clean")
    for name, args in steps:
        start = time.perf_counter()
        stage(workspace, *args)
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"  seed {seed}: {name} {seconds[name]:.0f} s", flush=True)
        if name == "base":
            stamp.write_text(base_print)
        if name == "evaluate@torch_base":
            base_eval_stamp.write_text(base_eval_print)
        if name == f"evaluate@{RUNG}":
            lora_stamp.write_text(lora_print)
    if reuse:
        kept = "base, LoRA and their evaluations" if lora_kept else "base"
        print(f"  seed {seed}: {kept} kept (their params are unchanged)", flush=True)
    return workspace, seconds


def judge(workspace: Path, seed: int, overrides: list[str]) -> list[dict]:
    """The LoRA rung's gate checks on this seed's per-item results."""
    from stages.gates import SETTINGS, checks

    cfg = compose([*overrides, f"seed={seed}"])
    g = OmegaConf.create({**{k: cfg.gates[k] for k in SETTINGS}, RUNG: cfg.gates[RUNG]})
    rungs = ("torch_base", RUNG)
    items = {r: json.loads((workspace / layout.EVAL_ITEMS_DIR / f"{r}.json").read_text()) for r in rungs}
    summaries = {r: json.loads((workspace / layout.EVAL_METRICS_DIR / f"{r}.json").read_text()) for r in rungs}
    return [c.as_dict() for c in checks(items, summaries, g, seed)]


def margin(check: dict) -> float:
    """How far the bound on the bad side sits inside the threshold (negative: outside)."""
    bound = check["low"] if check["direction"] == ">=" else check["high"]
    return bound - check["threshold"] if check["direction"] == ">=" else check["threshold"] - bound


def table(results: dict[int, list[dict]]) -> tuple[str, list[dict]]:
    seeds = list(results)
    names = [f"{c['metric']} {c['statistic']} vs {c['reference']}" for c in results[seeds[0]]]
    rows, summary = [], []
    for i, name in enumerate(names):
        per_seed = [results[s][i] for s in seeds]
        points = [c["point"] for c in per_seed]
        passed = sum(c["verdict"] == PASS for c in per_seed)
        worst = min(margin(c) for c in per_seed)
        spread = statistics.stdev(points) if len(points) > 1 else 0.0
        summary.append({"check": name, "threshold": per_seed[0]["threshold"], "direction": per_seed[0]["direction"],
                        "mean": round(statistics.mean(points), 4), "sd": round(spread, 4), "passed": passed,
                        "seeds": len(seeds), "worst_margin": round(worst, 4),
                        "per_seed": {str(s): {k: c[k] for k in ("point", "low", "high", "verdict")}
                                     for s, c in zip(seeds, per_seed, strict=True)}})
        cells = [f"{c['point']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] {c['verdict']}" for c in per_seed]
        rows.append(f"| {name} | {per_seed[0]['direction']} {per_seed[0]['threshold']:+.3g} | {' | '.join(cells)} | "
                    f"{statistics.mean(points):+.3f} ± {spread:.3f} | {passed}/{len(seeds)} | {worst:+.3f} |")
    head = (f"| {RUNG} check | threshold | {' | '.join(f'seed {s}' for s in seeds)} | mean ± sd | passed | "
            "worst margin |")
    sep = "|---|---|" + "---|" * len(seeds) + "---:|---:|---:|"
    return "\n".join([head, sep, *rows]), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1234,1,2,3,4", help="comma-separated seeds (default: 5)")
    parser.add_argument("overrides", nargs="*", help="conf/ overrides, as for `make params`")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results, seconds, clean = {}, {}, None
    start = time.perf_counter()
    for seed in seeds:
        workspace, seconds[seed] = run_seed(seed, args.overrides, clean)
        clean = clean or workspace / "data" / "clean"
        results[seed] = judge(workspace, seed, args.overrides)
        print(f"seed {seed}: " + ", ".join(f"{c['metric']} {c['point']:+.3f} {c['verdict']}" for c in results[seed]),
              flush=True)
    md, summary = table(results)
    unstable = [s["check"] for s in summary if s["passed"] < len(seeds)]
    verdict = ("every check passes on every seed" if not unstable else
               f"not robust: {', '.join(unstable)} fail(s) or stay inconclusive on some seed")
    overrides = " ".join(args.overrides) or "(none: conf/ as committed)"
    write_text(REPORT, f"# Gates over seeds: {verdict}\n\nOverrides: {overrides}. Each cell: estimate [one-sided "
               f"bounds] verdict. Worst margin: the bound on the bad side minus the threshold, over seeds.\n\n{md}\n")
    write_json(METRICS, {"seeds": seeds, "overrides": args.overrides, "robust": not unstable, "checks": summary,
                         "seconds": seconds, "total_seconds": round(time.perf_counter() - start, 1)})
    print(REPORT.read_text())
    sys.exit(1 if unstable else 0)


if __name__ == "__main__":
    main()

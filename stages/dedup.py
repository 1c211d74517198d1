"""dedup: the clean training set, and the proof that it holds no copies of any eval set.

data.train (raw instruction records) ->
  1. eval leaks: a shared 13-gram with any record of any eval set named in data.eval, or a large
     share of one eval record's 7-grams (the Phi-4 report's hybrid decontamination);
  2. exact duplicates: the same text after NFKC, case folding and whitespace folding;
  3. near duplicates: a near-duplicate *record*, its prompt and its response both near-identical
     (textdedup.is_near_duplicate: a symmetric word similarity, a typo counting as the word, and no
     number swapped), proposed by datasketch MinHash-LSH (signatures sharded over worker processes)
     and confirmed pair by pair; the first record of a group is kept.
A record is removed for the first reason that applies, leaks first (the most serious). Before
anything is written, a guard: more near-duplicate removals than dedup.max_near_fraction of the
input fails the stage and shows the pairs (a rule that removes that much is likely wrong for the
data; raise the limit on purpose).
-> data/clean/train.jsonl, data/clean/removed.jsonl (reason, matched id, similarities),
   metrics/dedup.json (with recall and precision per planted kind when data.ground_truth names a
   file), reports/dedup.md (counts and a sample of near-duplicate pairs side by side).

The same finder also runs on dedup.benchmark, labelled task families (data/bench/), whatever data
set is chosen: metrics/dedup.json then shows, per family, what the chosen params do on families
the rule was tuned on and on families it never saw.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import write_json, write_text
from stages.common.decontamination import build_eval_index, find_leak
from stages.common.errors import PipelineError
from stages.common.records import read_jsonl, record_kind, write_jsonl
from stages.common.runtime import get_logger, stage_main

if TYPE_CHECKING:
    from stages.common.spark_dedup import SparkDedup
from stages.common.textdedup import (
    NearDuplicateRule,
    confirmed_pairs,
    exact_duplicates,
    fields,
    keep_first,
    record_features,
    record_text,
    score_against_truth,
    score_families,
    signatures,
)

log = get_logger(__name__)



def load_eval_sets(eval_paths: DictConfig) -> dict[str, list[dict]]:
    if not eval_paths:
        raise PipelineError("data.eval names no eval set: decontamination needs at least one")
    return {name: read_jsonl(path, record_kind(path)) for name, path in eval_paths.items()}


def rule(p: DictConfig) -> NearDuplicateRule:
    return NearDuplicateRule(p.similarity.prompt, p.similarity.response, p.similarity.spelling, p.parameters,
                             p.candidates)


def find_duplicates(records: list[dict], p: DictConfig, removed: dict[int, dict],
                    spark: SparkDedup | None = None) -> float:
    """Exact, then near duplicates among `records`, added to `removed` (index -> reason and
    matched id) for records not already in it, on one machine or on Spark (`spark`): the same
    pure functions either way, then the same keep-the-first pass. Returns the signature step's
    seconds."""
    exact = spark.exact_duplicates(records) if spark else exact_duplicates([record_text(r) for r in records])
    for i, j in sorted(exact.items()):
        if i not in removed:
            removed[i] = {"reason": "exact_duplicate", "matched": records[j]["id"]}
    if spark:
        confirmed = spark.near_duplicate_pairs(records, rule(p), p.num_perm, tuple(p.lsh_weights), skip=removed)
        seconds = spark.signature_seconds
    else:
        start = time.perf_counter()
        sigs = signatures([record_features(r) for r in records], p.num_perm, p.workers, p.shard_size)
        seconds = time.perf_counter() - start
        confirmed = confirmed_pairs(records, sigs, rule(p), tuple(p.lsh_weights), skip=removed)
    for i, (j, (prompt, response)) in keep_first(len(records), confirmed, removed).items():
        removed[i] = {"reason": "near_duplicate", "matched": records[j]["id"],
                      "similarity": {"prompt": round(prompt, 4), "response": round(response, 4)}}
    return seconds


def benchmark(p: DictConfig, spark: SparkDedup | None = None) -> dict[str, dict]:
    """The params' precision and recall on the labelled sets: per split (tune, heldout) and family
    of the task families, and per planted kind of the external set."""
    out = {}
    for name, labelled in p.benchmark.items():
        records = read_jsonl(labelled.records, "instruction")
        removed: dict[int, dict] = {}
        find_duplicates(records, p, removed, spark)
        rows = [{"id": records[i]["id"], **removed[i]} for i in sorted(removed)]
        truth = read_jsonl(labelled.truth, "ground_truth")
        if name == "families":
            out |= score_families(rows, truth)
        else:
            out[name] = score_against_truth(rows, truth)
    return out


def side_by_side(pairs: list[tuple[dict, dict, dict]], width: int = 70) -> list[str]:
    """Markdown rows: the removed record, the record it matched, and their similarities."""
    def cut(text: str) -> str:
        text = " ".join(text.split()).replace("|", "\\|")
        return text if len(text) <= width else text[: width - 1] + "…"

    rows = []
    for removed, kept, why in pairs:
        (rp, rr), (kp, kr) = fields(removed), fields(kept)
        sim = why.get("similarity", {})
        rows.append(f"| {removed['id']} | {cut(rp)} → {cut(rr)} | {kept['id']} | {cut(kp)} → {cut(kr)} | "
                    f"{sim.get('prompt', '')} | {sim.get('response', '')} |")
    return ["| removed | prompt → response | kept | prompt → response | prompt sim | response sim |",
            "|---|---|---|---|---:|---:|", *rows]


def near_pairs(train: list[dict], removed: dict[int, dict], limit: int) -> list[tuple[dict, dict, dict]]:
    by_id = {r["id"]: r for r in train}
    near = [i for i in sorted(removed) if removed[i]["reason"] == "near_duplicate"]
    step = max(1, len(near) // limit)  # spread over the file, not its first records
    return [(train[i], by_id[removed[i]["matched"]], removed[i]) for i in near[::step][:limit]]


def guard(cfg: DictConfig, train: list[dict], removed: dict[int, dict]) -> None:
    """Fail before anything is written when near-duplicates take more than max_near_fraction."""
    near = sum(r["reason"] == "near_duplicate" for r in removed.values())
    limit = cfg.dedup.max_near_fraction
    if near > limit * len(train):
        sample = "\n".join(side_by_side(near_pairs(train, removed, 8), 50))
        raise PipelineError(
            f"{cfg.data.train}: {near} of {len(train)} records ({near / len(train):.1%}) would be removed as "
            f"near-duplicates, over dedup.max_near_fraction={limit}; nothing written. A sample of the pairs:\n"
            f"{sample}\nIf these are copies, raise the limit (`make params OVERRIDES='dedup.max_near_fraction="
            f"{min(1.0, round(near / len(train) + 0.01, 2))}'`); if they are distinct tasks, raise "
            "dedup.similarity.prompt or .response.")


def report(metrics: dict, pairs: list[tuple[dict, dict, dict]]) -> str:
    lines = ["# Dedup: what was removed, and why", "",
             f"{metrics['records_in']} records in, {metrics['records_out']} out.", "",
             "| reason | removed |", "|---|---:|",
             *(f"| {reason} | {count} |" for reason, count in metrics["removed"].items()), ""]
    if metrics.get("benchmark"):
        lines += ["## The rule on labelled task families (data/bench/families.jsonl)", "",
                  "| split | family | near-dups planted | removed | recall | precision |",
                  "|---|---|---:|---:|---:|---:|"]
        for split, score in metrics["benchmark"].items():
            for family, f in score.get("families", {}).items():
                lines.append(f"| {split} | {family} | {f['planted']} | {f['removed']} | {f['recall']:.2f} | "
                             f"{f['precision']:.2f} |")
            a = score["near_duplicate"]
            lines.append(f"| **{split}** | all | {a['planted']} | {a['removed']} | **{a['recall']:.2f}** | "
                         f"**{a['precision']:.2f}** |")
        lines.append("")
    lines += ["## A sample of near-duplicate removals", "",
              "Each removed record beside the earlier record it matched, with the similarity of their prompts and "
              "of their responses (both must pass: `dedup.similarity`).", "",
              *(side_by_side(pairs) if pairs else ["(none)"])]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> None:
    p = cfg.dedup
    if p.engine == "spark":
        from stages.common.spark_dedup import SparkDedup, spark_context

        with spark_context(p.spark.master, p.spark.partitions) as sc:
            clean_training_set(cfg, SparkDedup(sc, p.spark.partitions))
    else:
        clean_training_set(cfg, None)


def find_leaks(train: list[dict], index, overlap: float, spark: SparkDedup | None) -> dict[int, tuple[str, str]]:
    if spark:
        return spark.leaks(train, index, overlap)
    found = ((i, find_leak(record_text(r), index, overlap)) for i, r in enumerate(train))
    return {i: leak for i, leak in found if leak}


def clean_training_set(cfg: DictConfig, spark: SparkDedup | None) -> None:
    """The stage's work on either engine: leaks, exact and near duplicates, the guard, the outputs."""
    p = cfg.dedup
    train = read_jsonl(cfg.data.train, "instruction")
    eval_sets = load_eval_sets(cfg.data.eval)
    removed: dict[int, dict] = {}

    index = build_eval_index(((f"{name}/{r['id']}", record_text(r)) for name, rows in eval_sets.items()
                              for r in rows), p.decontamination.long_n, p.decontamination.short_n)
    leaks_per_set = dict.fromkeys(eval_sets, 0)
    for i, (eval_key, how) in sorted(find_leaks(train, index, p.decontamination.short_overlap, spark).items()):
        set_name, eval_id = eval_key.split("/", 1)
        leaks_per_set[set_name] += 1
        removed[i] = {"reason": "eval_leak", "matched": eval_id, "eval_set": set_name, "match": how}

    sig_seconds = find_duplicates(train, p, removed, spark)

    guard(cfg, train, removed)
    clean = [r for i, r in enumerate(train) if i not in removed]
    removed_rows = [{"id": train[i]["id"], **removed[i]} for i in sorted(removed)]
    if not clean:
        raise PipelineError(f"{cfg.data.train}: every record was removed; nothing left to train on")

    metrics = {
        "records_in": len(train), "records_out": len(clean),
        "removed": {reason: sum(r["reason"] == reason for r in removed_rows)
                    for reason in ("exact_duplicate", "near_duplicate", "eval_leak")},
        "leaks_per_eval_set": leaks_per_set,
        "engine": p.engine,
        "signatures_per_s": round(len(train) / max(sig_seconds, 1e-9)),
    }
    if cfg.data.ground_truth and Path(cfg.data.ground_truth).is_file():
        planted = read_jsonl(cfg.data.ground_truth, "ground_truth")
        metrics["ground_truth"] = score_against_truth(removed_rows, planted)
    metrics["benchmark"] = benchmark(p, spark)

    write_jsonl(layout.CLEAN_TRAIN, clean)
    write_jsonl(layout.REMOVED, removed_rows)
    write_json(layout.DEDUP_METRICS, metrics)
    write_text(layout.DEDUP_REPORT, report(metrics, near_pairs(train, removed, 12)))
    log.info("dedup: %d in, %d out; removed %s; leaks per eval set %s", len(train), len(clean),
             metrics["removed"], leaks_per_set)
    for kind, score in metrics.get("ground_truth", {}).items():
        log.info("  ground truth %-16s recall %.3f precision %.3f (%d planted)", kind, score["recall"],
                 score["precision"], score["planted"])
    for split, score in metrics.get("benchmark", {}).items():
        near = score["near_duplicate"]
        log.info("  benchmark %-8s near-duplicate recall %.3f precision %.3f (%d planted)", split, near["recall"],
                 near["precision"], near["planted"])


main = stage_main(run)

if __name__ == "__main__":
    main()

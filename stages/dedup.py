"""dedup: the clean training set, and the proof that it holds no copies of any eval set.

data.train (raw instruction records) ->
  1. eval leaks: a shared 13-gram with any record of any eval set named in data.eval, or a large
     share of one eval record's 7-grams (the Phi-4 report's hybrid decontamination);
  2. exact duplicates: the same text after NFKC, case folding and whitespace folding;
  3. near duplicates: datasketch MinHash signatures (sharded over worker processes) + LSH,
     confirmed by exact Jaccard on word shingles, or (short prompts, where Jaccard cannot see a
     one-word edit) by a word alignment of the prompts whose edits touch no number or list item
     (textdedup.reworded); and by the same-task checks (the answers agree, no number swapped;
     textdedup.same_task); the first record of a group is kept.
A record is removed for the first reason that applies, leaks first (the most serious).
-> data/clean/train.jsonl, data/clean/removed.jsonl (reason and matched id), metrics/dedup.json
   (with recall and precision per planted kind when data.ground_truth names a file).

The same duplicate finder also runs on dedup.benchmark, a labelled set of short instruction
records (data/bench/), whatever data set is chosen: metrics/dedup.json then shows what the
chosen params do where word shingles mislead most, beside what they did to your data.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import write_json
from stages.common.decontamination import build_eval_index, find_leak
from stages.common.errors import PipelineError
from stages.common.records import read_jsonl, record_kind, write_jsonl
from stages.common.runtime import get_logger, stage_main
from stages.common.textdedup import (
    RewordRule,
    exact_duplicates,
    near_duplicates,
    prompt_ngrams,
    record_text,
    score_against_truth,
    shingles,
    signatures,
    words,
)

log = get_logger(__name__)



def load_eval_sets(eval_paths: DictConfig) -> dict[str, list[dict]]:
    if not eval_paths:
        raise PipelineError("data.eval names no eval set: decontamination needs at least one")
    return {name: read_jsonl(path, record_kind(path)) for name, path in eval_paths.items()}


def find_duplicates(records: list[dict], p: DictConfig, removed: dict[int, dict]) -> float:
    """Exact, then near duplicates among `records`, added to `removed` (index -> reason and
    matched id) for records not already in it. Returns the signature step's seconds."""
    texts = [record_text(r) for r in records]
    for i, j in exact_duplicates(texts).items():
        if i not in removed:
            removed[i] = {"reason": "exact_duplicate", "matched": records[j]["id"]}
    shingle_sets = [shingles(words(t), p.shingle_size) for t in texts]
    start = time.perf_counter()
    sigs = signatures(shingle_sets, p.num_perm, p.workers, p.shard_size)
    seconds = time.perf_counter() - start
    r = p.reworded
    reword = RewordRule(r.candidates, r.spelling, r.max_changed, r.max_words) if r.enabled else None
    # Only short prompts take part (the rest get an empty set and are never inserted or queried).
    prompt_sigs = signatures([prompt_ngrams(rec["prompt"]) if len(rec.get("prompt", "").split()) <= r.max_words
                              else set() for rec in records], p.num_perm, p.workers, p.shard_size) if reword else None
    for i, (j, score) in near_duplicates(records, shingle_sets, sigs, p.threshold, tuple(p.lsh_weights),
                                         p.same_task.answers, p.same_task.numbers, skip=removed,
                                         reword=reword, prompt_sigs=prompt_sigs).items():
        removed[i] = {"reason": "near_duplicate", "matched": records[j]["id"], "jaccard": round(score, 4)}
    return seconds


def benchmark(p: DictConfig) -> dict[str, dict]:
    """The params' recall and precision on the labelled short-record set."""
    records = read_jsonl(p.benchmark.records, "instruction")
    removed: dict[int, dict] = {}
    find_duplicates(records, p, removed)
    rows = [{"id": records[i]["id"], **removed[i]} for i in sorted(removed)]
    return score_against_truth(rows, read_jsonl(p.benchmark.truth, "ground_truth"))


def run(cfg: DictConfig) -> None:
    p = cfg.dedup
    train = read_jsonl(cfg.data.train, "instruction")
    eval_sets = load_eval_sets(cfg.data.eval)
    texts = [record_text(r) for r in train]
    removed: dict[int, dict] = {}

    index = build_eval_index(((f"{name}/{r['id']}", record_text(r)) for name, rows in eval_sets.items()
                              for r in rows), p.decontamination.long_n, p.decontamination.short_n)
    leaks_per_set = dict.fromkeys(eval_sets, 0)
    for i, text in enumerate(texts):
        leak = find_leak(text, index, p.decontamination.short_overlap)
        if leak:
            eval_key, how = leak
            set_name, eval_id = eval_key.split("/", 1)
            leaks_per_set[set_name] += 1
            removed[i] = {"reason": "eval_leak", "matched": eval_id, "eval_set": set_name, "match": how}

    sig_seconds = find_duplicates(train, p, removed)

    clean = [r for i, r in enumerate(train) if i not in removed]
    removed_rows = [{"id": train[i]["id"], **removed[i]} for i in sorted(removed)]
    if not clean:
        raise PipelineError(f"{cfg.data.train}: every record was removed; nothing left to train on")

    metrics = {
        "records_in": len(train), "records_out": len(clean),
        "removed": {reason: sum(r["reason"] == reason for r in removed_rows)
                    for reason in ("exact_duplicate", "near_duplicate", "eval_leak")},
        "leaks_per_eval_set": leaks_per_set,
        "signatures_per_s": round(len(texts) / max(sig_seconds, 1e-9)),
    }
    if cfg.data.ground_truth and Path(cfg.data.ground_truth).is_file():
        planted = read_jsonl(cfg.data.ground_truth, "ground_truth")
        metrics["ground_truth"] = score_against_truth(removed_rows, planted)
    if p.benchmark.records:
        metrics["short_records_benchmark"] = benchmark(p)

    write_jsonl(layout.CLEAN_TRAIN, clean)
    write_jsonl(layout.REMOVED, removed_rows)
    write_json(layout.DEDUP_METRICS, metrics)
    log.info("dedup: %d in, %d out; removed %s; leaks per eval set %s", len(train), len(clean),
             metrics["removed"], leaks_per_set)
    for where in ("ground_truth", "short_records_benchmark"):
        for kind, score in metrics.get(where, {}).items():
            log.info("  %s %-16s recall %.3f precision %.3f (%d planted)", where, kind, score["recall"],
                     score["precision"], score["planted"])


main = stage_main(run)

if __name__ == "__main__":
    main()

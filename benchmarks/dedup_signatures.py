"""Benchmark: MinHash signatures/s of the dedup stage vs a naive loop, on the same corpus.

The naive loop builds one datasketch.MinHash per document and calls update() per shingle (the
textbook usage). The stage uses MinHash.bulk (one batched update per document, permutations
initialised once) with a faster hash, sharded over worker processes. Both signature sets then go
through the same LSH + pair-confirmation step (the stage's rule), and recall on the planted
near-duplicates is printed for each, so the speed-up is at equal recall.

    make bench        (or: python -m benchmarks.dedup_signatures --workers 2 --repeat 4)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stages.common.params import compose
from stages.common.records import read_jsonl
from stages.common.textdedup import near_duplicates, record_features, signatures

RAW = "data/raw/domain_train.jsonl"
TRUTH = "data/raw/planted.jsonl"


def naive_signatures(shingle_sets, num_perm: int) -> np.ndarray:
    from datasketch import MinHash

    rows = []
    for shingle_set in shingle_sets:
        m = MinHash(num_perm=num_perm)
        for s in sorted(shingle_set):
            m.update(s.encode())
        rows.append(m.hashvalues)
    return np.stack(rows)


def near_dup_recall(records, sigs, truth) -> float:
    from stages.dedup import rule

    p = compose().dedup
    found = {records[i]["id"] for i in near_duplicates(records, sigs, rule(p), tuple(p.lsh_weights))}
    planted = {t["id"] for t in truth if t["kind"] == "near_duplicate"}
    return len(found & planted) / len(planted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=4, help="copies of the corpus to time on (bigger = steadier)")
    args = parser.parse_args()

    records = read_jsonl(RAW, "instruction")
    truth = read_jsonl(TRUTH, "ground_truth")
    base_sets = [record_features(r) for r in records]
    corpus = base_sets * args.repeat
    print(f"corpus: {len(corpus)} documents ({len(records)} records x {args.repeat}), num_perm={args.num_perm}")

    start = time.perf_counter()
    naive = naive_signatures(corpus, args.num_perm)
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = signatures(corpus, args.num_perm, args.workers, args.shard_size)
    ours_s = time.perf_counter() - start

    n = len(records)
    recall_naive = near_dup_recall(records, naive[:n], truth)
    recall_ours = near_dup_recall(records, ours[:n], truth)
    print(f"{'method':<44}{'signatures/s':>14}{'recall':>9}")
    print(f"{'naive: MinHash() + update() per shingle':<44}{len(corpus) / naive_s:>14,.0f}{recall_naive:>9.3f}")
    print(f"{f'stage: MinHash.bulk, {args.workers} workers':<44}{len(corpus) / ours_s:>14,.0f}{recall_ours:>9.3f}")
    print(f"speed-up: {naive_s / ours_s:.1f}x (goal >= 12x at equal recall)")


if __name__ == "__main__":
    main()

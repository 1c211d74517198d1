"""Benchmark: the dedup stage's two engines side by side on one generated corpus.

    python -m benchmarks.dedup_engines --records 200000 [--master local[2]] [--partitions 8]

The corpus: short instruction records from the task-family generator's templates (data/bench),
many a word or a number apart, with 5 % planted re-submissions (a typo or a greeting; the same
answer). Both engines run `stages.dedup.find_duplicates` with the default params; the table shows
records/s, where the time goes, the peak memory of the driver (and of Spark's JVM and workers), and
whether the removals are identical. The single-process index's memory per record is measured and
projected to 10M and 100M records: the wall that makes Spark worth its start-up.
"""

from __future__ import annotations

import argparse
import random
import resource
import time

import numpy as np

from stages.common.params import compose
from stages.common.runtime import cpu_description


def corpus(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    nouns = ["river", "garden", "window", "pencil", "rocket", "planet", "silver", "marble", "apple", "banana",
             "cherry", "orange", "lemon", "mango", "grape", "melon", "peach", "plum", "kiwi", "pear"]
    rows, seen = [], set()
    while len(rows) < n * 0.95:
        kind = rng.randrange(4)
        if kind == 0:
            a, b = rng.randint(1, 9999), rng.randint(1, 9999)
            row = (f"Add {a} and {b}.", str(a + b))
        elif kind == 1:
            items = rng.sample(nouns, rng.randint(3, 6))
            row = (f"Which of these is longest: {', '.join(items)}?", max(items, key=lambda w: (len(w), w)))
        elif kind == 2:
            w = rng.choice(nouns) + str(rng.randint(1, 999))
            row = (f"Spell {w} backwards.", w[::-1])
        else:
            a, b = rng.randint(2, 999), rng.randint(2, 99)
            row = (f"Multiply {a} by {b}.", str(a * b))
        if row not in seen:
            seen.add(row)
            rows.append({"id": f"r{len(rows)}", "prompt": row[0], "response": row[1]})
    # Each re-submission lands at a random place after its original (a sort key, not list.insert:
    # linear in the corpus, so a million records take seconds).
    keyed = [(float(i), row) for i, row in enumerate(rows)]
    for k in range(n - len(rows)):
        at = rng.randrange(len(rows))
        original = rows[at]
        prompt = rng.choice(["Please ", "Hi, ", "Quick one: "]) + original["prompt"][0].lower() + original["prompt"][1:]
        keyed.append((rng.uniform(at + 0.5, len(rows)), {"id": f"copy{k}", "prompt": prompt,
                                                           "response": original["response"]}))
    keyed.sort(key=lambda pair: pair[0])
    return [row for _, row in keyed]


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def local_run(records: list[dict], p) -> tuple[dict, dict]:
    from stages.common.textdedup import (
        block,
        candidate_pairs,
        is_near_duplicate,
        keep_first,
        record_features,
        signatures,
    )
    from stages.dedup import rule

    times = {}
    start = time.perf_counter()
    sigs = signatures([record_features(r) for r in records], p.num_perm, p.workers, p.shard_size)
    times["signatures"] = time.perf_counter() - start
    start = time.perf_counter()
    pairs = candidate_pairs(sigs, p.candidates, tuple(p.lsh_weights), blocks=[block(r, rule(p)) for r in records])
    times["LSH index + candidates"] = time.perf_counter() - start
    start = time.perf_counter()
    confirmed = {}
    for i, j in pairs:
        score = is_near_duplicate(records[i], records[j], rule(p))
        if score is not None:
            confirmed[(i, j)] = score
    times["pair checks"] = time.perf_counter() - start
    start = time.perf_counter()
    removed = keep_first(len(records), confirmed)
    times["keep first"] = time.perf_counter() - start
    times["pairs"] = len(pairs)
    return removed, times


def spark_run(records: list[dict], p, master: str, partitions: int) -> tuple[dict, dict]:
    from stages.common.spark_dedup import SparkDedup, spark_context
    from stages.common.textdedup import keep_first
    from stages.dedup import rule

    times = {}
    start = time.perf_counter()
    with spark_context(master, partitions) as sc:
        times["session start"] = time.perf_counter() - start
        engine = SparkDedup(sc, partitions)
        start = time.perf_counter()
        confirmed = engine.near_duplicate_pairs(records, rule(p), p.num_perm, tuple(p.lsh_weights))
        times["signatures (of which)"] = engine.signature_seconds
        times["signatures, candidates, pair checks"] = time.perf_counter() - start
        start = time.perf_counter()
        removed = keep_first(len(records), confirmed)
        times["keep first (driver)"] = time.perf_counter() - start
    return removed, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    p = compose().dedup
    records = corpus(args.records)
    base_mb = peak_mb(resource.RUSAGE_SELF)
    print(f"CPU: {cpu_description()}")
    print(f"corpus: {len(records):,} records; driver before: {base_mb:,.0f} MB")

    start = time.perf_counter()
    local, local_times = local_run(records, p)
    local_s = time.perf_counter() - start
    local_mb = peak_mb(resource.RUSAGE_SELF)
    start = time.perf_counter()
    spark, spark_times = spark_run(records, p, args.master, args.partitions)
    spark_s = time.perf_counter() - start
    print("\n| engine | records/s | wall s | peak memory MB | removed | identical |\n|---|---:|---:|---:|---:|---|")
    print(f"| local (1 process + {p.workers} signature workers) | {len(records) / local_s:,.0f} | {local_s:.1f} | "
          f"{local_mb:,.0f} (driver) | {len(local):,} | |")
    print(f"| spark {args.master}, {args.partitions} partitions | {len(records) / spark_s:,.0f} | {spark_s:.1f} | "
          f"{peak_mb(resource.RUSAGE_SELF):,.0f} (driver), {peak_mb(resource.RUSAGE_CHILDREN):,.0f} (JVM/workers) | "
          f"{len(spark):,} | {spark == local} |")
    print("\nwhere the time goes (s):")
    for name, times in (("local", local_times), ("spark", spark_times)):
        print(f"  {name}: " + ", ".join(f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v:,}"
                                        for k, v in times.items()))
    per_record_kb = (local_mb - base_mb) * 1024 / len(records)
    sig_bytes = p.num_perm * np.dtype(np.uint32).itemsize
    print(f"\nsingle-process memory: {per_record_kb:.1f} kB per record (signature alone {sig_bytes} B; LSH tables, "
          f"records, candidate pairs the rest) -> ~{per_record_kb * 1e7 / 1024**2:,.0f} GB at 10M records, "
          f"~{per_record_kb * 1e8 / 1024**2:,.0f} GB at 100M: past this machine's 24 GB near "
          f"{24 * 1024**2 / max(per_record_kb, 1e-9) / 1e6:,.0f}M records.")


if __name__ == "__main__":
    main()

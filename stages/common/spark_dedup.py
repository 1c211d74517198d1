"""The dedup engine on Spark (`dedup.engine=spark`): the local engine's decisions, on a cluster.

Every step that touches records maps the pure functions of textdedup.py and decontamination.py
over RDD partitions; only `keep_first` (a pass over the confirmed pairs, in input order) runs on
the driver, as it does locally. So the removals are the same, matched ids and similarities
included (tests/test_spark_dedup.py holds that, and that the candidate pairs equal datasketch's):
- exact duplicates: group by the normalized text's hash, the first index of each group kept;
- eval leaks: the eval index (small) broadcast, `find_leak` per record;
- signatures: `shard_signatures` per partition (MinHash.bulk, the same hash and seed);
- candidate pairs: group by (block, band, the band's hash values), the block what the rule needs
  equal (`textdedup.block`), bands and rows from datasketch's own `MinHashLSH(threshold, num_perm,
  weights)` (its `hashranges`), so the buckets are its buckets within each block;
- each pair joined back to its two records and confirmed by `is_near_duplicate` on an executor.
MLlib's MinHashLSH is not used: it has no rows per band and its own hash family, so it cannot give
datasketch's candidates. Only the RDD API is used (no pandas: pyspark 4.3 warns about pandas 3).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from stages.common.decontamination import find_leak
from stages.common.textdedup import (
    NearDuplicateRule,
    block,
    is_near_duplicate,
    lsh_index,
    normalize,
    record_features,
    record_text,
    shard_signatures,
)

PACKAGE = Path(__file__).resolve().parents[1]  # stages/: shipped to the executors


@contextmanager
def spark_context(master: str, partitions: int) -> Iterator:
    """A SparkContext for `master` (local[2], spark://host:7077, yarn, k8s://...) with this
    project's code shipped to its executors; stopped on exit."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # a laptop's or CI's hostname may not resolve
    # The workers' Python: this one (with datasketch) unless the cluster says otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark import SparkConf, SparkContext

    conf = (SparkConf().setMaster(master).setAppName("phi-ladder-dedup")
            .set("spark.ui.enabled", "false").set("spark.ui.showConsoleProgress", "false")
            .set("spark.default.parallelism", str(partitions))
            .set("spark.python.worker.reuse", "true"))
    sc = SparkContext.getOrCreate(conf)
    sc.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        archive = shutil.make_archive(str(Path(tmp) / "stages"), "zip", PACKAGE.parent, PACKAGE.name)
        sc.addPyFile(archive)
        try:
            yield sc
        finally:
            sc.stop()


class SparkDedup:
    """The dedup steps over an RDD of (index, record), `partitions` slices."""

    def __init__(self, sc, partitions: int) -> None:
        self.sc, self.partitions = sc, partitions
        self.signature_seconds = 0.0

    def records(self, records: Sequence[dict]):
        return self.sc.parallelize(list(enumerate(records)), self.partitions)

    def exact_duplicates(self, records: Sequence[dict]) -> dict[int, int]:
        """index -> first index with the same normalized text (textdedup.exact_duplicates)."""
        import hashlib

        def key(pair):
            i, record = pair
            return hashlib.sha256(normalize(record_text(record)).encode()).hexdigest(), i

        groups = self.records(records).map(key).groupByKey().mapValues(sorted).values()
        return dict(groups.flatMap(lambda ids: [(i, ids[0]) for i in ids[1:]]).collect())

    def leaks(self, records: Sequence[dict], index, overlap: float) -> dict[int, tuple[str, str]]:
        """index -> (eval key, how), for every record that leaks an eval record (find_leak)."""
        shared = self.sc.broadcast(index)
        found = self.records(records).map(lambda p: (p[0], find_leak(record_text(p[1]), shared.value, overlap)))
        return dict(found.filter(lambda p: p[1] is not None).collect())

    def signatures(self, records: Sequence[dict], rule: NearDuplicateRule, num_perm: int, skip: Iterable[int] = ()):
        """RDD of (index, (MinHash signature, block)) of every record not skipped, per partition."""
        skip = frozenset(skip)

        def sign(part: Iterable[tuple[int, dict]]) -> Iterator[tuple[int, tuple]]:
            part = list(part)
            sigs = shard_signatures([record_features(r) for _, r in part], num_perm)
            return iter((i, (sig, block(r, rule))) for (i, r), sig in zip(part, sigs, strict=True))

        return self.records(records).filter(lambda p: p[0] not in skip).mapPartitions(sign)

    def candidate_pairs(self, records: Sequence[dict], rule: NearDuplicateRule, num_perm: int,
                        lsh_weights: tuple[float, float], skip: Iterable[int] = ()):
        """RDD of (i, j), j < i, in the same block (textdedup.block) and sharing a band bucket of
        datasketch's LSH for these params."""
        ranges = lsh_index(rule.candidates, num_perm, lsh_weights).hashranges
        start = time.perf_counter()
        sigs = self.signatures(records, rule, num_perm, skip).cache()
        sigs.count()
        self.signature_seconds = time.perf_counter() - start

        def bands(pair):
            i, (sig, key) = pair
            return [((key, b, sig[lo:hi].tobytes()), i) for b, (lo, hi) in enumerate(ranges)]

        def pairs(ids):
            ids = sorted(ids)
            return [(i, j) for k, i in enumerate(ids) for j in ids[:k]]

        return sigs.flatMap(bands).groupByKey().values().flatMap(pairs).distinct()

    def near_duplicate_pairs(self, records: Sequence[dict], rule: NearDuplicateRule, num_perm: int,
                             lsh_weights: tuple[float, float], skip: Iterable[int] = ()) -> dict:
        """(i, j) -> (prompt, response) similarity of every candidate pair the rule confirms."""
        by_index = self.records(records)
        pairs = self.candidate_pairs(records, rule, num_perm, lsh_weights, skip)
        with_i = pairs.join(by_index).map(lambda p: (p[1][0], (p[0], p[1][1])))       # j -> (i, record i)
        both = with_i.join(by_index)                                                    # j -> ((i, ri), rj)
        judged = both.map(lambda p: ((p[1][0][0], p[0]), is_near_duplicate(p[1][0][1], p[1][1], rule)))
        return dict(judged.filter(lambda p: p[1] is not None).collect())

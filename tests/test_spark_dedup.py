"""dedup.engine=spark makes the local engine's decisions (README "Dedup at scale"), in local mode
(`local[2]`): the same candidate pairs as datasketch's MinHashLSH, the same removals with the same
matched ids and similarities, and a byte-identical data/clean/ from the stage. (That the blocked
index loses no pair the rule accepts is tests/test_dedup.py's.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stages.common.params import REPO_ROOT, compose, write_params
from stages.common.records import read_jsonl
from stages.common.textdedup import block, candidate_pairs, record_features, signatures
from stages.dedup import find_duplicates, rule
from tests.conftest import copy_data

# No skip without Java: pyspark then fails the test with its own message, and .ci/run checks for a
# Java runtime before any test runs.

SETS = {"families": "data/bench/families.jsonl", "external": "data/bench/short_instructions.jsonl",
        "embedded": "data/raw/domain_train.jsonl"}


@pytest.fixture(scope="module")
def spark():
    from stages.common.spark_dedup import SparkDedup, spark_context

    with spark_context("local[2]", 4) as sc:
        yield SparkDedup(sc, 4)


@pytest.mark.parametrize("name", sorted(SETS))
def test_spark_finds_the_local_candidate_pairs_and_makes_the_same_removals(spark, name):
    p = compose().dedup
    records = read_jsonl(REPO_ROOT / SETS[name], "instruction")
    skip = set(range(0, len(records), 17))  # records an earlier step removed take no part, on both engines
    sigs = signatures([record_features(r) for r in records], p.num_perm, workers=1, shard_size=len(records))
    blocks = [block(r, rule(p)) for r in records]
    local_pairs = candidate_pairs(sigs, p.candidates, tuple(p.lsh_weights), skip, blocks)
    spark_pairs = spark.candidate_pairs(records, rule(p), p.num_perm, tuple(p.lsh_weights), skip).collect()
    assert sorted(spark_pairs) == sorted(local_pairs) and len(local_pairs) > len(records) // 4

    local, on_spark = {}, {}
    find_duplicates(records, p, local)
    find_duplicates(records, p, on_spark, spark)
    assert on_spark == local and sum(r["reason"] == "near_duplicate" for r in local.values()) >= 40


def test_leaks_and_exact_copies_are_found_alike(spark, monkeypatch):
    from stages.common.decontamination import build_eval_index
    from stages.common.textdedup import exact_duplicates, record_text
    from stages.dedup import find_leaks, load_eval_sets

    monkeypatch.chdir(REPO_ROOT)  # the committed data, read only
    cfg = compose()
    train = read_jsonl(cfg.data.train, "instruction")
    d = cfg.dedup.decontamination
    index = build_eval_index(((f"{name}/{r['id']}", record_text(r)) for name, rows in
                              load_eval_sets(cfg.data.eval).items() for r in rows), d.long_n, d.short_n)
    local = find_leaks(train, index, d.short_overlap, None)
    assert len(local) == 32 and spark.leaks(train, index, d.short_overlap) == local
    exact = exact_duplicates([record_text(r) for r in train])
    assert len(exact) == 40 and spark.exact_duplicates(train) == exact


def test_the_stage_on_spark_writes_the_local_stage_bytes(tmp_path):
    """`dvc repro` with dedup.engine=spark: data/clean/ byte-identical to the local engine's."""
    outputs = {}
    for engine in ("local", "spark"):
        root = tmp_path / engine
        copy_data(root)
        write_params([f"dedup.engine={engine}"], root / "params.yaml")
        done = subprocess.run([sys.executable, "-m", "stages.dedup"], cwd=root, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PROGRESS": "0"})
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[engine] = {f.name: f.read_bytes() for f in sorted((root / "data/clean").iterdir())}
        outputs[engine]["dedup.md"] = (root / "reports/dedup.md").read_bytes()
    assert outputs["spark"] == outputs["local"]
    assert set(outputs["local"]) == {"train.jsonl", "removed.jsonl", "dedup.md"}

import json

import pytest

from stages import dedup
from stages.common import layout
from stages.common.errors import PipelineError
from stages.common.params import compose
from stages.common.records import read_jsonl
from stages.common.textdedup import (
    build_eval_index,
    exact_duplicates,
    find_leak,
    normalize,
    shingles,
    signatures,
    words,
)


def test_normalization_folds_unicode_case_and_whitespace():
    assert normalize("  Ｔicket\u00a0 ﬁle\tREADY \n") == "ticket file ready"
    assert exact_duplicates(["Hello  World", "hello world", "HELLO\u3000WORLD", "other"]) == {1: 0, 2: 0}


def test_records_shorter_than_the_shingle_size():
    assert shingles(["just", "two"], 5) == {"just two"}
    assert shingles([], 3) == set()
    sigs = signatures([{"just two"}, {"just two"}, set()], num_perm=16, workers=1, shard_size=2)
    assert sigs.shape == (3, 16) and (sigs[0] == sigs[1]).all()


def test_signatures_do_not_depend_on_sharding_or_workers():
    sets = [shingles(words(f"record number {i} says something {i * 7}"), 3) for i in range(50)]
    one = signatures(sets, 32, workers=1, shard_size=50)
    many = signatures(sets, 32, workers=2, shard_size=7)
    assert (one == many).all()


def test_a_leak_split_across_prompt_and_response_is_caught():
    question = ("Route this ticket as team/priority. Ticket 12345 from Ana: the printer on floor 3 "
                "(ext. 1234) keeps failing, ref R9876.")  # 21 words
    index = build_eval_index([("test/1", question)], long_n=13, short_n=7)
    half = question.split(" ")
    record = {"prompt": "Summarize: " + " ".join(half[:10]), "response": " ".join(half[10:])}
    assert find_leak(record["prompt"], index, 0.75) is None  # neither field alone holds 13 words
    assert find_leak(record["response"], index, 0.75) is None
    assert find_leak(f"{record['prompt']} {record['response']}", index, 0.75) == ("test/1", "13-gram")


def test_short_eval_items_caught_by_the_short_pass():
    index = build_eval_index([("g/1", "which package holds json.dumps")], long_n=13, short_n=7)
    assert find_leak("Tell me: WHICH package holds json.dumps? json", index, 0.75) == ("g/1", "7-gram overlap 1.00")
    assert find_leak("which package holds json.loads", index, 0.75) is None


def run_dedup(overrides=()):
    cfg = compose(list(overrides))
    dedup.run(cfg)
    return json.loads(layout.DEDUP_METRICS.read_text())


def test_embedded_data_planted_truth_is_found(workspace):
    """The acceptance bar on the real stage output: planted near-dups recall >= 0.95 and precision
    >= 0.99; every planted exact duplicate and eval leak removed; eval sets untouched."""
    before = {p: p.read_bytes() for p in (workspace / "data" / "eval").iterdir()}
    truth = run_dedup()["ground_truth"]
    assert truth["near_duplicate"]["recall"] >= 0.95 and truth["near_duplicate"]["precision"] >= 0.99
    assert truth["exact_duplicate"]["recall"] == 1.0 and truth["eval_leak"]["recall"] == 1.0
    assert {p: p.read_bytes() for p in (workspace / "data" / "eval").iterdir()} == before
    eval_ids = {r["id"] for p in before for r in map(json.loads, p.read_text().splitlines())}
    kept = {r["id"] for r in read_jsonl(layout.CLEAN_TRAIN, "instruction")}
    removed = [
        json.loads(line) for line in layout.REMOVED.read_text().splitlines()]
    assert not eval_ids & (kept | {r["id"] for r in removed})
    assert all(r["matched"] for r in removed) and all(r["reason"] for r in removed)


def test_same_input_gives_byte_identical_output(workspace):
    run_dedup()
    first = layout.CLEAN_TRAIN.read_bytes(), layout.REMOVED.read_bytes()
    run_dedup(["dedup.workers=1", "dedup.shard_size=100"])
    assert (layout.CLEAN_TRAIN.read_bytes(), layout.REMOVED.read_bytes()) == first


def test_empty_training_set_is_an_error_and_writes_nothing(workspace):
    (workspace / "data/raw/domain_train.jsonl").write_text("")
    with pytest.raises(PipelineError, match="empty file"):
        run_dedup()
    assert not layout.CLEAN_DIR.exists() and not layout.DEDUP_METRICS.exists()


def test_missing_eval_set_is_an_error(workspace):
    (workspace / "data/eval/general_test.jsonl").unlink()
    with pytest.raises(PipelineError, match="general_test.jsonl: no such file"):
        run_dedup()


@pytest.mark.parametrize(("override", "message"), [
    ("dedup.threshold=1.5", "threshold=1.5 must be in (0, 1]"),
    ("dedup.threshold=0", "threshold=0 must be in (0, 1]"),
    ("dedup.decontamination.long_n=0", "n must be >= 1"),
    ("dedup.decontamination.short_overlap=2", "short_overlap=2 must be in (0, 1]"),
])
def test_params_out_of_range(workspace, override, message):
    with pytest.raises(PipelineError) as err:
        run_dedup([override])
    assert message in str(err.value)


def test_users_own_jsonl_files_are_cleaned_against_their_eval_sets(tmp_path, monkeypatch):
    """data=jsonl: the user's train/eval files, same contracts, decontaminated against each set."""
    monkeypatch.chdir(tmp_path)
    leak = "Summarize the quarterly revenue report for the north east region and list three risks"
    train = [{"id": f"t{i}", "prompt": f"Question {i} about invoices number {i * 37}", "response": f"answer {i}"}
             for i in range(30)]
    train += [{"id": "copy", "prompt": leak, "response": "ok"}, {"id": "dup", "prompt": train[0]["prompt"].upper(),
                                                                  "response": train[0]["response"]}]
    files = {"raw/train.jsonl": train, "raw/general.jsonl": [{"id": "g", "prompt": "p", "response": "r"}],
             "eval/val.jsonl": [{"id": "v", "prompt": "a validation question here", "answer": "x"}],
             "eval/test.jsonl": [{"id": "q", "prompt": leak, "answer": "y"}],
             "eval/general_test.jsonl": [{"id": "gt", "prompt": "general question", "answer": "z"}],
             "eval/general_text.jsonl": [{"id": "gx", "text": "some held out general text for perplexity"}]}
    for name, rows in files.items():
        path = tmp_path / "mine" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = run_dedup(["data=jsonl", "data.raw_dir=mine/raw", "data.eval_dir=mine/eval"])
    assert metrics["records_in"] == 32 and metrics["records_out"] == 30
    assert metrics["leaks_per_eval_set"]["domain_test"] == 1 and metrics["removed"]["exact_duplicate"] == 1
    assert "ground_truth" not in metrics

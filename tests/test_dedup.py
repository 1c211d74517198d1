import json

import pytest

from stages import dedup
from stages.common import layout
from stages.common.decontamination import build_eval_index, find_leak
from stages.common.errors import PipelineError
from stages.common.params import compose
from stages.common.records import read_jsonl
from stages.common.textdedup import (
    exact_duplicates,
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



def test_users_own_jsonl_files_are_cleaned_against_their_eval_sets(workspace):
    """data=jsonl: the user's train/eval files, same contracts, decontaminated against each set."""
    tmp_path = workspace
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
    assert metrics["short_records_benchmark"]["near_duplicate"]["planted"] == 90  # the params, scored alike


def test_short_records_near_misses_are_kept_and_copies_removed(workspace):
    """The labelled short-record set (data/bench/), scored on the real stage output: precision and
    recall >= 0.95 (both measured 1.0). Word shingles alone miss the one-word edits of five-word
    prompts (recall 0.81 without `reworded`), and the old default (threshold 0.5, no same-task
    checks) removed distinct tasks."""
    bench = run_dedup()["short_records_benchmark"]
    assert bench["near_duplicate"]["precision"] >= 0.95 and bench["near_duplicate"]["recall"] >= 0.95
    assert bench["exact_duplicate"] == {**bench["exact_duplicate"], "recall": 1.0, "precision": 1.0}
    shingles_only = run_dedup(["dedup.reworded.enabled=false"])["short_records_benchmark"]["near_duplicate"]
    assert shingles_only["recall"] < 0.9
    old = run_dedup(["dedup.threshold=0.5", "dedup.same_task.answers=false", "dedup.same_task.numbers=false",
                     "dedup.reworded.enabled=false"])
    assert old["short_records_benchmark"]["near_duplicate"]["precision"] < 0.85


@pytest.mark.parametrize(("a", "b", "same"), [
    ("Is 40 a prime number?", "Is 40 prime number?", True),                      # a word dropped
    ("Which of these is longest: river, pear?", "Which of tehse is longest: river, pear?", True),  # a typo
    ("Count the vowels in silver.", "Can you help? Count the vowels in silver.", True),  # a greeting
    ("Count the vowels in silver.", "Count the vowels in river.", False),         # another word
    ("Sort these numbers: 6, 13, 18, 8.", "Sort these numbers: 6, 13, 18.", False),  # a number dropped
    ("Which is longest: melon, lemon, pencil?", "Which is longest: melon, mango, lemon, pencil?", False),  # an item
    ("Which is longest: grape, lemon, kiwi?", "Which is longest: lemon, grape, kiwi?", False),  # items moved
    ("Add 4 and 5.", "Hi, could you please quickly add 4 and 5 for me?", False),  # most of it changed
])
def test_reworded_prompts_touch_no_parameter(a, b, same):
    from stages.common.textdedup import reworded

    assert reworded(a, b, spelling=0.8, max_changed=0.4) is same


def test_same_task_checks():
    from stages.common.textdedup import answers_agree, numbers_agree

    km = {"prompt": "Convert 3 km to miles.", "response": "1.86 miles"}
    assert not answers_agree(km, {"prompt": "Convert 30 km to miles.", "response": "18.64 miles"})
    assert answers_agree(km, {"prompt": "Convert 3 km to miles please.", "response": "The answer is 1.86 miles."})
    add = {"prompt": "Add 14 and 12.", "response": "26"}
    assert not numbers_agree(add, {"prompt": "Add 14 and 21.", "response": "26"})  # a swapped parameter
    assert numbers_agree(add, {"prompt": "Please add 14 and 12.", "response": "26"})
    assert numbers_agree({"prompt": "Ticket 1 ext. 22 is down", "response": "x"},
                         {"prompt": "Ticket 1 ext. now is down", "response": "x"})  # a figure dropped, not swapped


def test_honest_precision_needs_the_labelled_pair():
    """A removal is right only when it matched its own labelled group, not any planted record."""
    from stages.common.textdedup import score_against_truth

    planted = [{"id": "c1", "kind": "near_duplicate", "of": "o1"}, {"id": "c2", "kind": "near_duplicate", "of": "c1"}]
    removed = [{"id": "c1", "reason": "near_duplicate", "matched": "o2"},  # planted, but wrong partner
               {"id": "c2", "reason": "near_duplicate", "matched": "o1"}]  # right: c2 ~ c1 ~ o1
    score = score_against_truth(removed, planted)["near_duplicate"]
    assert score["precision"] == 0.5 and score["true_positives"] == 1


def test_a_stage_run_by_hand_refuses_overrides_it_cannot_honour(workspace):
    from stages.common.params import write_params

    write_params([])
    for override, message in [("data=jsonl", "config group choice"),
                              ("data.raw_dir=mine", "feeds data.general_corpus, data.general_task_train")]:
        with pytest.raises(SystemExit) as exit_info:
            dedup.main([override])
        assert exit_info.value.code == 2
        with pytest.raises(PipelineError, match=message) as err:
            from stages.common.params import load_params

            load_params([override])
        assert "make params OVERRIDES=" in str(err.value) and "dvc exp run -S" in str(err.value)
    assert not layout.CLEAN_DIR.exists()
    dedup.main(["dedup.threshold=0.7"])  # a plain key still works
    assert layout.CLEAN_TRAIN.is_file()


@pytest.mark.parametrize(("raw", "error"), [
    ("latin1", r"domain_train.jsonl:3: not UTF-8 \(byte 0xe9 at byte offset \d+ of the file\)"),
    ("bom", None),
])
def test_undecodable_files_are_clear_errors_and_a_bom_is_read(workspace, raw, error):
    path = workspace / "data/raw/domain_train.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    if raw == "latin1":
        record = json.dumps({"id": "x", "prompt": "café", "response": "r"}, ensure_ascii=False)
        lines[2] = record.encode("latin-1") + b"\n"
        path.write_bytes(b"".join(lines))
        with pytest.raises(PipelineError, match=error):
            run_dedup()
        assert not layout.CLEAN_DIR.exists() and not layout.DEDUP_METRICS.exists()
    else:
        path.write_bytes(b"\xef\xbb\xbf" + b"".join(lines))
        assert run_dedup()["records_in"] == len(lines)

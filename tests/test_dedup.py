import json

import pytest

from stages import dedup
from stages.common import layout
from stages.common.decontamination import build_eval_index, find_leak
from stages.common.errors import PipelineError
from stages.common.params import compose
from stages.common.records import read_jsonl
from stages.common.textdedup import (
    NearDuplicateRule,
    block,
    candidate_pairs,
    exact_duplicates,
    is_near_duplicate,
    normalize,
    parameters_agree,
    record_features,
    shingles,
    signatures,
    similarity,
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
    metrics = run_users_data(tmp_path, train, test_prompt=leak)
    assert metrics["records_in"] == 32 and metrics["records_out"] == 30
    assert metrics["leaks_per_eval_set"]["domain_test"] == 1 and metrics["removed"]["exact_duplicate"] == 1
    assert "ground_truth" not in metrics
    assert metrics["benchmark"]["heldout"]["near_duplicate"]["planted"] == 90  # the params, scored alike


def test_held_out_families_are_scored_on_the_real_stage_output(workspace):
    """The task families (data/bench/families.jsonl): the rule was frozen on the `tune` families,
    then scored on the `heldout` ones (space-separated lists, long answers, moved clauses,
    paraphrases, same short answers, noisy copies). The issue's bar: precision >= 0.98 and recall
    >= 0.95 on the held-out families; the embedded set stays at 1.0 / 1.0."""
    metrics = run_dedup()
    bench = metrics["benchmark"]
    for split in ("tune", "heldout"):
        near = bench[split]["near_duplicate"]
        assert near["precision"] >= 0.98 and near["recall"] >= 0.95, (split, bench[split])
        assert near["planted"] == 90
    assert set(bench["heldout"]["families"]) == {"space_list", "long_answer", "long_answer_new", "word_order",
                                                 "paraphrase", "same_answer", "noisy_copy"}
    for kind in ("near_duplicate", "exact_duplicate", "eval_leak"):
        assert metrics["ground_truth"][kind] | {"recall": 1.0, "precision": 1.0} == metrics["ground_truth"][kind]
    # the external set keeps its own labels (data/README.md): exact copies all found
    assert bench["external"]["exact_duplicate"]["recall"] == 1.0
    report = layout.DEDUP_REPORT.read_text()
    assert "| near_duplicate | 60 |" in report and "| **heldout** | all | 90 | 90 | **1.00** | **1.00** |" in report


RIVERS = ["Nile", "Amazon", "Yangtze", "Danube", "Volga", "Rhine", "Congo", "Mekong", "Niger"]
LENGTH = {r: i for i, r in enumerate(RIVERS)}  # any fixed order stands for the answer


def test_space_separated_lists_with_dropped_items_are_all_kept(workspace):
    """The issue's pattern: "Rank these rivers by length: Nile Amazon Danube Volga" and the same
    without Amazon are two tasks with two answers. None may be removed."""
    import itertools

    rows = []
    for size in (4, 5, 6, 7):
        for items in itertools.islice(itertools.combinations(RIVERS, size), 12):
            for dropped in range(size):
                kept = [r for k, r in enumerate(items) if k != dropped]
                for listed in (list(items), kept):
                    rows.append({"prompt": f"Rank these rivers by length: {' '.join(listed)}",
                                 "response": " ".join(sorted(listed, key=LENGTH.get))})
    unique = list({(r["prompt"], r["response"]): r for r in rows}.values())
    records = [{"id": f"r{i}", **r} for i, r in enumerate(unique)]
    removed = dedup_records(workspace, records, ["dedup.max_near_fraction=1.0"])
    assert len(records) == 192 and removed == []


ROLLOUT = ("The service restarts each worker in turn so that no request is dropped while the new configuration "
           "loads. Every worker drains its queue first, then reloads, then reports healthy before the next one "
           "starts. A failed health check stops the rollout and restores the previous version automatically, "
           "which keeps the fleet consistent and lets the operators watch each step live.")


def test_a_long_answer_with_one_word_changed_is_removed(workspace):
    answer = ROLLOUT.split(" ")
    assert len(answer) == 60
    edited = [*answer]
    edited[30] = "sometimes"
    prompt = "How does the rolling restart work?"
    records = [{"id": "first", "prompt": prompt, "response": " ".join(answer)},
               {"id": "edit", "prompt": prompt, "response": " ".join(edited)},
               *({"id": f"other{i}", "prompt": f"Question {i} about the fleet", "response": f"Answer {i}"}
                 for i in range(40))]
    removed = dedup_records(workspace, records)
    assert [(r["id"], r["matched"], r["reason"]) for r in removed] == [("edit", "first", "near_duplicate")]
    assert removed[0]["similarity"]["prompt"] == 1.0 and removed[0]["similarity"]["response"] >= 0.95


def test_mostly_near_miss_tasks_fail_the_guard_and_nothing_is_written(workspace):
    """Distinct tasks a word apart with the same short answers ("Count the vowels in peach" / "in
    river", both "2"). The rule keeps them all; a looser prompt threshold (a tired user's 0.5)
    would remove most of them, and the guard stops the stage before a record is lost, showing the
    pairs side by side."""
    nouns = ["peach", "river", "grape", "lemon", "melon", "mango", "apple", "plum", "kiwi", "pear", "fig", "lime",
             "rocket", "planet", "window", "garden", "silver", "marble", "pencil", "orange"]
    records = [{"id": f"v{i}", "prompt": f"Count the vowels in {noun}.",
                "response": str(sum(c in "aeiou" for c in noun))} for i, noun in enumerate(nouns)]
    assert dedup_records(workspace, records) == []
    with pytest.raises(PipelineError) as err:
        dedup_records(workspace, records, ["dedup.similarity.prompt=0.5"])
    message = str(err.value)
    assert "near-duplicates, over dedup.max_near_fraction=0.05; nothing written" in message
    assert "| removed | prompt → response | kept |" in message and "Count the vowels in" in message
    assert "raise dedup.similarity.prompt or .response" in message


def run_users_data(workspace, train: list[dict], overrides: list[str] = (),
                   test_prompt: str = "an unrelated test question") -> dict:
    """Run the stage on `train` as the user's own data (data=jsonl), beside small eval sets whose
    test set holds `test_prompt`; the stage's metrics."""
    files = {"raw/train.jsonl": train, "raw/general.jsonl": [{"id": "g", "prompt": "p", "response": "r"}],
             "eval/val.jsonl": [{"id": "v", "prompt": "an unrelated validation question", "answer": "x"}],
             "eval/test.jsonl": [{"id": "q", "prompt": test_prompt, "answer": "y"}],
             "eval/general_test.jsonl": [{"id": "gt", "prompt": "general question", "answer": "z"}],
             "eval/general_text.jsonl": [{"id": "gx", "text": "some held out general text for perplexity"}]}
    for name, rows in files.items():
        path = workspace / "mine" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dedup(["data=jsonl", "data.raw_dir=mine/raw", "data.eval_dir=mine/eval", *overrides])


def dedup_records(workspace, records: list[dict], overrides: list[str] = ()) -> list[dict]:
    """The removed rows of the stage run on `records` as the user's own data."""
    run_users_data(workspace, records, overrides)
    return [json.loads(line) for line in layout.REMOVED.read_text().splitlines()]


RULE = NearDuplicateRule(prompt=0.8, response=0.95, spelling=0.75, parameters=True, candidates=0.5)


@pytest.mark.parametrize(("a", "b", "near"), [
    (("Is 40 a prime number?", "No"), ("Is 40 prime number?", "No"), True),               # a word dropped
    (("Which is longest: river, pear, kiwi?", "river"), ("Which is lnogest: river, pear, kiwi?", "river"),
     True),                                                                               # a typo
    (("Add 12 and 6.", "18"), ("Could you add 12 and 6?", "18"), True),                  # filler
    (("In 3 sentences, describe rain.", "Rain is water."), ("Describe rain in 3 sentences.", "Rain is water."),
     True),                                                                               # clauses moved
    (("Count the vowels in peach.", "2"), ("Count the vowels in river.", "2"), False),   # a word replaced
    (("What is the capital of Peru?", "Lima"), ("What is the capital of Chile?", "Santiago"), False),
    (("Is 67 an odd number?", "Yes"), ("Is 71 an odd number?", "Yes"), False),           # a number swapped
    (("What is the largest of 27, 6, 20?", "27"), ("What is the largest of 27, 20, 10, 16, 6?", "27"),
     False),                                                                              # list items added
    (("Rank these rivers: Nile Amazon Danube Volga", "Nile Amazon Volga Danube"),
     ("Rank these rivers: Nile Danube Volga", "Nile Volga Danube"), False),               # the answers differ
    (("Explain X.", "The answer is 24."), ("Explain X.", "24"), False),                   # another response
])
def test_a_near_duplicate_is_a_near_duplicate_record(a, b, near):
    ra, rb = ({"prompt": p, "response": r} for p, r in (a, b))
    assert (is_near_duplicate(ra, rb, RULE) is not None) is near
    assert (is_near_duplicate(rb, ra, RULE) is not None) is near  # symmetric


def test_similarity_is_symmetric_and_weighs_an_edit_by_length():
    assert similarity("a b c d e", "a b c d f", 0.75) == pytest.approx(0.6)  # one replaced word of five
    long_a = " ".join(f"w{i}x" for i in range(40))
    assert similarity(long_a, long_a.replace("w7x", "other"), 0.75) == pytest.approx(0.95)
    assert similarity("tehse apples", "these apples", 0.75) == 1.0  # a typo is the same word
    assert similarity("12 apples", "21 apples", 0.75) < 1.0  # a number never is
    for x, y in [("Is 40 a prime", "Is 40 prime"), ("river silver a", "silver b river")]:
        assert similarity(x, y, 0.75) == similarity(y, x, 0.75)
    assert parameters_agree({"prompt": "Ticket 1 ext. 22 is down"}, {"prompt": "Ticket 1 ext. now is down"})


@pytest.mark.parametrize("threshold", [0.8, 0.9, 0.95, 1.0])
def test_records_in_different_blocks_are_never_near_duplicates(threshold):
    """`block` is exact: random short texts a few edits apart (dropped, added, replaced words,
    typos, digits), and every pair the rule accepts shares its block."""
    import random

    rng = random.Random(threshold)
    vocab = ["the", "river", "silver", "apple", "apples", "add", "and", "7", "12", "x2", "kiwi", "pear", "is"]
    rule = NearDuplicateRule(threshold, threshold, 0.75, True, 0.5)
    accepted = 0
    for _ in range(3000):
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 14))]
        b = list(a)
        for _ in range(rng.randint(0, 2)):
            edit, k = rng.randrange(4), rng.randrange(len(b) + 1)
            if edit == 0 and b:
                del b[min(k, len(b) - 1)]
            elif edit == 1:
                b.insert(k, rng.choice(vocab))
            elif edit == 2 and b:
                b[min(k, len(b) - 1)] = rng.choice(vocab)
            elif b:  # a typo: two letters swapped
                w = b[min(k, len(b) - 1)]
                b[min(k, len(b) - 1)] = w[1] + w[0] + w[2:] if len(w) > 1 else w
        ra = {"prompt": "Tell me: " + " ".join(a), "response": " ".join(a)}
        rb = {"prompt": "Tell me: " + " ".join(b), "response": " ".join(b)}
        if is_near_duplicate(ra, rb, rule) is not None:
            accepted += 1
            assert block(ra, rule) == block(rb, rule), (ra, rb)
    assert accepted > 300  # the property was tried on many accepted pairs


@pytest.mark.parametrize("name", ["families", "external", "embedded", "templated"])
def test_blocking_drops_only_pairs_the_rule_refuses(name):
    """The candidate index split by `block` confirms exactly the pairs the whole index confirms,
    and on templated short tasks it proposes a small fraction of the pairs."""
    from benchmarks.dedup_engines import corpus
    from stages.common.params import REPO_ROOT

    p = compose().dedup
    rule = dedup.rule(p)
    sets = {"families": "data/bench/families.jsonl", "external": "data/bench/short_instructions.jsonl",
            "embedded": "data/raw/domain_train.jsonl"}
    records = corpus(1500) if name == "templated" else read_jsonl(REPO_ROOT / sets[name], "instruction")
    sigs = signatures([record_features(r) for r in records], p.num_perm, workers=1, shard_size=len(records))
    whole = candidate_pairs(sigs, p.candidates, tuple(p.lsh_weights))
    split = candidate_pairs(sigs, p.candidates, tuple(p.lsh_weights), blocks=[block(r, rule) for r in records])
    assert set(split) <= set(whole)
    confirmed = {pair for pair in whole if is_near_duplicate(records[pair[0]], records[pair[1]], rule)}
    assert {pair for pair in split if is_near_duplicate(records[pair[0]], records[pair[1]], rule)} == confirmed
    assert confirmed
    if name == "templated":
        assert len(split) * 20 < len(whole), (len(split), len(whole))


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
    dedup.main(["dedup.similarity.prompt=0.85"])  # a plain key still works
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

    else:
        path.write_bytes(b"\xef\xbb\xbf" + b"".join(lines))
        assert run_dedup()["records_in"] == len(lines)

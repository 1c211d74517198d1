import json
from pathlib import Path

import pytest

from stages.common.atomic import atomic_path, write_json
from stages.common.errors import PipelineError
from stages.common.records import read_jsonl, write_jsonl


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"id": "a", "prompt": "p", "response": "r"})


@pytest.mark.parametrize(("lines", "message"), [
    ([GOOD, "{not json"], ":2: malformed JSON"),
    ([GOOD, json.dumps({"id": "b", "prompt": "p"})], ":2: missing field 'response'"),
    ([json.dumps({"id": "b", "prompt": "p", "response": 3})], ":1: field 'response' must be a string"),
    ([GOOD, GOOD], ":2: duplicate id 'a' (first seen on line 1)"),
    (["[1, 2]"], ":1: expected a JSON object"),
    ([""], "empty file"),
])
def test_each_validation_error_names_file_and_line(tmp_path, lines, message):
    path = write(tmp_path / "train.jsonl", lines)
    with pytest.raises(PipelineError) as err:
        read_jsonl(path, "instruction")
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl", "text")


def test_contracts_differ_by_kind(tmp_path):
    path = write(tmp_path / "t.jsonl", [json.dumps({"id": "x", "text": "hello"})])
    assert read_jsonl(path, "text") == [{"id": "x", "text": "hello"}]
    with pytest.raises(PipelineError, match="missing field 'prompt'"):
        read_jsonl(path, "task")


def test_blank_lines_are_skipped_but_line_numbers_stay_true(tmp_path):
    path = write(tmp_path / "t.jsonl", [GOOD, "", "{bad"])
    with pytest.raises(PipelineError, match=r"t\.jsonl:3:"):
        read_jsonl(path, "instruction")


def test_interrupted_atomic_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_directory_write_keeps_the_old_output(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("new, half written")
        raise RuntimeError("crash")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_writes_replace_whole(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    write_jsonl(tmp_path / "r.jsonl", [{"id": "1"}, {"id": "2"}])
    assert (tmp_path / "r.jsonl").read_text().splitlines() == ['{"id": "1"}', '{"id": "2"}']

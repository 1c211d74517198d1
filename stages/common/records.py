"""JSONL records in the data contracts of DESIGN.md, read with validation.

A malformed line, a missing or non-string field, an empty file or a duplicate id is a
PipelineError naming the file and line, raised before any stage writes an output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from stages.common.atomic import atomic_path
from stages.common.errors import PipelineError

# The contracts: which fields each kind of file must carry (all strings).
CONTRACTS: dict[str, tuple[str, ...]] = {
    "instruction": ("id", "prompt", "response"),
    "text": ("id", "text"),
    "task": ("id", "prompt", "answer"),
    "ground_truth": ("id", "kind", "of"),  # planted duplicates and leaks, for scoring dedup
}


def read_jsonl(path: str | Path, kind: str) -> list[dict]:
    """Every record of `path`, checked against the contract `kind`."""
    if kind not in CONTRACTS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {sorted(CONTRACTS)}")
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such file (expected JSONL records of kind {kind!r})")
    fields = CONTRACTS[kind]
    rows: list[dict] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PipelineError(f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(row, dict):
                raise PipelineError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            for field in fields:
                if field not in row:
                    raise PipelineError(f"{path}:{line_no}: missing field {field!r} (a {kind} record needs "
                                        f"{', '.join(fields)})")
                if not isinstance(row[field], str):
                    raise PipelineError(f"{path}:{line_no}: field {field!r} must be a string, "
                                        f"got {type(row[field]).__name__}")
            if row["id"] in first_line:
                raise PipelineError(f"{path}:{line_no}: duplicate id {row['id']!r} "
                                    f"(first seen on line {first_line[row['id']]})")
            first_line[row["id"]] = line_no
            rows.append(row)
    if not rows:
        raise PipelineError(f"{path}: empty file (no {kind} records)")
    return rows


def record_kind(path: str | Path) -> str:
    """The contract of an eval file, told by the fields of its first record."""
    if not Path(path).is_file():
        return "task"  # read_jsonl names the missing file
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    break
                if isinstance(first, dict):
                    return "text" if "text" in first else "task"
                break
    return "task"  # let read_jsonl report the real problem


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

"""JSONL records in the data contracts (README, "Your own data"), read with validation.

A malformed line, a missing or non-string field, an empty file, a duplicate id or bytes that
are not UTF-8 is a PipelineError naming the file and line (and the byte offset), raised before
any stage writes an output. A UTF-8 byte-order mark at the start of a file (Windows editors
write one) is read as the encoding mark it is, not as part of the first record.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
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
    for line_no, line in decoded_lines(path):
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


def decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded strictly as UTF-8 (a leading BOM skipped)."""
    offset = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            start = 3 if line_no == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            try:
                yield line_no, raw[start:].decode("utf-8")
            except UnicodeDecodeError as e:
                raise PipelineError(f"{path}:{line_no}: not UTF-8 (byte 0x{raw[start + e.start]:02x} at byte offset "
                                    f"{offset + start + e.start} of the file); re-save it as UTF-8, e.g. "
                                    f"`iconv -f latin1 -t utf-8`") from None
            offset += len(raw)


def record_kind(path: str | Path) -> str:
    """The contract of an eval file, told by the fields of its first record."""
    if not Path(path).is_file():
        return "task"  # read_jsonl names the missing file
    with Path(path).open(encoding="utf-8-sig", errors="replace") as f:  # read_jsonl reports bad bytes
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

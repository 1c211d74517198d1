"""Decontamination: n-grams of every eval record, and the training records that contain them.

The Phi-4 report's hybrid: a long n-gram (13 words) shared with any eval record is a leak; so is
a large share of one eval record's short n-grams (7 words), which catches short eval questions
copied whole or split across a record's prompt and response.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stages.common.textdedup import words


@dataclass(frozen=True)


class EvalIndex:
    """n-grams of every eval record: long n-grams (any hit is a leak) and short ones (a leak when
    enough of one eval record's short n-grams appear)."""

    long_n: int
    short_n: int
    long_grams: dict[tuple[str, ...], str]
    short_grams: dict[tuple[str, ...], list[str]]
    short_counts: dict[str, int]
    short_lengths: tuple[int, ...]  # short_n, and the lengths of eval records shorter than it


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def build_eval_index(eval_records: Iterable[tuple[str, str]], long_n: int, short_n: int) -> EvalIndex:
    """eval_records: (id, text) pairs. An eval record shorter than short_n words is one n-gram
    of all its words, so a short question copied whole is still caught."""
    long_grams: dict[tuple[str, ...], str] = {}
    short_grams: dict[tuple[str, ...], list[str]] = defaultdict(list)
    short_counts: dict[str, int] = {}
    for eval_id, text in eval_records:
        tokens = words(text)
        for gram in sorted(ngrams(tokens, long_n)):
            long_grams.setdefault(gram, eval_id)
        grams = ngrams(tokens, short_n) if len(tokens) >= short_n else {tuple(tokens)} if tokens else set()
        for gram in grams:
            short_grams[gram].append(eval_id)
        short_counts[eval_id] = len(grams)
    lengths = tuple(sorted({len(g) for g in short_grams}))
    return EvalIndex(long_n, short_n, long_grams, dict(short_grams), short_counts, lengths)


def find_leak(text: str, index: EvalIndex, short_overlap: float) -> tuple[str, str] | None:
    """(eval id, reason) if `text` contains a long n-gram of an eval record, or at least
    `short_overlap` of one eval record's short n-grams; else None."""
    tokens = words(text)
    for gram in (tuple(tokens[i : i + index.long_n]) for i in range(len(tokens) - index.long_n + 1)):
        if gram in index.long_grams:
            return index.long_grams[gram], f"{index.long_n}-gram"
    hits: dict[str, int] = defaultdict(int)
    grams: set[tuple[str, ...]] = set()
    for n in index.short_lengths:
        grams |= ngrams(tokens, n)
    for gram in grams:
        for eval_id in index.short_grams.get(gram, ()):
            hits[eval_id] += 1
    best = max(sorted(hits), key=lambda e: hits[e] / index.short_counts[e], default=None)
    if best is not None and hits[best] / index.short_counts[best] >= short_overlap:
        return best, f"{index.short_n}-gram overlap {hits[best] / index.short_counts[best]:.2f}"
    return None

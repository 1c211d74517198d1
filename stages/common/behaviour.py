"""What a generation did, beyond being right: refused, fell into a loop, or never stopped.

The one place where a refusal and a loop are defined; evaluate scores every rung with these, and
the gates compare rungs on the per-item outcomes (item_metrics.py).
- A refusal: the answer's opening matches one of `evaluate.refusal.patterns` (case-insensitive
  regular expressions). Each profile sets the patterns its model refuses with (conf/model/).
- A loop: a run of one n-gram (n <= max_ngram tokens) repeated back to back at least
  `min_repeats` times, covering at least `min_run_tokens` tokens: greedy decoding stuck in a
  cycle ("network/high network/high network/high ...", or one token over and over).
- No stop: generation reached its length limit without the end-of-turn token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

REFUSAL_OPENING_CHARS = 160  # a refusal comes first; later text (a quoted ask, say) does not count


@cache
def _compiled(patterns: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def is_refusal(answer: str, patterns: Sequence[str]) -> bool:
    """Whether the answer opens with a refusal."""
    if not patterns:
        raise ValueError("evaluate.refusal.patterns is empty: nothing could count as a refusal")
    return _compiled(tuple(patterns)).search(answer.strip()[:REFUSAL_OPENING_CHARS]) is not None


@dataclass(frozen=True)
class LoopRule:
    max_ngram: int = 8        # longest repeating unit, in tokens
    min_repeats: int = 3      # back-to-back copies of it
    min_run_tokens: int = 12  # and at least this many tokens in the run (a doubled word is no loop)


def longest_repetition(tokens: Sequence[int], max_ngram: int) -> tuple[int, int]:
    """(n, copies) of the longest back-to-back run of one n-gram, by tokens covered."""
    best, best_cover = (0, 0), 0
    for n in range(1, max_ngram + 1):
        i = 0
        while i + 2 * n <= len(tokens):
            copies = 1
            while tokens[i + copies * n : i + (copies + 1) * n] == tokens[i : i + n]:
                copies += 1
            if copies > 1 and copies * n > best_cover:
                best, best_cover = (n, copies), copies * n
            i += max(1, (copies - 1) * n) if copies > 1 else 1
    return best


def is_loop(tokens: Sequence[int], rule: LoopRule) -> bool:
    n, copies = longest_repetition(list(tokens), rule.max_ngram)
    return copies >= rule.min_repeats and n * copies >= rule.min_run_tokens

"""Per-item results and the statistics read off them: one place for how every gated number is
computed from the items, so evaluate, gates and review can never disagree.

An items file (metrics/eval/items/<rung>.json) maps each metric to {item id: value}:
- rates (exact match, and any 0/1 outcome): 0 or 1 per item; the metric is the mean;
- perplexities: [summed NLL, token count] per item (an answer, or a document of held-out text);
  the metric is exp(sum NLL / sum count);
- fidelity against a reference rung: [summed KL, token count, top-1 agreements] per document;
  the metrics are mean KL per token and the top-1 agreement rate.
Comparisons between rungs are paired on item ids (paired.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from stages.common.paired import Estimate, interval

RATE, PERPLEXITY, KL, TOP1 = "rate", "perplexity", "kl", "top1"
FIDELITY = "fidelity"  # the items key holding [kl, count, agreements] per document
KINDS = {"domain_acc": RATE, "general_acc": RATE, "domain_ppl": PERPLEXITY, "general_ppl": PERPLEXITY,
         "kl": KL, "top1": TOP1, "refusal_rate": RATE, "over_refusal_rate": RATE, "loop_rate": RATE,
         "no_stop_rate": RATE}


class ItemsMismatch(ValueError):
    """Two items files do not hold the same items: no paired comparison exists."""


def items_key(metric: str) -> str:
    return FIDELITY if KINDS[metric] in (KL, TOP1) else metric


def columns(metric: str, items: Mapping[str, object], ids: list[str]) -> list[np.ndarray]:
    """The per-item arrays a metric's statistic reads, in `ids` order."""
    kind = KINDS[metric]
    rows = np.asarray([items[i] for i in ids], dtype=np.float64)
    if kind == RATE:
        return [rows]
    if kind == PERPLEXITY:
        return [rows[:, 0], rows[:, 1]]
    return [rows[:, 0] if kind == KL else rows[:, 2], rows[:, 1]]


# Statistics over the item axis (-1), vectorized for the bootstrap.
def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _ratio_of_sums(x, n, axis=-1):
    return np.sum(x, axis=axis) / np.sum(n, axis=axis)


def _rate_change(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _perplexity_change(nll_a, count, nll_b, _count_b, axis=-1):
    """ppl_a / ppl_b - 1 on the same tokens: exp((NLL_a - NLL_b) / tokens) - 1."""
    return np.expm1((np.sum(nll_a, axis=axis) - np.sum(nll_b, axis=axis)) / np.sum(count, axis=axis))


def _ratio_change(x_a, n_a, x_b, n_b, axis=-1):
    return np.sum(x_a, axis=axis) / np.sum(n_a, axis=axis) - np.sum(x_b, axis=axis) / np.sum(n_b, axis=axis)


def value(metric: str, items: Mapping[str, object]) -> float:
    """The metric over all items of one rung."""
    cols = columns(metric, items, sorted(items))
    kind = KINDS[metric]
    if kind == RATE:
        return float(_mean(cols[0]))
    if kind == PERPLEXITY:
        return math.exp(float(_ratio_of_sums(*cols)))
    return float(_ratio_of_sums(*cols))


def estimate(metric: str, items: Mapping[str, object], confidence: float, seed: int, resamples: int) -> Estimate:
    """The metric of one rung with its interval (items resampled): for KL and top-1 agreement,
    which already compare a rung with its reference token by token."""
    cols = columns(metric, items, sorted(items))
    statistic = _mean if KINDS[metric] == RATE else _ratio_of_sums
    if KINDS[metric] == PERPLEXITY:
        raise ValueError("a perplexity is compared between rungs (change), not bounded alone")
    return interval(cols, statistic, confidence, seed, resamples)


def change(metric: str, items: Mapping[str, object], reference: Mapping[str, object], confidence: float, seed: int,
           resamples: int) -> Estimate:
    """Paired change of `items` against `reference` on the same item ids: a difference in points
    for rates, KL and top-1 agreement, a relative change for perplexities (0.03 = 3 % higher)."""
    if set(items) != set(reference):
        only = sorted(set(items) ^ set(reference))
        raise ItemsMismatch(f"{len(only)} item ids are in one file only (e.g. {only[:3]})")
    ids = sorted(items)
    kind = KINDS[metric]
    if kind == RATE:
        return interval([*columns(metric, items, ids), *columns(metric, reference, ids)], _rate_change,
                        confidence, seed, resamples)
    statistic = _perplexity_change if kind == PERPLEXITY else _ratio_change
    return interval([*columns(metric, items, ids), *columns(metric, reference, ids)], statistic, confidence, seed,
                    resamples)

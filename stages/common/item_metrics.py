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

import json
import math
from collections.abc import Mapping

import numpy as np

from stages.common.paired import Estimate, interval

RATE, PERPLEXITY, KL, TOP1 = "rate", "perplexity", "kl", "top1"
FIDELITY = "fidelity"  # the items key holding [kl, count, agreements] per document
KINDS = {"domain_acc": RATE, "general_acc": RATE, "domain_ppl": PERPLEXITY, "general_ppl": PERPLEXITY,
         "kl": KL, "top1": TOP1, "refusal_rate": RATE, "over_refusal_rate": RATE, "loop_rate": RATE,
         "no_stop_rate": RATE}


LM_EVAL = "lm_eval/"  # lm-eval metrics: "lm_eval/<task>/<metric>", one value per document, the mean


def kind(metric: str) -> str:
    if metric.startswith(LM_EVAL):
        return RATE  # lm-eval's per-document acc, exact_match...: the task's metric is their mean
    return KINDS[metric]


def harness_metrics(harness_items: Mapping[str, Mapping]) -> dict[str, dict]:
    """A harness items file ({task: {doc id: {metric: value, "response": text}}}) as metrics like
    evaluate's: {"lm_eval/<task>/<metric>": {doc id: value}}."""
    out: dict[str, dict] = {}
    for task, docs in harness_items.items():
        for doc_id, row in docs.items():
            for metric, v in row.items():
                if metric != "response":
                    out.setdefault(f"{LM_EVAL}{task}/{metric}", {})[doc_id] = v
    return out


def is_metric(name: str) -> bool:
    return name in KINDS or name.startswith(LM_EVAL)


class ItemsMismatch(ValueError):
    """Two items files do not hold the same items: no paired comparison exists."""


def items_key(metric: str) -> str:
    return FIDELITY if kind(metric) in (KL, TOP1) else metric


def columns(metric: str, items: Mapping[str, object], ids: list[str]) -> list[np.ndarray]:
    """The per-item arrays a metric's statistic reads, in `ids` order."""
    k = kind(metric)
    rows = np.asarray([items[i] for i in ids], dtype=np.float64)
    if k == RATE:
        return [rows]
    if k == PERPLEXITY:
        return [rows[:, 0], rows[:, 1]]
    return [rows[:, 0] if k == KL else rows[:, 2], rows[:, 1]]


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
    k = kind(metric)
    if k == RATE:
        return float(_mean(cols[0]))
    if k == PERPLEXITY:
        return math.exp(float(_ratio_of_sums(*cols)))
    return float(_ratio_of_sums(*cols))


def estimate(metric: str, items: Mapping[str, object], confidence: float, seed: int, resamples: int) -> Estimate:
    """The metric of one rung with its interval (items resampled): for KL and top-1 agreement,
    which already compare a rung with its reference token by token."""
    cols = columns(metric, items, sorted(items))
    statistic = _mean if kind(metric) == RATE else _ratio_of_sums
    if kind(metric) == PERPLEXITY:
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
    k = kind(metric)
    if k == RATE:
        return interval([*columns(metric, items, ids), *columns(metric, reference, ids)], _rate_change,
                        confidence, seed, resamples)
    statistic = _perplexity_change if k == PERPLEXITY else _ratio_change
    return interval([*columns(metric, items, ids), *columns(metric, reference, ids)], statistic, confidence, seed,
                    resamples)


def items_json(items: Mapping[str, Mapping]) -> str:
    """An items file: valid JSON with one item per line, so a reviewer's diff shows the items
    that changed (evaluate's and the harness's alike)."""
    blocks = []
    for metric in sorted(items):
        rows = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v, sort_keys=True, ensure_ascii=False)}"
                          for k, v in sorted(items[metric].items()))
        blocks.append(f"  {json.dumps(metric)}: {{\n{rows}\n  }}")
    return "{\n" + ",\n".join(blocks) + "\n}\n"

"""evaluate: one rung of the ladder -> metrics/eval/<rung>.json and metrics/eval/items/<rung>.json.

    python -m stages.evaluate onnx_int4 [overrides]

The rungs are listed once, in stages/common/rungs.py: the torch checkpoints (transformers), the
ONNX rungs and the hot-swap adapter path (onnxruntime-genai, as a serving process loads them).
Every rung sees the same token ids and writes, per item (so gates can pair rungs item by item):
- greedy exact match on the domain test set and the general task's test set;
- refusals on the red-team set and on its benign look-alikes (over-refusal), and loops and
  no-stops of greedy decoding run well past the expected answer (stages/common/behaviour.py);
- perplexity of each domain answer given its prompt, and of each held-out general document;
- against its reference rung, per held-out document: KL(p_reference || p_rung) summed over
  tokens and top-1 agreement (quantization fidelity on identical tokens);
and in the summary: those metrics over all items, the KL's 99th percentile per token, size on
disk, and speed (prefill tokens/s, decode tokens/s, per-token latency p50/p95), and one request
of the target shape (evaluate.cost): its latency, decode p95 and cost per 1,000 output tokens.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import numpy as np
from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import write_json, write_text
from stages.common.behaviour import LoopRule, is_loop, is_refusal
from stages.common.chat import prompt_ids, response_ids, stop_token_ids
from stages.common.checkpoint import base_checkpoint, load_tokenizer
from stages.common.errors import PipelineError
from stages.common.item_metrics import FIDELITY, items_json, value
from stages.common.language_model import LanguageModel, open_rung
from stages.common.lm import document_windows, next_token_fidelity, window_nll
from stages.common.records import read_jsonl
from stages.common.rungs import RUNGS, Rung
from stages.common.runtime import get_logger, progress, stage_main, timed

log = get_logger(__name__)

BATCH = 16  # teacher-forced answer passes per logits_batch call
SIG_DIGITS = 6  # per-item floats: enough for any gate, stable bytes for DVC


def rounded(x: float) -> float:
    return float(f"{x:.{SIG_DIGITS}g}")


def size_mb(model: LanguageModel) -> float:
    """The rung's bytes on disk: its folder, or its one file (a GGUF)."""
    files = [model.folder] if model.folder.is_file() else [p for p in model.folder.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 3)


def reference_passes(model: LanguageModel, tokenizer, rows: Sequence[dict], window: int, desc: str) -> Iterator[tuple]:
    """Per row: (row, prompt ids, reference answer ids + end-of-turn, greedy's first tokens,
    where greedy leaves the reference or None, the answer's [NLL, tokens]), from one prefill of
    prompt + answer + end-of-turn, batched.

    Up to the first position where the argmax leaves the reference, greedy decoding emits the
    reference: that pass alone tells greedy's output whenever greedy follows the reference to
    its end-of-turn, or stops early; only where it leaves the reference must it be generated."""
    prompts = [prompt_ids(tokenizer, row["prompt"]) for row in rows]
    windows = [last_window(p + response_ids(tokenizer, row["answer"]), len(p), window)
               for p, row in zip(prompts, rows, strict=True)]
    batches = (range(i, min(i + BATCH, len(rows))) for i in range(0, len(rows), BATCH))
    every_logits = (logits for b in batches for logits in model.logits_batch([windows[i][0] for i in b]))
    for row, prompt, (ids, score_from), logits in progress(zip(rows, prompts, windows, every_logits, strict=True),
                                                           desc=desc, total=len(rows)):
        total, count = window_nll(logits, ids, score_from)
        reference, greedy = ids[score_from:], logits[score_from - 1 : -1].argmax(-1).tolist()
        leaves = next((i for i, (g, r) in enumerate(zip(greedy, reference, strict=True)) if g != r), None)
        yield row, prompt, reference, greedy, leaves, [rounded(total), count]


def answers(model: LanguageModel, tokenizer, rows: Sequence[dict], max_new_tokens: int, window: int,
            desc: str) -> tuple[dict[str, int], dict[str, list]]:
    """Per item: greedy exact match (1 or 0), and [NLL, tokens] of the reference answer given the
    prompt. An item whose greedy path leaves the reference with text that is no prefix of the
    answer is wrong without generating; only one that may still spell the answer another way
    (another tokenization of the same string) is generated."""
    stop = stop_token_ids(tokenizer)
    correct, nll = {}, {}
    for row, prompt, reference, greedy, k, row_nll in reference_passes(model, tokenizer, rows, window, desc):
        nll[row["id"]] = row_nll
        answer = row["answer"].strip()
        if k is None or k >= max_new_tokens or greedy[k] in stop:  # greedy's whole output is known
            right = tokenizer.decode(reference[: min(len(reference) - 1 if k is None else k, max_new_tokens)]).strip() \
                == answer
        elif answer.startswith(tokenizer.decode([*reference[:k], greedy[k]]).strip()):
            right = tokenizer.decode(model.greedy(prompt, max_new_tokens, stop)).strip() == answer
        else:
            right = False
        correct[row["id"]] = int(right)
    return correct, nll


def generations(model: LanguageModel, tokenizer, rows: Sequence[dict], max_new_tokens: int, window: int,
                desc: str) -> dict[str, tuple[list[int], bool]]:
    """Per item: greedy's output tokens (at most max_new_tokens, the stop not included) and
    whether it stopped, generated (in batches) only where the reference pass cannot tell."""
    stop = stop_token_ids(tokenizer)
    out: dict[str, tuple[list[int], bool]] = {}
    pending: list[tuple[str, list[int]]] = []
    for row, prompt, reference, greedy, k, _ in reference_passes(model, tokenizer, rows, window, desc):
        if k is None and len(reference) - 1 <= max_new_tokens:  # the whole reference, then its stop
            out[row["id"]] = (reference[:-1], True)
        elif (k if k is not None else len(reference)) >= max_new_tokens:
            out[row["id"]] = (reference[:max_new_tokens], False)
        elif greedy[k] in stop:
            out[row["id"]] = (reference[:k], True)
        else:
            pending.append((row["id"], prompt))
    for start in range(0, len(pending), BATCH):
        chunk = pending[start : start + BATCH]
        for (item_id, _), tokens in zip(chunk, model.greedy_batch([p for _, p in chunk], max_new_tokens, stop),
                                        strict=True):
            out[item_id] = (tokens, len(tokens) < max_new_tokens)
    return {row["id"]: out[row["id"]] for row in rows}


def behaviour(model: LanguageModel, tokenizer, data: dict, cfg: DictConfig) -> dict[str, dict[str, int]]:
    """Per item: refusals on the red-team set, refusals of benign look-alikes (over-refusal), and
    over a fixed set of held-out prompts (both safety sets and the first items of each task set),
    loops and no-stops of greedy decoding allowed to run well past the expected answer."""
    d = cfg.evaluate.degeneration
    rule = LoopRule(d.loop.max_ngram, d.loop.min_repeats, d.loop.min_run_tokens)
    patterns = list(cfg.evaluate.refusal.patterns)
    items: dict[str, dict[str, int]] = {"refusal_rate": {}, "over_refusal_rate": {}, "loop_rate": {},
                                        "no_stop_rate": {}}
    sets = {"redteam": data["redteam"], "benign": data["benign"],
            "domain": data["domain"][: d.task_items], "general": data["general"][: d.task_items]}
    for name, rows in sets.items():
        for item_id, (tokens, stopped) in generations(model, tokenizer, rows, d.max_new_tokens, cfg.evaluate.ppl_window,
                                                      f"generations: {name}").items():
            if name in ("redteam", "benign"):
                key = "refusal_rate" if name == "redteam" else "over_refusal_rate"
                items[key][item_id] = int(is_refusal(tokenizer.decode(tokens), patterns))
            items["loop_rate"][item_id] = int(is_loop(tokens, rule))
            items["no_stop_rate"][item_id] = int(not stopped)
    return items


def heldout_text(model: LanguageModel, reference: LanguageModel | None,
                 windows: dict[str, list[tuple[list[int], int]]]) -> tuple[dict[str, list], dict[str, list], list]:
    """Per held-out document: [summed NLL, tokens]; and against the reference, from the same
    logits, [summed KL(p_reference || p_model), tokens, top-1 agreements]; and every token's KL
    (for its percentile)."""
    nll, fidelity, every = {}, {}, []
    for doc_id, doc_windows in progress(windows.items(), desc="held-out text", total=len(windows)):
        total, count, kl_sum, agree = 0.0, 0, 0.0, 0
        for ids, score_from in doc_windows:
            logits = model.logits(ids)
            window_total, n = window_nll(logits, ids, score_from)
            total, count = total + window_total, count + n
            if reference is not None:
                kl, same = next_token_fidelity(reference.logits(ids)[:-1], logits[:-1])
                kl_sum, agree = kl_sum + float(kl.sum()), agree + int(same.sum())
                every.append(kl)
        nll[doc_id] = [rounded(total), count]
        if reference is not None:
            fidelity[doc_id] = [rounded(kl_sum), count, agree]
    return nll, fidelity, every


def speed(model: LanguageModel, tokenizer, text: str, cfg: DictConfig) -> dict[str, float]:
    s = cfg.evaluate.speed
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"][: s.prompt_tokens]
    if len(prompt) < s.prompt_tokens:
        raise PipelineError(f"speed prompt has {len(prompt)} tokens, fewer than evaluate.speed.prompt_tokens")
    model.timed_decode(prompt, 4)  # warm-up: first-run allocations are not the rung's speed
    prefills, steps = [], []
    for _ in range(s.repeats):
        prefill, step_times = model.timed_decode(prompt, s.new_tokens)
        prefills.append(prefill)
        steps += step_times
    return {"prefill_tok_s": round(s.prompt_tokens / float(np.median(prefills)), 1),
            "decode_tok_s": round(len(steps) / float(np.sum(steps)), 1),
            "latency_p50_ms": round(float(np.percentile(steps, 50)) * 1e3, 3),
            "latency_p95_ms": round(float(np.percentile(steps, 95)) * 1e3, 3)}


def cost_per_1k_output_tokens(request_s: float, output_tokens: int, device_hourly_usd: float | None) -> float | None:
    """USD per 1,000 generated tokens, one request at a time on a machine billed by the hour."""
    if device_hourly_usd is None:
        return None
    return device_hourly_usd / 3600 * request_s / output_tokens * 1000


def at_target(model: LanguageModel, tokenizer, text: str, cfg: DictConfig) -> dict:
    """One request of the target shape (evaluate.cost: prompt and output lengths), timed
    `evaluate.speed.repeats` times: its latency, the p95 of its decode steps (an SLA's number)
    and, given the machine's hourly price, its cost per 1,000 output tokens."""
    c = cfg.evaluate.cost
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"][: c.prompt_tokens]
    if len(prompt) < c.prompt_tokens:
        raise PipelineError(f"evaluate.cost.prompt_tokens={c.prompt_tokens}: the held-out text has only "
                            f"{len(prompt)} tokens")
    requests, steps = [], []
    for _ in range(cfg.evaluate.speed.repeats):
        prefill, step_times = model.timed_decode(prompt, c.output_tokens)
        requests.append(prefill + sum(step_times))
        steps += step_times
    request_s = float(np.median(requests))
    cost = cost_per_1k_output_tokens(request_s, c.output_tokens, c.device_hourly_usd)
    return {"prompt_tokens": c.prompt_tokens, "output_tokens": c.output_tokens, "request_s": round(request_s, 5),
            "decode_p95_ms": round(float(np.percentile(steps, 95)) * 1e3, 3),
            "cost_per_1k_output_tokens_usd": None if cost is None else float(f"{cost:.4g}")}


def evaluation_data(cfg: DictConfig, tokenizer) -> dict:
    """The same token ids for every rung, keyed by item id."""
    limit = cfg.evaluate.max_task_examples
    domain = read_jsonl(cfg.data.eval.domain_test, "task")[:limit]
    general = read_jsonl(cfg.data.eval.general_test, "task")[:limit]
    redteam = read_jsonl(cfg.data.eval.safety_redteam, "task")[:limit]
    benign = read_jsonl(cfg.data.eval.safety_benign, "task")[:limit]
    heldout = read_jsonl(cfg.data.eval.general_heldout, "text")[: cfg.evaluate.heldout_documents]
    # Domain perplexity scores each answer given its prompt (what the adapter is for, see
    # `answers`); general perplexity scores every token of held-out plain text.
    return {"domain": domain, "general": general, "redteam": redteam, "benign": benign,
            "speed_text": " ".join(r["text"] for r in heldout),
            "general_windows": {r["id"]: [(ids, 1) for ids in document_windows(tokenizer, r["text"],
                                                                                   cfg.evaluate.ppl_window)]
                                for r in heldout}}


def last_window(ids: list[int], score_from: int, window: int) -> tuple[list[int], int]:
    """At most `window` tokens, cut from the left (the prompt), the scored part kept."""
    cut = max(0, len(ids) - window)
    return ids[cut:], max(1, score_from - cut)


def evaluate_rung(rung: Rung, cfg: DictConfig, model: LanguageModel | None = None) -> tuple[dict, dict]:
    """(summary metrics, per-item results) of one rung; `model`: the rung already opened (a
    runtime open_rung does not know, as tools/gguf_rung.py's llama.cpp)."""
    tokenizer = load_tokenizer(base_checkpoint(cfg) if rung.name == "torch_base" else layout.MERGED_DIR)
    data = evaluation_data(cfg, tokenizer)
    model = model or open_rung(rung, cfg)
    new_tokens, window = cfg.evaluate.max_new_tokens, cfg.evaluate.ppl_window
    items: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    with timed(log, f"{rung.name}: answers") as t:
        items["domain_acc"], items["domain_ppl"] = answers(model, tokenizer, data["domain"], new_tokens, window,
                                                           "domain")
        items["general_acc"], _ = answers(model, tokenizer, data["general"], new_tokens, window, "general")
    seconds["answers"] = t["seconds"]
    with timed(log, f"{rung.name}: generations (safety, degeneration)") as t:
        items |= behaviour(model, tokenizer, data, cfg)
    seconds["generations"] = t["seconds"]
    with timed(log, f"{rung.name}: held-out text") as t:
        reference = open_rung(RUNGS[rung.reference], cfg) if rung.reference else None
        items["general_ppl"], fidelity, per_token = heldout_text(model, reference, data["general_windows"])
    seconds["heldout_text"] = t["seconds"]
    metrics = {name: round(value(name, items[name]), 4) for name in items}
    metrics["items"] = {name: len(rows) for name, rows in items.items()}
    if reference is not None:
        items[FIDELITY] = fidelity
        metrics |= {"reference": rung.reference, "kl": round(value("kl", fidelity), 6),
                    "kl_p99": round(float(np.percentile(np.concatenate(per_token), 99)), 6),
                    "top1": round(value("top1", fidelity), 5)}
    with timed(log, f"{rung.name}: speed") as t:
        # Timed as served: an ONNX rung's serving graph (the prompt's lm_head pruned).
        served = open_rung(rung, cfg, serving=True) if rung.runtime == "genai" else model
        del reference
        metrics |= {"size_mb": size_mb(model), **speed(served, tokenizer, data["speed_text"], cfg),
                    "at_target": at_target(served, tokenizer, data["speed_text"], cfg)}
    seconds["speed"] = t["seconds"]
    metrics["seconds"] = seconds
    return metrics, items


def run(cfg: DictConfig, rung_name: str) -> None:
    if rung_name not in RUNGS:
        raise PipelineError(f"unknown rung {rung_name!r}; expected one of {', '.join(RUNGS)}")
    metrics, items = evaluate_rung(RUNGS[rung_name], cfg)
    write_text(layout.EVAL_ITEMS_DIR / f"{rung_name}.json", items_json(items))
    write_json(layout.EVAL_METRICS_DIR / f"{rung_name}.json", metrics)
    log.info("%s: %s", rung_name, {k: v for k, v in metrics.items() if k not in ("items", "seconds")})


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or "=" in argv[0]:
        sys.exit(f"usage: python -m stages.evaluate <{'|'.join(RUNGS)}> [key=value ...]")
    rung_name = argv.pop(0)
    stage_main(lambda cfg: run(cfg, rung_name), name=__name__)(argv)


if __name__ == "__main__":
    main()

"""evaluate: one rung of the ladder -> metrics/eval/<rung>.json.

    python -m stages.evaluate onnx_int4 [overrides]

Rungs: torch_base, torch_lora (transformers) and onnx_fp32, onnx_int8, onnx_int4
(onnxruntime-genai, the real consumer of the export). Every rung sees the same token ids:
- perplexity of the domain test answers given their prompts, and of held-out general text;
- greedy exact-match accuracy on the domain test set and the general task's test set;
- size on disk of what a user ships for the rung;
- speed: prefill tokens/s, decode tokens/s and per-token latency p50/p95 at fixed lengths.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import write_json
from stages.common.chat import prompt_ids, response_ids, stop_token_ids
from stages.common.checkpoint import load_causal_lm, load_tokenizer
from stages.common.errors import PipelineError
from stages.common.lm import perplexity, text_windows, torch_greedy, torch_logits, window_nll
from stages.common.records import read_jsonl
from stages.common.runtime import get_logger, progress, stage_main

log = get_logger(__name__)

ONNX_RUNGS = {"onnx_fp32": layout.ONNX_FP32, "onnx_int8": layout.ONNX_INT8, "onnx_int4": layout.ONNX_INT4}
RUNGS = ("torch_base", "torch_lora", *ONNX_RUNGS)


class Rung:
    """What evaluation needs of a model: logits for a window, a greedy answer, a timed decode."""

    def __init__(self, name: str, cfg: DictConfig):
        self.name = name
        if name in ONNX_RUNGS:
            self.folder = ONNX_RUNGS[name]
        else:
            self.folder = Path(cfg.model.path) if name == "torch_base" else layout.MERGED_DIR
        if not self.folder.exists():
            raise PipelineError(f"rung {name}: {self.folder} not found; run the stage that builds it first")
        if name in ONNX_RUNGS:
            from stages.common.genai import GenaiModel

            self.onnx = GenaiModel(self.folder, provider=cfg.evaluate.provider)
            self.logits: Callable = self.onnx.logits
            self.greedy: Callable = self.onnx.greedy
        else:
            self.torch = load_causal_lm(self.folder, cfg.model.dtype, cfg.model.device)
            self.logits = lambda ids: torch_logits(self.torch, ids)
            self.greedy = lambda ids, n, stop: torch_greedy(self.torch, ids, n, stop)

    def size_mb(self) -> float:
        return round(sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file()) / 1e6, 3)

    def timed_decode(self, prompt: Sequence[int], new_tokens: int) -> tuple[float, list[float]]:
        """Seconds for the prefill, and for each of `new_tokens` greedy decode steps (no early stop)."""
        if hasattr(self, "onnx"):
            total = len(prompt) + new_tokens
            generator = self.onnx.generator(None, total, min_length=total)
            start = time.perf_counter()
            generator.append_tokens(list(prompt))
            prefill = time.perf_counter() - start
            steps = []
            for _ in range(new_tokens):
                start = time.perf_counter()
                generator.generate_next_token()
                steps.append(time.perf_counter() - start)
            return prefill, steps
        import torch

        device = self.torch.device
        sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None  # CUDA runs ahead of the clock
        with torch.no_grad():
            start = time.perf_counter()
            out = self.torch(input_ids=torch.tensor([list(prompt)], device=device), use_cache=True)
            sync()
            prefill = time.perf_counter() - start
            past, token, steps = out.past_key_values, out.logits[:, -1:].argmax(-1), []
            for _ in range(new_tokens):
                start = time.perf_counter()
                out = self.torch(input_ids=token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
                sync()
                steps.append(time.perf_counter() - start)
        return prefill, steps


def window_perplexity(rung: Rung, windows: Sequence[tuple[Sequence[int], int]], desc: str) -> float:
    """Perplexity over (token ids, first scored position) windows."""
    total, count = 0.0, 0
    for ids, score_from in progress(windows, desc=desc, total=len(windows)):
        nll, n = window_nll(rung.logits(ids), ids, score_from)
        total, count = total + nll, count + n
    return perplexity(total, count)


def exact_match(rung: Rung, tokenizer, rows: Sequence[dict], max_new_tokens: int, desc: str) -> float:
    stop = stop_token_ids(tokenizer)
    hits = 0
    for row in progress(rows, desc=desc, total=len(rows)):
        answer = tokenizer.decode(rung.greedy(prompt_ids(tokenizer, row["prompt"]), max_new_tokens, stop))
        hits += answer.strip() == row["answer"].strip()
    return hits / len(rows)


def speed(rung: Rung, tokenizer, text: str, cfg: DictConfig) -> dict[str, float]:
    s = cfg.evaluate.speed
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"][: s.prompt_tokens]
    if len(prompt) < s.prompt_tokens:
        raise PipelineError(f"speed prompt has {len(prompt)} tokens, fewer than evaluate.speed.prompt_tokens")
    rung.timed_decode(prompt, 4)  # warm-up: first-run allocations are not the rung's speed
    prefills, steps = [], []
    for _ in range(s.repeats):
        prefill, step_times = rung.timed_decode(prompt, s.new_tokens)
        prefills.append(prefill)
        steps += step_times
    return {"prefill_tok_s": round(s.prompt_tokens / float(np.median(prefills)), 1),
            "decode_tok_s": round(len(steps) / float(np.sum(steps)), 1),
            "latency_p50_ms": round(float(np.percentile(steps, 50)) * 1e3, 3),
            "latency_p95_ms": round(float(np.percentile(steps, 95)) * 1e3, 3)}


def evaluation_data(cfg: DictConfig, tokenizer) -> dict:
    """The same token ids for every rung."""
    e = cfg.evaluate
    domain = read_jsonl(cfg.data.eval.domain_test, "task")[: e.max_task_examples]
    general = read_jsonl(cfg.data.eval.general_test, "task")[: e.max_task_examples]
    heldout = [r["text"] for r in read_jsonl(cfg.data.eval.general_heldout, "text")]
    # Domain perplexity scores the answer given its prompt (what the adapter is for); general
    # perplexity scores every token of held-out plain text.
    prompts = [prompt_ids(tokenizer, r["prompt"]) for r in domain]
    answers = [(p + response_ids(tokenizer, r["answer"]), len(p)) for p, r in zip(prompts, domain, strict=True)]
    return {"domain": domain, "general": general, "speed_text": " ".join(heldout),
            "domain_windows": [last_window(ids, start, e.ppl_window) for ids, start in answers],
            "general_windows": [(ids, 1) for ids in text_windows(tokenizer, heldout, e.ppl_window)]}


def last_window(ids: list[int], score_from: int, window: int) -> tuple[list[int], int]:
    """At most `window` tokens, cut from the left (the prompt), the scored part kept."""
    cut = max(0, len(ids) - window)
    return ids[cut:], max(1, score_from - cut)


def run(cfg: DictConfig, rung_name: str) -> None:
    if rung_name not in RUNGS:
        raise PipelineError(f"unknown rung {rung_name!r}; expected one of {', '.join(RUNGS)}")
    tokenizer = load_tokenizer(cfg.model.path if rung_name == "torch_base" else layout.MERGED_DIR)
    data = evaluation_data(cfg, tokenizer)
    rung = Rung(rung_name, cfg)
    e = cfg.evaluate
    metrics = {
        "domain_ppl": round(window_perplexity(rung, data["domain_windows"], "domain ppl"), 4),
        "general_ppl": round(window_perplexity(rung, data["general_windows"], "general ppl"), 4),
        "domain_acc": round(exact_match(rung, tokenizer, data["domain"], e.max_new_tokens, "domain acc"), 4),
        "general_acc": round(exact_match(rung, tokenizer, data["general"], e.max_new_tokens, "general acc"), 4),
        "size_mb": rung.size_mb(),
        **speed(rung, tokenizer, data["speed_text"], cfg),
    }
    write_json(layout.EVAL_METRICS_DIR / f"{rung_name}.json", metrics)
    log.info("%s: %s", rung_name, metrics)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or "=" in argv[0]:
        sys.exit(f"usage: python -m stages.evaluate <{'|'.join(RUNGS)}> [key=value ...]")
    rung_name = argv.pop(0)
    stage_main(lambda cfg: run(cfg, rung_name), name=__name__)(argv)


if __name__ == "__main__":
    main()

"""Language-model arithmetic shared by every rung, torch or ONNX: the same token windows in,
the same negative log-likelihood out, so perplexities compare exactly."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def text_windows(tokenizer, texts: Sequence[str], window: int) -> list[list[int]]:
    """Each text tokenized (plus end-of-text) and cut into windows of at most `window` tokens;
    windows shorter than 2 tokens score nothing and are dropped."""
    out: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out += [ids[i : i + window] for i in range(0, len(ids), window) if len(ids[i : i + window]) > 1]
    return out


def window_nll(logits: np.ndarray, ids: Sequence[int], score_from: int = 1) -> tuple[float, int]:
    """Summed NLL of ids[score_from:] given logits (len(ids), vocab) for each position, and the
    count. score_from = len(prompt) scores an answer given its prompt."""
    score_from = max(score_from, 1)
    logits = np.asarray(logits, dtype=np.float64)[score_from - 1 : -1]
    target = np.asarray(ids[score_from:])
    peak = logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
    return float((log_z - logits[np.arange(len(target)), target]).sum()), len(target)


def perplexity(nll_sum: float, count: int) -> float:
    return math.exp(nll_sum / max(count, 1))


def torch_logits(model, ids: Sequence[int]) -> np.ndarray:
    """Full-sequence logits (len(ids), vocab) of a transformers causal LM, as float32 NumPy."""
    import torch

    with torch.no_grad():
        x = torch.tensor([list(ids)], device=model.device)
        return model(input_ids=x).logits[0].float().cpu().numpy()


def torch_perplexity(model, windows: Sequence[Sequence[int]]) -> float:
    total, count = 0.0, 0
    for ids in windows:
        nll, n = window_nll(torch_logits(model, ids), ids)
        total, count = total + nll, count + n
    return perplexity(total, count)


def torch_greedy(model, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int]) -> list[int]:
    """Greedy continuation of `prompt` (token ids), stopping at a stop token (not returned)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([list(prompt)], device=model.device), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=list(stop_ids), pad_token_id=stop_ids[0])
    new = out[0, len(prompt):].tolist()
    return new[: next((i for i, t in enumerate(new) if t in stop_ids), len(new))]

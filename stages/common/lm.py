"""Language-model arithmetic shared by every rung, torch or ONNX: the same token windows in,
the same negative log-likelihood out, so perplexities compare exactly."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np


def document_windows(tokenizer, text: str, window: int) -> list[list[int]]:
    """A text tokenized (plus end-of-text) and cut into windows of at most `window` tokens;
    windows shorter than 2 tokens score nothing and are dropped."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [ids[i : i + window] for i in range(0, len(ids), window) if len(ids[i : i + window]) > 1]


def text_windows(tokenizer, texts: Sequence[str], window: int) -> list[list[int]]:
    return [w for text in texts for w in document_windows(tokenizer, text, window)]


def window_nll(logits: np.ndarray, ids: Sequence[int], score_from: int = 1) -> tuple[float, int]:
    """Summed NLL of ids[score_from:] given logits (len(ids), vocab) for each position, and the
    count. score_from = len(prompt) scores an answer given its prompt."""
    score_from = max(score_from, 1)
    log_p = log_softmax(np.asarray(logits)[score_from - 1 : -1])
    target = np.asarray(ids[score_from:])
    return float(-log_p[np.arange(len(target)), target].sum()), len(target)


def log_softmax(logits: np.ndarray, dtype=np.float64) -> np.ndarray:
    logits = np.asarray(logits, dtype=dtype)
    peak = logits.max(axis=-1, keepdims=True)
    return logits - peak - np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True))


def next_token_fidelity(reference: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position: KL(p_reference || p) in nats, and whether both put the same token first
    (how llama.cpp's --kl-divergence scores a quant against its float model)."""
    # float32 is enough here (KL of equal rows is exactly 0) and halves the cost over the vocabulary.
    log_p, log_q = log_softmax(reference, np.float32), log_softmax(logits, np.float32)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    return np.maximum(kl, 0.0), reference.argmax(axis=-1) == np.asarray(logits).argmax(axis=-1)


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


def take_until_stop(tokens: Iterator[int], max_new_tokens: int, stop_ids: Sequence[int]) -> list[int]:
    out: list[int] = []
    for _, token in zip(range(max_new_tokens), tokens, strict=False):  # range first: no step past the last
        if token in stop_ids:
            break
        out.append(token)
    return out


def torch_greedy_batch(model, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       stop_ids: Sequence[int]) -> list[list[int]]:
    """transformers' batched greedy `generate`, left-padded (positions follow the attention
    mask, so each row continues as it would alone, up to batched kernels' summation order):
    a step for the whole batch costs about what one row's does on a CPU."""
    import torch

    width = max(len(p) for p in prompts)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(list(prompt))
        mask[row, width - len(prompt):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(stop_ids),
                             pad_token_id=pad)
    return [take_until_stop(iter(row[width:].tolist()), max_new_tokens, stop_ids) for row in out]

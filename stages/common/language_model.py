"""One interface for a model under evaluation, whatever runs it: logits for a window, a greedy
answer, a timed decode. Evaluate and the decode benchmark use it alike; a new runtime (a GGUF
rung, say) is one more class with these three methods.

- TorchModel: transformers, for the checkpoints (torch_base, torch_lora);
- GenaiModel (stages/common/genai.py): onnxruntime-genai, as a serving process loads the ONNX
  rungs, an adapter file active where the rung has one;
- GgufModel (stages/common/gguf.py): llama.cpp, for a GGUF build of the merged model and the
  real-size benchmark; tools/gguf_rung.py opens it and hands it to evaluate_rung (outside the
  DAG, so no evaluate stage depends on llama.cpp).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from omegaconf import DictConfig

from stages.common.errors import PipelineError
from stages.common.lm import take_until_stop, torch_greedy_batch
from stages.common.rungs import Rung


class LanguageModel(Protocol):
    folder: Path

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), vocab) float32: the next-token logits at every position."""

    def logits_batch(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """`logits` of several sequences (a runtime may run them together)."""

    def greedy(self, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int]) -> list[int]:
        """Greedy continuation, stopping at (and not returning) a stop token."""

    def greedy_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     stop_ids: Sequence[int]) -> list[list[int]]:
        """`greedy` of several prompts (a runtime may run them together)."""

    def timed_decode(self, prompt: Sequence[int], new_tokens: int) -> tuple[float, list[float]]:
        """Seconds for the prefill, and for each of `new_tokens` greedy steps (no early stop)."""


def time_steps(steps: Iterator[object], new_tokens: int) -> tuple[float, list[float]]:
    """Time a decode generator: its first item ends the prefill, each later one a step."""
    start = time.perf_counter()
    next(steps)
    prefill = time.perf_counter() - start
    times = []
    for _ in range(new_tokens):
        start = time.perf_counter()
        next(steps)
        times.append(time.perf_counter() - start)
    return prefill, times


class TorchModel:
    """A transformers causal LM: one prefill, then one cached step per token (what `generate`
    does for greedy search, without its per-call set-up)."""

    def __init__(self, folder: Path, dtype: str = "float32", device: str = "cpu"):
        from stages.common.checkpoint import load_causal_lm

        self.folder = Path(folder)
        self.model = load_causal_lm(folder, dtype, device)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        from stages.common.lm import torch_logits

        return torch_logits(self.model, ids)

    def logits_batch(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """One forward for the whole batch, right-padded: causal attention never lets a position
        see the padding after it, and positions count from 0 as unbatched, so each row's logits
        are its own (up to the summation order of batched kernels)."""
        import torch

        width = max(len(ids) for ids in batch)
        x = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            x[row, : len(ids)] = torch.tensor(list(ids))
        with torch.no_grad():
            logits = self.model(input_ids=x.to(self.model.device)).logits.float().cpu().numpy()
        return [logits[row, : len(ids)] for row, ids in enumerate(batch)]

    def _steps(self, prompt: Sequence[int]) -> Iterator[int]:
        """Yields the prefill's next token, then each next greedy token, forever."""
        import torch

        device = self.model.device
        # CUDA runs ahead of the clock: synchronize so each step's time is its own.
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(prompt)], device=device), use_cache=True)
            while True:
                token = out.logits[:, -1:].argmax(-1)
                sync()
                yield int(token)
                out = self.model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)

    def greedy(self, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int]) -> list[int]:
        return take_until_stop(self._steps(prompt), max_new_tokens, stop_ids)

    def greedy_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     stop_ids: Sequence[int]) -> list[list[int]]:
        return torch_greedy_batch(self.model, prompts, max_new_tokens, stop_ids)

    def timed_decode(self, prompt: Sequence[int], new_tokens: int) -> tuple[float, list[float]]:
        return time_steps(self._steps(prompt), new_tokens)


def open_rung(rung: Rung, cfg: DictConfig, serving: bool = False) -> LanguageModel:
    """The rung's model. An ONNX rung opens its full graph (every position's logits), or with
    `serving` the graph its genai_config.json names, the pruned one its users run
    (serving_graph.py)."""
    from stages.common.checkpoint import base_checkpoint

    folder = base_checkpoint(cfg) if rung.name == "torch_base" else rung.folder
    if not Path(folder).exists():
        raise PipelineError(f"rung {rung.name}: {folder} not found; run the stage that builds it first")
    if rung.runtime == "torch":
        return TorchModel(folder, cfg.model.dtype, cfg.model.device)
    from stages.common.genai import GenaiModel
    from stages.common.layout import ADAPTER_FILE
    from stages.common.serving_graph import FULL_GRAPH

    graph = None if serving else FULL_GRAPH
    if not rung.adapter:
        return GenaiModel(folder, provider=cfg.evaluate.provider, graph=graph)
    model = GenaiModel(folder, adapter_files=[folder / ADAPTER_FILE], provider=cfg.evaluate.provider, graph=graph)
    model.active = Path(ADAPTER_FILE).stem
    return model

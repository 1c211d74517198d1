"""onnxruntime-genai, the real consumer of every ONNX rung: full logits, greedy answers, timed
decoding and hot-swapped adapters, behind the LanguageModel interface (language_model.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from stages.common.errors import PipelineError
from stages.common.language_model import time_steps
from stages.common.lm import take_until_stop
from stages.common.serving_graph import FULL_GRAPH, decoder_file, graph_is_pruned, graph_overlay


class GenaiModel:
    """One loaded rung folder. `adapter_files` are loaded by name (their file stem) and can be
    switched per call; `active` names the one used when a call names none (None: the base).

    `graph` is the decoder file to open: the full graph (default: every position's logits, what
    evaluate, the harness and KL need) or None for the one genai_config.json names, the pruned
    serving graph a user runs (serving_graph.py). `provider` runs it on another execution
    provider than the one it was exported for (e.g. a CUDA build on "cpu"); None keeps
    genai_config.json's."""

    def __init__(self, folder: Path, adapter_files: Sequence[Path] = (), provider: str | None = None,
                 graph: str | None = FULL_GRAPH):
        import onnxruntime_genai as og

        self.og = og
        self.folder = Path(folder)
        config = og.Config(str(folder))
        if graph is not None and graph != decoder_file(self.folder):
            config.overlay(graph_overlay(graph))
        self.graph = self.folder / (graph or decoder_file(self.folder))
        self.pruned = graph_is_pruned(self.graph)
        if provider is not None:
            config.clear_providers()
            if provider != "cpu":  # the CPU provider is always there; it is not appended
                config.append_provider(provider)
        self.model = og.Model(config)
        self.adapters = None  # created on the first load_adapter
        self.adapter_names: list[str] = []
        self.active: str | None = None
        for path in adapter_files:
            self.load_adapter(Path(path), Path(path).stem)

    def load_adapter(self, path: Path, name: str) -> None:
        if self.adapters is None:
            self.adapters = self.og.Adapters(self.model)
        self.adapters.load(str(path), name)
        self.adapter_names.append(name)

    def generator(self, adapter: str | None, max_length: int, min_length: int = 0):
        """A greedy generator; min_length = max_length forces a fixed length (speed runs)."""
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, min_length=min_length, do_sample=False)
        generator = self.og.Generator(self.model, params)
        adapter = adapter or self.active
        if adapter is not None:
            generator.set_active_adapter(self.adapters, adapter)
        return generator

    def logits(self, ids: Sequence[int], adapter: str | None = None, chunk: int = 256) -> np.ndarray:
        """Logits (len(ids), vocab) for every position: append_tokens then get_output("logits")
        (get_logits() would give only the last), in chunks so long texts fit. A pruned graph
        holds one position per chunk: refused, not returned as the wrong rows."""
        if self.pruned:
            raise PipelineError(f"{self.graph} is a serving graph (lm_head pruned to the last position): it has "
                                "no logits for every position; open the full graph, "
                                f"GenaiModel(folder, graph={FULL_GRAPH!r})")
        generator = self.generator(adapter, max_length=len(ids) + 1)
        parts = []
        for start in range(0, len(ids), chunk):
            generator.append_tokens(list(ids[start : start + chunk]))
            parts.append(np.asarray(generator.get_output("logits"))[0].astype(np.float32))
        return np.concatenate(parts)

    def logits_batch(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        return [self.logits(ids) for ids in batch]

    def _steps(self, prompt: Sequence[int], new_tokens: int, adapter: str | None, fixed: bool) -> Iterator[int]:
        """Yields None after the prefill, then each generated token (at most `new_tokens`)."""
        total = len(prompt) + new_tokens
        generator = self.generator(adapter, total, min_length=total if fixed else 0)
        generator.append_tokens(list(prompt))
        yield None
        while not generator.is_done():
            generator.generate_next_token()
            yield int(generator.get_next_tokens()[0])

    def greedy(self, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int],
               adapter: str | None = None) -> list[int]:
        steps = self._steps(prompt, max_new_tokens, adapter, fixed=False)
        next(steps)
        return take_until_stop(steps, max_new_tokens, stop_ids)

    def greedy_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     stop_ids: Sequence[int]) -> list[list[int]]:
        # One at a time: a step of this runtime on one sequence is already cheap, and the hot-swap
        # rungs keep one active adapter per generator.
        return [self.greedy(prompt, max_new_tokens, stop_ids) for prompt in prompts]

    def timed_decode(self, prompt: Sequence[int], new_tokens: int) -> tuple[float, list[float]]:
        return time_steps(self._steps(prompt, new_tokens, None, fixed=True), new_tokens)

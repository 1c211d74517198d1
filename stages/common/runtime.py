"""Process set-up shared by every stage: logging, seeding, progress bars, the stage entry point."""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from stages.common.errors import PipelineError
from stages.common.params import load_params

T = TypeVar("T")
# Libraries whose INFO lines drown a stage's own: onnxruntime's quantizers log two lines per node,
# lm-eval one per request batch.
QUIET = ("onnxruntime", "lm_eval", "lm-eval")


def get_logger(name: str) -> logging.Logger:
    if not logging.getLogger().handlers:
        from rich.logging import RichHandler

        logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(message)s",
                            datefmt="[%X]", handlers=[RichHandler(show_path=False, markup=False)])
        for library in QUIET:
            logging.getLogger(library).setLevel(logging.WARNING)
    return logging.getLogger(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels (CPU runs repeat)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# Environment variables that cap a library's code path. Both are read lazily (torch at its first
# dispatched kernel, MKL at its first call), so setting them at a stage's start, before any tensor
# work, is in time even when torch is already imported.
NUMERICS_ENV = {"cpu_capability": "ATEN_CPU_CAPABILITY", "mkl_cbwr": "MKL_CBWR"}


def pin_numerics(numerics: DictConfig | None) -> None:
    """Run torch on the code path `numerics` names, not the best one this CPU has.

    torch picks its vectorized kernels (AVX2, AVX-512) and MKL its GEMM kernels by instruction
    set, so the same seed otherwise follows another floating-point path on another CPU, and every
    output after base differs (README "Same bytes on another CPU" has the measurements). A null
    value leaves that library to choose."""
    if numerics is None:
        return
    for key, var in NUMERICS_ENV.items():
        value = numerics.get(key)
        if value is not None:
            os.environ[var] = str(value)


def cpu_description() -> str:
    """The CPU model, core count and the vector-ISA flags that change kernels (and speed figures)."""
    import platform

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith(key)), "")  # noqa: E731
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "neon")
    flags = [f for f in wanted if f in field("flags").split()]
    return f"{field('model name') or platform.processor()}, {os.cpu_count()} cores, {' '.join(flags) or 'no AVX2'}"


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on stderr; quiet when PROGRESS=0 (tests, CI logs)."""
    from tqdm.auto import tqdm

    disable = os.environ.get("PROGRESS", "1") == "0"
    # On a terminal a live bar; in logs (dvc repro, CI) a line every 30 s instead of a flood.
    interval = 0.1 if sys.stderr.isatty() else 30
    yield from tqdm(items, desc=desc, total=total, disable=disable, dynamic_ncols=True, leave=False,
                    mininterval=interval)


@contextmanager
def timed(log: logging.Logger, what: str) -> Iterator[dict]:
    """Log how long a block took; the dict receives `seconds` for metrics."""
    out: dict = {}
    start = time.perf_counter()
    yield out
    out["seconds"] = round(time.perf_counter() - start, 2)
    log.info("%s took %.1f s", what, out["seconds"])


def stage_main(run: Callable[[DictConfig], object], name: str | None = None) -> Callable[[list[str] | None], None]:
    """Wrap `run(cfg)` as a command: params.yaml + CLI overrides in, a readable error out.

    A PipelineError (bad input, bad config) prints one line and exits 2, without a traceback;
    anything else is a bug and keeps its traceback.
    """

    def main(argv: list[str] | None = None) -> None:
        log = get_logger(name or run.__module__)
        try:
            cfg = load_params(argv)
            pin_numerics(cfg.get("numerics"))
            run(cfg)
        except PipelineError as e:
            log.error("%s", e)
            sys.exit(2)
        except OmegaConfBaseException as e:
            log.error("configuration error: %s", e)
            sys.exit(2)

    return main

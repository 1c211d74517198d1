"""Same bytes on another CPU (README "Seeds and machines"): the numerics pin (`numerics` in
conf/config.yaml) makes a torch stage's output independent of the instruction set it ran on.

One machine stands in for several by capping what each library may use: ATEN_CPU_CAPABILITY for
torch's own kernels, MKL_ENABLE_INSTRUCTIONS for MKL's and ONEDNN_MAX_CPU_ISA for oneDNN's, each at
every level this CPU has. Unpinned, the levels give different weights; pinned, identical bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.params import REPO_ROOT, write_params
from tests.conftest import SHRUNK_OVERRIDES, copy_data

pytestmark = pytest.mark.slow

MKL_LEVEL = {"default": "SSE4_2", "avx2": "AVX2", "avx512": "AVX512"}
ONEDNN_LEVEL = {"default": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE"}
PIN_VARS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_levels() -> list[str]:
    """The capability levels torch can run on this CPU, lowest first."""
    import torch

    best = torch.backends.cpu.get_cpu_capability().lower()
    levels = ["default", "avx2", "avx512"]
    return levels[: levels.index(best) + 1] if best in levels else ["default"]


def machine(level: str) -> dict[str, str]:
    """The environment of a machine whose CPU stops at `level`, as far as each library can tell."""
    return {"ATEN_CPU_CAPABILITY": level, "MKL_ENABLE_INSTRUCTIONS": MKL_LEVEL[level],
            "ONEDNN_MAX_CPU_ISA": ONEDNN_LEVEL[level]}


def base_weights(root: Path, pinned: bool, env: dict[str, str]) -> str:
    """sha256 of the shrunk base stage's weights, built in `root` under `env`."""
    copy_data(root)
    unpinned = [] if pinned else ["numerics.cpu_capability=null", "numerics.mkl_cbwr=null"]
    write_params([*SHRUNK_OVERRIDES, "base.pretrain.steps=20", *unpinned], root / "params.yaml")
    clean = {k: v for k, v in os.environ.items() if k not in PIN_VARS}  # the test's own pin must not leak in
    done = subprocess.run([sys.executable, "-m", "stages.base"], cwd=root, capture_output=True, text=True,
                          env={**clean, **env, "PYTHONPATH": str(REPO_ROOT), "PROGRESS": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    return hashlib.sha256((root / "models/base/model.safetensors").read_bytes()).hexdigest()


def test_unpinned_each_instruction_set_gives_other_weights(tmp_path):
    levels = cpu_levels()
    if len(levels) < 2:
        pytest.skip("this CPU has one capability level: nothing to compare")
    hashes = {level: base_weights(tmp_path / level, False, machine(level)) for level in levels}
    assert len(set(hashes.values())) == len(levels), hashes  # why the pin exists


def test_pinned_the_weights_are_the_same_bytes_on_every_instruction_set(tmp_path):
    """The pin names torch's level (avx2) and MKL's reproducible path; a machine capped at any level
    from AVX2 up (MKL and oneDNN included) writes the same bytes. On an AVX2-only CPU the two runs
    below are one level, and the test shows only that the pin is stable."""
    levels = [level for level in cpu_levels() if level != "default"] or pytest.skip("no AVX2 on this CPU")
    hashes = {level: base_weights(tmp_path / level, True, machine(level) | {"ATEN_CPU_CAPABILITY": level})
              for level in levels}
    hashes["native"] = base_weights(tmp_path / "native", True, {})
    assert len(set(hashes.values())) == 1, hashes

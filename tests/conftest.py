"""Shared fixtures: the real config (composed from conf/, then shrunk) and a scratch workspace
holding the embedded data, so stages run for real in tmp_path."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from omegaconf import DictConfig

from stages.common.params import REPO_ROOT, compose
from stages.common.runtime import pin_numerics

os.environ.setdefault("PROGRESS", "0")
# Stages run in-process here, not through stage_main: take the pipeline's pinned code paths too.
pin_numerics(compose().numerics)


def copy_data(root: Path) -> None:
    """The committed data a pipeline run reads: embedded sets and the dedup benchmark."""
    for part in ("raw", "eval", "bench"):
        shutil.copytree(REPO_ROOT / "data" / part, root / "data" / part)


@contextmanager
def inside(root: Path) -> Iterator[Path]:
    """`root` as the working directory for a session fixture's stage runs (monkeypatch is per test)."""
    cwd = Path.cwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)


def private_copy(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test's own copy of a shared, read-only workspace, as its working directory."""
    shutil.copytree(shared, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory, with the embedded data copied in."""
    copy_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Small runs of every stage after base, for any profile, and with a smaller tiny model: the same
# config groups a person uses for a smoke run (conf/debug/).
SHRUNK_RUN = ["debug=smoke"]
SHRUNK_OVERRIDES = ["debug=shrunk"]


def shrunk(overrides: Sequence[str] = ()) -> DictConfig:
    """The default config with the tiny model and its training made small enough for a test."""
    return compose([*SHRUNK_OVERRIDES, *overrides])


@pytest.fixture(scope="session")
def tiny_stages(tmp_path_factory) -> Path:
    """A workspace where the shrunk base and dedup stages have run once (shared, read-only)."""
    from stages import base, dedup

    root = tmp_path_factory.mktemp("tiny")
    copy_data(root)
    with inside(root):
        cfg = shrunk()
        base.run(cfg)
        dedup.run(cfg)
    return root


@pytest.fixture
def trained_workspace(workspace: Path, tiny_stages: Path) -> Path:
    """A fresh workspace holding the tiny base and the clean data, ready for train."""
    shutil.copytree(tiny_stages / "models" / "base", workspace / "models" / "base")
    shutil.copytree(tiny_stages / "data" / "clean", workspace / "data" / "clean")
    return workspace


@pytest.fixture(scope="session")
def ladder(tiny_stages: Path, tmp_path_factory) -> Path:
    """A workspace where train, export and both quantizations have run on the shrunk model."""
    from stages import export, quant_int4, quant_int8, train

    root = tmp_path_factory.mktemp("ladder")
    shutil.copytree(tiny_stages, root, dirs_exist_ok=True)
    with inside(root):
        cfg = shrunk()
        for stage in (train, export, quant_int8, quant_int4):
            stage.run(cfg)
    return root


@pytest.fixture
def ladder_workspace(ladder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the ladder as the working directory (tests may change it)."""
    return private_copy(ladder, tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def evaluated_ladder(ladder: Path, tmp_path_factory) -> Path:
    """The shrunk ladder with every rung evaluated once (shared, read-only)."""
    from stages import evaluate
    from stages.common.rungs import RUNGS

    root = tmp_path_factory.mktemp("evaluated")
    shutil.copytree(ladder, root, dirs_exist_ok=True)
    with inside(root):
        for rung in RUNGS:
            evaluate.run(shrunk(), rung)
    return root


@pytest.fixture
def evaluated(evaluated_ladder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the evaluated ladder as the working directory."""
    return private_copy(evaluated_ladder, tmp_path, monkeypatch)

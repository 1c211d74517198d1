"""Shared fixtures: the real config (composed from conf/, then shrunk) and a scratch workspace
holding the embedded data, so stages run for real in tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf, open_dict

from stages.common.params import REPO_ROOT, compose

os.environ.setdefault("PROGRESS", "0")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory, with the embedded data copied in."""
    shutil.copytree(REPO_ROOT / "data" / "raw", tmp_path / "data" / "raw")
    shutil.copytree(REPO_ROOT / "data" / "eval", tmp_path / "data" / "eval")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def shrunk(overrides: list[str] = ()) -> DictConfig:
    """The default config with the tiny model and its training made small enough for a test."""
    cfg = compose(list(overrides))
    with open_dict(cfg):
        cfg.base.pretrain.steps = 40
        cfg.base.pretrain.warmup_steps = 5
        cfg.model.arch.hidden_size = 64
        cfg.model.arch.intermediate_size = 128
        cfg.model.arch.num_hidden_layers = 2
        cfg.model.arch.vocab_size = 600
    OmegaConf.set_struct(cfg, True)
    return cfg


@pytest.fixture
def small_cfg() -> DictConfig:
    return shrunk()

"""Data-parallel LoRA, as the README documents it, run for real: two CPU processes under
`accelerate launch` against one process with the same global batch.

`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.15's simple launcher
ignores the count on CPU). `--multi_gpu` goes through torch.distributed.run and starts two; the
stage's `Accelerator(cpu=True)` (model.device=cpu) then runs them as MULTI_CPU over gloo."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common import layout
from stages.common.finetune import batches
from stages.common.params import REPO_ROOT, write_params
from tests.conftest import SHRUNK_OVERRIDES


def test_ranks_draw_disjoint_shares_of_the_global_batch():
    examples = list(range(100))
    single = batches(examples, 8, seed=3)
    ranks = [batches(examples, 4, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(30):  # several epochs: every rank follows the same global order
        global_batch, parts = next(single), [next(r) for r in ranks]
        assert parts[0] + parts[1] == global_batch and not set(parts[0]) & set(parts[1])


def lr_curve(root: Path) -> list[float]:
    with (root / layout.TRAIN_PLOTS / "train" / "lr.tsv").open() as f:
        return [float(row["lr"]) for row in csv.DictReader(f, delimiter="\t")]


def adapter(root: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(root / layout.ADAPTER_DIR / "adapter_model.safetensors")


def train_in(root: Path, overrides: list[str], processes: int) -> None:
    write_params([*SHRUNK_OVERRIDES, *overrides], root / "params.yaml")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = [*launcher, "-m", "stages.train"] if processes > 1 else [sys.executable, "-m", "stages.train"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(trained_workspace, tmp_path):
    """Same data and schedule: the ranks split each global batch, the learning-rate curve is the
    single process's, outputs are written once, and the adapter is the single process's up to
    float summation order (the loss is normalized by the step's tokens over all ranks, so a token
    weighs the same wherever it falls)."""
    common = ["train.max_steps=12", "train.eval_every=4", "train.warmup_steps=2", "train.lora.dropout=0"]
    single = tmp_path / "single"
    shutil.copytree(trained_workspace, single)
    train_in(single, [*common, "train.batch_size=8"], processes=1)
    train_in(trained_workspace, [*common, "train.batch_size=4"], processes=2)

    assert lr_curve(trained_workspace) == pytest.approx(lr_curve(single), rel=1e-6)
    assert len(lr_curve(trained_workspace)) == 12  # one row a step: one process logged
    two, one = json.loads(layout.TRAIN_METRICS.read_text()), json.loads((single / layout.TRAIN_METRICS).read_text())
    assert two["processes"] == 2 and two["global_batch"] == one["global_batch"] == 8
    assert two["steps_run"] == one["steps_run"] == 12
    assert not [p for p in trained_workspace.rglob("*.tmp")]
    a, b = adapter(trained_workspace), adapter(single)
    assert a.keys() == b.keys()
    worst = max(float(abs(a[n] - b[n]).max()) / (float(abs(b[n]).max()) or 1.0) for n in a)
    assert worst <= 1e-3, worst

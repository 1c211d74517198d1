"""The DAG as users drive it: `dvc repro` in a copy of this repository, on the shrunk profile."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.common.params import REPO_ROOT
from stages.common.rungs import RUNGS
from tests.conftest import SHRUNK_OVERRIDES

pytestmark = pytest.mark.slow

STAGES_AFTER_TRAIN = {"train", "export", "quant_int8", "quant_int4", "harness", "gates",
                      *(f"evaluate@{r}" for r in RUNGS if r != "torch_base")}


def sh(repo: Path, *cmd: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(repo), "PROGRESS": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def stale(repo: Path, *overrides: str) -> set[str]:
    sh(repo, sys.executable, "-m", "stages.common.params", *SHRUNK_OVERRIDES, *overrides)
    return set(json.loads(sh(repo, "dvc", "status", "--json")))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the tracked files, as a fresh clone has them, with the shrunk DAG reproduced."""
    repo = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO_ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, repo / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, check=True)
    stale(repo)
    sh(repo, "dvc", "repro")
    return repo


def test_dag_lists_every_stage(repo):
    dag = sh(repo, "dvc", "dag")
    for stage in ("base", "dedup", "train", "export", "quant_int8", "quant_int4", "evaluate@onnx_int4", "gates"):
        assert stage in dag


def test_repro_after_repro_does_nothing(repo):
    assert stale(repo) == set()
    out = sh(repo, "dvc", "repro")
    assert "Running stage" not in out


def ran(repo: Path) -> set[str]:
    """The stages `dvc repro` actually ran (not those it found unchanged)."""
    out = sh(repo, "dvc", "repro")
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def test_each_param_reruns_its_stage_and_what_follows(repo):
    """`dvc status` marks only the stage whose param changed (nothing before it); `dvc repro`
    then runs it and what depends on its outputs. Overrides accumulate, one change at a time."""
    overrides = ["quant_int4.block_size=32"]  # the default is 16
    assert stale(repo, *overrides) == {"quant_int4"}
    assert ran(repo) == {"quant_int4", "evaluate@onnx_int4", "evaluate@onnx_adapter_int4", "harness", "gates"}

    overrides.append("train.kl_beta=0.2")
    assert stale(repo, *overrides) == {"train"}
    assert ran(repo) == STAGES_AFTER_TRAIN

    overrides += ["dedup.candidates=0.9"]  # a stricter candidate index finds fewer pairs: a new output
    assert stale(repo, *overrides) == {"dedup"}
    assert ran(repo) == {"dedup", *STAGES_AFTER_TRAIN}


def test_editing_shared_code_reruns_the_stages_that_import_it(repo):
    """Code deps are derived from imports (tests/test_dag.py); here DVC acts on them: an edit to
    load_causal_lm's module makes every stage that imports it stale, the torch rungs included,
    and nothing else. Reverted, the DAG is up to date again (DVC compares content hashes)."""
    path = repo / "stages/common/checkpoint.py"
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        changed = set(json.loads(sh(repo, "dvc", "status", "--json")))
        assert {"evaluate@torch_base", "evaluate@torch_lora", "base", "train", "export"} <= changed
        assert "dedup" not in changed and "gates" not in changed
        dry = sh(repo, "dvc", "repro", "--dry")
        assert "Running stage 'evaluate@torch_base'" in dry and "Running stage 'evaluate@torch_lora'" in dry
    finally:
        path.write_text(original)
    assert set(json.loads(sh(repo, "dvc", "status", "--json"))) == set()


def test_a_queued_experiment_runs_and_shows_its_metrics(repo):
    """`dvc exp run --queue` recomposes params.yaml from conf/ (Hydra), so the shrunk settings go
    in as -S overrides along with the swept one; the queue runs it in a temporary copy."""
    shrunk_flags = [flag for o in SHRUNK_OVERRIDES for flag in ("-S", o)]
    sh(repo, "dvc", "exp", "run", "--queue", *shrunk_flags, "-S", "train.lora.r=4", "-S", "train.kl_beta=0.3")
    sh(repo, "dvc", "queue", "start", "--jobs", "1")
    deadline = time.monotonic() + 600
    while "Queued" in (status := sh(repo, "dvc", "queue", "status")) or "Running" in status:
        assert time.monotonic() < deadline, status
        time.sleep(3)
    sh(repo, "dvc", "queue", "stop")
    assert "Success" in status, status
    experiments = [rev for commit in json.loads(sh(repo, "dvc", "exp", "show", "--json"))
                   for group in commit.get("experiments") or [] for rev in group["revs"]]
    data = experiments[0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["lora"]["r"] == 4
    assert data["params"]["params.yaml"]["data"]["train"]["kl_beta"] == 0.3
    for metric_file in ("metrics/train.json", "metrics/eval/onnx_int4.json", "metrics/gates.json"):
        assert data["metrics"][metric_file]["data"], metric_file


def test_review_pairs_two_revisions_on_their_committed_items(repo):
    """A commit that changes train.kl_beta: `make review` pairs its per-item files with the
    previous commit's and prints an interval for each gated metric."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    sh(repo, *git, "add", "-A")
    sh(repo, *git, "commit", "-qm", "before", "--allow-empty")
    stale(repo, "train.kl_beta=0.05", "train.lr=5e-3")
    sh(repo, "dvc", "repro")
    sh(repo, *git, "add", "-A")
    sh(repo, *git, "commit", "-qm", "beta 0.05")
    venv = Path(sys.executable).parent.parent
    out = sh(repo, "make", "--no-print-directory", "review", "REV=HEAD~1", f"VENV={venv}")
    rows = [line for line in out.splitlines() if line.startswith("| torch_lora | general_ppl |")]
    assert rows and "paired" in rows[0], out[:3000]
    before, after = (float(x) for x in rows[0].split("|")[3:5])
    assert before != after  # the new beta moved it, and the row shows both revisions
    assert "| onnx_int4 | kl |" in out and "# Release gates:" in out and "## All metrics vs HEAD~1" in out


def test_a_failing_verdict_is_recorded_and_make_repro_fails(repo):
    """A FAIL is a result: `dvc repro` keeps gates.json and gates.md with the failing rows, and
    `make repro` (dvc repro, then the enforcing step) still exits non-zero."""
    venv = Path(sys.executable).parent.parent  # the installed .venv: make must not build another
    env = {**os.environ, "PROGRESS": "0", "COLUMNS": "300"}
    failing = " ".join([*SHRUNK_OVERRIDES, "gates.strict=true", "gates.onnx_int4.max_kl=0"])
    done = subprocess.run(["make", "repro", f"VENV={venv}", f"OVERRIDES={failing}"], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "FAIL: onnx_int4 kl value vs onnx_fp32" in done.stdout + done.stderr
    verdict = json.loads((repo / "metrics/gates.json").read_text())
    assert verdict["passed"] is False
    assert any(c["verdict"] == "FAIL" and c["metric"] == "kl" and c["rung"] == "onnx_int4" for c in verdict["details"])
    assert "**FAIL**" in (repo / "reports/gates.md").read_text()
    assert stale(repo) == {"gates"}  # the shrunk params again: only the verdict is out of date
    sh(repo, "dvc", "repro", "gates")


def test_a_sweep_with_a_bad_value_in_its_grid_queues_nothing(repo):
    venv = Path(sys.executable).parent.parent
    done = subprocess.run(["make", "sweep", f"VENV={venv}", "R=4,0", "BETA=0.3"], cwd=repo,  # wide: one line each
                          env={**os.environ, "PROGRESS": "0", "COLUMNS": "300"}, capture_output=True, text=True)
    assert done.returncode != 0
    assert "train.lora.r=0" in done.stdout + done.stderr and "nothing queued" in done.stdout + done.stderr
    assert "Queued" not in sh(repo, "dvc", "queue", "status")
    assert "dvc exp run --queue" not in done.stdout  # make stopped before the queue

"""The real ladder's pipeline folder (pipelines/smollm2/): generated from the root dvc.yaml, its
stages read the repository's code and data but write only inside the folder, and its params
are conf/ composed with pipeline=smollm2."""

from __future__ import annotations

from pathlib import Path

import yaml

from stages.common.params import REPO_ROOT, compose
from stages.common.schema import check_params
from tools.pipeline_folder import bodies, folder_dvc_yaml, stage_outputs


def test_the_committed_folder_is_what_the_generator_writes():
    committed = (REPO_ROOT / "pipelines/smollm2/dvc.yaml").read_text()
    assert committed == folder_dvc_yaml("smollm2"), "run `python -m tools.pipeline_folder smollm2`"


def test_its_stages_read_the_repository_and_write_only_inside_the_folder():
    root = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    folder = yaml.safe_load(folder_dvc_yaml("smollm2"))["stages"]
    assert list(folder) == list(root)
    outputs = stage_outputs(folder)
    assert stage_outputs(root) == outputs  # the same relative outputs, inside the folder
    for stage in bodies(folder):
        for dep in stage["deps"]:
            if dep.startswith("../../"):  # a repository file: it exists there, and no stage writes it
                assert (REPO_ROOT / dep[6:]).exists(), dep
                assert not any(dep[6:].startswith(o) for o in outputs), dep
            else:  # an output of the folder's own stages, or a path from its params.yaml
                assert dep.startswith("${") or any(dep.startswith(o) for o in outputs), dep
    # evaluate's per-rung outputs feed gates inside the folder, not the root ladder's
    assert "metrics/eval/items/onnx_int4.json" in folder["gates"]["deps"]


def test_its_params_are_the_profile_reading_the_data_two_levels_up():
    cfg = compose(["pipeline=smollm2"])
    check_params(cfg, "pipeline=smollm2")
    assert cfg.model.name == "smollm2" and cfg.model.gguf and not cfg.model.build and cfg.model.path is None
    for key in ("train", "general_task_train", "general_corpus", "safety_train", "ground_truth"):
        path = Path("pipelines/smollm2") / cfg.data[key]
        assert (REPO_ROOT / path).resolve().is_file(), key
    for name, path in cfg.data.eval.items():
        assert (REPO_ROOT / "pipelines/smollm2" / path).resolve().is_file(), name
    for kind in ("families", "external"):
        for key in ("records", "truth"):
            assert (REPO_ROOT / "pipelines/smollm2" / cfg.dedup.benchmark[kind][key]).resolve().is_file()
    # the embedded default is untouched by the pipeline group
    assert compose([]).data.raw_dir == "data/raw"


def test_the_root_pipeline_never_collects_the_folder():
    """A DVC subrepo: `dvc repro` at the root (make repro, every sweep) leaves the real ladder alone."""
    import subprocess

    assert (REPO_ROOT / "pipelines/smollm2/.dvc/config").is_file()
    listed = subprocess.run(["dvc", "stage", "list"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "base" in listed.stdout and "smollm2" not in listed.stdout
    inside = subprocess.run(["dvc", "stage", "list"], cwd=REPO_ROOT / "pipelines/smollm2", capture_output=True,
                            text=True, check=True)
    assert inside.stdout.split()[0] == "base" and "gates" in inside.stdout

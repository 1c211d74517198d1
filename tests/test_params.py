from pathlib import Path

import pytest
import yaml

from stages.common.errors import PipelineError
from stages.common.params import REPO_ROOT, compose, load_params, required, write_params


def test_params_yaml_is_the_composition_of_conf(tmp_path):
    """params.yaml is generated: byte-identical to what DVC's own Hydra composition writes."""
    from dvc.utils.hydra import compose_and_dump

    dvc_out = tmp_path / "dvc.yaml"
    compose_and_dump(dvc_out, str(REPO_ROOT / "conf"), None, "config", str(REPO_ROOT / "conf"), [])
    ours = tmp_path / "params.yaml"
    write_params([], ours)
    assert ours.read_bytes() == dvc_out.read_bytes()
    committed = (REPO_ROOT / "params.yaml").read_text()
    assert committed == ours.read_text(), "params.yaml is stale: run `make params` and commit it"


def test_every_stage_reads_declared_params_only():
    """Each dvc.yaml stage lists params that exist in params.yaml."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = params
            for part in str(key).split("."):
                assert part in node, f"stage {name} declares {key}, absent from params.yaml"
                node = node[part]


def test_cli_overrides_and_typos(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params([], Path("params.yaml"))
    cfg = load_params(["train.kl_beta=0.25", "train.lora.r=4"])
    assert cfg.train.kl_beta == 0.25 and cfg.train.lora.r == 4
    with pytest.raises(PipelineError, match="unknown parameter"):
        load_params(["train.kl_betta=0.1"])
    with pytest.raises(PipelineError, match="key.sub=value"):
        load_params(["train.kl_beta"])


def test_group_switch_and_required_path():
    cfg = compose(["model=phi4_mini"])
    assert cfg.model.dtype == "bfloat16" and cfg.train.gradient_checkpointing is True
    with pytest.raises(PipelineError, match="model.path is required"):
        required(cfg, "model.path")
    cfg = compose(["model=phi4_mini", "model.path=/ckpt"])
    assert required(cfg, "model.path") == "/ckpt"

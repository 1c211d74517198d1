"""Parameters: conf/ (Hydra) is the source, params.yaml the composed copy every stage reads.

`dvc exp run` composes conf/ into params.yaml itself (hydra.enabled in .dvc/config); `make params`
does the same (resolve, then OmegaConf.to_yaml, as dvc.utils.hydra.compose_and_dump does), and a
test holds the two byte-identical. Stages read params.yaml
and accept dotted overrides on the command line for debugging:

    python -m stages.train train.kl_beta=0.1 train.lora.r=4
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from stages.common.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
PARAMS_FILE = Path("params.yaml")


def compose(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> DictConfig:
    """conf/ composed with Hydra overrides (group switches like `model=phi4_mini` included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def write_params(overrides: Sequence[str] = (), output: Path = PARAMS_FILE, conf_dir: Path = CONF_DIR) -> None:
    """Compose conf/ into params.yaml, the same bytes `dvc exp run` writes."""
    from stages.common.atomic import write_text

    write_text(output, OmegaConf.to_yaml(compose(overrides, conf_dir)))


def load_params(argv: Sequence[str] | None = None, path: Path = PARAMS_FILE, conf_dir: Path = CONF_DIR) -> DictConfig:
    """params.yaml with `key.sub=value` overrides; an unknown key is an error, not a new key, and
    so is an override that params.yaml cannot honour (`check_overrides`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run `make params` (it composes conf/ into params.yaml)")
    cfg = OmegaConf.load(path)
    OmegaConf.set_struct(cfg, True)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise PipelineError(f"overrides must look like key.sub=value, got {bad}")
    check_overrides(argv, conf_dir)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(argv))
    except ConfigKeyError as e:
        raise PipelineError(f"unknown parameter in overrides {argv}: {e.msg}") from e
    return cfg


def check_overrides(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Refuse what a merge into params.yaml would silently ignore. params.yaml is composed and
    resolved: a group choice (`data=jsonl`) means nothing to it, and a key that other values were
    interpolated from (`data.raw_dir` feeds `data.train`) would change itself and nothing else."""
    sources = interpolation_sources(conf_dir) if argv else {}
    for override in argv:
        key = override.split("=", 1)[0].lstrip("+~")
        if "." not in key and (conf_dir / key).is_dir():
            why = "is a config group choice, which params.yaml (already composed) cannot take"
        elif key in sources:
            why = (f"{key} feeds {', '.join(sorted(sources[key]))} by interpolation, which params.yaml "
                   "holds resolved, so they would not follow")
        else:
            continue
        raise PipelineError(f"override {override!r}: {why}; compose instead: `make params "
                            f"OVERRIDES='{override}'` then `dvc repro`, or `dvc exp run -S '{override}'`")


def interpolation_sources(conf_dir: Path = CONF_DIR) -> dict[str, set[str]]:
    """key -> the keys whose values interpolate it, over conf/ as composed (unresolved)."""
    import re

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
        cfg = hydra_compose(config_name="config")
    sources: dict[str, set[str]] = {}

    def walk(node: DictConfig, path: list[str]) -> None:
        for key in node:
            here = [*path, str(key)]
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                walk(child, here)
            elif OmegaConf.is_interpolation(node, key):
                for ref in re.findall(r"\$\{([^}:]+)\}", str(child._value())):
                    dots = len(ref) - len(ref.lstrip("."))
                    base = path[: len(path) - (dots - 1)] if dots else []
                    sources.setdefault(".".join([*base, ref.lstrip(".")]), set()).add(".".join(here))

    walk(cfg, [])
    return sources


def required(cfg: DictConfig, key: str) -> object:
    """A value that must be set (`???` in conf/), with an error that says how to set it."""
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if value is None or value == "???":
        raise PipelineError(f"parameter {key} is required; set it with "
                            f"`dvc exp run -S {key}=...` or `make params OVERRIDES='{key}=...'`")
    return value


def main() -> None:
    """`python -m stages.common.params [overrides]`: write params.yaml from conf/."""
    write_params(sys.argv[1:])
    print(f"wrote {PARAMS_FILE} from conf/ {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()

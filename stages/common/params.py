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
    from stages.common.schema import check_params

    cfg = compose(overrides, conf_dir)
    check_params(cfg, f"conf/ composed with {' '.join(overrides) or 'no overrides'} (nothing written)")
    write_text(output, OmegaConf.to_yaml(cfg))


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
    from stages.common.schema import check_params

    check_params(cfg, f"{path}{' with ' + ' '.join(argv) if argv else ''}")
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


def grid(sweep: Sequence[str]) -> list[list[str]]:
    """The points of a sweep written as `dvc exp run -S` takes it (Hydra's `key=a,b` grid syntax),
    each as a list of plain overrides."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes = []
    for override in OverridesParser.create().parse_overrides(list(sweep)):
        key = override.get_key_element()
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else \
            [override.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in values])
    return [list(point) for point in itertools.product(*axes)]


def check_grid(sweep: Sequence[str], conf_dir: Path = CONF_DIR) -> int:
    """Every point of a sweep composed and checked against the schema; nothing written. Raises on
    the first bad point, naming it, so that a sweep queues nothing rather than fail halfway."""
    from stages.common.schema import check_params

    points = grid(sweep)
    for point in points:
        check_params(compose(point, conf_dir), f"sweep point {' '.join(point)} (nothing queued)")
    return len(points)


def main() -> None:
    """`python -m stages.common.params [--output FILE] [overrides]`: write params.yaml from conf/.
    `python -m stages.common.params --check-grid 'train.lora.r=4,8' ...`: check a sweep's points."""
    from stages.common.runtime import get_logger

    args, output = sys.argv[1:], PARAMS_FILE
    if args[:1] == ["--output"] and len(args) > 1:  # a pipeline folder's params.yaml (make real)
        output, args = Path(args[1]), args[2:]
    try:
        if args[:1] == ["--check-grid"]:
            print(f"sweep: {check_grid(args[1:])} points, every one valid")
            return
        write_params(args, output)
    except PipelineError as e:
        get_logger(__name__).error("%s", e)
        sys.exit(2)
    print(f"wrote {output} from conf/ {' '.join(args)}".rstrip())


if __name__ == "__main__":
    main()

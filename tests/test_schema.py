"""One schema for params.yaml (stages/common/schema.py), checked at every entry.

The main test walks the schema itself: every key with a range or a list of choices gets a value
just outside it (which must fail, naming the key) and one at its edge (which must pass), so a rule
added to the schema is tested without a line here."""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path

import annotated_types as at
import pytest
from omegaconf import OmegaConf
from pydantic import AfterValidator, BaseModel

from stages.common.errors import PipelineError
from stages.common.params import REPO_ROOT, check_grid, compose, grid, load_params, write_params
from stages.common.schema import Budget, Params, check_params

# A rung whose budget holds every rule (the others are absent there: added with Hydra's `+`).
BUDGET_RUNG = "onnx_int4"


def leaf_constraints(annotation) -> tuple[list, tuple | None, str | None]:
    """(annotated_types bounds, one_of choices, Literal choices) of a field's type, unions unwrapped."""
    bounds, choices, literal = [], None, None
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        for m in meta:
            bounds += [c for c in getattr(m, "metadata", [m]) if isinstance(c, (at.Ge, at.Gt, at.Le, at.Lt))]
            if isinstance(m, AfterValidator) and hasattr(m.func, "choices"):
                choices = m.func.choices
        inner = leaf_constraints(base)
        return bounds + inner[0], choices or inner[1], inner[2]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            b, c, lit = leaf_constraints(arg)
            bounds, choices, literal = bounds + b, choices or c, literal or lit
        return bounds, choices, literal
    if origin is typing.Literal:
        return [], None, typing.get_args(annotation)
    return [], None, None


def constrained_fields(model: type[BaseModel], prefix: str) -> list[tuple[str, object]]:
    out = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        key = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += constrained_fields(annotation, f"{key}.")
            continue
        bounds = [c for c in info.metadata if isinstance(c, (at.Ge, at.Gt, at.Le, at.Lt))]
        b, choices, literal = leaf_constraints(annotation)
        choices = choices or next((m.func.choices for m in info.metadata
                                   if isinstance(m, AfterValidator) and hasattr(m.func, "choices")), None)
        if bounds or b or choices or literal:
            out.append((key, (bounds + b, choices, literal, annotation)))
    return out


def is_int(annotation) -> bool:
    return "int" in str(annotation) and "float" not in str(annotation)


def bad_and_good(bounds, choices, literal, annotation) -> tuple[object, object]:
    """A value just outside the rule and one on its edge (inclusive bounds), or a valid choice."""
    if choices or literal:
        options = choices or literal
        bad = 7 if isinstance(options[0], int) else "typo"
        return bad, next(o for o in options if o is not None)
    step = 1 if is_int(annotation) else 0.5
    lower = [(c.ge - step, c.ge) if isinstance(c, at.Ge) else (c.gt, c.gt + (1 if is_int(annotation) else 0.01))
             for c in bounds if isinstance(c, (at.Ge, at.Gt))]
    if lower:  # below every alternative's lower bound (a count or a share: `limit`), on the first one's edge
        return min(bad for bad, _ in lower), lower[0][1]
    for c in bounds:  # an upper bound alone decides the pair
        if isinstance(c, at.Ge):
            return c.ge - step, c.ge
        if isinstance(c, at.Gt):
            return c.gt, c.gt + (1 if is_int(annotation) else 0.01)
        if isinstance(c, at.Le):
            return c.le + step, c.le
        if isinstance(c, at.Lt):
            return c.lt, c.lt - (1 if is_int(annotation) else 0.01)
    raise AssertionError(f"no rule in {bounds}")


RULES = [*constrained_fields(Params, ""),
         *[(f"gates.{BUDGET_RUNG}.{k}", v) for k, v in constrained_fields(Budget, "") if k != "lm_eval"]]


COMPOSED = compose()


def with_value(key: str, value: object):
    """The composed default with one key set (added where the profile has none), as an override
    would leave it, without another Hydra composition per key (those are tested below)."""
    cfg = COMPOSED.copy()
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_the_walk_finds_the_rules_the_issue_named():
    keys = {k for k, _ in RULES}
    assert {"train.kl_beta", "train.lora.r", "quant_int4.block_size", "quant_int4.algorithm", "dedup.similarity.prompt",
            "gates.confidence", "numerics.cpu_capability", f"gates.{BUDGET_RUNG}.max_kl"} <= keys
    assert len(keys) > 60


@pytest.mark.parametrize(("key", "rule"), RULES, ids=[k for k, _ in RULES])
def test_every_constrained_key_refuses_a_bad_value_and_takes_a_good_one(key, rule):
    bad, good = bad_and_good(*rule)
    with pytest.raises(PipelineError) as err:
        check_params(with_value(key, bad))
    assert f"{key}=" in str(err.value), str(err.value)
    check_params(with_value(key, good))


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.kl_beta=-1"], "train.kl_beta=-1: Input should be greater than or equal to 0 (β >= 0: a negative β"),
    (["train.lora.r=0"], "train.lora.r=0"),
    (["quant_int4.block_size=7"], "quant_int4.block_size=7: expected one of 16, 32, 64, 128, 256"),
    (["quant_int4.algorithm=awqq"], "quant_int4.algorithm='awqq': expected one of rtn, k_quant, hqq, gptq, awq"),
    (["train.lora.r=4.5"], "train.lora.r=4.5: Input should be a valid integer"),
    (["gates.strict=yes"], "gates.strict='yes'"),
    (["+gates.onnx_int8.max_acc_dorp=0.1"], "gates.onnx_int8.max_acc_dorp=0.1: not a parameter"),
    (["+gates.onnx_int2.max_kl=0.1"], "gates.onnx_int2: not a rung with a reference"),
    (["train.general_mix=0.5", "train.replay_mix=0.5"], "train: general_mix + replay_mix + safety_mix = 1.1"),
    (["quant_int4.keep_8bit=['lm_(']"], "quant_int4.keep_8bit.0='lm_(': not a regular expression"),
    (["dedup.lsh_weights=[0.5,0.6]"], "weights must sum to 1"),
    (["model.arch.num_key_value_heads=3"], "each must divide the one before"),
    (["model=phi4_mini"], "model.path: required"),
    (["data=jsonl"], "data.raw_dir: required"),
])
def test_cross_key_rules_types_and_required_paths(overrides, message):
    with pytest.raises(PipelineError) as err:
        check_params(compose(overrides))
    assert message in str(err.value)


def test_make_params_writes_nothing_on_a_bad_value(tmp_path):
    out = tmp_path / "params.yaml"
    with pytest.raises(PipelineError, match="nothing written"):
        write_params(["train.kl_beta=-1"], out)
    assert not out.exists()
    done = subprocess.run([sys.executable, "-m", "stages.common.params", "quant_int4.block_size=7"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"})
    assert done.returncode == 2 and "quant_int4.block_size=7" in done.stderr + done.stdout
    assert not (tmp_path / "params.yaml").exists()


def test_a_stage_refuses_a_bad_params_yaml_at_its_start(tmp_path, monkeypatch):
    """`dvc exp run -S` writes params.yaml itself; the first stale stage then stops in a second."""
    monkeypatch.chdir(tmp_path)
    write_params([], Path("params.yaml"))
    with pytest.raises(PipelineError, match=r"params.yaml with train.kl_beta=-0.5: train.kl_beta=-0.5"):
        load_params(["train.kl_beta=-0.5"])
    text = Path("params.yaml").read_text().replace("candidates: 0.5", "candidates: 1.5")
    Path("params.yaml").write_text(text)
    done = subprocess.run([sys.executable, "-m", "stages.dedup"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"}, timeout=60)
    assert done.returncode == 2 and "dedup.candidates=1.5" in done.stderr + done.stdout
    assert not (tmp_path / "data").exists()


def test_a_sweep_grid_is_checked_point_by_point():
    assert grid(["train.lora.r=4,8", "train.kl_beta=0,0.2"]) == [
        ["train.lora.r=4", "train.kl_beta=0"], ["train.lora.r=4", "train.kl_beta=0.2"],
        ["train.lora.r=8", "train.kl_beta=0"], ["train.lora.r=8", "train.kl_beta=0.2"]]
    assert check_grid(["quant_int4.algorithm=rtn,awq"]) == 2
    with pytest.raises(PipelineError, match=r"sweep point train.lora.r=8 train.kl_beta=-1 \(nothing queued\)"):
        check_grid(["train.lora.r=8", "train.kl_beta=0.2,-1"])

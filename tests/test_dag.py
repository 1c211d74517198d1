"""dvc.yaml agrees with the code by construction: each stage's code deps are derived from its
imports, its params from what it reads, the rungs from stages/common/rungs.py and the outputs from
stages/common/layout.py. A test fails when one side changes without the other."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from stages.common import layout
from stages.common.params import REPO_ROOT
from stages.common.rungs import RUNGS

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
STAGES = DVC["stages"]


def module_file(module: str) -> Path | None:
    """The repository file of a `stages.*` module (a package's __init__.py), else None."""
    if not module.startswith("stages"):
        return None
    base = REPO_ROOT / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def imports(path: Path) -> frozenset[Path]:
    """Files of `stages` imported by `path`, at any depth of the file (lazy imports count), with
    the packages they pass through (`stages/common/__init__.py` runs on every common import)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                file = module_file(".".join(parts[:i]))
                if file is not None and file.stat().st_size:  # an empty __init__ runs nothing
                    found.add(file)
    return frozenset(found)


def closure(path: Path) -> set[Path]:
    seen, todo = set(), [path]
    while todo:
        file = todo.pop()
        if file not in seen:
            seen.add(file)
            todo += imports(file)
    return seen


def stage_module(stage: dict) -> Path:
    cmd = stage.get("do", stage)["cmd"]
    match = re.match(r"python -m (stages\.\w+)", cmd)
    assert match, f"unexpected cmd {cmd!r}"
    return module_file(match.group(1))


def code_deps(stage: dict) -> set[str]:
    return {str(p.relative_to(REPO_ROOT)) for p in closure(stage_module(stage))}


def declared_code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("do", stage)["deps"] if str(d).startswith("stages/")}


def code_dep_problems(name: str, stage: dict) -> list[str]:
    needed, declared = code_deps(stage), declared_code_deps(stage)
    return [f"{name}: imports {d}, not in its deps" for d in sorted(needed - declared)] + \
           [f"{name}: lists {d}, which it does not import" for d in sorted(declared - needed)]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_are_exactly_the_imports(name):
    """Editing any module a stage imports re-runs that stage (and nothing is listed for show)."""
    assert code_dep_problems(name, STAGES[name]) == []


def test_a_removed_code_dep_is_caught():
    stage = {**STAGES["evaluate"]["do"]}
    stage["deps"] = [d for d in stage["deps"] if d != "stages/common/checkpoint.py"]
    assert code_dep_problems("evaluate", stage) == ["evaluate: imports stages/common/checkpoint.py, not in its deps"]


def test_rungs_are_the_evaluate_matrix():
    matrix = STAGES["evaluate"]["foreach"]
    assert list(matrix) == list(RUNGS)
    for name, rung in RUNGS.items():
        assert matrix[name]["model"] == str(rung.folder)
        reference = RUNGS[rung.reference].folder if rung.reference else rung.folder
        assert matrix[name]["reference"] == str(reference)
    gates_deps = set(STAGES["gates"]["deps"])
    for name in RUNGS:
        assert {f"metrics/eval/{name}.json", f"metrics/eval/items/{name}.json"} <= gates_deps
    assert {str(layout.HARNESS_METRICS), str(layout.HARNESS_ITEMS_DIR)} <= gates_deps


def test_the_harness_loads_every_rung_and_pairs_with_its_items():
    deps = set(STAGES["harness"]["deps"])
    for name, rung in RUNGS.items():
        assert {str(rung.folder), f"metrics/eval/items/{name}.json"} <= deps, name


def declared_outputs() -> set[str]:
    out = set()
    for stage in STAGES.values():
        body = stage.get("do", stage)
        keys = list(stage.get("foreach", {None: None}))
        for section in ("outs", "metrics", "plots"):
            for entry in body.get(section, []):
                path = entry if isinstance(entry, str) else next(iter(entry))
                out |= {path.replace("${key}", k) if k else path for k in keys}
    return out


def test_layout_paths_are_dvc_outputs():
    """Every path layout.py names is a declared output or inside one, and every declared output
    is named in layout.py (per rung for the evaluate matrix)."""
    outputs = declared_outputs()
    paths = {str(v) for k, v in vars(layout).items() if k.isupper() and isinstance(v, Path)}
    for path in paths:
        assert any(path == o or path.startswith(o + "/") or o.startswith(path + "/") for o in outputs), path
    per_rung = {str(layout.EVAL_METRICS_DIR / f"{r}.json") for r in RUNGS} | \
               {str(layout.EVAL_ITEMS_DIR / f"{r}.json") for r in RUNGS}
    assert outputs - paths - per_rung == set()


# ------------------------------------------------------------------------------ params read
def cfg_chains(tree: ast.AST) -> set[str]:
    """Whole `cfg.a.b` chains (not their inner `cfg.a`) and `required(cfg, "a.b")` keys in `tree`."""
    found = set()
    inner_nodes = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner_nodes:
            parts, inner = [], node
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "cfg":
                found.add(".".join(reversed(parts)))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "required" and len(node.args) == 2
              and isinstance(node.args[1], ast.Constant)):
            found.add(node.args[1].value)
    return found


def params_read(stage: dict) -> set[str]:
    """What the stage's module reads from cfg, plus what shared functions it calls with cfg read."""
    module = stage_module(stage)
    functions = {}
    for file in closure(module) - {module}:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef) and "cfg" in [a.arg for a in node.args.args]:
                functions[node.name] = node
    read, todo, seen = set(), [ast.parse(module.read_text())], set()
    while todo:
        tree = todo.pop()
        read |= cfg_chains(tree)
        called = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
                 {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for name in called & set(functions) - seen:
            seen.add(name)
            todo.append(functions[name])
    return read


def longest_existing(chain: str) -> str:
    """The chain cut where params.yaml stops (attribute calls like cfg.model.get are not keys)."""
    node, kept = PARAMS, []
    for part in chain.split("."):
        if not isinstance(node, dict) or part not in node:
            break
        node, kept = node[part], [*kept, part]
    return ".".join(kept)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_reads_only_the_params_it_declares(name):
    declared = [str(k) for k in STAGES[name].get("do", STAGES[name]).get("params", [])]
    for chain in sorted(params_read(STAGES[name])):
        key = longest_existing(chain)
        assert key, f"{name} reads cfg.{chain}, which params.yaml does not have"
        assert any(key == d or key.startswith(d + ".") for d in declared), \
            f"{name} reads {key} without declaring it in dvc.yaml (declared: {declared})"

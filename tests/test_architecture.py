"""The package's shape: layers that import one way, modules of one job, a public API, tests
through public names only."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bayescale

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "bayescale"
LONG_MODULE = 500  # lines; a longer module says why in its docstring
LONG_REASON = "long because"


def test_layers_import_one_way_without_cycles_and_without_torch():
    """import-linter's contracts in pyproject.toml: the layer order, no cycles between siblings, no torch."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_the_layer_contract_catches_an_upward_import(tmp_path):
    """The contract is live: a copy of the package with one upward import (data -> inference) breaks it."""
    import shutil

    copy = tmp_path / "bayescale"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    grid = copy / "data" / "grid.py"
    grid.write_text(grid.read_text() + "\n\nfrom bayescale.inference import posterior  # noqa: E402\n")
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml")], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "bayescale.data.grid -> bayescale.inference.posterior" in result.stdout


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_a_long_module_says_why(path):
    lines = len(path.read_text().splitlines())
    if lines > LONG_MODULE:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert LONG_REASON in doc, f"{path.relative_to(REPO)} has {lines} lines and its docstring does not say why ('{LONG_REASON} ...')"


def test_public_api():
    for name in ("load_grid", "fit", "predict", "allocate", "check", "report", "law_draws", "load_posterior", "laws"):
        assert name in bayescale.__all__
        assert getattr(bayescale, name) is not None
    assert callable(bayescale.fit) and bayescale.fit.__module__ == "bayescale.inference.fit"
    with pytest.raises(AttributeError):
        bayescale.no_such_name  # noqa: B018


def test_import_has_no_side_effects():
    """``import bayescale`` sets no XLA flags and loads no JAX: that happens where sampling starts."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = "import os, sys, bayescale; print('XLA_FLAGS' in os.environ, 'jax' in sys.modules, sorted(bayescale.__all__)[:2])"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split()[:2] == ["False", "False"], result.stdout
    code = ("import os; from bayescale.inference.sampling import ensure_host_devices; n = ensure_host_devices(6); "
            "import jax; print(n, jax.local_device_count())")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["6", "6"]


def _private_uses(path: Path) -> list[str]:
    """Names starting with one underscore that a test file takes from bayescale."""
    tree = ast.parse(path.read_text())
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bayescale"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{node.module}.{alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("bayescale"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_tests_use_public_names_only():
    offenders = {str(p.relative_to(REPO)): _private_uses(p) for p in (REPO / "tests").rglob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, offenders


def test_the_private_name_scan_finds_private_names(tmp_path):
    sample = tmp_path / "test_x.py"
    sample.write_text("from bayescale.optimise import riskprog\nfrom bayescale.data.grid import _names\nriskprog._QP\n")
    assert _private_uses(sample) == ["bayescale.data.grid._names", "riskprog._QP"]

"""Behaviour is pinned: every command's JSON on the shipped grids equals the golden files
recorded before the refactor into layers and law families (numbers to 1e-9 relative, same
seeds). Slow: seven short fits, in a process with XLA pinned to AVX2 (about 8 minutes on 2 cores); CI runs it."""

from __future__ import annotations

import json

import pytest

from tests.golden import commands


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    # Other numeric libraries give other numbers (or a command that no longer succeeds): say so
    # plainly instead of failing on the first changed digit.
    if (why := commands.version_mismatch()) is not None:
        pytest.fail(why)
    return commands.run_all_pinned(tmp_path_factory.mktemp("golden"))


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"fit_{name}" for name in commands.FITS] + list(commands.COMMANDS))
def test_command_output_equals_its_golden_file(outputs, name):
    expected = json.loads((commands.GOLDEN / f"{name}.json").read_text())
    diffs = commands.differences(expected, commands.strip_volatile(outputs[name]))
    assert not diffs, f"{name}: {len(diffs)} differences, first {diffs[:5]}"


def test_the_comparison_sees_a_change_beyond_the_tolerance():
    assert commands.differences({"a": [1.0, {"b": 2.0}]}, {"a": [1.0, {"b": 2.0 * (1 + 1e-10)}]}) == []
    assert commands.differences({"a": [1.0, {"b": 2.0}]}, {"a": [1.0, {"b": 2.0 * (1 + 1e-8)}]}) != []
    assert commands.differences({"a": 1}, {"a": 1, "c": 2}) == ["/c: unexpected"]
    assert commands.differences({"s": "x"}, {"s": "y"}) == ["/s: 'y' != 'x'"]
    # A duality gap is zero to the solver's tolerance; the same size elsewhere is a change.
    assert commands.differences({"gap": 1e-13}, {"gap": 3e-13}) == []
    assert commands.differences({"gap": 1e-13}, {"gap": 1e-6}) != []
    assert commands.differences({"allocation": 1e-13}, {"allocation": 3e-13}) != []


def test_the_pin_keeps_the_callers_own_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert commands.pinned_env()["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", commands.PINNED_XLA_FLAGS]


def test_constraints_pin_the_versions_that_recorded_the_golden_files():
    pins = {}
    for line in (commands.REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    recorded = json.loads(commands.RECORDED_WITH.read_text())
    assert set(recorded) == set(commands.NUMERIC_PACKAGES)
    assert {name: pins.get(name) for name in commands.NUMERIC_PACKAGES} == recorded


def test_a_moved_version_is_named(monkeypatch):
    recorded = json.loads(commands.RECORDED_WITH.read_text())
    monkeypatch.setattr(commands, "installed_versions", lambda: {**recorded, "jax": "99.0"})
    why = commands.version_mismatch()
    assert why is not None and f"jax {recorded['jax']} -> 99.0" in why and "constraints.txt" in why
    monkeypatch.setattr(commands, "installed_versions", lambda: dict(recorded))
    assert commands.version_mismatch() is None

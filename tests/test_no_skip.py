"""Under BAYESCALE_NO_SKIP=1 (set by .ci/run) a skipped test fails: in CI every test must run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SKIPPING = '''
import pytest

def test_runs():
    assert True

@pytest.mark.skipif(True, reason="the browser is not installed")
def test_marked():
    pass

def test_called():
    pytest.skip("no data folder")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
'''

MODULE_SKIP = '''
import pytest
pytest.skip("nothing here", allow_module_level=True)
'''


def run_inner(tmp_path: Path, flag: str | None, module: str = SKIPPING) -> subprocess.CompletedProcess:
    tests = tmp_path / "tests"
    tests.mkdir(exist_ok=True)
    (tests / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tests / "test_inner.py").write_text(module)
    env = {k: v for k, v in os.environ.items() if k != "BAYESCALE_NO_SKIP"}
    if flag is not None:
        env["BAYESCALE_NO_SKIP"] = flag
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts=",
                           str(tests)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


def test_skips_fail_only_where_every_test_must_run(tmp_path):
    relaxed = run_inner(tmp_path, None)
    assert relaxed.returncode == 0, relaxed.stdout[-2000:]
    assert "1 passed, 2 skipped, 1 xfailed" in relaxed.stdout, relaxed.stdout[-2000:]

    strict = run_inner(tmp_path, "1")
    assert strict.returncode == 1, strict.stdout[-2000:]
    assert "the browser is not installed" in strict.stdout and "no data folder" in strict.stdout, strict.stdout[-3000:]
    # the passing test passes and the expected failure stays expected
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in strict.stdout, strict.stdout[-2000:]  # a setup skip: an error


def test_a_module_that_skips_itself_stops_the_run_where_every_test_must_run(tmp_path):
    assert run_inner(tmp_path, None, MODULE_SKIP).returncode == 5  # pytest: no tests ran
    strict = run_inner(tmp_path, "1", MODULE_SKIP)
    assert strict.returncode == 2 and "nothing here" in strict.stdout, strict.stdout[-2000:]

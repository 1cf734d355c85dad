"""The QP layer's solvers print nothing to stdout (``--json -`` pipes it), HiGHS included."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PROBLEM = """
import cvxpy as cp
x = cp.Variable(3)
problem = cp.Problem(cp.Minimize(cp.sum_squares(x - 1)), [cp.sum(x) <= 1, x >= 0])
"""


def run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=env)


def test_a_highs_solve_prints_nothing_to_stdout():
    proc = run(PROBLEM + """
from bayescale.optimise.qp import solve_with
print("start", flush=True)
for _ in range(2):
    solve_with(problem, "HIGHS")
print(problem.status, round(problem.value, 6))
""")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the minimum of |x - 1|^2 on the simplex-like set sum(x) <= 1, x >= 0: x = 1/3 each, 3 (2/3)^2
    assert proc.stdout == "start\noptimal 1.333333\n", proc.stdout


def test_without_it_highs_prints_its_banner_to_stdout():
    """Why quiet_highs exists: cvxpy's own options do not stop the banner (it comes first)."""
    proc = run(PROBLEM + """
problem.solve(solver="HIGHS", output_flag=False, log_to_console=False)
""")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HiGHS" in proc.stdout

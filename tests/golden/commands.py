"""The commands whose JSON output is pinned as golden files, and how to run them.

Golden files hold what every command printed as JSON on the shipped grids before a
refactor; after it, the same commands with the same seeds must give the same JSON
(numbers equal to ``RTOL`` relative). Re-record only when a change of behaviour is
intended, and say so in the commit:

    .venv/bin/python -m tests.golden.commands --record

Fits are short (2 chains x 150 + 150 draws) so the whole set runs in a few minutes;
the numbers only have to be reproducible, not converged.

The commands run in a process of their own with XLA's CPU code generation held to AVX2
(``PINNED_XLA_FLAGS``): float32 NUTS trajectories depend on the instructions XLA picks for
the host (measured: the mixing fit's leapfrog count was 119,316 with AVX-512, 120,660 with
AVX2 and 126,036 with AVX on one machine, and 95,060 on the machine that recorded the files),
so unpinned golden files hold only on the CPU that wrote them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "files"
INPUTS = Path(__file__).resolve().parent / "inputs"
PHANTOM = REPO / "data" / "grids" / "phantom-mae.nc"
SIMULATED = REPO / "data" / "grids" / "default.nc"
MIXING = INPUTS / "mixing.nc"
RTOL = 1e-9
#: The packages whose versions move the golden numbers (a new jax moves a NUTS trajectory); --record
#: writes the installed ones to RECORDED_WITH, and constraints.txt must pin the same.
NUMERIC_PACKAGES = ("jax", "jaxlib", "numpyro", "numpy", "scipy", "cvxpy", "clarabel", "arviz", "xarray")
RECORDED_WITH = Path(__file__).resolve().parent / "recorded_with.json"
# Figures XLA reduces in float32 in an order that may vary run to run (measured: the SVI final loss
# moved by 1.7e-7 relative between two runs of the same command): compared at float32 precision.
FLOAT32_RTOL = {"svi_final_loss": 1e-6}
# A solver's duality gap is zero up to its tolerance (Clarabel's default 1e-8): gaps of 1e-13
# and 1.2e-13 are the same answer, so they are compared to that absolute tolerance.
ABS_TOL = {"gap": 1e-8, "relative_gap": 1e-8}
# Wall-clock figures differ run to run; they are not behaviour.
VOLATILE = {"seconds", "timings"}
# XLA's CPU code held to an instruction set every x86-64 CI machine has (see the module docstring).
PINNED_XLA_FLAGS = "--xla_cpu_max_isa=AVX2"

SHORT_FIT = ["--chains", "2", "--warmup", "150", "--draws", "150", "--no-progress"]

# name -> (argv with {tmp} for the scratch folder and {fit:NAME} for a fitted posterior, json file it writes)
FITS = {
    "phantom_transfer": ["fit", str(PHANTOM), *SHORT_FIT],
    "simulated_transfer": ["fit", str(SIMULATED), *SHORT_FIT],
    "simulated_linear": ["fit", str(SIMULATED), "--law", "linear", *SHORT_FIT],
    "simulated_independent": ["fit", str(SIMULATED), "--law", "independent", *SHORT_FIT],
    "simulated_student_t": ["fit", str(SIMULATED), "--likelihood", "student_t", *SHORT_FIT],
    "simulated_svi": ["fit", str(SIMULATED), "--method", "svi", "--svi-steps", "500", "--chains", "1", "--draws", "300", "--no-progress"],
    "mixing": ["fit", str(MIXING), "--law", "mixing", *SHORT_FIT],
}

COMMANDS = {
    "prior_only": ["fit", str(PHANTOM), "--prior-only", "--draws", "200", "--out", "{out}"],
    "predict": ["predict", "{fit:phantom_transfer}", "--alloc", "ct_abdomen=10,ct_chest=5,mri_t1_brain=3,mri_t2_abdomen=2,pet_wholebody=1",
                "--interval", "0.8", "--json", "{out}"],
    "allocate_mean": ["allocate", "{fit:phantom_transfer}", "--budget", "96", "--json", "{out}", "--uncertainty", "20"],
    "allocate_cvar": ["allocate", "{fit:phantom_transfer}", "--budget", "144", "--objective", "cvar:0.9", "--max",
                      "ct_abdomen=56,ct_chest=56,mri_t1_brain=40,mri_t2_abdomen=24,pet_wholebody=12", "--budgets", "36,72",
                      "--json", "{out}", "--uncertainty", "20"],
    "allocate_worst_weights": ["allocate", "{fit:phantom_transfer}", "--budget", "60", "--objective", "worst", "--weights",
                               "ct_abdomen=2,pet_wholebody=1,mri_t1_brain=0.5", "--normalise", "--json", "{out}", "--uncertainty", "0"],
    "allocate_minimax": ["allocate", "{fit:phantom_transfer}", "--budget", "80", "--objective", "minimax:cvar:0.8", "--normalise",
                         "--json", "{out}", "--uncertainty", "0", "--no-baselines"],
    "allocate_constraints": ["allocate", "{fit:phantom_transfer}", "--budget", "100", "--cost", "pet_wholebody=3,mri_t1_brain=2",
                             "--min", "ct_chest=5", "--fixed", "mri_t2_abdomen=8", "--group", "ct_*>=0.3", "--integer",
                             "--temperature", "2", "--json", "{out}", "--uncertainty", "20"],
    "allocate_chance": ["allocate", "{fit:simulated_transfer}", "--budget", "500", "--chance", "mri_t2_abdomen<={q:0.9}@0.8",
                        "--json", "{out}", "--uncertainty", "0"],
    "allocate_min_budget": ["allocate", "{fit:simulated_transfer}", "--min-budget", "--chance", "ct_abdomen<={q:0.95}@0.8",
                            "--json", "{out}", "--uncertainty", "0"],
    "check_phantom": ["check", "{fit:phantom_transfer}", str(PHANTOM), "--json", "{out}"],
    "check_simulated_laws": ["check", "{fit:simulated_transfer}", str(SIMULATED), "--laws", "transfer,independent",
                             "--chains", "2", "--warmup", "150", "--draws", "150", "--json", "{out}"],
    "check_holdout_above": ["check", "{fit:simulated_transfer}", str(SIMULATED), "--holdout-above", "32", "--chains", "2",
                            "--warmup", "150", "--draws", "150", "--json", "{out}"],
    "check_mixing": ["check", "{fit:mixing}", str(MIXING), "--json", "{out}"],
    "hubs": ["hubs", "{fit:phantom_transfer}", "--json", "{out}"],
    "hubs_reference": ["hubs", "{fit:simulated_linear}", "--reference-data", "40", "--json", "{out}"],
    "compare": ["compare", "{fit:simulated_transfer}", "{fit:simulated_linear}", "{fit:simulated_independent}",
                "--grid", str(SIMULATED), "--json", "{out}"],
}


def make_inputs() -> None:
    """The fixed-budget grid of the mixing law (committed; made once from a known law)."""
    from bayescale import laws, save_grid

    INPUTS.mkdir(parents=True, exist_ok=True)
    save_grid(laws.get("mixing").example_grid(seed=3), MIXING)


def posterior_summary(path: Path) -> dict:
    """What a fit command produced, as JSON: per variable mean and sd over draws, diagnostics, attrs."""
    import numpy as np

    from bayescale import load_posterior

    idata = load_posterior(path)
    post = idata["posterior"].to_dataset()
    out = {"attrs": {k: v for k, v in idata.attrs.items() if k != "grid"}, "variables": {}}
    for name in sorted(post.data_vars):
        values = np.asarray(post[name].values, dtype=np.float64)
        out["variables"][name] = {"dims": list(post[name].dims), "mean": values.mean(axis=(0, 1)).ravel().tolist(),
                                  "sd": values.std(axis=(0, 1)).ravel().tolist()}
    if "sample_stats" in idata.children:
        stats = idata["sample_stats"].to_dataset()
        out["sample_stats"] = {name: float(np.asarray(stats[name].values, dtype=np.float64).sum()) for name in sorted(stats.data_vars)}
    if "log_likelihood" in idata.children:
        out["log_likelihood_sum"] = float(np.asarray(idata["log_likelihood"]["log_loss"].values).sum())
    return _jsonable(out)


def _jsonable(value):
    """numpy scalars and arrays as plain JSON values (attrs read back from NetCDF are numpy)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def run_cli(argv: list[str]) -> str:
    from typer.testing import CliRunner

    from bayescale.cli import app

    result = CliRunner().invoke(app, argv, catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"bayescale {' '.join(argv)} exited {result.exit_code}:\n{result.output}")
    return result.output


def _quantile_threshold(fit_path: Path, target: str, q: float) -> str:
    """A chance threshold the posterior can meet with enough data: 1.3 x the q-quantile of the target's E."""
    import numpy as np

    from bayescale import law_draws, load_posterior

    draws = law_draws(load_posterior(fit_path))
    j = draws.targets.index(target)
    return f"{1.3 * float(np.quantile(draws.E[:, j], q)):.6g}"


def run_all(tmp: Path, names: list[str] | None = None) -> dict[str, dict]:
    """Run the fits, then every command, in ``tmp``; returns {name: JSON}."""
    fits: dict[str, Path] = {}
    results: dict[str, dict] = {}
    wanted_fits = set(FITS) if names is None else {n[4:] for n in names if n.startswith("fit_")} | _fits_needed(names)
    for name, argv in FITS.items():
        if name not in wanted_fits:
            continue
        path = tmp / f"{name}.nc"
        run_cli([*argv, "--out", str(path)])
        fits[name] = path
        if names is None or f"fit_{name}" in names:
            results[f"fit_{name}"] = posterior_summary(path)
    for name, argv in COMMANDS.items():
        if names is not None and name not in names:
            continue
        out = tmp / f"{name}.json"
        run_cli([_fill(a, fits, out) for a in argv])
        # Paths name the scratch folder and the checkout, which differ run to run.
        text = out.read_text().replace(str(tmp), "{tmp}").replace(str(REPO), "{repo}")
        results[name] = _jsonable(json.loads(text))
    return results


def _fits_needed(names) -> set[str]:
    need = set()
    for name in names:
        for arg in COMMANDS.get(name, []):
            if arg.startswith("{fit:"):
                need.add(arg[5:-1])
        if name.startswith("allocate_chance") or name.startswith("allocate_min_budget"):
            need.add("simulated_transfer")
    return need


def _fill(arg: str, fits: dict[str, Path], out: Path) -> str:
    if arg == "{out}":
        return str(out)
    if arg.startswith("{fit:"):
        return str(fits[arg[5:-1]])
    if "{q:" in arg:
        head, rest = arg.split("{q:")
        q, tail = rest.split("}")
        target = head.split("<=")[0]
        return head + _quantile_threshold(fits["simulated_transfer"], target, float(q)) + tail
    return arg


def strip_volatile(value):
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def differences(expected, actual, where: str = "", rtol: float = RTOL, atol: float = 1e-300) -> list[str]:
    """Every place where two JSON values differ (numbers beyond ``rtol`` relative and ``atol`` absolute)."""
    out: list[str] = []
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                out.append(f"{where}/{key}: missing")
            elif key not in expected:
                out.append(f"{where}/{key}: unexpected")
            else:
                out += differences(expected[key], actual[key], f"{where}/{key}", max(rtol, FLOAT32_RTOL.get(key, 0.0)),
                                   max(atol, ABS_TOL.get(key, 0.0)))
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            out.append(f"{where}: length {len(actual)} != {len(expected)}")
        else:
            for i, (e, a) in enumerate(zip(expected, actual)):
                out += differences(e, a, f"{where}[{i}]", rtol, atol)
    elif isinstance(expected, (int, float)) and isinstance(actual, (int, float)) and not isinstance(expected, bool):
        e, a = float(expected), float(actual)
        if not (math.isnan(e) and math.isnan(a)) and not math.isclose(e, a, rel_tol=rtol, abs_tol=atol):
            out.append(f"{where}: {a!r} != {e!r}")
    elif expected != actual:
        out.append(f"{where}: {actual!r} != {expected!r}")
    return out


def installed_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in NUMERIC_PACKAGES}


def version_mismatch() -> str | None:
    """Why this environment cannot reproduce the golden files (None where it can)."""
    recorded, now = json.loads(RECORDED_WITH.read_text()), installed_versions()
    moved = [f"{name} {recorded.get(name)} -> {now[name]}" for name in NUMERIC_PACKAGES if recorded.get(name) != now[name]]
    if not moved:
        return None
    return (f"the golden files were recorded with other versions ({', '.join(moved)}): install with "
            f"make (pip -c constraints.txt), or re-record them and update constraints.txt")


def pinned_env() -> dict[str, str]:
    """This process's environment with XLA's CPU instruction set pinned (read when JAX starts)."""
    flags = os.environ.get("XLA_FLAGS", "")
    return {**os.environ, "XLA_FLAGS": f"{flags} {PINNED_XLA_FLAGS}".strip()}


def run_all_pinned(tmp: Path) -> dict[str, dict]:
    """:func:`run_all` in a fresh process whose XLA starts pinned (the caller's JAX may already run)."""
    subprocess.run([sys.executable, "-m", "tests.golden.commands", "--dump", str(tmp)], cwd=REPO, env=pinned_env(),
                   check=True)
    return json.loads((tmp / "results.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the golden files")
    parser.add_argument("--inputs", action="store_true", help="(re)make the committed input grids first")
    parser.add_argument("--dump", type=Path, help="run every command in this folder and write results.json there")
    args = parser.parse_args(argv)
    if PINNED_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
        # JAX has not started in this process yet: start again with the pinned flags.
        os.execve(sys.executable, [sys.executable, "-m", "tests.golden.commands", *(argv or sys.argv[1:])], pinned_env())
    if args.dump:
        results = run_all(args.dump)
        (args.dump / "results.json").write_text(json.dumps(results, allow_nan=True))
        return 0
    if args.inputs or not MIXING.is_file():
        make_inputs()
    tmp = Path(tempfile.mkdtemp(prefix="bayescale-golden-"))
    try:
        results = run_all(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.record:
        RECORDED_WITH.write_text(json.dumps(installed_versions(), indent=1) + "\n")
    failed = 0
    for name, value in results.items():
        path = GOLDEN / f"{name}.json"
        value = strip_volatile(value)
        if args.record:
            GOLDEN.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value, indent=1, sort_keys=True, allow_nan=True) + "\n")
            continue
        diffs = differences(json.loads(path.read_text()), value)
        if diffs:
            failed += 1
            print(f"{name}: {len(diffs)} differences, e.g. {diffs[:3]}")
    print(f"{len(results)} golden outputs {'recorded' if args.record else 'compared'}; {failed} differ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

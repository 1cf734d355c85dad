"""The Ray executor on a real local Ray cluster (not a mock): two tiny runs, same results as local."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("nibabel")

import xarray as xr  # noqa: E402

from bayescale.data.grid import load_grid  # noqa: E402
from tests.trainers.test_domains import TINY_CONFIG, write_config, write_dataset  # noqa: E402
from trainers.run import train_grid  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

TWO_RUNS = TINY_CONFIG.replace("fit_budgets = [1, 2]\nmixtures_per_budget = 1", "fit_budgets = [1]\nmixtures_per_budget = 0\ndomains = [\"ct_a\", \"pet_c\"]")


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not importable; install the [ray] extra to test the Ray executor")
    if ray.is_initialized():
        ray.shutdown()
    # The workers import trainers from the repository (it is not an installed package here).
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    yield ray
    ray.shutdown()


def test_ray_executor_trains_two_runs_like_the_local_executor(tmp_path, ray_cluster):
    write_dataset(tmp_path)
    config = write_config(tmp_path, TWO_RUNS)
    from io import StringIO

    from rich.console import Console

    shown = StringIO()
    result = train_grid(config, tmp_path / "ray.nc", executor="ray", progress=True, console=Console(file=shown, width=120))
    assert "done single-ct_a-n001-s0" in shown.getvalue()
    assert result.trained == 2 and result.runs == 2
    ray_grid = load_grid(tmp_path / "ray.nc")
    assert sorted(ray_grid["run"].values) == ["single-ct_a-n001-s0", "single-pet_c-n001-s0"]
    assert ray_cluster.is_initialized()  # the executor leaves a cluster it did not start alone
    records = sorted((tmp_path / "ray.nc.records").glob("*.json"))
    assert len(records) == 2
    # rerunning skips both
    again = train_grid(config, tmp_path / "ray.nc", executor="ray", progress=False)
    assert again.trained == 0 and again.skipped == 2
    # the same runs in this process give the same losses (fixed threads and seeds per run)
    train_grid(config, tmp_path / "local.nc", executor="local", workers=1, progress=False)
    local_grid = load_grid(tmp_path / "local.nc")
    xr.testing.assert_identical(ray_grid[["data", "loss", "loss_se"]], local_grid[["data", "loss", "loss_se"]])


@pytest.mark.slow
def test_bayescale_train_on_ray_as_a_new_user_runs_it_prints_no_warnings_or_banners(tmp_path):
    """A fresh process starts its own local cluster. Its workers get read-only arrays from Ray's
    object store, which torch warned about from every worker; Ray's INFO banner is not ours either."""
    write_dataset(tmp_path)
    config = write_config(tmp_path, TWO_RUNS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-m", "bayescale.cli", "train", str(config), "--out", str(tmp_path / "g.nc"),
                           "--executor", "ray", "--workers", "2", "--no-progress"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert sorted(load_grid(tmp_path / "g.nc")["run"].values) == ["single-ct_a-n001-s0", "single-pet_c-n001-s0"]
    assert "not writable" not in output and "Started a local Ray instance" not in output, output[-3000:]


@pytest.mark.slow
def test_a_ray_worker_killed_mid_run_is_retried_and_the_grid_is_the_same(tmp_path, ray_cluster):
    """Ray retries a task whose worker process died (max_retries): the run is redone, not lost."""
    import signal
    import threading
    import time

    write_dataset(tmp_path)
    config = write_config(tmp_path, TWO_RUNS.replace("steps = 8", "steps = 300"))
    outcome = {}

    def train():
        try:
            outcome["result"] = train_grid(config, tmp_path / "ray.nc", executor="ray", progress=False)
        except BaseException as error:  # handed to the test below
            outcome["error"] = error

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline and thread.is_alive():
        for pid, cpu in ray_task_processes("_ray_execute"):
            if cpu > 3.0:  # training, not starting up
                victim = pid
                break
        time.sleep(0.2)
    assert victim is not None, f"no Ray worker was seen training: {outcome}"
    os.kill(victim, signal.SIGKILL)
    thread.join(900)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].trained == 2
    train_grid(config, tmp_path / "local.nc", executor="local", workers=1, progress=False)
    xr.testing.assert_identical(load_grid(tmp_path / "ray.nc")[["data", "loss", "loss_se"]],
                                load_grid(tmp_path / "local.nc")[["data", "loss", "loss_se"]])


def ray_task_processes(task: str) -> list[tuple[int, float]]:
    """(pid, CPU seconds) of the Ray worker processes running ``task`` (Ray titles them 'ray::<task>')."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if cmdline.startswith(f"ray::{task}"):
            found.append((int(entry.name), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")))
    return found

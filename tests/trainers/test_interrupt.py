"""`bayescale train` killed with SIGKILL at seeded-random points, five times, then let finish:
every run is present exactly once and the grid is identical to an uninterrupted run's.

Builds on ``test_run.py::test_kill_minus_9_then_rerun_resumes`` (one kill after the first record)
with kill points drawn at random over the whole life of the command: while it starts and reads
the volumes (and writes their cache), mid-run, between runs and while it writes the grid.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("nibabel")

import xarray as xr  # noqa: E402

from bayescale.data.grid import load_grid  # noqa: E402
from tests.bayescale.test_interrupt import Watched, child_env, cli  # noqa: E402
from tests.trainers.test_domains import TINY_CONFIG, write_config, write_dataset  # noqa: E402

KILLS = 5
STEPS = 150  # about a second per run on one thread: kills land inside runs, not only between them
CONFIG = TINY_CONFIG.replace("steps = 8", f"steps = {STEPS}").replace("seeds = [0]", "seeds = [0, 1]")


def _records(folder):
    return sorted(p.name for p in folder.glob("*.json"))


@pytest.mark.slow
def test_train_killed_five_times_at_random_points_then_finished_matches_an_uninterrupted_grid(tmp_path):
    write_dataset(tmp_path)
    config = write_config(tmp_path, CONFIG)

    # The uninterrupted grid, and how long the command takes: start-up, then each run.
    reference = tmp_path / "reference.nc"
    t0 = time.monotonic()
    done = subprocess.run(cli("train", config, "--out", reference, "--workers", "1", "--no-progress"),
                          env=child_env(), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    wall = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    expected = load_grid(reference)
    runs = [str(r) for r in expected["run"].values]
    assert len(runs) == 14 and len(set(runs)) == 14
    seconds = [json.loads(p.read_text())["seconds"]["total"] for p in (tmp_path / "reference.nc.records").glob("*.json")]
    run_seconds, startup = float(np.mean(seconds)), max(wall - sum(seconds), 1.0)

    # The same config with a cache of its own, so that start-up kills land while it is written.
    killed_config = write_config(tmp_path, CONFIG.replace('cache_dir = "cache"', 'cache_dir = "cache_killed"'), name="killed.toml")
    out = tmp_path / "killed.nc"
    records = tmp_path / "killed.nc.records"
    argv = cli("train", killed_config, "--out", out, "--workers", "1", "--no-progress")
    rng = np.random.default_rng(20240607)
    finished_at_kill = []
    for _ in range(KILLS):
        # A seeded-random point: after 0-3 more runs have finished (none: during start-up, while
        # the volumes are read and cached), then a random part of a run. At most all but one run
        # is done when it lands, so there is always something left to interrupt.
        before = len(_records(records))
        target = min(before + int(rng.integers(0, 4)), len(runs) - 2)
        train = Watched(argv, cwd=tmp_path)
        if target <= before:
            time.sleep(rng.uniform(0.2, 1.0) * startup)
        else:
            train.wait_until(lambda: len(_records(records)) >= target, 600, f"{target} finished runs")
            time.sleep(rng.uniform(0.0, 0.9) * run_seconds)
        train.signal(signal.SIGKILL)
        assert train.finish(60) == -signal.SIGKILL
        finished_at_kill.append(len(_records(records)))
        for name in _records(records):  # what is there is whole: a record is complete or absent
            assert json.loads((records / name).read_text())["run"]["id"] == name[: -len(".json")]
    assert not out.exists()  # no kill landed after the last run: the grid was never written
    assert 0 < finished_at_kill[-1] < len(runs), finished_at_kill
    print(f"records finished at each kill: {finished_at_kill} of {len(runs)}")

    final = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "Traceback" not in final.stderr
    got = load_grid(out)
    # every run exactly once: one record each, one grid row each
    assert _records(records) == sorted(f"{r}.json" for r in runs)
    assert sorted(str(r) for r in got["run"].values) == sorted(runs) and len(set(got["run"].values)) == len(runs)
    # and the same numbers as the run that was never interrupted
    got = got.sel(run=runs)
    xr.testing.assert_identical(got[["data", "loss", "loss_se", "baseline_loss"]],
                                expected[["data", "loss", "loss_se", "baseline_loss"]])
    np.testing.assert_array_equal(got["seed"].values, expected["seed"].values)

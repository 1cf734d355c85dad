"""Runs and grids: determinism, records, resume after an interruption, collect-only, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("nibabel")

import xarray as xr  # noqa: E402

from bayescale.errors import InputError  # noqa: E402
from bayescale.data.grid import load_grid  # noqa: E402
from tests.trainers.test_domains import TINY_CONFIG, write_config, write_dataset  # noqa: E402
from trainers.config import load_config  # noqa: E402
from trainers.design import RunSpec  # noqa: E402
from trainers.domains import load_manifest, prepare_data  # noqa: E402
from trainers.run import train_grid, train_run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny(tmp_path):
    write_dataset(tmp_path)
    return tmp_path, write_config(tmp_path)


def _spec(run_id="r", data=None, seed=0, steps=6):
    return RunSpec(id=run_id, data=data or {"ct_a": 2, "mri_b": 1, "pet_c": 0}, seed=seed, split="fit", kind="explicit", steps=steps)


def test_same_seed_gives_identical_losses(tiny):
    folder, path = tiny
    config = load_config(path)
    data = prepare_data(config, load_manifest(config.data.manifest, 1), folder / "cache")
    a = train_run(_spec(), data, config)
    b = train_run(_spec(), data, config)
    assert a["loss"] == b["loss"] and a["loss_se"] == b["loss_se"] and a["train_loss"] == b["train_loss"]
    assert set(a["loss"]) == {"ct_a", "mri_b", "pet_c"}
    assert all(v > 0 for v in a["loss"].values())
    assert a["baseline_loss"] == b["baseline_loss"]
    c = train_run(_spec(seed=1), data, config)
    assert c["loss"] != a["loss"]
    # the seconds say where the time went
    assert a["seconds"]["data_wait"] >= 0 and a["seconds"]["compute"] > 0


def test_read_only_volumes_train_the_same_run_without_a_warning(tiny):
    """Ray hands workers read-only arrays (its object store): the run copies them instead of
    giving torch a buffer it must not write (torch warns of undefined behaviour)."""
    import warnings

    folder, path = tiny
    config = load_config(path)
    data = prepare_data(config, load_manifest(config.data.manifest, 1), folder / "cache")
    expected = train_run(_spec(), data, config)
    for arrays in data.domains.values():
        for volume in arrays.train:
            volume.setflags(write=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not writable.*")
        again = train_run(_spec(), data, config)
    assert again["loss"] == expected["loss"] and again["train_loss"] == expected["train_loss"]


def test_grid_resumes_after_an_interruption_with_nothing_lost_or_duplicated(tiny):
    folder, path = tiny
    out_full = folder / "full.nc"
    full = train_grid(path, out_full, progress=False, workers=1)
    assert full.trained == full.runs == 2 * 3 + 1  # 3 domains x 2 budgets + 1 mixture (budget 2)
    ds_full = load_grid(out_full)

    out = folder / "resumed.nc"
    first = train_grid(path, out, progress=False, workers=1, max_runs=3)  # an interrupted grid
    assert first.trained == 3 and load_grid(out).sizes["run"] == 3
    records = folder / "resumed.nc.records"
    (records / ".single-ct_a-n001-s0.json.x1y2.tmp").write_text("{half a rec")  # a kill -9 mid-write
    second = train_grid(path, out, progress=False, workers=1)
    assert second.skipped == 3 and second.trained == full.runs - 3
    third = train_grid(path, out, progress=False, workers=1)
    assert third.trained == 0 and third.skipped == full.runs

    ds = load_grid(out)
    assert sorted(p.name for p in records.glob("*.json")) == sorted(f"{r}.json" for r in ds["run"].values)
    xr.testing.assert_identical(ds[["data", "loss", "loss_se", "baseline_loss"]], ds_full[["data", "loss", "loss_se", "baseline_loss"]])
    assert ds.attrs["loss_name"] == "mae_masked_mse" and ds.attrs["data_unit"] == "volumes"
    assert list(ds["source"].values) == ["ct_a", "mri_b", "pet_c"] == list(ds["target"].values)
    assert set(ds["split"].values) == {"fit"}
    assert np.isfinite(ds["loss"].values).all() and (ds["loss_se"].values > 0).all()

    # collect-only rebuilds the same grid from the records alone
    again = folder / "collected.nc"
    import shutil

    shutil.copytree(records, folder / "collected.nc.records")
    res = train_grid(path, again, collect_only=True, progress=False)
    assert res.trained == 0 and res.runs == full.runs
    xr.testing.assert_identical(load_grid(again), ds)


def test_collect_only_without_records_writes_nothing(tiny):
    folder, path = tiny
    with pytest.raises(InputError, match="no finished runs"):
        train_grid(path, folder / "none.nc", collect_only=True, progress=False)
    assert not (folder / "none.nc").exists()


def test_records_of_another_config_are_refused(tiny):
    folder, path = tiny
    out = folder / "g.nc"
    train_grid(path, out, progress=False, workers=1, max_runs=1)
    changed = write_config(folder, TINY_CONFIG.replace("lr = 1e-3", "lr = 2e-3"), name="changed.toml")
    with pytest.raises(InputError, match="different training config"):
        train_grid(changed, out, progress=False, workers=1)
    with pytest.raises(InputError, match="different training config"):
        train_grid(changed, out, progress=False, collect_only=True)


def test_bad_inputs_fail_before_any_training(tiny):
    folder, path = tiny
    # more volumes than a domain has (3 training volumes each)
    too_many = write_config(folder, TINY_CONFIG.replace("fit_budgets = [1, 2]", "fit_budgets = [1, 4]"), name="many.toml")
    with pytest.raises(InputError, match="asks for 4 volumes of domain 'ct_a'"):
        train_grid(too_many, folder / "many.nc", progress=False)
    assert not (folder / "many.nc.records").exists() or not list((folder / "many.nc.records").glob("*.json"))
    # a corrupt file anywhere: nothing trains, no grid
    (folder / "pet_c" / "pet_c_003.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(InputError, match="pet_c_003.nii.gz"):
        train_grid(path, folder / "bad.nc", progress=False)
    assert not (folder / "bad.nc").exists()
    assert not list((folder / "bad.nc.records").glob("*.json"))
    with pytest.raises(InputError, match="ending in .nc"):
        train_grid(path, folder / "grid.csv", progress=False)


def test_local_worker_processes_match_in_process_runs(tiny):
    folder, path = tiny
    a = train_grid(path, folder / "one.nc", progress=False, workers=1, max_runs=2)
    b = train_grid(path, folder / "two.nc", progress=False, workers=2, max_runs=2)
    assert a.trained == b.trained == 2
    xr.testing.assert_identical(load_grid(folder / "one.nc")[["loss", "loss_se"]], load_grid(folder / "two.nc")[["loss", "loss_se"]])


def test_kill_minus_9_then_rerun_resumes(tiny):
    """A real interruption: `bayescale train` killed with SIGKILL after its first record, then rerun."""
    folder, path = tiny
    text = TINY_CONFIG.replace("steps = 8", "steps = 60")
    path = write_config(folder, text, name="slow.toml")
    out = folder / "killed.nc"
    records = folder / "killed.nc.records"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "bayescale.cli", "train", str(path), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not list(records.glob("*.json")):
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    done_before = {p.name: p.read_text() for p in records.glob("*.json")}
    assert 1 <= len(done_before) < 7
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    ds = load_grid(out)
    assert ds.sizes["run"] == 7 and len(set(ds["run"].values)) == 7
    for name, text in done_before.items():  # finished runs were kept, not redone
        assert (records / name).read_text() == text
    assert json.loads(next(iter(done_before.values())))["format"] == "bayescale.trainers.record/1"


def test_a_second_train_on_the_same_records_stops_with_one_line_and_the_first_finishes(tiny):
    """A user starts `bayescale train` twice on one grid: the second stops at once (exit 2, one line
    naming the records folder and the first process); the first trains every run once, and its grid
    is the one a lone process makes."""
    folder, path = tiny
    path = write_config(folder, TINY_CONFIG.replace("steps = 8", "steps = 40"), name="twice.toml")
    out, records = folder / "twice.nc", folder / "twice.nc.records"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "bayescale.cli", "train", str(path), "--out", str(out), "--workers", "1", "--no-progress"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None and "process" not in _read(records / ".lock"):
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()[-2000:]
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and second.stdout == "", second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "twice.nc.records" in lines[0] and f"process {first.pid}" in lines[0], second.stderr
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    grid = load_grid(out)
    assert grid.sizes["run"] == 7 and len(list(records.glob("*.json"))) == 7
    alone = train_grid(path, folder / "alone.nc", progress=False, workers=1)
    xr.testing.assert_identical(grid[["data", "loss", "loss_se"]], load_grid(folder / "alone.nc")[["data", "loss", "loss_se"]])


def _read(path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_checkpoint_round_trip_reloads_the_same_model_and_refuses_foreign_files(tiny):
    import torch

    from trainers.checkpoint import checkpoint_path, load_checkpoint
    from trainers.mae import build_model

    folder, path = tiny
    config = load_config(path)
    data = prepare_data(config, load_manifest(config.data.manifest, 1), folder / "cache")
    ckpt = checkpoint_path(folder / "records", "r")
    train_run(_spec(), data, config, checkpoint=ckpt)
    payload = load_checkpoint(ckpt)
    assert payload["run"] == "r" and payload["model_config"] == config.model
    model = build_model(payload["model_config"], payload["crop"])
    model.load_state_dict(payload["state_dict"])  # strict: every key matches the architecture
    fresh = build_model(config.model, config.data.crop).state_dict()
    assert any(not torch.equal(fresh[k], payload["state_dict"][k]) for k in fresh)  # it was trained
    assert not list(ckpt.parent.glob("*.tmp"))

    # a pickle that would run code, a truncated file, a foreign dict: one-line InputErrors
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = folder / "evil.pt"
    torch.save({"format": "x", "obj": Evil()}, bad)
    with pytest.raises(InputError, match="evil.pt: not a readable checkpoint"):
        load_checkpoint(bad)
    truncated = folder / "cut.pt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(InputError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    other = folder / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(InputError, match="not a bayescale encoder checkpoint"):
        load_checkpoint(other)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent's wait is missing


def _busy_workers(parent: int, timeout: float = 240) -> list[int]:
    """The parent's worker processes once two of them are training (CPU time rising)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        busy = [p for p in _children(parent) if _cpu_seconds(p) > 3.0]
        if len(busy) >= 2:
            return busy
        time.sleep(0.2)
    raise AssertionError("no two busy workers within the time")


@pytest.mark.slow
def test_parent_killed_leaves_no_worker_and_a_killed_worker_s_run_is_redone(tiny):
    folder, path = tiny
    path = write_config(folder, TINY_CONFIG.replace("steps = 8", "steps = 200"), name="workers.toml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "bayescale.cli", "train", str(path), "--workers", "2", "--no-progress"]

    # (1) the parent killed outright: its workers go with it; the rerun gives the lone process's grid
    parent = subprocess.Popen([*cmd, "--out", str(folder / "killed.nc")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        workers = _busy_workers(parent.pid)
        everyone = _children(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
    finally:
        if parent.poll() is None:
            parent.kill()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in everyone):
        time.sleep(0.2)
    assert not [p for p in everyone if _alive(p)], f"orphaned: {[p for p in everyone if _alive(p)]} of workers {workers}"
    rerun = subprocess.run([*cmd, "--out", str(folder / "killed.nc")], env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    # (2) one worker killed: its run is redone in the same command, nothing lost
    proc = subprocess.Popen([*cmd, "--out", str(folder / "worker.nc")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        victim = max(_busy_workers(proc.pid), key=_cpu_seconds)
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]

    alone = train_grid(path, folder / "alone.nc", progress=False, workers=1)
    assert alone.runs == 7
    for name in ("killed.nc", "worker.nc"):
        grid = load_grid(folder / name)
        xr.testing.assert_identical(grid[["data", "loss", "loss_se"]], load_grid(folder / "alone.nc")[["data", "loss", "loss_se"]])


def test_gradient_clipping_changes_the_run_only_when_it_binds(tiny):
    """grad_clip: a bound above every gradient norm leaves the run bit for bit; a tiny one changes it; 0 keeps old hashes."""
    from dataclasses import replace

    from trainers.config import config_hash

    folder, path = tiny
    config = load_config(path)
    data = prepare_data(config, load_manifest(config.data.manifest, 1), folder / "cache")
    plain = train_run(_spec(), data, config)
    loose = replace(config, training=replace(config.training, grad_clip=1e9))
    tight = replace(config, training=replace(config.training, grad_clip=1e-12))
    assert train_run(_spec(), data, loose)["loss"] == plain["loss"]
    assert train_run(_spec(), data, tight)["loss"] != plain["loss"]
    # off (0, the default) is not part of the hash: records written before the option still match
    assert config.training.grad_clip == 0 and "grad_clip" not in config.results_dict()["training"]
    assert config_hash(loose, None) != config_hash(config, None) != config_hash(tight, None)
    text = path.read_text().replace("[training]\n", "[training]\ngrad_clip = -1.0\n")
    bad = folder / "bad.toml"
    bad.write_text(text)
    with pytest.raises(InputError, match="grad_clip"):
        load_config(bad)

"""Resuming finished results (bayescale._files.read_saved)."""

from __future__ import annotations

import json

import pytest

from bayescale._files import read_saved


def test_a_saved_result_is_reused_only_with_its_settings_and_the_files_beside_it(tmp_path):
    path, beside = tmp_path / "r.json", tmp_path / "r.nc"
    assert read_saved(path, {"a": 1}) is None  # nothing saved yet
    path.write_text(json.dumps({"settings": {"a": 1}, "value": 3}))
    assert read_saved(path, {"a": 1}) == {"settings": {"a": 1}, "value": 3}
    assert read_saved(path, {"a": 2}) is None  # other settings: refit
    assert read_saved(path, {"a": 1}, beside) is None  # its predictions are missing
    beside.write_text("")
    assert read_saved(path, {"a": 1}, beside)["value"] == 3


def test_a_writer_killed_mid_write_leaves_a_temporary_the_next_write_removes(tmp_path):
    """A real process killed (SIGKILL) inside an atomic write leaves its .tmp beside the target; the
    next write there removes it. A live writer's temporary, and files not bayescale's, stay."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from bayescale._files import write_text_atomic

    repo = Path(__file__).resolve().parents[2]
    target = tmp_path / "result.json"
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from bayescale._files import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"), str(target)],
        env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9
    stale = sorted(p.name for p in tmp_path.iterdir())
    assert len(stale) == 1 and stale[0].startswith(".result.json.") and stale[0].endswith(".tmp"), stale

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # a writer still running (the sleeper stands in for one), and files that are not ours
        others = [f".result.json.{live.pid}.abc123xy.tmp", ".result.json.tmp", "result.json.bak", ".other.json.1.abc.tmp"]
        for name in others:
            (tmp_path / name).write_text("keep")
        write_text_atomic(target, "full")
    finally:
        live.kill()
        live.wait()
    assert target.read_text() == "full"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + ["result.json"])


@pytest.mark.slow
def test_a_full_disk_is_one_line_with_nothing_left_and_the_rerun_completes(tmp_path, small_files):
    """A posterior (NetCDF: HDF5 reports only 'HDF error') and a JSON result (ENOSPC) written to a
    full file system: one line naming the file and the free space, exit 2, no file or temporary left;
    once there is room the same commands complete. A real tmpfs of 96 KiB (root, as in CI)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    grid_path, fit_path = small_files
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(tiny)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        commands = [
            ["fit", str(grid_path), "--out", str(tiny / "fit.nc"), "--chains", "1", "--warmup", "20", "--draws", "20",
             "--no-extrapolation", "--no-progress"],
            ["allocate", str(fit_path), "--budget", "100", "--json", str(tiny / "allocation.json")],
        ]
        filler = tiny / "filler"
        filler.write_bytes(b"\0" * (90 * 1024))  # leaves a few KiB: less than either output needs
        for args in commands:
            proc = subprocess.run([sys.executable, "-m", "bayescale.cli", *args], capture_output=True, text=True,
                                  timeout=600, env=env, cwd=tmp_path)
            assert proc.returncode == 2, proc.stderr[-2000:]
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and "no space left" in lines[0] and Path(args[args.index("--out" if "--out" in args else "--json") + 1]).name in lines[0], proc.stderr
            assert sorted(p.name for p in tiny.iterdir()) == ["filler"]
        filler.unlink()
        subprocess.run(["umount", str(tiny)], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(tiny)], check=True)
        for args in commands:
            proc = subprocess.run([sys.executable, "-m", "bayescale.cli", *args], capture_output=True, text=True,
                                  timeout=600, env=env, cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr[-2000:]
        assert sorted(p.name for p in tiny.iterdir()) == ["allocation.json", "fit.nc"]
    finally:
        subprocess.run(["umount", str(tiny)], capture_output=True)

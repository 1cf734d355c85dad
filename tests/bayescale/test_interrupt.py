"""Interrupted work: `bayescale fit` and `demo` killed mid-sampling (SIGKILL, SIGINT) leave no
output and no temporary file; SIGINT stops at once with exit status 130 and one line; the rerun
completes and its output loads.

The helpers here (a watched child process, its CPU time, folder listings) are shared with
``tests/trainers/test_interrupt.py``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bayescale.data.grid import save_grid
from bayescale.inference.posterior import load_posterior
from bayescale.data.simulate import draw_world, simulate_grid

REPO = Path(__file__).resolve().parents[2]
INTERRUPTED = "interrupted: finished outputs are kept; nothing half-written was left behind"


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "bayescale.cli", *map(str, args)]


def child_env() -> dict:
    """The command as a user runs it: numpyro hides its progress bars (which these tests watch for)
    when it sees CI or pytest-xdist in the environment, so neither is passed on."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def default_sigint() -> None:
    """In the child, before it starts: SIGINT at its default, as from a terminal. A runner started
    in the background by a shell (``cmd &``) ignores SIGINT, its children inherit that, and Python
    then installs no KeyboardInterrupt handler, so the signal these tests send would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tree(folder: Path) -> set[str]:
    """Every path under ``folder`` (hidden temporary files included), relative to it."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


class Watched:
    """A child process whose stderr is collected as it comes (progress bars included)."""

    def __init__(self, argv, cwd=None):
        self.proc = subprocess.Popen(argv, env=child_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=default_sigint)
        self.started = time.monotonic()
        self._err, self._out = bytearray(), bytearray()
        self._readers = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stderr, self._err), (self.proc.stdout, self._out))]
        for r in self._readers:
            r.start()

    @staticmethod
    def _pump(stream, buffer):
        while chunk := stream.read1(65536):
            buffer.extend(chunk)

    @property
    def stderr(self) -> str:
        return self._err.decode(errors="replace")

    @property
    def stdout(self) -> str:
        return self._out.decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the child so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_until(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.alive(), f"the command ended before {what}: {self.stderr[-2000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s: {self.stderr[-2000:]}"
            time.sleep(0.05)

    def signal(self, sig) -> None:
        assert self.alive(), f"the command ended before the signal: {self.stderr[-2000:]}"
        os.kill(self.proc.pid, sig)

    def state(self) -> str:
        """The child's scheduler state, signal masks and threads (Linux /proc): why it has not ended."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
            threads = sorted(p.name for p in Path(f"/proc/{self.proc.pid}/task").iterdir())
            wchan = {t: Path(f"/proc/{self.proc.pid}/task/{t}/wchan").read_text() for t in threads[:40]}
        except OSError as error:
            return f"(no /proc entry: {error})"
        keep = ("State", "Threads", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
        return "; ".join(line for line in status if line.startswith(keep)) + f"; wchan {wchan}"

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout:.0f}s on: {self.state()}; stderr: {self.stderr[-1500:]}") from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for r in self._readers:
            r.join(10)
        return rc


def last_line(text: str) -> str:
    """The last non-empty line of terminal output (progress bars redraw with \\r and ANSI codes)."""
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "\n", text)
    lines = [line.strip() for line in re.split(r"[\r\n]", plain) if line.strip()]
    return lines[-1] if lines else ""


def test_interruptible_work_returns_its_value_raises_its_errors_and_keeps_x64():
    import jax
    import jax.numpy as jnp

    from bayescale.errors import InputError
    from bayescale.inference.sampling import computation_abandoned, interruptible

    assert interruptible(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(InputError, match="from the worker"):
        interruptible(lambda: (_ for _ in ()).throw(InputError("from the worker")))
    with jax.enable_x64(True):
        assert interruptible(lambda: jnp.zeros(1).dtype) == np.float64
    assert interruptible(lambda: jnp.zeros(1).dtype) == np.float32
    assert not computation_abandoned()


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("interrupt") / "grid.nc"
    save_grid(simulate_grid(draw_world(3, seed=5), seed=5), path)
    return path


LONG_FIT = ["--warmup", "20000", "--draws", "20000"]  # hours: only a signal ends it


def test_fit_killed_with_sigkill_mid_sampling_leaves_nothing_and_the_rerun_completes(grid_file, tmp_path):
    rng = np.random.default_rng(7)
    out = tmp_path / "fit.nc"
    fit = Watched(cli("fit", grid_file, "--out", out, "--chains", "1", *LONG_FIT))
    fit.wait_until(lambda: "warmup" in fit.stderr, 300, "sampling")  # numpyro's progress bar: sampling began
    time.sleep(rng.uniform(0.0, 2.0))
    fit.signal(signal.SIGKILL)
    assert fit.finish(60) == -signal.SIGKILL
    assert tree(tmp_path) == set()  # no posterior, no temporary file

    rerun = subprocess.run(cli("fit", grid_file, "--out", out, "--chains", "1", "--warmup", "40", "--draws", "40", "--no-progress"),
                           env=child_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert tree(tmp_path) == {"fit.nc"}
    assert load_posterior(out)["posterior"].sizes["draw"] == 40


def test_fit_interrupted_with_sigint_stops_at_once_with_exit_130_and_one_line(grid_file, tmp_path):
    """Parallel chains sample inside one XLA call; Ctrl-C must still stop the command within seconds."""
    out = tmp_path / "fit.nc"
    fit = Watched(cli("fit", grid_file, "--out", out, "--chains", "2", *LONG_FIT))
    fit.wait_until(lambda: "Running chain" in fit.stderr, 300, "sampling")
    time.sleep(1.0)
    sent = time.monotonic()
    fit.signal(signal.SIGINT)
    rc = fit.finish(120)
    assert rc == 130, fit.stderr[-2000:]
    assert time.monotonic() - sent < 30  # not the hours the sampler had left
    assert "Traceback" not in fit.stderr and "Aborted" not in fit.stderr
    assert fit.stderr.count(INTERRUPTED) == 1 and last_line(fit.stderr) == INTERRUPTED, fit.stderr[-1000:]
    assert fit.stdout == ""
    assert tree(tmp_path) == set()


def test_sigint_without_progress_bars_is_exactly_one_line(grid_file, tmp_path):
    """With --no-progress nothing else is printed: stderr is the one line, whatever the phase."""
    out = tmp_path / "fit.nc"
    fit = Watched(cli("fit", grid_file, "--out", out, "--chains", "2", "--no-progress", "--method", "svi",
                      "--svi-steps", "10000000"))
    fit.wait_until(lambda: fit.cpu_seconds() > 15, 300, "15 CPU seconds of work")  # imports done; compiling or optimising
    fit.signal(signal.SIGINT)
    assert fit.finish(120) == 130, fit.stderr[-2000:]
    assert fit.stderr.strip().splitlines() == [INTERRUPTED]
    assert fit.stdout == "" and tree(tmp_path) == set()


@pytest.mark.slow
def test_demo_interrupted_mid_fit_keeps_nothing_half_written_and_the_rerun_completes(tmp_path):
    out = tmp_path / "demo"
    demo = Watched(cli("demo", "--out", out), cwd=REPO)
    demo.wait_until(lambda: "Running chain" in demo.stderr or "Running chain" in demo.stdout, 300, "sampling")
    demo.signal(signal.SIGINT)
    assert demo.finish(120) == 130, demo.stderr[-2000:]
    assert last_line(demo.stderr) == INTERRUPTED and "Traceback" not in demo.stderr
    assert tree(out) == set()  # the fit was the first stage: nothing finished, nothing half-written

    demo = Watched(cli("demo", "--out", out), cwd=REPO)
    demo.wait_until(lambda: (out / "fit.nc").exists(), 900, "the fit stage to finish")
    demo.signal(signal.SIGKILL)  # in a later stage
    demo.finish(60)
    assert "fit.nc" in tree(out) and load_posterior(out / "fit.nc")["posterior"].sizes["chain"] == 4

    final = subprocess.run(cli("demo", "--out", out), env=child_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "reusing" in final.stdout  # the finished fit was kept, not redone
    assert {"fit.nc", "allocation.json", "check.json", "report.html"} <= tree(out)
    assert not [p for p in tree(out) if p.endswith(".tmp")]

"""Executors: where the runs of a grid train.

Both take a :class:`~trainers.run.RunJob`, the pending :class:`~trainers.design.RunSpec` list and
the prepared data, call ``on_step(run_id, step, total)`` as runs progress and ``on_done(record)``
as each one finishes (its record is already on disk by then, written by the worker).

- :class:`LocalExecutor` trains in this process (``workers=1``) or in ``workers`` spawned
  processes, each run with the config's fixed thread count.
- :class:`RayExecutor` submits every run as a Ray task with a CPU request of the config's thread
  count and a GPU request of one where the cluster has GPUs and the config allows CUDA; the
  prepared data travels once through Ray's object store. It connects to ``address`` (or starts
  a local Ray, or uses the one this process already initialised).

Because every run uses a fixed thread count and seeds of its own, a run's result does not depend
on the executor that ran it.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import queue as queue_mod
import sys
import time
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Callable

from bayescale.errors import InputError
from trainers.config import TrainConfig
from trainers.design import RunSpec
from trainers.domains import PreparedData

_REPO_ROOT = str(Path(__file__).resolve().parents[1])


class _Throttle:
    """Forward step reports to a queue at most every ``interval`` seconds per run (and the last one)."""

    def __init__(self, put, interval: float = 0.5):
        self.put, self.interval, self.last = put, interval, {}

    def __call__(self, run_id: str, step: int, total: int) -> None:
        now = time.monotonic()
        if step >= total or now - self.last.get(run_id, 0.0) >= self.interval:
            self.last[run_id] = now
            try:
                self.put((run_id, step, total))
            except Exception:  # progress is a courtesy; never fail a run over it
                pass


def _default_workers(config: TrainConfig) -> int:
    """One process per GPU where runs go to CUDA, else CPU cores / threads per run."""
    if config.training.device != "cpu":
        import torch

        if torch.cuda.is_available():
            return max(1, torch.cuda.device_count())
    return max(1, (os.cpu_count() or 1) // max(1, config.training.threads))


# ---------------------------------------------------------------------------
# local


_WORKER_DATA: PreparedData | None = None
#: Pools started again for the runs a dead worker took down (a worker killed by hand or by the OOM killer).
WORKER_LOSS_RETRIES = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the process that started it dies (prctl
    PR_SET_PDEATHSIG): a training parent killed outright (SIGKILL, OOM) leaves no worker behind
    to finish its run unseen, or to race the rerun for the same record. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took hold
        os._exit(1)


def _init_worker(data: PreparedData) -> None:
    global _WORKER_DATA
    _die_with_parent()
    _WORKER_DATA = data


def _worker_execute(job, spec: RunSpec, progress_queue) -> dict:
    on_step = _Throttle(progress_queue.put) if progress_queue is not None else None
    return job.execute(spec, _WORKER_DATA, on_step)


class LocalExecutor:
    """Runs one at a time in this process (``workers=1``) or in parallel worker processes."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))

    def run(self, job, runs: list[RunSpec], data: PreparedData, *, on_done: Callable[[dict], None],
            on_step: Callable[[str, int, int], None] | None = None) -> None:
        if self.workers == 1 or len(runs) == 1:
            for spec in runs:
                on_done(job.execute(spec, data, on_step))
            return
        ctx = multiprocessing.get_context("spawn")
        manager = SyncManager(ctx=ctx)
        manager.start(_die_with_parent)
        with manager:
            progress_queue = manager.Queue() if on_step is not None else None
            todo = list(runs)
            for _ in range(1 + WORKER_LOSS_RETRIES):
                todo = self._run_pool(ctx, job, todo, data, progress_queue, on_done, on_step)
                if not todo:
                    return
            names = ", ".join(spec.id for spec in todo)
            raise InputError(f"a worker process died while training {names} (killed, or out of memory?) in "
                             f"{1 + WORKER_LOSS_RETRIES} attempts; finished runs are kept, rerun to resume")

    def _run_pool(self, ctx, job, runs, data, progress_queue, on_done, on_step) -> list[RunSpec]:
        """Train ``runs`` in a fresh pool; returns the runs a dead worker took down with it (to redo)."""
        pool = cf.ProcessPoolExecutor(max_workers=min(self.workers, len(runs)), mp_context=ctx,
                                      initializer=_init_worker, initargs=(data,))
        lost = []
        try:
            futures = {pool.submit(_worker_execute, job, spec, progress_queue): spec for spec in runs}
            remaining = set(futures)
            while remaining:
                done, remaining = cf.wait(remaining, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                _drain(progress_queue, on_step)
                for future in done:
                    try:
                        record = future.result()  # a failed run raises here
                    except cf.process.BrokenProcessPool:
                        # A worker was killed (by hand, the OOM killer): the pool fails every run it
                        # held; finished runs have their records, these are redone in a fresh pool.
                        lost.append(futures[future])
                        continue
                    on_done(record)
            _drain(progress_queue, on_step)
        except KeyboardInterrupt:
            # Ctrl-C: stop now. Finished runs have their records; the runs in flight (and the
            # ones already queued to a worker) are dropped and rerun next time.
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # runs in flight finish and keep their records
            raise
        pool.shutdown(wait=True)
        return lost


def _drain(progress_queue, on_step) -> None:
    if progress_queue is None or on_step is None:
        return
    while True:
        try:
            item = progress_queue.get_nowait()
        except (queue_mod.Empty, EOFError, OSError):
            return
        on_step(*item)


# ---------------------------------------------------------------------------
# Ray


def _ray_execute(job, spec: RunSpec, data_ref_holder: list, progress_queue) -> dict:
    import ray

    data = ray.get(data_ref_holder[0])
    on_step = _Throttle(lambda item: progress_queue.put_nowait(item)) if progress_queue is not None else None
    return job.execute(spec, data, on_step)


class RayExecutor:
    """Runs as Ray tasks with CPU (and GPU) resource requests."""

    def __init__(self, config: TrainConfig, address: str | None = None, workers: int | None = None,
                 num_gpus: float | None = None):
        self.config = config
        self.address = address
        self.workers = workers
        self.num_gpus = num_gpus

    def _connect(self):
        try:
            import ray
        except ImportError:
            raise InputError("--executor ray needs Ray; install the [ray] extra (pip install 'bayescale[ray]')") from None
        started = False
        if not ray.is_initialized():
            # logging WARNING: Ray's INFO banners ("Started a local Ray instance") are not ours to print;
            # its warnings still reach the user.
            kwargs = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING,
                      "runtime_env": {"env_vars": {"PYTHONPATH": _pythonpath()}}}
            if self.address:
                kwargs["address"] = self.address
            try:
                ray.init(**kwargs)
            except (ConnectionError, ValueError, RuntimeError) as error:
                where = self.address or "a local Ray cluster"
                raise InputError(f"--address {where}: cannot connect to Ray ({' '.join(str(error).split())})") from None
            started = True
        return ray, started

    def _gpus(self, ray) -> float:
        if self.num_gpus is not None:
            return self.num_gpus
        device = self.config.training.device
        if device == "cpu":
            return 0.0
        have = float(ray.cluster_resources().get("GPU", 0.0))
        if device == "cuda" and have <= 0:
            raise InputError("training.device is 'cuda' but the Ray cluster has no GPU")
        return 1.0 if have > 0 else 0.0

    def run(self, job, runs: list[RunSpec], data: PreparedData, *, on_done: Callable[[dict], None],
            on_step: Callable[[str, int, int], None] | None = None) -> None:
        ray, started = self._connect()
        try:
            from ray.util.queue import Empty, Queue

            cpus = self.config.training.threads
            gpus = self._gpus(ray)
            progress_queue = Queue(maxsize=10000) if on_step is not None else None
            remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=2)(_ray_execute)
            data_ref = ray.put(data)
            limit = self.workers or len(runs)
            waiting = list(runs)
            inflight: dict = {}
            try:
                while waiting or inflight:
                    while waiting and len(inflight) < limit:
                        spec = waiting.pop(0)
                        inflight[remote.remote(job, spec, [data_ref], progress_queue)] = spec
                    done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.25)
                    if progress_queue is not None:
                        try:
                            for item in progress_queue.get_nowait_batch(progress_queue.qsize()):
                                on_step(*item)
                        except Empty:
                            pass
                    for ref in done:
                        inflight.pop(ref)
                        on_done(ray.get(ref))  # a failed run raises here
            except BaseException:
                for ref in inflight:
                    ray.cancel(ref, force=True)
                raise
            finally:
                if progress_queue is not None:
                    progress_queue.shutdown()
        finally:
            if started:
                ray.shutdown()


def _pythonpath() -> str:
    parts = [_REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def make_executor(kind: str, config: TrainConfig, *, address: str | None = None, workers: int | None = None):
    if kind == "local":
        if address:
            raise InputError("--address is for --executor ray")
        return LocalExecutor(workers if workers is not None else _default_workers(config))
    if kind == "ray":
        return RayExecutor(config, address=address, workers=workers)
    raise InputError(f"--executor {kind!r}: expected local or ray")

"""One training run, and a whole grid of them: ``train_grid`` is what ``bayescale train`` calls.

:func:`train_run` trains a fresh ``MaskedAutoEncoderViT`` on the run's volumes (random crops of the
cached, preprocessed volumes; random masks) for the run's number of steps with AdamW, linear
warm-up and cosine decay, then scores it on the fixed validation crops of every domain with a
fixed mask seed. It is deterministic for a given seed on a given device: the model's initial
weights depend only on the run's seed (common random numbers across the runs of a seed), the
crops, batches and masks on (seed, run id); torch runs with ``use_deterministic_algorithms`` and a
fixed thread count from the config.

:func:`train_grid` loads the config and the manifest, generates missing phantoms, reads every
volume once (so bad files fail before any training), skips runs whose record exists, trains the
others through an executor (local processes or Ray), and collects the records into the grid.
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from bayescale.errors import InputError
from trainers.collect import RECORD_FORMAT, collect_grid, read_records, records_lock, write_record
from trainers.config import TrainConfig, config_hash, load_config, with_extra_runs
from trainers.design import RunSpec, make_design, pool_order
from trainers.domains import Manifest, PreparedData, load_manifest, prepare_data, stable_int

StepCallback = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------
# one run


def resolve_device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("training.device is 'cuda' but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextmanager
def torch_settings(threads: int, device):
    """Deterministic algorithms, a fixed thread count and no MONAI meta tracking, restored afterwards."""
    import torch
    from monai.data import get_track_meta, set_track_meta

    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_meta = get_track_meta()
    old_bench = torch.backends.cudnn.benchmark
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    set_track_meta(False)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.benchmark = old_bench
        set_track_meta(old_meta)


def run_volumes(spec: RunSpec, data: PreparedData) -> list[tuple[str, int]]:
    """(domain, pool index) of every training volume the run may use: nested prefixes per seed."""
    chosen = []
    for domain, n in spec.data.items():
        if n <= 0:
            continue
        pool = data.domains[domain].n_train
        if n > pool:
            raise InputError(f"run {spec.id!r} asks for {n} volumes of domain {domain!r}, which has only {pool}")
        chosen.extend((domain, i) for i in pool_order(domain, spec.seed, pool)[:n])
    return chosen


def lr_factor(step: int, total: int, warmup_fraction: float, min_fraction: float) -> float:
    """Linear warm-up then cosine decay to ``min_fraction`` of the peak learning rate."""
    warmup = max(1, int(round(warmup_fraction * total))) if warmup_fraction > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def writable(array: np.ndarray) -> np.ndarray:
    """``array`` itself where it may be written, else a copy."""
    return array if array.flags.writeable else array.copy()


def make_loader(spec: RunSpec, data: PreparedData, config: TrainConfig, run_seed: int):
    """A MONAI Dataset of the run's cached volumes with random crops after the cache, and its loader."""
    import torch
    from monai.data import Dataset
    from torch.utils.data import DataLoader, RandomSampler

    from trainers.domains import train_crop_transform

    # Volumes from Ray's object store (or a memory map) are read-only; torch.from_numpy of one warns
    # ("not writable ... undefined behavior") from every worker, and a transform writing in place
    # would fault. Copy those: only the run's own volumes, once per run.
    items = [{"image": torch.from_numpy(writable(data.domains[d].train[i]))} for d, i in run_volumes(spec, data)]
    dataset = Dataset(items, transform=train_crop_transform(config.data.crop, run_seed))
    generator = torch.Generator().manual_seed(run_seed)
    bs = config.training.batch_size
    sampler = RandomSampler(dataset, replacement=True, num_samples=spec.steps * bs, generator=generator)
    return DataLoader(dataset, batch_size=bs, sampler=sampler, num_workers=0, drop_last=False), len(items)


def evaluate_all(model, data: PreparedData, config: TrainConfig, targets: list[str], device) -> dict:
    from trainers.mae import evaluate

    out = {}
    for t in targets:
        arrays = data.domains[t]
        out[t] = evaluate(model, arrays.val_crops, arrays.val_mean_crops, patch=config.model.patch_size,
                          mask_seed=stable_int(config.training.mask_seed, "eval", t),
                          batch_size=config.training.eval_batch_size, device=device)
    return out


def train_run(spec: RunSpec, data: PreparedData, config: TrainConfig, targets: list[str] | None = None,
              on_step: StepCallback | None = None, eval_steps: tuple[int, ...] = (),
              checkpoint: Path | None = None) -> dict:
    """Train one run and evaluate it on every target; returns the result part of its record.

    ``checkpoint``: where to save the trained weights (:mod:`trainers.checkpoint`), if anywhere.

    ``eval_steps`` also scores the model at those steps (a learning curve, ``val_curve``; for
    experiments, it costs an evaluation each).
    """
    import torch

    from trainers.mae import build_model, mae_loss

    targets = list(data.domains) if targets is None else targets
    tc = config.training
    device = resolve_device(tc.device)
    run_seed = stable_int(spec.seed, spec.id)
    t_start = time.perf_counter()
    with torch_settings(tc.threads, device):
        seed_everything(spec.seed)  # initial weights: common to every run of this seed
        model = build_model(config.model, config.data.crop).to(device)
        seed_everything(run_seed)  # crops, batches, masks: this run's own
        loader, n_volumes = make_loader(spec, data, config, run_seed)
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim < 2 or "token" in name or "pos" in name else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tc.lr, betas=(0.9, 0.95),
        )
        model.train()
        curve, recent, val_curve = [], [], []
        data_wait = compute = 0.0
        t_data = time.perf_counter()
        step = 0
        report_every = max(1, spec.steps // 100)
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            t_compute = time.perf_counter()
            data_wait += t_compute - t_data
            for group in optimizer.param_groups:
                group["lr"] = tc.lr * lr_factor(step, spec.steps, tc.warmup_fraction, tc.min_lr_fraction)
            loss = mae_loss(model, x, config.model.patch_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RuntimeError(f"run {spec.id}: training loss became {value} at step {step + 1}")
            t_data = time.perf_counter()
            compute += t_data - t_compute
            recent.append(value)
            step += 1
            if step % tc.log_every == 0 or step == spec.steps:
                curve.append([step, float(np.mean(recent[-tc.log_every:]))])
            if step in eval_steps and step != spec.steps:
                t_pause = time.perf_counter()
                val_curve.append([step, {t: v["loss"] for t, v in evaluate_all(model, data, config, targets, device).items()}])
                model.train()
                t_data += time.perf_counter() - t_pause
            if on_step is not None and (step % report_every == 0 or step == spec.steps):
                on_step(spec.id, step, spec.steps)
        t_eval = time.perf_counter()
        scores = evaluate_all(model, data, config, targets, device)
        t_end = time.perf_counter()
        if checkpoint is not None:
            from trainers.checkpoint import save_checkpoint

            save_checkpoint(checkpoint, model, config.model, config.data.crop, spec.id)
    tail = recent[-max(1, len(recent) // 10):]
    extra = {"val_curve": val_curve + [[spec.steps, {t: v["loss"] for t, v in scores.items()}]]} if eval_steps else {}
    return {
        **extra,
        "loss": {t: s["loss"] for t, s in scores.items()},
        "loss_se": {t: s["loss_se"] for t, s in scores.items()},
        "baseline_loss": {t: s["baseline_loss"] for t, s in scores.items()},
        "validation_crops": {t: s["n"] for t, s in scores.items()},
        "train_loss": curve,
        "final_train_loss": float(np.mean(tail)) if tail else float("nan"),
        "volumes_used": n_volumes,
        "seconds": {"total": t_end - t_start, "train": data_wait + compute, "data_wait": data_wait,
                    "compute": compute, "eval": t_end - t_eval},
        "device": device.type,
        "threads": tc.threads,
    }


# ---------------------------------------------------------------------------
# a job: one run and its record, as an executor calls it


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs besides the data: picklable, shipped to processes and Ray tasks."""

    config: TrainConfig
    records_dir: Path
    config_hash: str
    data_hash: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]

    def execute(self, spec: RunSpec, data: PreparedData, on_step: StepCallback | None = None) -> dict:
        import monai
        import torch

        from trainers.checkpoint import checkpoint_path

        ckpt = checkpoint_path(self.records_dir, spec.id) if self.config.training.save_checkpoints else None
        result = train_run(spec, data, self.config, list(self.targets), on_step, checkpoint=ckpt)
        record = {
            **({"checkpoint": ckpt.name} if ckpt is not None else {}),
            "format": RECORD_FORMAT,
            "run": spec.as_dict(),
            "config_hash": self.config_hash,
            "data_hash": self.data_hash,
            "config": str(self.config.path),
            "sources": list(self.sources),
            "targets": list(self.targets),
            "model": self.config.results_dict()["model"],
            "training": self.config.results_dict()["training"],
            "data_config": self.config.results_dict()["data"],
            "torch": torch.__version__,
            "monai": monai.__version__,
            "host": os.uname().nodename,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **result,
        }
        write_record(self.records_dir, record)
        return record


# ---------------------------------------------------------------------------
# a grid


@dataclass
class GridResult:
    out: Path
    records_dir: Path
    runs: int  # runs in the grid
    trained: int  # runs trained by this call
    skipped: int  # runs of the design whose record already existed
    seconds: float
    run_seconds: dict[str, float] = field(default_factory=dict)


def default_records_dir(config: TrainConfig, out: Path) -> Path:
    return config.records if config.records is not None else out.with_name(out.name + ".records")


def ensure_phantoms(config: TrainConfig, console=None) -> None:
    """Generate the config's phantoms if any is missing or from an older generator revision."""
    if config.phantoms is None:
        return
    from trainers.phantoms import DOMAINS, subject_is_current, write_phantoms

    ph = config.phantoms
    missing = [(d, k) for d in DOMAINS for k in range(ph.per_domain) if not subject_is_current(ph.out, d, k, ph.seed)]
    if not missing:
        return
    if console is not None:
        console.print(f"writing {len(missing)} missing or outdated phantom volumes to {ph.out} ...", highlight=False)
    write_phantoms(ph.out, per_domain=ph.per_domain, seed=ph.seed)


def plan(config: TrainConfig, manifest: Manifest) -> tuple[list[RunSpec], str, str]:
    """The design's runs, and the config and data hashes of their records."""
    available = {d.name: len(d.train) for d in manifest.domains}
    runs = make_design(config, available)
    return runs, config_hash(config, None), config_hash(config, manifest.fingerprint())


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in (".nc", ".nc4"):
        raise InputError(f"--out {out}: a loss grid is written as NetCDF; give a path ending in .nc")
    if out.exists() and out.is_dir():
        raise InputError(f"--out {out}: is a directory")


def train_grid(
    config_path: str | Path,
    out: str | Path,
    *,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    collect_only: bool = False,
    progress: bool = True,
    console=None,
    max_runs: int | None = None,
    design: str | Path | None = None,
) -> GridResult:
    """Train every unfinished run of the config's design and write the loss grid to ``out``.

    Re-running skips runs whose record exists; ``collect_only`` only rebuilds the grid from the
    records there are. ``max_runs`` stops after that many new runs (for tests and partial grids).
    ``design`` is a design file whose explicit runs (``[[design.runs]]``) are trained too: the
    config's hash leaves the design out, so they join the records (and grid) already there.
    """
    t0 = time.perf_counter()
    out = Path(out)
    _check_out(out)
    config = load_config(config_path)
    if design is not None:
        config = with_extra_runs(config, design)  # read even with collect_only: a bad file fails loudly
    records_dir = default_records_dir(config, out)
    if executor not in ("local", "ray"):
        raise InputError(f"--executor {executor!r}: expected local or ray")
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: expected at least 1")
    description = config.description or f"masked-autoencoder grid of {config.path.name}"
    if collect_only:
        path, n = collect_grid(records_dir, out, config_hash=config_hash(config, None), description=description)
        return GridResult(out=path, records_dir=records_dir, runs=n, trained=0, skipped=n, seconds=time.perf_counter() - t0)

    ensure_phantoms(config, console)
    manifest = load_manifest(config.data.manifest, config.data.validation_per_domain)
    runs, c_hash, d_hash = plan(config, manifest)
    with records_lock(records_dir):
        return _train_pending(config, manifest, runs, c_hash, d_hash, records_dir, out, description, executor=executor,
                              address=address, workers=workers, progress=progress, console=console, max_runs=max_runs, t0=t0)


def _train_pending(config, manifest, runs, c_hash, d_hash, records_dir, out, description, *, executor, address, workers,
                   progress, console, max_runs, t0) -> GridResult:
    """Train the runs without a record (the caller holds the records folder) and write the grid."""
    existing = read_records(records_dir, config_hash=c_hash, data_hash=d_hash)
    for spec in runs:
        if spec.id in existing and not spec.same_work(existing[spec.id]["run"]):
            raise InputError(
                f"{records_dir / (spec.id + '.json')}: run {spec.id!r} was recorded with other data, seed or steps than the "
                "design now asks for; delete that record or rename the run"
            )
    pending = [r for r in runs if r.id not in existing]
    if max_runs is not None:
        pending = pending[:max_runs]
    skipped = len(runs) - len([r for r in runs if r.id not in existing])
    run_seconds: dict[str, float] = {}
    if pending:
        cache_dir = config.data.cache_dir if config.data.cache_dir is not None else records_dir / ".cache"
        data = _prepare_with_progress(config, manifest, cache_dir, console if progress else None)
        sources = tuple(next(iter(runs)).data) if runs else tuple(manifest.names)
        job = RunJob(config=config, records_dir=records_dir, config_hash=c_hash, data_hash=d_hash,
                     sources=sources, targets=tuple(manifest.names))
        from trainers.executor import make_executor

        runner = make_executor(executor, config, address=address, workers=workers)
        with _Progress(pending, enabled=progress, console=console) as bar:
            def done(record):
                run_seconds[record["run"]["id"]] = float(record["seconds"]["total"])
                bar.finished(record)

            runner.run(job, pending, data, on_done=done, on_step=bar.step)
    path, n = collect_grid(records_dir, out, config_hash=c_hash, description=description)
    return GridResult(out=path, records_dir=records_dir, runs=n, trained=len(run_seconds), skipped=skipped,
                      seconds=time.perf_counter() - t0, run_seconds=run_seconds)


def _prepare_with_progress(config, manifest, cache_dir, console) -> PreparedData:
    total = sum(len(d.train) + len(d.validation) for d in manifest.domains)
    if console is None:
        return prepare_data(config, manifest, cache_dir)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("preprocessing volumes", total=total)
        return prepare_data(config, manifest, cache_dir, progress=lambda name, n: bar.advance(task, n))


class _Progress:
    """A rich progress display: runs done, and the steps of each run in flight."""

    def __init__(self, runs: list[RunSpec], enabled: bool, console=None):
        self.enabled = enabled
        self.total = len(runs)
        self.console = console
        self.tasks: dict[str, int] = {}
        self.bar = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self.bar.__enter__()
            self.overall = self.bar.add_task("runs", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    def step(self, run_id: str, step: int, total: int) -> None:
        if self.bar is None:
            return
        if run_id not in self.tasks:
            self.tasks[run_id] = self.bar.add_task(f"  {run_id} steps", total=total)
        self.bar.update(self.tasks[run_id], completed=step)

    def finished(self, record: dict) -> None:
        if self.bar is None:
            return
        run_id = record["run"]["id"]
        if run_id in self.tasks:
            self.bar.remove_task(self.tasks.pop(run_id))
        self.bar.advance(self.overall)
        own = [record["loss"].get(d) for d, n in record["run"]["data"].items() if n]
        own_text = ", ".join(f"{v:.4g}" for v in own if v is not None)
        self.bar.console.print(f"done {run_id}  {record['seconds']['total']:.0f}s  own-domain loss {own_text}", highlight=False)

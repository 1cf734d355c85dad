"""Run records on disk and the loss grid made from them.

Every finished run writes one JSON record, ``<records>/<run id>.json``, atomically (a temporary
file renamed into place), so a record is either complete or absent: an interrupted grid loses at
most the runs in flight. :func:`collect_grid` turns the records into the NetCDF loss grid of
:mod:`bayescale.data.grid` (``data`` = volumes per source, ``loss`` = masked MSE per target, with
``loss_se`` and ``baseline_loss``), written atomically too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from bayescale._files import write_text_atomic
from bayescale.errors import InputError

RECORD_FORMAT = "bayescale.trainers.record/1"
LOCK_NAME = ".lock"  # held (flock) by the process training into a records folder
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_run_id(run_id: str, where: str) -> None:
    if not isinstance(run_id, str) or not _ID_RE.match(run_id) or len(run_id) > 200:
        raise InputError(f"{where}: run id {run_id!r} must start with a letter or digit and use only letters, digits, '_', '.', '-'")


def record_path(records_dir: Path, run_id: str) -> Path:
    check_run_id(run_id, str(records_dir))
    return Path(records_dir) / f"{run_id}.json"


def write_record(records_dir: Path, record: dict) -> Path:
    """Write a run's record atomically (temporary file, then rename) and return its path."""
    path = record_path(records_dir, record["run"]["id"])
    write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=True) + "\n")
    return path


def read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable run record ({' '.join(str(error).split())}); delete it to rerun that run") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise InputError(f"{path}: not a run record of this trainer (format {record.get('format') if isinstance(record, dict) else None!r}, expected {RECORD_FORMAT!r})")
    for key in ("run", "loss", "config_hash", "sources", "targets"):
        if key not in record:
            raise InputError(f"{path}: run record without {key!r}; delete it to rerun that run")
    if record["run"].get("id") != path.stem:
        raise InputError(f"{path}: holds run {record['run'].get('id')!r}, not {path.stem!r}")
    return record


@contextlib.contextmanager
def records_lock(records_dir: Path) -> Iterator[None]:
    """Hold ``records_dir`` for one training process while it plans and writes runs.

    A second ``bayescale train`` on the same records (a user starting one twice) stops with one line
    instead of training the same pending runs again beside the first. ``flock``: the kernel drops
    the lock when the holder ends, SIGKILL included, so a dead process never leaves it stuck. A
    folder this process made and left empty is removed again."""
    import fcntl

    records_dir = Path(records_dir)
    made = not records_dir.exists()
    try:
        records_dir.mkdir(parents=True, exist_ok=True)
        handle = open(records_dir / LOCK_NAME, "a+")
    except OSError as error:
        raise InputError(f"{records_dir}: cannot write run records there ({error.strerror or error})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InputError(f"{records_dir}: another bayescale train is training into these records ({holder}); "
                         "wait for it to finish, or give --out another grid") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        lock = records_dir / LOCK_NAME
        if made and [p.name for p in records_dir.iterdir()] == [LOCK_NAME]:
            lock.unlink()
            records_dir.rmdir()
        handle.close()


def read_records(records_dir: Path, *, config_hash: str | None = None, data_hash: str | None = None) -> dict[str, dict]:
    """All records in ``records_dir`` by run id (an absent folder holds none).

    A record made with another config (``config_hash``) or other data (``data_hash``) is refused
    with an InputError naming it: mixing them would silently make a grid of two experiments.
    Temporary files of interrupted writes (``.*.tmp``) are ignored.
    """
    records_dir = Path(records_dir)
    if not records_dir.exists():
        return {}
    if not records_dir.is_dir():
        raise InputError(f"{records_dir}: is not a folder of run records")
    out = {}
    for path in sorted(records_dir.glob("*.json")):
        if path.name.startswith("."):
            continue
        record = read_record(path)
        if config_hash is not None and record["config_hash"] != config_hash:
            raise InputError(
                f"{path}: made with a different training config (hash {record['config_hash']}, this config {config_hash}); "
                f"move {records_dir} away or write the grid elsewhere"
            )
        if data_hash is not None and record.get("data_hash") != data_hash:
            raise InputError(
                f"{path}: made from different data files (hash {record.get('data_hash')}, now {data_hash}); "
                f"move {records_dir} away or write the grid elsewhere"
            )
        out[record["run"]["id"]] = record
    return out


def _ordered_union(lists: Iterable[list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for names in lists:
        for n in names:
            seen.setdefault(n, None)
    return list(seen)


def records_to_grid(records: list[dict], *, description: str = "", attrs: dict | None = None):
    """The loss grid (xarray Dataset, validated) of a list of run records."""
    from bayescale.data.grid import make_grid

    if not records:
        raise InputError("no finished runs to collect")
    records = sorted(records, key=lambda r: (int(r["run"].get("order", 0)), r["run"]["id"]))
    sources = _ordered_union(r["sources"] for r in records)
    targets = _ordered_union(r["targets"] for r in records)
    n, ns, nt = len(records), len(sources), len(targets)
    data = np.zeros((n, ns))
    loss = np.full((n, nt), np.nan)
    loss_se = np.full((n, nt), np.nan)
    steps = np.zeros(n, dtype=np.int64)
    seconds = np.full(n, np.nan)
    final_train = np.full(n, np.nan)
    baseline: dict[str, float] = {}
    for i, r in enumerate(records):
        for j, s in enumerate(sources):
            data[i, j] = float(r["run"]["data"].get(s, 0))
        for j, t in enumerate(targets):
            loss[i, j] = _num(r["loss"].get(t))
            loss_se[i, j] = _num(r.get("loss_se", {}).get(t))
            b = _num(r.get("baseline_loss", {}).get(t))
            if math.isfinite(b):
                if t in baseline and not math.isclose(baseline[t], b, rel_tol=1e-5, abs_tol=1e-9):
                    warnings.warn(f"baseline loss of {t!r} differs between records ({baseline[t]:.6g} vs {b:.6g}); keeping the first", stacklevel=2)
                baseline.setdefault(t, b)
        steps[i] = int(r["run"].get("steps", 0))
        seconds[i] = _num(r.get("seconds", {}).get("total"))
        final_train[i] = _num(r.get("final_train_loss"))
    devices = sorted({str(r.get("device", "?")) for r in records})
    if len(devices) > 1:
        warnings.warn(f"the records were trained on different devices ({', '.join(devices)}); losses may differ slightly", stacklevel=2)
    grid_attrs = {
        "loss_name": "mae_masked_mse",
        "data_unit": "volumes",
        "description": description,
        "trainer": "bayescale trainers: MONAI MaskedAutoEncoderViT, masked-patch MSE on fixed validation crops and masks",
        "config_hash": records[0]["config_hash"],
        "data_hash": str(records[0].get("data_hash", "")),
        "devices": ", ".join(devices),
        "baseline": "the mean training volume of the target domain, scored on the same crops and masks",
    }
    for key in ("model", "training", "data_config"):
        if key in records[0]:
            grid_attrs[key] = json.dumps(records[0][key], sort_keys=True)
    grid_attrs.update(attrs or {})
    ds = make_grid(
        [r["run"]["id"] for r in records],
        sources,
        targets,
        data,
        loss,
        seed=[int(r["run"]["seed"]) for r in records],
        split=[str(r["run"]["split"]) for r in records],
        loss_se=loss_se,
        baseline_loss=[baseline.get(t, np.nan) for t in targets],
        attrs=grid_attrs,
    )
    # Every run is scored on the same fixed validation crops with the same mask seed: the
    # standard error is the evaluation set's, one offset per target shared by all runs.
    ds.attrs["loss_se_kind"] = "shared"
    ds = ds.assign_coords(kind=("run", np.array([str(r["run"].get("kind", "")) for r in records], dtype=object)))
    ds["steps"] = ("run", steps)
    ds["train_seconds"] = ("run", seconds)
    ds["final_train_loss"] = ("run", final_train)
    return ds


def _num(value) -> float:
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def collect_grid(records_dir: Path, out: Path, *, config_hash: str | None = None, description: str = "", attrs: dict | None = None) -> tuple[Path, int]:
    """Build the loss grid from every record in ``records_dir`` and write it to ``out`` atomically.

    Returns (path, number of runs). With no finished run, nothing is written (InputError).
    """
    from bayescale.data.grid import save_grid

    records = read_records(records_dir, config_hash=config_hash)
    if not records:
        raise InputError(f"{records_dir}: no finished runs to collect (no run records there)")
    data_hashes = {r.get("data_hash") for r in records.values()}
    if len(data_hashes) > 1:
        raise InputError(f"{records_dir}: the records were made from different data files ({len(data_hashes)} data hashes); they cannot share a grid")
    ds = records_to_grid(list(records.values()), description=description, attrs=attrs)
    save_grid(ds, out)
    return Path(out), len(records)

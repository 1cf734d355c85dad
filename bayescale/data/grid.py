"""The loss grid contract: build, validate, load, save, read from CSV and summarise.

A loss grid is an :class:`xarray.Dataset` with

- coordinates ``run`` (unique run ids), ``source`` (training domains), ``target``
  (evaluation domains), ``seed`` (int, per run, default 0) and ``split`` (``"fit"`` or
  ``"holdout"``, per run, default ``"fit"``);
- ``data`` (run, source): amount of training data from each source, finite and >= 0,
  in units ``attrs["data_unit"]``;
- ``loss`` (run, target): validation loss, finite and > 0, NaN where not evaluated;
- optional ``loss_se`` (run, target): standard error of the loss, >= 0 or NaN; the grid attr
  ``loss_se_kind`` says what error it is (:data:`SE_KINDS`): ``"shared"`` when every run is
  scored on the same validation set (the same crops, tokens or masks), so the error is one
  offset per target common to all runs (and to every new run scored on that set), or
  ``"per_run"`` (the default) when each run has its own evaluation sample, so the errors are
  independent;
- optional ``baseline_loss`` (target): loss of a trivial predictor, > 0 or NaN;
- attrs ``loss_name`` (default ``"loss"``), ``data_unit`` (default ``"units"``) and
  ``description`` (default ``""``); other attrs and variables are kept as they are.

Every function that takes a grid from outside (a file, a CSV, arrays) validates it and
fails with an :class:`~bayescale.errors.InputError` whose one-line message names the
file, the run and the domain at fault.

This module is long because the contract is checked in one place, and each of its rules and
each CSV layout (wide, long) names the offending file, line, run and domain in its own words.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
import numbers
import os
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from bayescale._files import atomic_path
from bayescale.errors import InputError

SPLITS = ("fit", "holdout")
DEFAULT_ATTRS = {"loss_name": "loss", "data_unit": "units", "description": ""}
NETCDF_SUFFIXES = (".nc", ".nc4")
CSV_SUFFIXES = (".csv",)

# The names the contract owns; everything else in a dataset is carried along untouched.
_CONTRACT = ("run", "source", "target", "seed", "split", "data", "loss", "loss_se", "baseline_loss")
_NAME_WHAT = {"run": "run id", "source": "source name", "target": "target name"}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_NETCDF3_SIGNATURES = (b"CDF\x01", b"CDF\x02", b"CDF\x05")


# ---------------------------------------------------------------------------
# building and validating


#: What a grid's ``loss_se`` can be (its attr ``loss_se_kind``): fresh noise of each run's own
#: evaluation sample ("per_run"), or the error of one validation set every run is scored on ("shared").
SE_KINDS = ("per_run", "shared")


def loss_se_kind(ds: xr.Dataset) -> str | None:
    """The kind of the grid's ``loss_se`` (:data:`SE_KINDS`), or None where it has none."""
    if "loss_se" not in ds.variables:
        return None
    return str(ds.attrs.get("loss_se_kind", "per_run"))


def cell_noise_se(ds: xr.Dataset) -> np.ndarray | None:
    """(run, target) standard errors that are fresh noise in each cell, or None.

    A ``shared`` error is one offset per target common to every run scored on the same
    validation set: it shifts a target's whole curve, which the law's own per-target
    parameters absorb, and it recurs in every new run scored on that set, so it is neither
    independent evidence in a fit nor extra spread in a prediction (None here)."""
    if loss_se_kind(ds) != "per_run":
        return None
    return ds["loss_se"].transpose("run", "target").values


def relative_cell_noise(ds: xr.Dataset, targets) -> np.ndarray:
    """(run, target) fresh noise of each cell on the log scale, ``loss_se / loss``, over ``targets``:
    0 where a cell has none (no ``loss_se``, a ``shared`` one, or an unobserved cell)."""
    shape = (ds.sizes["run"], len(targets))
    if cell_noise_se(ds) is None:
        return np.zeros(shape)
    se = ds["loss_se"].reindex(target=list(targets)).transpose("run", "target").values
    loss = ds["loss"].reindex(target=list(targets)).transpose("run", "target").values
    ok = np.isfinite(se) & np.isfinite(loss)
    return np.where(ok, se / np.where(ok, loss, 1.0), 0.0)


def make_grid(
    run: Sequence,
    source: Sequence,
    target: Sequence,
    data,
    loss,
    *,
    seed=None,
    split=None,
    loss_se=None,
    baseline_loss=None,
    attrs: dict | None = None,
) -> xr.Dataset:
    """Build a validated loss grid from plain arrays and lists.

    ``data`` has shape (runs, sources) and ``loss`` (runs, targets); ``seed`` and ``split``
    are one value per run or a single value for all runs (defaults 0 and ``"fit"``);
    ``loss_se`` has the shape of ``loss`` and ``baseline_loss`` one value per target.
    """
    where = "make_grid"
    names = {}
    for dim, values in (("run", run), ("source", source), ("target", target)):
        # A bare string would otherwise be split into one name per character.
        if isinstance(values, (str, bytes)):
            raise InputError(f"{where}: {dim} must be a list of names, not the single string {values!r}")
        # object dtype: NumPy's fixed-width strings would silently drop trailing NULs
        names[dim] = np.array(list(values), dtype=object)
    n_run, n_source, n_target = (len(names[d]) for d in ("run", "source", "target"))

    def shaped(value, name, shape, labels):
        array = np.asarray(value)
        if array.shape != shape:
            raise InputError(f"{where}: {name} has shape {array.shape}; expected ({labels}) = {shape}")
        return array

    data_vars = {
        "data": (("run", "source"), shaped(data, "data", (n_run, n_source), "runs, sources")),
        "loss": (("run", "target"), shaped(loss, "loss", (n_run, n_target), "runs, targets")),
    }
    if loss_se is not None:
        data_vars["loss_se"] = (("run", "target"), shaped(loss_se, "loss_se", (n_run, n_target), "runs, targets"))
    if baseline_loss is not None:
        data_vars["baseline_loss"] = (("target",), shaped(baseline_loss, "baseline_loss", (n_target,), "targets"))
    coords = {dim: (dim, values) for dim, values in names.items()}
    for name, value in (("seed", seed), ("split", split)):
        if value is None:
            continue
        if np.ndim(value) == 0:
            value = [value] * n_run
        coords[name] = ("run", shaped(np.array(list(value), dtype=object), name, (n_run,), "runs"))
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))
    return validate_grid(ds, source=where)


def validate_grid(ds, source: str = "grid") -> xr.Dataset:
    """Check ``ds`` against the loss grid contract and return a normalised copy.

    The copy has ``data``/``loss`` (and ``loss_se``, ``baseline_loss``) as float64 with dims
    in contract order, ``seed`` as int64 (0 where absent), ``split`` as str (``"fit"`` where
    absent), ``run``/``source``/``target`` as str, and the default attrs filled in. Other
    variables and attrs are kept. ``source`` names where the grid came from (a file name)
    in error messages.
    """
    if not isinstance(ds, xr.Dataset):
        raise InputError(f"{source}: a loss grid is an xarray Dataset, not {type(ds).__name__}")
    for name in ("data", "loss"):
        if name not in ds.variables:
            raise InputError(
                f"{source}: no {name!r} variable; a loss grid has 'data' (run, source) and 'loss' (run, target)"
            )
    data = _contract_var(ds, "data", ("run", "source"), source)
    loss = _contract_var(ds, "loss", ("run", "target"), source)

    names = {dim: _names(ds, dim, source) for dim in ("run", "source", "target")}
    runs, sources, targets = names["run"], names["source"], names["target"]
    seeds = _seeds(ds, runs, source)
    splits = _splits(ds, runs, source)

    data_values = _floats(data, "data", source)
    _reject_cells(data_values, ~np.isfinite(data_values) | (data_values < 0), source, "data", runs, "source", sources,
                  "data amounts must be finite and >= 0")
    loss_values = _floats(loss, "loss", source)
    with np.errstate(invalid="ignore"):
        bad_loss = np.isinf(loss_values) | (loss_values <= 0)  # NaN compares False: not evaluated is fine
    _reject_cells(loss_values, bad_loss, source, "loss", runs, "target", targets,
                  "losses must be finite and > 0 (NaN marks a cell not evaluated)")
    if not np.isfinite(loss_values).any():
        raise InputError(f"{source}: no run has a finite loss on any target; there is nothing to fit")

    data_vars = {
        "data": xr.Variable(("run", "source"), data_values, attrs=dict(data.attrs)),
        "loss": xr.Variable(("run", "target"), loss_values, attrs=dict(loss.attrs)),
    }
    if "loss_se" in ds.variables:
        se = _contract_var(ds, "loss_se", ("run", "target"), source)
        se_values = _floats(se, "loss_se", source)
        with np.errstate(invalid="ignore"):
            bad_se = np.isinf(se_values) | (se_values < 0)
        _reject_cells(se_values, bad_se, source, "loss_se", runs, "target", targets,
                      "standard errors must be finite and >= 0 (or NaN)")
        kind = ds.attrs.get("loss_se_kind", "per_run")
        if kind not in SE_KINDS:
            raise InputError(f"{source}: attr loss_se_kind must be one of {', '.join(SE_KINDS)}, got {_show(kind)}")
        data_vars["loss_se"] = xr.Variable(("run", "target"), se_values, attrs=dict(se.attrs))
    if "baseline_loss" in ds.variables:
        base = _contract_var(ds, "baseline_loss", ("target",), source)
        base_values = _floats(base, "baseline_loss", source)
        with np.errstate(invalid="ignore"):
            bad_base = np.isinf(base_values) | (base_values <= 0)
        if bad_base.any():
            j = int(np.flatnonzero(bad_base)[0])
            raise InputError(
                f"{source}: baseline_loss on target {str(targets[j])!r} is {_show(base_values[j])}; "
                "baseline losses must be finite and > 0 (or NaN)"
            )
        data_vars["baseline_loss"] = xr.Variable(("target",), base_values, attrs=dict(base.attrs))

    def coord_attrs(name):
        return dict(ds[name].attrs) if name in ds.variables else {}

    coords = {
        "run": xr.Variable("run", runs, attrs=coord_attrs("run")),
        "source": xr.Variable("source", sources, attrs=coord_attrs("source")),
        "target": xr.Variable("target", targets, attrs=coord_attrs("target")),
        "seed": xr.Variable("run", seeds, attrs=coord_attrs("seed")),
        "split": xr.Variable("run", splits, attrs=coord_attrs("split")),
    }
    # Carry everything outside the contract along, without the encoding of the file it
    # came from (chunking, fill values) so a save writes it afresh.
    for name, var in ds.variables.items():
        if name in _CONTRACT:
            continue
        copy = var.copy(deep=True)
        copy.encoding = {}
        (coords if name in ds.coords else data_vars)[name] = copy

    attrs = dict(ds.attrs)
    for key, default in DEFAULT_ATTRS.items():
        value = attrs.get(key, default)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            raise InputError(f"{source}: attribute {key!r} holds a value of type {type(value).__name__}; it must be text")
        attrs[key] = str(value)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _contract_var(ds: xr.Dataset, name: str, dims: tuple[str, ...], source: str) -> xr.DataArray:
    """The variable ``name`` with its dims in contract order (transposed if need be)."""
    var = ds[name]
    if len(var.dims) != len(dims) or set(var.dims) != set(dims):
        raise InputError(f"{source}: {name} has dims {tuple(var.dims)}; expected {dims}")
    return var.transpose(*dims)


def _names(ds: xr.Dataset, dim: str, source: str) -> np.ndarray:
    """The names along ``dim`` as a str array: present, non-empty, printable and unique."""
    what = _NAME_WHAT[dim]
    plural = {"run": "runs", "source": "sources", "target": "targets"}[dim]
    if ds.sizes.get(dim, 0) == 0:
        raise InputError(f"{source}: the grid has no {plural}")
    # Without this check xarray would hand back 0, 1, 2, ... as if they were names.
    if dim not in ds.coords:
        raise InputError(f"{source}: no {dim!r} coordinate naming the {plural}")
    names = []
    for k, value in enumerate(ds[dim].values.tolist()):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{source}: {what} #{k + 1} {value!r} is not UTF-8 text") from None
        name = "" if value is None else str(value)
        if not name.strip():
            raise InputError(f"{source}: {what} #{k + 1} is empty ({name!r}); every one of the {plural} needs a name")
        # Control characters would break one-line messages and CSV files; lone
        # surrogates cannot be written as UTF-8 at all.
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
            raise InputError(f"{source}: {what} {name!r} contains a control character")
        names.append(name)
    for name, count in Counter(names).items():
        if count > 1:
            raise InputError(f"{source}: {what} {name!r} appears {count} times; {what}s must be unique")
    return np.array(names, dtype=str)


def _run_var(ds: xr.Dataset, name: str, source: str):
    var = ds[name]
    if var.dims != ("run",):
        raise InputError(f"{source}: {name} has dims {tuple(var.dims)}; expected ('run',)")
    return var.values.tolist()


def _seeds(ds: xr.Dataset, runs: np.ndarray, source: str) -> np.ndarray:
    if "seed" not in ds.variables:
        return np.zeros(len(runs), dtype=np.int64)
    seeds = []
    for run, value in zip(runs.tolist(), _run_var(ds, "seed", source)):
        seed = _as_int(value)
        if seed is None:
            raise InputError(f"{source}: seed of run {run!r} is {_show(value)}; seeds must be integers")
        seeds.append(seed)
    return np.array(seeds, dtype=np.int64)


def _splits(ds: xr.Dataset, runs: np.ndarray, source: str) -> np.ndarray:
    if "split" not in ds.variables:
        return np.array(["fit"] * len(runs), dtype=str)
    splits = []
    for run, value in zip(runs.tolist(), _run_var(ds, "split", source)):
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if value not in SPLITS:
            raise InputError(f"{source}: split of run {run!r} is {_show(value)}; a split is 'fit' or 'holdout'")
        splits.append(str(value))
    return np.array(splits, dtype=str)


def _floats(var: xr.DataArray, name: str, source: str) -> np.ndarray:
    """The values of ``var`` as a new float64 array, or an InputError if they are not numbers."""
    values = var.values
    if values.dtype.kind in "iuf" or values.dtype.kind == "O":
        try:
            return np.array(values, dtype=np.float64)
        except (TypeError, ValueError):
            pass
    raise InputError(f"{source}: {name} holds {values.dtype} values; it must hold numbers")


def _reject_cells(values, bad, source, name, runs, col_label, cols, rule) -> None:
    """Raise for the first bad (run, domain) cell, saying how many more there are."""
    if not bad.any():
        return
    i, j = np.argwhere(bad)[0]
    more = int(bad.sum()) - 1
    tail = f" ({more} more cell{'s' if more > 1 else ''} like it)" if more else ""
    raise InputError(f"{source}: {name} on run {str(runs[i])!r}, {col_label} {str(cols[j])!r} is {_show(values[i, j])}; {rule}{tail}")


def _as_int(value) -> int | None:
    """``value`` as an int if it is an integer (or integer-valued float or numeral), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (bytes, str)):
        text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
        text = text.strip()
        try:
            return _in_int64(int(text))
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, numbers.Integral):
        return _in_int64(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isfinite(value) and value.is_integer():
            return _in_int64(int(value))
    return None


def _in_int64(value: int) -> int | None:
    return value if -(2**63) <= value < 2**63 else None


def _show(value) -> str:
    """A value as a message shows it: ``-0.3``, ``nan``, ``'abc'`` (never ``np.float64(...)``)."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------------------
# files


def load_grid(path: str | os.PathLike) -> xr.Dataset:
    """Read a loss grid from a NetCDF (``.nc``) or CSV (``.csv``) file and validate it.

    The whole file is read into memory and closed before this returns.
    """
    path = Path(path)
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in NETCDF_SUFFIXES + CSV_SUFFIXES:
        raise InputError(
            f"{name}: unsupported file type {suffix or '(no extension)'!r}; "
            "a loss grid is a NetCDF file (.nc) or a CSV file (.csv)"
        )
    if suffix in CSV_SUFFIXES:
        return read_csv(path)
    head = _read_head(path, name)
    engine = _read_engine(head, name)
    try:
        # load() inside the with block: every value is in memory when the file closes.
        with xr.open_dataset(path, engine=engine) as ds:
            ds.load()
    except Exception as error:  # any reader failure is a property of the file
        raise InputError(f"{name}: cannot read it as NetCDF ({_one_line(error)}); is the file truncated or corrupt?") from error
    return validate_grid(ds, source=name)


def save_grid(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Validate ``ds`` and write it as NetCDF to ``path`` (``.nc``), atomically.

    Nothing is written if the grid is invalid or the write fails; an existing file at
    ``path`` is replaced only by a complete new one. Returns the path written.
    """
    path = Path(path)
    name = str(path)
    if path.suffix.lower() not in NETCDF_SUFFIXES:
        raise InputError(f"{name}: save_grid writes NetCDF; give a path ending in .nc")
    grid = validate_grid(ds, source=name)
    engine = _write_engine(name)
    try:
        with atomic_path(path) as tmp:
            grid.to_netcdf(tmp, engine=engine, format="NETCDF4")
    except (TypeError, ValueError, OSError, RuntimeError) as error:
        raise InputError(f"{name}: cannot write the grid as NetCDF: {_one_line(error)}") from error
    return path


def _read_head(path: Path, name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(8)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not a loss grid file") from None
    except OSError as error:
        raise InputError(f"{name}: cannot read the file ({error.strerror or _one_line(error)})") from None


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _read_engine(head: bytes, name: str) -> str:
    """Choose a reader from the file's signature, so a non-NetCDF file gets a plain answer."""
    if not head:
        raise InputError(f"{name}: the file is empty; expected a NetCDF loss grid")
    if head.startswith(_NETCDF3_SIGNATURES):
        return "netcdf4" if _have("netCDF4") else "scipy"
    if head.startswith(_HDF5_SIGNATURE):
        # h5netcdf needs h5py, which is not always installed next to it.
        if _have("netCDF4"):
            return "netcdf4"
        if _have("h5netcdf") and _have("h5py"):
            return "h5netcdf"
        raise InputError(f"{name}: reading NetCDF-4 needs the netCDF4 package, which is not installed")
    raise InputError(f"{name}: not a NetCDF file (it does not start with a NetCDF or HDF5 signature)")


def _write_engine(name: str) -> str:
    if _have("netCDF4"):
        return "netcdf4"
    if _have("h5netcdf") and _have("h5py"):
        return "h5netcdf"
    raise InputError(f"{name}: writing NetCDF needs the netCDF4 package, which is not installed")


# ---------------------------------------------------------------------------
# CSV


def read_csv(path: str | os.PathLike) -> xr.Dataset:
    """Read a loss grid from a wide or a long CSV file (detected from the header).

    Wide: one row per run, columns ``run``, optional ``seed`` and ``split``,
    ``data_<source>`` for each source, ``loss_<target>`` for each target and optional
    ``loss_se_<target>`` (a ``loss_se_<x>`` column is the standard error of ``loss_<x>``
    when that column exists, else the loss of a domain named ``se_<x>``).

    Long: one row per (run, domain), columns ``run``, optional ``seed`` and ``split``,
    ``domain``, ``data``, ``loss`` and optional ``loss_se``; the domains are both the
    sources and the targets, and a domain missing from a run has 0 data and NaN loss.

    Empty loss / loss_se cells are NaN (not evaluated); empty data cells are an error.
    Cells are stripped of surrounding spaces; columns outside these are ignored.
    """
    path = Path(path)
    name = str(path)
    rows = _csv_rows(path, name)
    if not rows:
        raise InputError(f"{name}: the file is empty; expected a header line and one line per run")
    header_line, header = rows[0]
    header = [h.strip() for h in header]
    seen: dict[str, int] = {}
    for k, column in enumerate(header):
        if not column:
            raise InputError(f"{name} line {header_line}: column {k + 1} has no name")
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in column):
            raise InputError(f"{name} line {header_line}: column name {column!r} contains a control character")
        if column in seen:
            raise InputError(f"{name} line {header_line}: column {column!r} appears twice (columns {seen[column] + 1} and {k + 1})")
        seen[column] = k
    body = []
    for line, row in rows[1:]:
        cells = [c.strip() for c in row]
        if not any(cells):
            continue  # blank line
        if len(cells) != len(header):
            raise InputError(f"{name} line {line}: {len(cells)} fields, but the header has {len(header)}")
        body.append((line, dict(zip(header, cells))))

    is_long = any(c in seen for c in ("domain", "data", "loss"))
    is_wide = any(c.startswith(("data_", "loss_")) and c != "loss_se" for c in header)
    if is_long and is_wide:
        raise InputError(
            f"{name} line {header_line}: the header mixes long columns (domain, data, loss) "
            "with wide ones (data_<domain>, loss_<domain>); use one form"
        )
    if not is_long and not is_wide:
        raise InputError(
            f"{name} line {header_line}: not a loss grid CSV; expected wide columns run, data_<domain>..., "
            "loss_<domain>... or long columns run, domain, data, loss"
        )
    if "run" not in seen:
        raise InputError(f"{name} line {header_line}: missing column 'run'")
    if not body:
        raise InputError(f"{name}: no runs (the file has a header and no rows)")
    ds = _read_long(name, header_line, seen, body) if is_long else _read_wide(name, header_line, header, body)
    return validate_grid(ds, source=name)


def _csv_rows(path: Path, name: str) -> list[tuple[int, list[str]]]:
    """All rows of the file with the line number each ends on (1-based)."""
    rows = []
    try:
        # utf-8-sig: spreadsheets often start the file with a byte-order mark.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                for row in reader:
                    rows.append((reader.line_num, row))
            except csv.Error as error:
                raise InputError(f"{name} line {reader.line_num}: {_one_line(error)}") from None
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not a CSV file") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{name}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise InputError(f"{name}: cannot read the file ({error.strerror or _one_line(error)})") from None
    return rows


def _number(name: str, line: int, column: str, cell: str, *, required: bool) -> float:
    if cell == "":
        if required:
            raise InputError(f"{name} line {line}: {column} is empty; write 0 for no data")
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise InputError(f"{name} line {line}: {column} is {cell!r}, not a number") from None


def _run_fields(name: str, line: int, row: dict[str, str]) -> tuple[str, int | None, str | None]:
    """The run id, seed and split of one row (seed/split None when the column is absent)."""
    run = row["run"]
    if not run:
        raise InputError(f"{name} line {line}: run is empty")
    seed = None
    if "seed" in row:
        seed = _as_int(row["seed"]) if row["seed"] else None
        if seed is None:
            raise InputError(f"{name} line {line}: seed is {row['seed']!r}, not an integer")
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise InputError(f"{name} line {line}: split is {split!r}; a split is 'fit' or 'holdout'")
    return run, seed, split


def _grid_from_columns(runs, seeds, splits, sources, targets, data, loss, loss_se) -> xr.Dataset:
    coords = {"run": ("run", np.array(runs, dtype=object)), "source": ("source", np.array(sources, dtype=object)),
              "target": ("target", np.array(targets, dtype=object))}
    if seeds is not None:
        coords["seed"] = ("run", np.array(seeds, dtype=np.int64))
    if splits is not None:
        coords["split"] = ("run", np.array(splits, dtype=object))
    data_vars = {"data": (("run", "source"), data), "loss": (("run", "target"), loss)}
    if loss_se is not None:
        data_vars["loss_se"] = (("run", "target"), loss_se)
    return xr.Dataset(data_vars, coords=coords)


def _read_wide(name: str, header_line: int, header: list[str], body) -> xr.Dataset:
    columns = set(header)
    # loss_se_<x> is a standard error only if loss_<x> exists; otherwise it is the loss
    # of a domain called se_<x>.
    se_cols = {c[len("loss_se_"):]: c for c in header if c.startswith("loss_se_") and f"loss_{c[len('loss_se_'):]}" in columns}
    loss_cols = {c[len("loss_"):]: c for c in header if c.startswith("loss_") and c not in se_cols.values()}
    data_cols = {c[len("data_"):]: c for c in header if c.startswith("data_")}
    for domain, column in [*data_cols.items(), *loss_cols.items()]:
        if not domain:
            raise InputError(f"{name} line {header_line}: column {column!r} names no domain")
    for domain, column in se_cols.items():
        if domain not in loss_cols:
            raise InputError(f"{name} line {header_line}: column {column!r} is ambiguous (is loss_{domain} a loss or a standard error?)")
    if not data_cols:
        raise InputError(f"{name} line {header_line}: missing data_<source> columns (the data amounts of each run)")
    if not loss_cols:
        raise InputError(f"{name} line {header_line}: missing loss_<target> columns (the losses of each run)")

    runs, seeds, splits, first_line = [], [], [], {}
    data = np.zeros((len(body), len(data_cols)))
    loss = np.full((len(body), len(loss_cols)), np.nan)
    loss_se = np.full(loss.shape, np.nan)
    for i, (line, row) in enumerate(body):
        run, seed, split = _run_fields(name, line, row)
        if run in first_line:
            raise InputError(f"{name} line {line}: run {run!r} repeats line {first_line[run]}; a wide CSV has one line per run")
        first_line[run] = line
        runs.append(run)
        seeds.append(seed)
        splits.append(split)
        for j, column in enumerate(data_cols.values()):
            data[i, j] = _number(name, line, column, row[column], required=True)
        for j, (domain, column) in enumerate(loss_cols.items()):
            loss[i, j] = _number(name, line, column, row[column], required=False)
            if domain in se_cols:
                loss_se[i, j] = _number(name, line, se_cols[domain], row[se_cols[domain]], required=False)
    return _grid_from_columns(
        runs,
        seeds if "seed" in columns else None,
        splits if "split" in columns else None,
        list(data_cols),
        list(loss_cols),
        data,
        loss,
        loss_se if se_cols else None,
    )


def _read_long(name: str, header_line: int, seen: dict[str, int], body) -> xr.Dataset:
    missing = [c for c in ("run", "domain", "data", "loss") if c not in seen]
    if missing:
        raise InputError(
            f"{name} line {header_line}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
            "a long CSV has columns run, domain, data, loss (and optional seed, split, loss_se)"
        )
    has_se = "loss_se" in seen
    run_info: dict[str, tuple[int, int | None, str | None]] = {}  # run -> (first line, seed, split)
    domains: dict[str, None] = {}  # insertion-ordered set
    cells: dict[tuple[str, str], tuple[int, tuple[float, float, float]]] = {}
    for line, row in body:
        run, seed, split = _run_fields(name, line, row)
        if run in run_info:
            first, seed0, split0 = run_info[run]
            if seed != seed0:
                raise InputError(f"{name} line {line}: run {run!r} has seed {seed} here but {seed0} on line {first}; a run has one seed")
            if split != split0:
                raise InputError(f"{name} line {line}: run {run!r} has split {split!r} here but {split0!r} on line {first}; a run has one split")
        else:
            run_info[run] = (line, seed, split)
        domain = row["domain"]
        if not domain:
            raise InputError(f"{name} line {line}: domain is empty")
        values = (
            _number(name, line, "data", row["data"], required=True),
            _number(name, line, "loss", row["loss"], required=False),
            _number(name, line, "loss_se", row["loss_se"], required=False) if has_se else math.nan,
        )
        key = (run, domain)
        if key in cells:
            first, before = cells[key]
            # An exact repeat is harmless; a different one leaves no way to choose.
            if not all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(values, before)):
                raise InputError(f"{name} line {line}: run {run!r}, domain {domain!r} repeats line {first} with different values")
            continue
        cells[key] = (line, values)
        domains[domain] = None

    runs, domain_list = list(run_info), list(domains)
    run_index = {r: i for i, r in enumerate(runs)}
    domain_index = {d: j for j, d in enumerate(domain_list)}
    data = np.zeros((len(runs), len(domain_list)))
    loss = np.full(data.shape, np.nan)
    loss_se = np.full(data.shape, np.nan)
    for (run, domain), (_, (d, l, se)) in cells.items():
        i, j = run_index[run], domain_index[domain]
        data[i, j], loss[i, j], loss_se[i, j] = d, l, se
    return _grid_from_columns(
        runs,
        [run_info[r][1] for r in runs] if "seed" in seen else None,
        [run_info[r][2] for r in runs] if "split" in seen else None,
        domain_list,
        domain_list,
        data,
        loss,
        loss_se if has_se else None,
    )


# ---------------------------------------------------------------------------
# views and summaries


def run_budgets(ds: xr.Dataset) -> xr.DataArray:
    """The budget of each run: its data summed over the sources (dim ``run``)."""
    return ds["data"].sum("source").rename("budget")


def select_split(ds: xr.Dataset, split: str) -> xr.Dataset:
    """The runs of ``ds`` in ``split`` (``"fit"`` or ``"holdout"``); a grid without a
    ``split`` coordinate is all fit runs."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; a split is 'fit' or 'holdout'")
    if "split" not in ds.coords:
        return ds.copy() if split == "fit" else ds.isel(run=slice(0, 0))
    # isel, not where(drop=True): where would broadcast run-free variables such as
    # baseline_loss along run.
    return ds.isel(run=np.flatnonzero(ds["split"].values == split))


def data_scale(ds: xr.Dataset, source: str = "grid") -> float:
    """D0, the law's data scale: the median of the non-zero data amounts over the fit runs."""
    values = np.asarray(select_split(ds, "fit")["data"].values, dtype=np.float64).ravel()
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        raise InputError(f"{source}: no fit run has any non-zero data, so the data scale (median non-zero amount) is undefined")
    return float(np.median(values))


def grid_summary(ds: xr.Dataset) -> dict:
    """Counts and ranges that describe a grid (plain Python values, ready for JSON)."""
    grid = validate_grid(ds)
    budgets = run_budgets(grid).values
    splits = grid["split"].values

    def budget_range(mask):
        return [float(budgets[mask].min()), float(budgets[mask].max())] if mask.any() else None

    return {
        "runs": int(grid.sizes["run"]),
        "sources": [str(s) for s in grid["source"].values],
        "targets": [str(t) for t in grid["target"].values],
        "splits": {s: int((splits == s).sum()) for s in SPLITS},
        "budgets": _distinct(budgets),
        "budget_range": {s: budget_range(splits == s) for s in SPLITS},
        "seeds": sorted({int(s) for s in grid["seed"].values}),
        "data_unit": grid.attrs["data_unit"],
        "loss_name": grid.attrs["loss_name"],
        "missing_losses": int(np.isnan(grid["loss"].values).sum()),
    }


def _distinct(values: np.ndarray) -> list[float]:
    """Sorted distinct values, merging those equal up to rounding (sums of the same budget
    split differently over sources can differ in the last bits)."""
    out: list[float] = []
    for v in np.sort(values):
        if not out or not math.isclose(v, out[-1], rel_tol=1e-9, abs_tol=0.0):
            out.append(float(v))
    return out


def grid_fingerprint(grid: xr.Dataset) -> str:
    """A short hash of a grid's runs, domains, data and losses: ties a posterior to its grid."""
    h = hashlib.sha256()
    for name in ("run", "source", "target"):
        h.update("\x1f".join(map(str, grid[name].values)).encode())
    for name in ("data", "loss"):
        h.update(np.ascontiguousarray(grid[name].values, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def self_mask_for(sources, targets) -> np.ndarray:
    """(I, J): 1 where source i *is* target j (its own data), else 0."""
    return np.array([[1.0 if s == t else 0.0 for t in targets] for s in sources])

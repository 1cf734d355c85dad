"""Tests for the loss grid contract: building, validation, NetCDF and CSV files, summaries."""

from __future__ import annotations

import csv
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayescale.data import grid as g
from bayescale.errors import InputError
from bayescale.render import text as render_text

NAN = float("nan")


def small_grid(**kwargs) -> xr.Dataset:
    """Four runs, sources ct/mri, targets ct/mri/pet (pet never trained on), one holdout run."""
    args = dict(
        run=["r1", "r2", "r3", "r12"],
        source=["ct", "mri"],
        target=["ct", "mri", "pet"],
        data=[[100.0, 0.0], [0.0, 100.0], [50.0, 50.0], [400.0, 400.0]],
        loss=[[0.5, 0.9, 0.8], [0.95, 0.4, NAN], [0.6, 0.5, 0.7], [0.3, 0.25, 0.5]],
        seed=[0, 0, 1, 0],
        split=["fit", "fit", "fit", "holdout"],
        loss_se=[[0.01, 0.02, 0.01], [0.02, 0.01, NAN], [0.01, 0.01, 0.01], [0.005, 0.004, 0.01]],
        baseline_loss=[1.0, 1.1, NAN],
        attrs={"loss_name": "mae_masked_mse", "data_unit": "volumes", "description": "a small grid",
               "true_params": '{"E": [0.1, 0.2]}'},
    )
    args.update(kwargs)
    return g.make_grid(**args)


def assert_one_line_error(excinfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def fmt(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def write_wide_csv(grid: xr.Dataset, path: Path, *, with_se: bool = True) -> None:
    """The wide CSV form of a grid (NaN losses as empty cells)."""
    sources = [str(s) for s in grid["source"].values]
    targets = [str(t) for t in grid["target"].values]
    se = with_se and "loss_se" in grid
    header = ["run", "seed", "split"] + [f"data_{s}" for s in sources] + [f"loss_{t}" for t in targets]
    header += [f"loss_se_{t}" for t in targets] if se else []
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, run in enumerate(grid["run"].values):
            row = [str(run), int(grid["seed"].values[i]), str(grid["split"].values[i])]
            row += [fmt(v) for v in grid["data"].values[i]] + [fmt(v) for v in grid["loss"].values[i]]
            row += [fmt(v) for v in grid["loss_se"].values[i]] if se else []
            writer.writerow(row)


def write_long_csv(grid: xr.Dataset, path: Path) -> None:
    """The long CSV form of a grid whose sources are its targets."""
    domains = [str(d) for d in grid["source"].values]
    assert domains == [str(t) for t in grid["target"].values]
    se = "loss_se" in grid
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "seed", "split", "domain", "data", "loss"] + (["loss_se"] if se else []))
        for i, run in enumerate(grid["run"].values):
            for j, domain in enumerate(domains):
                row = [str(run), int(grid["seed"].values[i]), str(grid["split"].values[i]), domain,
                       fmt(grid["data"].values[i, j]), fmt(grid["loss"].values[i, j])]
                row += [fmt(grid["loss_se"].values[i, j])] if se else []
                writer.writerow(row)


def csv_view(grid: xr.Dataset, *, with_se: bool = True) -> xr.Dataset:
    """What a CSV keeps of a grid: no attrs beyond the defaults, no baseline_loss."""
    view = grid.drop_vars(["baseline_loss"] + ([] if with_se else ["loss_se"]), errors="ignore")
    view.attrs = dict(g.DEFAULT_ATTRS)
    return g.validate_grid(view)


def open_fds_to(path: Path) -> int:
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                count += 1
        except OSError:
            pass
    return count


# ---------------------------------------------------------------------------
# building and normalising


def test_make_grid_fills_defaults_and_normalises_types():
    grid = g.make_grid(["a", "b"], ["x"], ["x", "y"], [[1], [2]], [[1.0, 2.0], [0.5, NAN]])
    assert grid["seed"].values.tolist() == [0, 0] and grid["seed"].dtype == np.int64
    assert grid["split"].values.tolist() == ["fit", "fit"]
    assert grid["data"].dtype == np.float64 and grid["loss"].dtype == np.float64
    for name in ("run", "source", "target", "split"):
        assert grid[name].dtype.kind == "U", name
    assert grid.attrs == {"loss_name": "loss", "data_unit": "units", "description": ""}
    assert grid["data"].dims == ("run", "source") and grid["loss"].dims == ("run", "target")


def test_make_grid_rejects_wrong_shapes_and_a_bare_string():
    with pytest.raises(InputError) as excinfo:
        g.make_grid(["a", "b"], ["x"], ["x"], [[1, 2], [3, 4]], [[1.0], [1.0]])
    assert_one_line_error(excinfo, "make_grid", "data", "(2, 2)")
    with pytest.raises(InputError) as excinfo:
        g.make_grid("ab", ["x"], ["x"], [[1], [2]], [[1.0], [1.0]])
    assert_one_line_error(excinfo, "make_grid", "run")


def test_validate_transposes_dims_keeps_extras_and_is_idempotent():
    grid = small_grid()
    shuffled = grid.transpose("target", "source", "run")
    shuffled["steps"] = ("run", np.array([10, 20, 30, 40]))
    shuffled = shuffled.assign_coords(budget_note=("run", np.array(["a", "b", "c", "d"])))
    out = g.validate_grid(shuffled)
    assert out["data"].dims == ("run", "source") and out["loss"].dims == ("run", "target")
    assert out["loss_se"].dims == ("run", "target")
    assert out["steps"].values.tolist() == [10, 20, 30, 40]
    assert "budget_note" in out.coords
    assert out.attrs["true_params"] == '{"E": [0.1, 0.2]}'
    xr.testing.assert_identical(g.validate_grid(out), out)
    np.testing.assert_array_equal(out["data"].values, grid["data"].values)


def test_validate_returns_a_copy():
    grid = small_grid()
    out = g.validate_grid(grid)
    out["data"].values[0, 0] = -1.0
    assert grid["data"].values[0, 0] == 100.0


def test_validate_accepts_integer_valued_float_seeds_and_a_never_evaluated_target():
    grid = small_grid()
    grid = grid.assign_coords(seed=("run", np.array([0.0, 1.0, 2.0, 3.0])))
    grid["loss"] = grid["loss"].where(grid["target"] != "pet")
    out = g.validate_grid(grid)
    assert out["seed"].dtype == np.int64 and out["seed"].values.tolist() == [0, 1, 2, 3]
    assert np.isnan(out["loss"].sel(target="pet")).all()


# ---------------------------------------------------------------------------
# bad grids: each case is (a change to a good grid, fragments the one-line message names)


def _set(var, run, domain, value, dim="target"):
    def change(ds):
        ds = ds.copy(deep=True)
        ds[var].loc[{"run": run, dim: domain}] = value
        return ds
    return change


def _rename_coord(dim, index, new):
    def change(ds):
        names = [str(n) for n in ds[dim].values]
        names[index] = new
        return ds.assign_coords({dim: names})
    return change


BAD_GRIDS = {
    "not a dataset": (lambda ds: ds["loss"], ["grid.nc", "Dataset"]),
    "missing data": (lambda ds: ds.drop_vars("data"), ["grid.nc", "'data'"]),
    "missing loss": (lambda ds: ds.drop_vars("loss"), ["grid.nc", "'loss'"]),
    "data wrong dims": (lambda ds: ds.rename(source="domain"), ["grid.nc", "data", "domain"]),
    "loss wrong dims": (lambda ds: ds.assign(loss=ds["loss"].isel(target=0)), ["grid.nc", "loss", "dims"]),
    "loss_se wrong dims": (lambda ds: ds.assign(loss_se=ds["loss_se"].isel(run=0)), ["grid.nc", "loss_se", "dims"]),
    "no runs": (lambda ds: ds.isel(run=slice(0, 0)), ["grid.nc", "no runs"]),
    "no sources": (lambda ds: ds.isel(source=slice(0, 0)), ["grid.nc", "no sources"]),
    "no targets": (lambda ds: ds.isel(target=slice(0, 0)), ["grid.nc", "no targets"]),
    "no run coordinate": (lambda ds: ds.drop_vars("run"), ["grid.nc", "'run'"]),
    "duplicate run": (_rename_coord("run", 2, "r1"), ["grid.nc", "'r1'", "unique"]),
    "duplicate source": (_rename_coord("source", 1, "ct"), ["grid.nc", "'ct'", "unique"]),
    "duplicate target": (_rename_coord("target", 2, "mri"), ["grid.nc", "'mri'", "unique"]),
    "empty run id": (_rename_coord("run", 1, ""), ["grid.nc", "run id #2", "empty"]),
    "blank source name": (_rename_coord("source", 0, "  "), ["grid.nc", "source name #1", "empty"]),
    "empty target name": (_rename_coord("target", 2, ""), ["grid.nc", "target name #3", "empty"]),
    "newline in a name": (_rename_coord("target", 0, "c\nt"), ["grid.nc", "'c\\nt'", "control"]),
    "negative data": (_set("data", "r3", "mri", -5.0, "source"), ["grid.nc", "run 'r3'", "source 'mri'", "-5.0"]),
    "nan data": (_set("data", "r2", "ct", NAN, "source"), ["grid.nc", "run 'r2'", "source 'ct'", "nan"]),
    "inf data": (_set("data", "r1", "ct", math.inf, "source"), ["grid.nc", "run 'r1'", "source 'ct'", "inf"]),
    "negative loss": (_set("loss", "r12", "ct", -0.3), ["grid.nc: loss on run 'r12', target 'ct' is -0.3; losses must"]),
    "zero loss": (_set("loss", "r2", "mri", 0.0), ["grid.nc", "run 'r2'", "target 'mri'", "0.0", "> 0"]),
    "inf loss": (_set("loss", "r3", "pet", math.inf), ["grid.nc", "run 'r3'", "target 'pet'", "inf"]),
    "negative loss_se": (_set("loss_se", "r1", "mri", -0.1), ["grid.nc", "loss_se", "run 'r1'", "target 'mri'"]),
    "inf loss_se": (_set("loss_se", "r3", "ct", math.inf), ["grid.nc", "loss_se", "run 'r3'", "target 'ct'"]),
    "zero baseline": (lambda ds: ds.assign(baseline_loss=ds["baseline_loss"].where(ds["target"] != "mri", 0.0)),
                      ["grid.nc", "baseline_loss", "target 'mri'"]),
    "bad split": (lambda ds: ds.assign_coords(split=("run", ["fit", "train", "fit", "holdout"])),
                  ["grid.nc", "run 'r2'", "'train'"]),
    "fractional seed": (lambda ds: ds.assign_coords(seed=("run", [0.0, 1.5, 2.0, 3.0])), ["grid.nc", "run 'r2'", "1.5"]),
    "nan seed": (lambda ds: ds.assign_coords(seed=("run", [0.0, 1.0, NAN, 3.0])), ["grid.nc", "run 'r3'", "nan"]),
    "text data": (lambda ds: ds.assign(data=ds["data"].astype(str)), ["grid.nc", "data", "numbers"]),
    "no finite loss": (lambda ds: ds.assign(loss=ds["loss"] * NAN), ["grid.nc", "no run has a finite loss"]),
    "attr not text": (lambda ds: ds.assign_attrs(data_unit=3), ["grid.nc", "data_unit"]),
}


@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_validate_rejects_bad_grids_with_one_line_naming_the_culprit(case):
    change, fragments = BAD_GRIDS[case]
    with pytest.raises(InputError) as excinfo:
        g.validate_grid(change(small_grid()), source="grid.nc")
    assert_one_line_error(excinfo, *fragments)


def test_validate_counts_the_other_bad_cells():
    grid = small_grid()
    grid["loss"] = -grid["loss"]
    with pytest.raises(InputError) as excinfo:
        g.validate_grid(grid, source="grid.nc")
    assert_one_line_error(excinfo, "run 'r1'", "target 'ct'", "more cells like it")


# ---------------------------------------------------------------------------
# NetCDF files


def test_netcdf_round_trip_is_identical(tmp_path):
    grid = small_grid(run=["r1", "r2", "é-3", "r12"], source=["ct", "mri ✓"])
    path = tmp_path / "grid.nc"
    assert g.save_grid(grid, path) == path
    loaded = g.load_grid(path)
    xr.testing.assert_identical(loaded, grid)
    assert loaded["run"].dtype.kind == "U" and loaded["split"].dtype.kind == "U"
    assert loaded["seed"].dtype == np.int64
    # and again: what load returns saves and loads to the same thing
    g.save_grid(loaded, tmp_path / "again.nc")
    xr.testing.assert_identical(g.load_grid(tmp_path / "again.nc"), grid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.nc", "grid.nc"]  # no temp files left


def test_load_fills_defaults_for_a_minimal_file_written_elsewhere(tmp_path):
    ds = xr.Dataset(
        {"loss": (("target", "run"), [[1.0, 2.0]]), "data": (("source", "run"), [[1, 2]])},
        coords={"run": ["a", "b"], "source": ["x"], "target": ["x"]},
    )
    path = tmp_path / "minimal.nc"
    ds.to_netcdf(path, engine="netcdf4")
    grid = g.load_grid(path)
    assert grid["seed"].values.tolist() == [0, 0] and grid["split"].values.tolist() == ["fit", "fit"]
    assert grid["data"].dims == ("run", "source") and grid["data"].dtype == np.float64
    assert grid.attrs["loss_name"] == "loss"


def test_load_of_an_invalid_netcdf_grid_names_the_file(tmp_path):
    grid = small_grid()
    grid["loss"].values[1, 0] = -1.0  # bypass validation
    path = tmp_path / "bad.nc"
    grid.to_netcdf(path, engine="netcdf4")
    with pytest.raises(InputError) as excinfo:
        g.load_grid(path)
    assert_one_line_error(excinfo, "bad.nc", "run 'r2'", "target 'ct'")


def _truncated(tmp_path):
    whole = tmp_path / "whole.nc"
    g.save_grid(small_grid(), whole)
    raw = whole.read_bytes()
    path = tmp_path / "truncated.nc"
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _text(tmp_path):
    path = tmp_path / "text.nc"
    path.write_text("run,data_ct,loss_ct\nr1,1,0.5\n")
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.nc"
    path.write_bytes(b"")
    return path


def _header_only(tmp_path):
    path = tmp_path / "header.nc"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    return path


def _missing(tmp_path):
    return tmp_path / "missing.nc"


def _directory(tmp_path):
    path = tmp_path / "folder.nc"
    path.mkdir()
    return path


def _wrong_suffix(tmp_path):
    path = tmp_path / "grid.parquet"
    path.write_bytes(b"PAR1")
    return path


@pytest.mark.parametrize(
    "make, fragment",
    [
        (_truncated, "truncated.nc"),
        (_text, "not a NetCDF file"),
        (_empty, "empty"),
        (_header_only, "header.nc"),
        (_missing, "no such file"),
        (_directory, "directory"),
        (_wrong_suffix, "unsupported file type '.parquet'"),
    ],
)
def test_load_rejects_unreadable_files_with_one_line(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(InputError) as excinfo:
        g.load_grid(path)
    assert_one_line_error(excinfo, str(path), fragment)
    assert excinfo.value.__traceback__ is not None


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_load_leaves_no_file_open(tmp_path):
    good = tmp_path / "good.nc"
    g.save_grid(small_grid(), good)
    bad_grid = small_grid()
    bad_grid["data"].values[0, 0] = -1.0
    invalid = tmp_path / "invalid.nc"
    bad_grid.to_netcdf(invalid, engine="netcdf4")
    truncated = _truncated(tmp_path)
    csv_path = tmp_path / "grid.csv"
    write_wide_csv(small_grid(), csv_path)
    for path in (good, invalid, truncated, csv_path):
        try:
            grid = g.load_grid(path)
        except InputError:
            pass
        else:
            assert float(grid["data"].sum()) > 0  # the values are in memory
        assert open_fds_to(path) == 0, path
    os.remove(good)  # would fail on some systems if a handle stayed open
    assert not good.exists()


def test_save_of_an_invalid_grid_writes_nothing(tmp_path):
    grid = small_grid()
    grid["data"].values[2, 1] = -1.0
    path = tmp_path / "out" / "grid.nc"
    with pytest.raises(InputError) as excinfo:
        g.save_grid(grid, path)
    assert_one_line_error(excinfo, "grid.nc", "run 'r3'", "source 'mri'")
    assert not path.exists()
    assert not path.parent.exists() or list(path.parent.iterdir()) == []


def test_save_of_an_invalid_grid_keeps_the_old_file(tmp_path):
    path = tmp_path / "grid.nc"
    g.save_grid(small_grid(), path)
    before = path.read_bytes()
    with pytest.raises(InputError):
        g.save_grid(small_grid().drop_vars("loss"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.nc"]


def test_save_wraps_unwritable_attrs_and_leaves_no_file(tmp_path):
    grid = small_grid().assign_attrs(extra={"not": "netcdf"})
    path = tmp_path / "grid.nc"
    with pytest.raises(InputError) as excinfo:
        g.save_grid(grid, path)
    assert_one_line_error(excinfo, str(path), "cannot write")
    assert list(tmp_path.iterdir()) == []


def test_save_needs_a_netcdf_path(tmp_path):
    with pytest.raises(InputError) as excinfo:
        g.save_grid(small_grid(), tmp_path / "grid.csv")
    assert_one_line_error(excinfo, "grid.csv", ".nc")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# CSV files


def test_wide_csv_round_trip(tmp_path):
    grid = small_grid()
    path = tmp_path / "runs.csv"
    write_wide_csv(grid, path)
    xr.testing.assert_identical(g.read_csv(path), csv_view(grid))
    xr.testing.assert_identical(g.load_grid(path), csv_view(grid))


def test_wide_csv_without_optional_columns(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("run,data_ct,data_mri,loss_ct,loss_mri\nr1,10,0,0.5,\n r2 , 0 , 10 ,0.9,0.4\n\n")
    grid = g.read_csv(path)
    assert grid["run"].values.tolist() == ["r1", "r2"]
    assert grid["seed"].values.tolist() == [0, 0] and grid["split"].values.tolist() == ["fit", "fit"]
    assert "loss_se" not in grid
    assert np.isnan(grid["loss"].values[0, 1]) and grid["loss"].values[1, 1] == 0.4


def test_wide_csv_loss_se_columns_are_not_domains(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text(
        "run,data_x,data_se_y,loss_x,loss_se_x,loss_se_y\n"
        "r1,1,2,0.5,0.01,0.7\n"
        "r2,3,4,0.4,,0.6\n"
    )
    grid = g.read_csv(path)
    # loss_se_x is the standard error of loss_x; loss_se_y is the loss of domain se_y
    assert grid["source"].values.tolist() == ["x", "se_y"]
    assert grid["target"].values.tolist() == ["x", "se_y"]
    np.testing.assert_array_equal(grid["loss"].values, [[0.5, 0.7], [0.4, 0.6]])
    np.testing.assert_array_equal(grid["loss_se"].values, [[0.01, NAN], [NAN, NAN]])


def test_long_csv_round_trip(tmp_path):
    grid = small_grid(target=["ct", "mri"], loss=[[0.5, 0.9], [0.95, NAN], [0.6, 0.5], [0.3, 0.25]],
                      loss_se=[[0.01, 0.02], [0.02, NAN], [0.01, 0.01], [0.005, 0.004]], baseline_loss=None)
    path = tmp_path / "long.csv"
    write_long_csv(grid, path)
    xr.testing.assert_identical(g.read_csv(path), csv_view(grid))


def test_long_csv_fills_missing_cells_and_accepts_exact_repeats(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text(
        "run,domain,data,loss\n"
        "r1,ct,10,0.5\n"
        "r1,mri,0,0.9\n"
        "r2,mri,5,0.4\n"
        "r1,ct,10,0.5\n"
    )
    grid = g.read_csv(path)
    assert grid["source"].values.tolist() == ["ct", "mri"] == grid["target"].values.tolist()
    np.testing.assert_array_equal(grid["data"].values, [[10, 0], [0, 5]])
    np.testing.assert_array_equal(grid["loss"].values, [[0.5, 0.9], [NAN, 0.4]])


BAD_CSVS = {
    "non-numeric wide loss": (
        "run,data_ct,loss_ct\nr1,1,0.5\nr2,2,abc\n", ["runs.csv line 3: loss_ct is 'abc', not a number"]),
    "non-numeric wide data": ("run,data_ct,loss_ct\nr1,1e,0.5\n", ["runs.csv line 2", "data_ct", "'1e'"]),
    "empty data cell": ("run,data_ct,loss_ct\nr1,,0.5\n", ["runs.csv line 2", "data_ct", "empty"]),
    "non-numeric long loss": (
        "run,domain,data,loss\nr1,ct,1,0.5\nr1,mri,2,x\n", ["runs.csv line 3: loss is 'x', not a number"]),
    "missing run column": ("data_ct,loss_ct\n1,0.5\n", ["runs.csv line 1", "'run'"]),
    "missing long column": ("run,domain,loss\nr1,ct,0.5\n", ["runs.csv line 1", "'data'"]),
    "no loss columns": ("run,data_ct\nr1,1\n", ["runs.csv line 1", "loss_<target>"]),
    "neither form": ("a,b\n1,2\n", ["runs.csv line 1", "not a loss grid CSV"]),
    "empty file": ("", ["runs.csv", "empty"]),
    "header only": ("run,data_ct,loss_ct\n", ["runs.csv", "no runs"]),
    "duplicate column": ("run,data_ct,loss_ct,data_ct\nr1,1,0.5,2\n", ["runs.csv line 1", "'data_ct'", "twice"]),
    "ragged row": ("run,data_ct,loss_ct\nr1,1,0.5,7\n", ["runs.csv line 2", "4 fields"]),
    "duplicate wide run": ("run,data_ct,loss_ct\nr1,1,0.5\nr1,2,0.4\n", ["runs.csv line 3", "'r1'", "line 2"]),
    "empty run": ("run,data_ct,loss_ct\n,1,0.5\n", ["runs.csv line 2", "run is empty"]),
    "bad seed": ("run,seed,data_ct,loss_ct\nr1,one,1,0.5\n", ["runs.csv line 2", "seed", "'one'"]),
    "bad split": ("run,split,data_ct,loss_ct\nr1,test,1,0.5\n", ["runs.csv line 2", "'test'"]),
    "conflicting long rows": (
        "run,domain,data,loss\nr1,ct,1,0.5\nr1,mri,1,0.6\nr1,ct,1,0.7\n",
        ["runs.csv line 4", "run 'r1'", "domain 'ct'", "line 2"]),
    "inconsistent long seed": (
        "run,seed,domain,data,loss\nr1,0,ct,1,0.5\nr1,1,mri,1,0.6\n", ["runs.csv line 3", "run 'r1'", "seed", "line 2"]),
    "inconsistent long split": (
        "run,split,domain,data,loss\nr1,fit,ct,1,0.5\nr1,holdout,mri,1,0.6\n",
        ["runs.csv line 3", "run 'r1'", "split", "line 2"]),
    "mixed forms": ("run,domain,data,loss,data_ct\nr1,ct,1,0.5,1\n", ["runs.csv line 1", "mixes"]),
    "negative data (validation)": (
        "run,data_ct,data_mri,loss_ct\nr1,1,2,0.5\nr2,1,-2,0.5\n", ["runs.csv", "run 'r2'", "source 'mri'"]),
    "zero loss (validation)": ("run,domain,data,loss\nr1,ct,1,0\n", ["runs.csv", "run 'r1'", "target 'ct'"]),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_read_csv_rejects_bad_files_naming_line_and_column(tmp_path, case):
    text, fragments = BAD_CSVS[case]
    path = tmp_path / "runs.csv"
    path.write_text(text)
    with pytest.raises(InputError) as excinfo:
        g.read_csv(path)
    assert_one_line_error(excinfo, *fragments)


def test_read_csv_of_a_missing_or_binary_file(tmp_path):
    with pytest.raises(InputError) as excinfo:
        g.read_csv(tmp_path / "none.csv")
    assert_one_line_error(excinfo, "none.csv", "no such file")
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(InputError) as excinfo:
        g.load_grid(path)
    assert_one_line_error(excinfo, "binary.csv")


# ---------------------------------------------------------------------------
# views and summaries


def test_budgets_splits_and_data_scale():
    grid = small_grid()
    budgets = g.run_budgets(grid)
    assert budgets.dims == ("run",) and budgets.values.tolist() == [100.0, 100.0, 100.0, 800.0]
    fit = g.select_split(grid, "fit")
    assert fit["run"].values.tolist() == ["r1", "r2", "r3"]
    assert fit["baseline_loss"].dims == ("target",)  # not broadcast along run
    assert g.select_split(grid, "holdout")["run"].values.tolist() == ["r12"]
    # median of the non-zero fit amounts 100, 100, 50, 50 (the holdout run's 400s are left out)
    assert g.data_scale(grid) == 75.0
    with pytest.raises(InputError) as excinfo:
        g.select_split(grid, "test")
    assert_one_line_error(excinfo, "'test'")


def test_select_split_without_a_split_coordinate():
    grid = small_grid().drop_vars("split")
    assert g.select_split(grid, "fit").sizes["run"] == 4
    assert g.select_split(grid, "holdout").sizes["run"] == 0


def test_data_scale_needs_some_fit_data():
    grid = small_grid(data=[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [400.0, 400.0]])
    with pytest.raises(InputError) as excinfo:
        g.data_scale(grid, source="grid.nc")
    assert_one_line_error(excinfo, "grid.nc", "non-zero")


def test_grid_summary_and_its_text():
    summary = g.grid_summary(small_grid())
    assert summary == {
        "runs": 4,
        "sources": ["ct", "mri"],
        "targets": ["ct", "mri", "pet"],
        "splits": {"fit": 3, "holdout": 1},
        "budgets": [100.0, 800.0],
        "budget_range": {"fit": [100.0, 100.0], "holdout": [800.0, 800.0]},
        "seeds": [0, 1],
        "data_unit": "volumes",
        "loss_name": "mae_masked_mse",
        "missing_losses": 1,
    }
    text = render_text.format_grid_summary(summary)
    assert "4 (3 fit, 1 holdout)" in text and "ct, mri, pet" in text and "volumes" in text
    assert "mae_masked_mse" in text and "1 of 12 cells" in text
    assert 4 <= len(text.splitlines()) <= 8


def test_grid_summary_merges_budgets_equal_up_to_rounding():
    grid = g.make_grid(["a", "b"], ["x", "y"], ["x"], [[0.1, 0.2], [0.3, 0.0]], [[1.0], [1.0]])
    assert g.grid_summary(grid)["budgets"] == [pytest.approx(0.3)]


# ---------------------------------------------------------------------------
# properties over random grids

NAMES = st.text(alphabet="abcdefgxyzé0123456789-", min_size=1, max_size=5)


@st.composite
def grids(draw, same_domains: bool = False):
    n_run = draw(st.integers(1, 5))
    runs = draw(st.lists(NAMES, min_size=n_run, max_size=n_run, unique=True))
    sources = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    targets = sources if same_domains else draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    amount = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)
    loss_value = st.one_of(st.floats(1e-6, 1e3, allow_nan=False, allow_infinity=False), st.just(NAN))
    data = [[draw(amount) for _ in sources] for _ in runs]
    loss = [[draw(loss_value) for _ in targets] for _ in runs]
    loss[0][0] = draw(st.floats(1e-6, 1e3, allow_nan=False, allow_infinity=False))  # one finite loss at least
    kwargs = {}
    if draw(st.booleans()):
        kwargs["loss_se"] = [[draw(st.one_of(st.floats(0, 1.0), st.just(NAN))) for _ in targets] for _ in runs]
    if draw(st.booleans()) and not same_domains:
        kwargs["baseline_loss"] = [draw(loss_value) for _ in targets]
        kwargs["attrs"] = {"description": draw(st.text(max_size=10).filter(lambda s: "\x00" not in s and s.isprintable())),
                           "true_params": '{"alpha": [0.3]}'}
    return g.make_grid(
        runs, sources, targets, data, loss,
        seed=[draw(st.integers(-(2**40), 2**40)) for _ in runs],
        split=[draw(st.sampled_from(g.SPLITS)) for _ in runs],
        **kwargs,
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grids())
def test_random_grids_round_trip_through_netcdf_and_wide_csv(grid):
    with tempfile.TemporaryDirectory() as folder:
        nc = Path(folder) / "grid.nc"
        g.save_grid(grid, nc)
        xr.testing.assert_identical(g.load_grid(nc), grid)
        wide = Path(folder) / "grid.csv"
        write_wide_csv(grid, wide)
        xr.testing.assert_identical(g.read_csv(wide), csv_view(grid))


@settings(max_examples=20, deadline=None)
@given(grids(same_domains=True))
def test_random_grids_round_trip_through_long_csv(grid):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.csv"
        write_long_csv(grid, path)
        xr.testing.assert_identical(g.read_csv(path), csv_view(grid))


@settings(max_examples=60, deadline=None)
@given(grids(), st.sampled_from(["negative data", "zero loss", "duplicate run"]), st.data())
def test_mutated_grids_are_rejected_naming_the_cell(grid, mutation, data):
    grid = grid.copy(deep=True)
    runs = [str(r) for r in grid["run"].values]
    i = data.draw(st.integers(0, len(runs) - 1))
    if mutation == "negative data":
        j = data.draw(st.integers(0, grid.sizes["source"] - 1))
        grid["data"].values[i, j] = -data.draw(st.floats(1e-9, 1e6))
        fragments = [f"run {runs[i]!r}", f"source {str(grid['source'].values[j])!r}"]
    elif mutation == "zero loss":
        j = data.draw(st.integers(0, grid.sizes["target"] - 1))
        grid["loss"].values[i, j] = 0.0
        fragments = [f"run {runs[i]!r}", f"target {str(grid['target'].values[j])!r}"]
    else:
        if len(runs) < 2:
            runs.append(runs[0] + "-copy")
            grid = xr.concat([grid, grid.isel(run=[0])], dim="run").assign_coords(run=runs)
        k = data.draw(st.integers(0, len(runs) - 1).filter(lambda k: k != i))
        runs[k] = runs[i]
        grid = grid.assign_coords(run=runs)
        fragments = [repr(runs[i]), "unique"]
    with pytest.raises(InputError) as excinfo:
        g.validate_grid(grid, source="mutant.nc")
    assert_one_line_error(excinfo, "mutant.nc", *fragments)

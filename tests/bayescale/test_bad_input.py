"""The bad-input battery: malformed files and flags through every command of the real CLI.

Every case must end the same way: exit status 2, exactly one non-empty line on stderr that
names the problem (the file, the flag or the domain), nothing on stdout, no traceback, and no
output file or temporary file left behind. The cases here complement the ones in
``test_cli.py`` (bad grids to ``grid info``/``fit``/``check``, a few ``predict``/``allocate``
flags) and ``tests/trainers/test_cli.py``; they do not repeat them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from bayescale.cli import app
from bayescale.data.grid import load_grid, save_grid
from bayescale.data.simulate import draw_world, simulate_grid

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


# ---------------------------------------------------------------------------------------- files


def _write_grid(path: Path, ds: xr.Dataset) -> Path:
    """Write ``ds`` as it is (no validation), the way a third-party tool would."""
    ds.to_netcdf(path)
    return path


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


WIDE_HEADER = "run,data_a,data_b,loss_a,loss_b\n"


@pytest.fixture(scope="module")
def mixing_fit(tmp_path_factory):
    """A real (very short) fit of the exponential mixing law: a valid posterior the transfer-only commands refuse."""
    from bayescale.laws import mixing
    from bayescale.inference.fit import fit
    from bayescale.inference.posterior import save_posterior

    rng = np.random.default_rng(3)
    t = rng.normal(0.0, 0.7, (3, 2))
    t[[0, 1], [0, 1]] = -3.0
    grid = mixing.simulate_mixing_grid(np.array([1.5, 2.0]), np.array([1.0, 0.8]), t, [0.01] * 2,
                                       sources=["a", "b", "c"], targets=["a", "b"], runs=30, holdout=6, seed=1)
    idata = fit(grid, law="mixing", chains=1, warmup=60, draws=60, seed=0)
    path = tmp_path_factory.mktemp("mixing") / "mixing_fit.nc"
    save_posterior(idata, path)
    return path


@pytest.fixture(scope="module")
def unaware_fits(tmp_path_factory, small_grid):
    """A real (very short) fit of the independent law to the small grid, and two copies that do not
    belong beside the small posterior: one over other domains (x1..x4), one of another grid."""
    from bayescale.inference.fit import fit
    from bayescale.inference.posterior import load_posterior, save_posterior

    folder = tmp_path_factory.mktemp("unaware")
    paths = {"unaware_fit": folder / "unaware_fit.nc", "unaware_other_domains": folder / "unaware_other_domains.nc",
             "unaware_other_grid": folder / "unaware_other_grid.nc"}
    save_posterior(fit(small_grid, law="independent", chains=1, warmup=60, draws=60, seed=0), paths["unaware_fit"])
    idata = load_posterior(paths["unaware_fit"])
    names = [f"x{k + 1}" for k in range(idata["posterior"].sizes["source"])]
    idata["posterior"] = xr.DataTree(idata["posterior"].to_dataset().assign_coords(source=names, target=names))
    save_posterior(idata, paths["unaware_other_domains"])
    idata = load_posterior(paths["unaware_fit"])
    idata.attrs["grid_fingerprint"] = "0123456789abcdef"
    save_posterior(idata, paths["unaware_other_grid"])
    return paths


@pytest.fixture(scope="module")
def bad(tmp_path_factory, small_files, mixing_fit, unaware_fits):
    """Every malformed input file, written once; a dict name -> path (plus the good grid and fit)."""
    folder = tmp_path_factory.mktemp("bad")
    grid_path, fit_path = small_files
    g = load_grid(grid_path)
    f: dict[str, Path] = {"grid": grid_path, "fit": fit_path, "mixing_fit": mixing_fit, **unaware_fits}

    # NetCDF grids that break the contract
    bad_g = g.copy(deep=True)
    bad_g["data"][3, 1] = np.nan
    f["nan_data"] = _write_grid(folder / "nan_data.nc", bad_g)
    bad_g = g.copy(deep=True)
    bad_g["loss"][2, 2] = np.inf
    f["inf_loss"] = _write_grid(folder / "inf_loss.nc", bad_g)
    sources = g["source"].values.copy()
    sources[1] = sources[0]
    f["duplicate_source"] = _write_grid(folder / "duplicate_source.nc", g.assign_coords(source=sources))
    f["empty_grid"] = _write_grid(folder / "empty_grid.nc", g.isel(run=slice(0, 0)))
    f["wrong_dims"] = _write_grid(folder / "wrong_dims.nc", g.assign(loss=g["loss"].rename(target="domain")))
    zero = g.copy(deep=True)
    zero["data"][:] = 0.0
    f["zero_data"] = _write_grid(folder / "zero_data.nc", zero)
    f["string_loss"] = _write_grid(folder / "string_loss.nc", g.assign(loss=g["loss"].astype(str)))
    f["no_loss"] = _write_grid(folder / "no_loss.nc", g.drop_vars("loss"))
    truncated_fit = folder / "truncated_fit.nc"
    truncated_fit.write_bytes(fit_path.read_bytes()[:4000])
    f["truncated_fit"] = truncated_fit
    f["truncated_grid"] = folder / "truncated_grid.nc"
    f["truncated_grid"].write_bytes(grid_path.read_bytes()[: grid_path.stat().st_size // 2])
    f["text_nc"] = _csv(folder / "text.nc", "this is not NetCDF\n")
    f["grid_txt"] = _csv(folder / "grid.txt", WIDE_HEADER + "r1,1,0,0.5,0.6\n")
    # a grid of another world (other domain names) and a posterior fitted to another grid
    other = simulate_grid(draw_world(("ct", "mri", "pet"), seed=2), seed=2)
    f["other_grid"] = folder / "other_grid.nc"
    save_grid(other, f["other_grid"])
    # CSV grids
    f["string_loss_csv"] = _csv(folder / "string_loss.csv", WIDE_HEADER + "r1,1,0,0.5,0.6\nr2,0,1,abc,0.4\n")
    f["duplicate_column_csv"] = _csv(folder / "duplicate_column.csv", "run,data_a,data_a,loss_a\nr1,1,1,0.5\n")
    f["ragged_csv"] = _csv(folder / "ragged.csv", WIDE_HEADER + "r1,1,0,0.5,0.6\nr2,0,1,0.4\n")
    f["empty_csv"] = _csv(folder / "empty.csv", "")
    f["header_only_csv"] = _csv(folder / "header_only.csv", WIDE_HEADER)
    f["negative_data_csv"] = _csv(folder / "negative_data.csv", WIDE_HEADER + "r1,1,0,0.5,0.6\nr2,-3,1,0.4,0.4\n")
    f["duplicate_run_csv"] = _csv(folder / "duplicate_run.csv", WIDE_HEADER + "r1,1,0,0.5,0.6\nr1,0,1,0.4,0.4\n")
    f["long_conflict_csv"] = _csv(
        folder / "long_conflict.csv", "run,domain,data,loss\nr1,a,1,0.5\nr1,b,0,0.7\nr1,a,1,0.9\n"
    )
    f["mixed_csv"] = _csv(folder / "mixed.csv", "run,domain,data,loss,data_a\nr1,a,1,0.5,1\n")
    f["nan_string_csv"] = _csv(folder / "nan_string.csv", WIDE_HEADER + "r1,1,0,0.5,0.6\nr2,nan,1,0.4,0.4\n")
    f["inf_loss_csv"] = _csv(folder / "inf_loss.csv", WIDE_HEADER + "r1,1,0,inf,0.6\n")
    f["bad_utf8_csv"] = folder / "bad_utf8.csv"
    f["bad_utf8_csv"].write_bytes(WIDE_HEADER.encode() + b"r\xff1,1,0,0.5,0.6\n")
    # worlds for `simulate --world`
    f["bad_world"] = _csv(folder / "bad_world.toml", "[world\ndomains = 3\n")
    f["unknown_world_field"] = _csv(folder / "unknown_world.toml", '[world]\ndomains = ["a", "b"]\n[design]\nbudgets = [1]\n')
    f["a_file"] = _csv(folder / "a_file.txt", "not a folder\n")
    f["dir_nc"] = folder / "dir.nc"
    f["dir_nc"].mkdir()
    return f


@pytest.fixture(scope="module")
def other_fit(tmp_path_factory, small_files):
    """The small posterior relabelled as if it were fitted to a grid whose domains are x1..x4."""
    from bayescale.inference.posterior import load_posterior, save_posterior

    _, fit_path = small_files
    idata = load_posterior(fit_path)
    names = [f"x{k + 1}" for k in range(idata["posterior"].sizes["source"])]
    for group in ("posterior",):
        ds = idata[group].to_dataset().assign_coords(source=names, target=names)
        idata[group] = xr.DataTree(ds)
    idata.attrs["grid_fingerprint"] = "0123456789abcdef"
    path = tmp_path_factory.mktemp("other") / "other_fit.nc"
    save_posterior(idata, path)
    return path


@pytest.fixture(scope="module")
def train_files(tmp_path_factory):
    """A tiny phantom dataset and configs that are wrong in one way each (trainers extra only)."""
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    pytest.importorskip("nibabel")
    from tests.trainers.test_domains import TINY_CONFIG, write_config, write_dataset

    folder = tmp_path_factory.mktemp("train")
    manifest = write_dataset(folder, n=3)
    good_manifest = manifest.read_text()
    outside = folder.parent / f"{folder.name}-outside.nii.gz"
    outside.write_bytes((folder / "ct_a" / "ct_a_000.nii.gz").read_bytes())
    (folder / "link").mkdir()
    (folder / "link" / "escape.nii.gz").symlink_to(outside)
    f = {"folder": folder}

    def manifest_variant(name, replace_from, replace_to):
        path = folder / f"{name}.toml"
        path.write_text(good_manifest.replace(replace_from, replace_to))
        return write_config(folder, TINY_CONFIG.replace('manifest = "manifest.toml"', f'manifest = "{path.name}"'), name=f"config_{name}.toml")

    ct_glob = 'glob = "ct_a/ct_a_*.nii.gz"'
    f["escape_dotdot"] = manifest_variant("escape_dotdot", ct_glob, f'files = ["ct_a/ct_a_001.nii.gz", "../{outside.name}", "ct_a/ct_a_002.nii.gz"]')
    f["escape_absolute"] = manifest_variant("escape_absolute", ct_glob, f'files = ["ct_a/ct_a_001.nii.gz", "{outside}", "ct_a/ct_a_002.nii.gz"]')
    f["escape_symlink"] = manifest_variant("escape_symlink", ct_glob, 'files = ["ct_a/ct_a_001.nii.gz", "link/escape.nii.gz", "ct_a/ct_a_002.nii.gz"]')
    f["escape_symlink_glob"] = manifest_variant("escape_symlink_glob", ct_glob, 'glob = "link/*.nii.gz"')
    f["escape_root"] = manifest_variant("escape_root", "[[domains]]", 'root = ".."\n[[domains]]')
    f["bad_toml"] = write_config(folder, TINY_CONFIG.replace("[training]", "[training"), name="bad_toml.toml")
    f["unknown_key"] = write_config(folder, TINY_CONFIG.replace("lr = 1e-3", "lr = 1e-3\nlearning_rate = 1e-3"), name="unknown_key.toml")
    f["wrong_type"] = write_config(folder, TINY_CONFIG.replace("batch_size = 2", 'batch_size = "two"'), name="wrong_type.toml")
    f["no_steps"] = write_config(folder, TINY_CONFIG.replace("steps = 8\n", ""), name="no_steps.toml")
    f["good"] = write_config(folder, TINY_CONFIG, name="good.toml")
    return f


# ---------------------------------------------------------------------------------------- cases
#
# (id, argv template, expected text in the one error line, files the command must not leave)
# Templates: {name} is a file from the `bad` fixture; {out} is this test's own empty folder.

CASES = [
    # --- grid loaders: NetCDF
    ("grid-info nan data", ["grid", "info", "{nan_data}"], ["nan_data.nc", "data on run", "finite and >= 0"], []),
    ("fit inf loss", ["fit", "{inf_loss}", "--out", "{out}/f.nc"], ["inf_loss.nc", "loss on run", "target 'd3'"], ["f.nc"]),
    ("check duplicate domains", ["check", "{fit}", "{duplicate_source}", "--json", "{out}/c.json"], ["duplicate_source.nc", "source name 'd1' appears 2 times"], ["c.json"]),
    ("report empty grid", ["report", "{fit}", "--grid", "{empty_grid}", "--out", "{out}/rep"], ["empty_grid.nc", "no runs"], ["rep"]),
    ("grid-info wrong dims", ["grid", "info", "{wrong_dims}"], ["wrong_dims.nc", "loss has dims"], []),
    ("fit all data zero", ["fit", "{zero_data}", "--out", "{out}/f.nc"], ["zero_data.nc", "no fit run has any non-zero data"], ["f.nc"]),
    ("fit string losses", ["fit", "{string_loss}", "--out", "{out}/f.nc"], ["string_loss.nc", "loss holds"], ["f.nc"]),
    ("fit no loss variable", ["fit", "{no_loss}", "--out", "{out}/f.nc", "--prior-only"], ["no_loss.nc", "no 'loss' variable"], ["f.nc"]),
    ("report truncated grid", ["report", "{fit}", "--grid", "{truncated_grid}", "--out", "{out}/rep"], ["truncated_grid.nc"], ["rep"]),
    ("grid-info unknown suffix", ["grid", "info", "{grid_txt}"], ["grid.txt"], []),
    ("fit prior-only truncated", ["fit", "{truncated_grid}", "--prior-only", "--out", "{out}/p.json"], ["truncated_grid.nc"], ["p.json"]),
    # --- grid loaders: CSV
    ("csv string loss", ["grid", "info", "{string_loss_csv}"], ["string_loss.csv line 3", "loss_a is 'abc', not a number"], []),
    ("csv duplicate domain column", ["fit", "{duplicate_column_csv}", "--out", "{out}/f.nc"], ["duplicate_column.csv line 1", "'data_a' appears twice"], ["f.nc"]),
    ("csv ragged row", ["grid", "info", "{ragged_csv}"], ["ragged.csv line 3", "4 fields"], []),
    ("csv empty file", ["fit", "{empty_csv}", "--out", "{out}/f.nc"], ["empty.csv", "empty"], ["f.nc"]),
    ("csv header only", ["check", "{fit}", "{header_only_csv}"], ["header_only.csv", "no runs"], []),
    ("csv negative data", ["fit", "{negative_data_csv}", "--out", "{out}/f.nc"], ["negative_data.csv", "run 'r2'", "source 'a'", "-3.0"], ["f.nc"]),
    ("csv duplicate run", ["grid", "info", "{duplicate_run_csv}"], ["duplicate_run.csv line 3", "run 'r1' repeats line 2"], []),
    ("csv long conflict", ["grid", "info", "{long_conflict_csv}"], ["long_conflict.csv line 4", "domain 'a'"], []),
    ("csv long and wide", ["grid", "info", "{mixed_csv}"], ["mixed.csv line 1", "mixes long columns"], []),
    ("csv nan data", ["fit", "{nan_string_csv}", "--out", "{out}/f.nc"], ["nan_string.csv", "run 'r2'", "finite and >= 0"], ["f.nc"]),
    ("csv inf loss", ["grid", "info", "{inf_loss_csv}"], ["inf_loss.csv", "run 'r1'", "target 'a'"], []),
    ("csv not utf-8", ["grid", "info", "{bad_utf8_csv}"], ["bad_utf8.csv", "not UTF-8"], []),
    # --- posteriors
    ("predict truncated posterior", ["predict", "{truncated_fit}", "--alloc", "d1=3", "--json", "{out}/p.json"], ["truncated_fit.nc", "not a readable NetCDF posterior"], ["p.json"]),
    ("allocate truncated posterior", ["allocate", "{truncated_fit}", "--budget", "100", "--json", "{out}/a.json"], ["truncated_fit.nc"], ["a.json"]),
    ("hubs not-NetCDF posterior", ["hubs", "{text_nc}", "--json", "{out}/h.json"], ["text.nc", "not a readable NetCDF posterior"], ["h.json"]),
    ("hubs grid as posterior", ["hubs", "{grid}", "--json", "{out}/h.json"], ["grid.nc", "not a bayescale posterior"], ["h.json"]),
    ("compare truncated posterior", ["compare", "{fit}", "{truncated_fit}", "--json", "{out}/c.json"], ["truncated_fit.nc"], ["c.json"]),
    ("check posterior of other grid", ["check", "{fit}", "{other_grid}", "--json", "{out}/c.json"], ["other_grid.nc", "none of the posterior's targets (d1, d2, d3, d4) is in the grid"], ["c.json"]),
    ("report posterior of other grid", ["report", "{fit}", "--grid", "{other_grid}", "--out", "{out}/rep"], ["other_grid.nc", "none of the posterior's targets"], ["rep"]),
    ("check relabelled posterior", ["check", "{other_fit}", "{grid}", "--json", "{out}/c.json"], ["grid.nc", "none of the posterior's targets (x1, x2, x3, x4) is in the grid"], ["c.json"]),
    ("predict relabelled posterior", ["predict", "{other_fit}", "--alloc", "d1=10", "--json", "{out}/p.json"], ["--alloc", "unknown source domain 'd1'", "x1"], ["p.json"]),
    ("allocate relabelled posterior", ["allocate", "{other_fit}", "--budget", "100", "--max", "d1=10", "--json", "{out}/a.json"], ["--max", "unknown source domain 'd1'"], ["a.json"]),
    ("report relabelled posterior", ["report", "{other_fit}", "--grid", "{grid}", "--out", "{out}/rep"], ["grid.nc", "none of the posterior's targets (x1, x2, x3, x4)"], ["rep"]),
    ("compare fits of two grids", ["compare", "{fit}", "{other_fit}", "--json", "{out}/c.json"], ["fitted to a different grid"], ["c.json"]),
    ("hubs mixing posterior", ["hubs", "{mixing_fit}", "--json", "{out}/h.json", "--figure", "{out}/h.png"], ["mixing law"], ["h.json", "h.png"]),
    ("allocate mixing posterior", ["allocate", "{mixing_fit}", "--budget", "10", "--json", "{out}/a.json"], ["mixing law"], ["a.json"]),
    ("report mixing posterior", ["report", "{mixing_fit}", "--grid", "{grid}", "--out", "{out}/rep"], ["mixing law"], ["rep"]),
    # --- the independent law's posterior for the transfer-unaware baseline (--unaware)
    ("allocate unaware of the transfer law", ["allocate", "{fit}", "--budget", "100", "--unaware", "{fit}", "--json", "{out}/a.json"], ["--unaware: is a posterior of the transfer law", "independent law"], ["a.json"]),
    ("allocate unaware of other domains", ["allocate", "{fit}", "--budget", "100", "--unaware", "{unaware_other_domains}", "--json", "{out}/a.json"], ["--unaware: its sources (x1, x2, x3, x4) are not the posterior's (d1, d2, d3, d4)"], ["a.json"]),
    ("allocate unaware of another grid", ["allocate", "{fit}", "--budget", "100", "--unaware", "{unaware_other_grid}", "--json", "{out}/a.json"], ["--unaware: was fitted to another grid"], ["a.json"]),
    ("allocate unaware truncated", ["allocate", "{fit}", "--budget", "100", "--unaware", "{truncated_fit}", "--json", "{out}/a.json"], ["--unaware", "truncated_fit.nc"], ["a.json"]),
    ("allocate unaware missing", ["allocate", "{fit}", "--budget", "100", "--unaware", "{out}/nothing.nc", "--json", "{out}/a.json"], ["--unaware", "nothing.nc"], ["a.json"]),
    ("allocate unaware mixing posterior", ["allocate", "{fit}", "--budget", "100", "--unaware", "{mixing_fit}", "--json", "{out}/a.json"], ["--unaware", "mixing law"], ["a.json"]),
    ("report unaware of the transfer law", ["report", "{fit}", "--grid", "{grid}", "--out", "{out}/rep", "--unaware", "{fit}"], ["--unaware: is a posterior of the transfer law"], ["rep"]),
    ("report unaware of other domains", ["report", "{fit}", "--grid", "{grid}", "--out", "{out}/rep", "--unaware", "{unaware_other_domains}"], ["--unaware: its sources (x1, x2, x3, x4)"], ["rep"]),
    # --- fit flags
    ("fit chains 0", ["fit", "{grid}", "--out", "{out}/f.nc", "--chains", "0"], ["--chains must be >= 1, got 0"], ["f.nc"]),
    ("fit draws -1", ["fit", "{grid}", "--out", "{out}/f.nc", "--draws", "-1"], ["--draws must be >= 1, got -1"], ["f.nc"]),
    ("fit warmup 0", ["fit", "{grid}", "--out", "{out}/f.nc", "--warmup", "0"], ["--warmup must be >= 1"], ["f.nc"]),
    ("fit target-accept 1.5", ["fit", "{grid}", "--out", "{out}/f.nc", "--target-accept", "1.5"], ["--target-accept", "1.5"], ["f.nc"]),
    ("fit target-accept 0", ["fit", "{grid}", "--out", "{out}/f.nc", "--target-accept", "0"], ["--target-accept"], ["f.nc"]),
    ("fit svi-steps 0", ["fit", "{grid}", "--out", "{out}/f.nc", "--method", "svi", "--svi-steps", "0"], ["--svi-steps must be >= 1"], ["f.nc"]),
    ("fit unknown likelihood", ["fit", "{grid}", "--out", "{out}/f.nc", "--likelihood", "cauchy"], ["--likelihood", "'cauchy'"], ["f.nc"]),
    ("fit unknown method", ["fit", "{grid}", "--out", "{out}/f.nc", "--method", "advi"], ["--method", "'advi'"], ["f.nc"]),
    ("fit prior-only draws 0", ["fit", "{grid}", "--prior-only", "--draws", "0", "--out", "{out}/p.json"], ["--draws"], ["p.json"]),
    ("fit prior-only unknown law", ["fit", "{grid}", "--prior-only", "--law", "cubic"], ["unknown law", "cubic"], []),
    ("fit out is input", ["fit", "{grid}", "--out", "{grid}"], ["would overwrite the input file"], []),
    ("fit missing --out", ["fit", "{grid}"], ["--out is required"], []),
    # --- allocate / predict flags
    ("allocate budget nan", ["allocate", "{fit}", "--budget", "nan", "--json", "{out}/a.json"], ["--budget must be > 0", "nan"], ["a.json"]),
    ("allocate negative weight", ["allocate", "{fit}", "--budget", "100", "--weights", "d1=-1", "--json", "{out}/a.json"], ["--weights", "'d1'", "-1"], ["a.json"]),
    ("allocate all weights zero", ["allocate", "{fit}", "--budget", "100", "--weights", "d1=0,d2=0,d3=0,d4=0", "--json", "{out}/a.json"], ["--weights: all target weights are zero"], ["a.json"]),
    ("allocate cost 0", ["allocate", "{fit}", "--budget", "100", "--cost", "d2=0", "--json", "{out}/a.json"], ["--cost", "'d2'", "> 0"], ["a.json"]),
    ("allocate cvar without level", ["allocate", "{fit}", "--budget", "100", "--objective", "cvar:", "--json", "{out}/a.json"], ["--objective", "needs a level"], ["a.json"]),
    ("allocate minimax of median", ["allocate", "{fit}", "--budget", "100", "--objective", "minimax:median", "--json", "{out}/a.json"], ["--objective: unknown objective 'minimax:median'"], ["a.json"]),
    ("allocate chance no <=", ["allocate", "{fit}", "--budget", "100", "--chance", "d1<0.1@0.9", "--json", "{out}/a.json"], ["--chance", "'d1<0.1@0.9'", "TARGET<=LOSS@PROBABILITY"], ["a.json"]),
    ("allocate chance prob 1.5", ["allocate", "{fit}", "--budget", "100", "--chance", "d1<=0.1@1.5", "--json", "{out}/a.json"], ["--chance", "probability", "1.5"], ["a.json"]),
    ("allocate chance bad loss", ["allocate", "{fit}", "--budget", "100", "--chance", "d1<=low@0.9", "--json", "{out}/a.json"], ["--chance", "loss threshold", "not a number"], ["a.json"]),
    ("allocate chance unknown target", ["allocate", "{fit}", "--budget", "100", "--chance", "zz<=0.1@0.9", "--json", "{out}/a.json"], ["--chance", "unknown target domain 'zz'"], ["a.json"]),
    ("allocate chance-on unknown", ["allocate", "{fit}", "--budget", "100", "--chance-on", "typical", "--json", "{out}/a.json"], ["--chance-on", "predictive or expected", "'typical'"], ["a.json"]),
    ("allocate max empty value", ["allocate", "{fit}", "--budget", "100", "--max", "d1=", "--json", "{out}/a.json"], ["--max", "'d1'", "not a number"], ["a.json"]),
    ("allocate max negative", ["allocate", "{fit}", "--budget", "100", "--max", "d1=-4", "--json", "{out}/a.json"], ["--max", "cap for 'd1'"], ["a.json"]),
    ("allocate fixed negative", ["allocate", "{fit}", "--budget", "100", "--fixed", "d1=-3", "--json", "{out}/a.json"], ["--fixed", "'d1'", "-3"], ["a.json"]),
    ("allocate fixed unknown domain", ["allocate", "{fit}", "--budget", "100", "--fixed", "zz=1", "--json", "{out}/a.json"], ["--fixed", "unknown source domain 'zz'"], ["a.json"]),
    ("allocate fixed above max", ["allocate", "{fit}", "--budget", "100", "--fixed", "d1=50", "--max", "d1=10", "--json", "{out}/a.json"], ["--fixed", "'d1'", "above its --max"], ["a.json"]),
    ("allocate fixed malformed", ["allocate", "{fit}", "--budget", "100", "--fixed", "d1:5", "--json", "{out}/a.json"], ["--fixed", "expected name=value"], ["a.json"]),
    ("allocate min unknown domain", ["allocate", "{fit}", "--budget", "100", "--min", "zz=1", "--json", "{out}/a.json"], ["--min", "unknown source domain 'zz'"], ["a.json"]),
    ("allocate group malformed", ["allocate", "{fit}", "--budget", "100", "--group", "d*>>0.3", "--json", "{out}/a.json"], ["--group", "'d*>>0.3'"], ["a.json"]),
    ("allocate group unknown", ["allocate", "{fit}", "--budget", "100", "--group", "ct_*>=0.3", "--json", "{out}/a.json"], ["--group", "'ct_*'", "matches no source"], ["a.json"]),
    ("allocate budgets empty entry", ["allocate", "{fit}", "--budgets", "100,,200", "--json", "{out}/a.json"], ["--budgets", "empty entry"], ["a.json"]),
    ("allocate min-budget without chance", ["allocate", "{fit}", "--min-budget", "--json", "{out}/a.json"], ["--min-budget needs at least one --chance"], ["a.json"]),
    ("allocate holdout 1", ["allocate", "{fit}", "--budget", "100", "--holdout", "1", "--json", "{out}/a.json"], ["--holdout must lie in [0, 1)"], ["a.json"]),
    ("allocate max-draws 0", ["allocate", "{fit}", "--budget", "100", "--max-draws", "0", "--json", "{out}/a.json"], ["--max-draws"], ["a.json"]),
    ("allocate temperature 0", ["allocate", "{fit}", "--budget", "100", "--temperature", "0", "--json", "{out}/a.json"], ["--temperature"], ["a.json"]),
    ("allocate uncertainty -1", ["allocate", "{fit}", "--budget", "100", "--uncertainty", "-1", "--json", "{out}/a.json"], ["--uncertainty"], ["a.json"]),
    ("allocate interval 1", ["allocate", "{fit}", "--budget", "100", "--interval", "1", "--json", "{out}/a.json"], ["--interval"], ["a.json"]),
    ("predict interval 1.5", ["predict", "{fit}", "--alloc", "d1=3", "--interval", "1.5", "--json", "{out}/p.json"], ["--interval", "1.5"], ["p.json"]),
    ("predict negative amount", ["predict", "{fit}", "--alloc", "d1=-5", "--json", "{out}/p.json"], ["--alloc", "'d1'", ">= 0"], ["p.json"]),
    ("predict infinite amount", ["predict", "{fit}", "--alloc", "d1=inf", "--json", "{out}/p.json"], ["--alloc", "'d1'", "finite"], ["p.json"]),
    ("predict domain twice", ["predict", "{fit}", "--alloc", "d1=1,d1=2", "--json", "{out}/p.json"], ["--alloc", "'d1' is given twice"], ["p.json"]),
    ("hubs negative reference", ["hubs", "{fit}", "--reference-data", "-1", "--json", "{out}/h.json"], ["--reference-data"], ["h.json"]),
    ("check holdout-above nan", ["check", "{fit}", "{grid}", "--holdout-above", "nan", "--json", "{out}/c.json"], ["--holdout-above"], ["c.json"]),
    # --- outputs that cannot be written
    ("fit out is a directory", ["fit", "{grid}", "--out", "{out}", "--chains", "1", "--warmup", "5", "--draws", "5"], ["--out", "is a directory"], []),
    ("simulate out is a directory", ["simulate", "--out", "{dir_nc}"], ["dir.nc", "is a directory"], []),
    ("predict json is a directory", ["predict", "{fit}", "--alloc", "d1=3", "--json", "{out}"], ["test_bad_input", "is a directory; give a file name"], []),
    ("hubs figure is a directory", ["hubs", "{fit}", "--figure", "{out}"], ["test_bad_input", "is a directory; give a file name"], []),
    ("report out is a file", ["report", "{fit}", "--grid", "{grid}", "--out", "{a_file}"], ["--out", "a_file.txt", "not a folder"], []),
    ("demo out is a file", ["demo", "--out", "{a_file}"], ["--out", "a_file.txt", "not a folder"], []),
    # --- missing files
    ("hubs missing posterior", ["hubs", "{out}/nothing.nc"], ["nothing.nc", "no such posterior file"], []),
    ("report missing grid", ["report", "{fit}", "--grid", "{out}/nothing.nc", "--out", "{out}/rep"], ["nothing.nc"], ["rep"]),
    ("compare missing posterior", ["compare", "{fit}", "{out}/nothing.nc"], ["nothing.nc"], []),
    ("demo missing grid", ["demo", "--grid", "{out}/nothing.nc", "--out", "{out}/demo"], ["nothing.nc"], ["demo"]),
    # --- simulate
    ("simulate one domain", ["simulate", "--domains", "1", "--out", "{out}/g.nc"], ["--domains must be >= 2"], ["g.nc"]),
    ("simulate bad world TOML", ["simulate", "--world", "{bad_world}", "--out", "{out}/g.nc"], ["bad_world.toml", "not valid TOML"], ["g.nc"]),
    ("simulate unknown world field", ["simulate", "--world", "{unknown_world_field}", "--out", "{out}/g.nc"], ["unknown_world.toml", "[design] has unknown field 'budgets'"], ["g.nc"]),
    ("simulate missing world", ["simulate", "--world", "{out}/none.toml", "--out", "{out}/g.nc"], ["none.toml", "no such world file"], ["g.nc"]),
    # --- phantoms
    ("phantoms negative seed", ["phantoms", "--out", "{out}/ph", "--seed", "-1"], ["--seed -1"], ["ph"]),
    ("phantoms out is a file", ["phantoms", "--out", "{a_file}", "--per-domain", "1"], ["a_file.txt", "not a folder"], []),
]

TRAIN_CASES = [
    ("train bad TOML", "bad_toml", [], ["bad_toml.toml", "not valid TOML"]),
    ("train unknown key", "unknown_key", [], ["unknown_key.toml", "unknown key 'training.learning_rate'"]),
    ("train wrong type", "wrong_type", [], ["wrong_type.toml", "training.batch_size", "expected an integer"]),
    # the message quotes a TOML table: it must reach the terminal as written, not as rich markup
    ("train no steps", "no_steps", [], ["no_steps.toml", "[training] needs exactly one of steps"]),
    ("train manifest ..", "escape_dotdot", [], ["escape_dotdot.toml", "domain 'ct_a'", "outside the manifest's folder"]),
    ("train manifest absolute", "escape_absolute", [], ["escape_absolute.toml", "domain 'ct_a'", "absolute path"]),
    ("train manifest symlink", "escape_symlink", [], ["escape_symlink.toml", "domain 'ct_a'", "outside the manifest's folder"]),
    ("train manifest symlink glob", "escape_symlink_glob", [], ["escape_symlink_glob.toml", "domain 'ct_a'", "outside the manifest's folder"]),
    ("train manifest root ..", "escape_root", [], ["escape_root.toml", "root", "outside the manifest's folder"]),
    ("train out is a directory", "good", ["--out", "{out}"], ["--out", "is a directory"]),
    ("train out not NetCDF", "good", ["--out", "{out}/grid.csv"], ["--out", "ending in .nc"]),
]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_refused(result, expected: list[str]) -> str:
    """Exit 2, nothing on stdout, one non-empty line on stderr holding every expected piece."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    for piece in expected:
        assert piece in lines[0], (piece, lines[0])
    return lines[0]


def _format(args, files, out):
    return [a.format(out=out, **{k: str(v) for k, v in files.items()}) for a in args]


@pytest.mark.parametrize("case_id, args, expected, outputs", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(bad, other_fit, tmp_path, case_id, args, expected, outputs):
    files = {**bad, "other_fit": other_fit}
    input_folder = bad["nan_data"].parent
    before_inputs = _tree(input_folder)
    before = _tree(tmp_path)
    result = runner.invoke(app, _format(args, files, tmp_path))
    assert_refused(result, expected)
    for name in outputs:
        assert not (tmp_path / name).exists(), name
    assert _tree(tmp_path) == before  # no output and no temporary file
    assert _tree(input_folder) == before_inputs


@pytest.mark.parametrize("case_id, config, extra, expected", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_bad_training_input_is_one_line_exit_2_and_leaves_nothing(train_files, tmp_path, case_id, config, extra, expected):
    before = _tree(train_files["folder"])
    out = ["--out", str(tmp_path / "grid.nc")] if not extra else [a.format(out=tmp_path) for a in extra]
    result = runner.invoke(app, ["train", str(train_files[config]), *out, "--no-progress"])
    assert_refused(result, expected)
    assert _tree(tmp_path) == set()
    assert _tree(train_files["folder"]) == before


# ---------------------------------------------------------------------------------------- real processes


@pytest.mark.parametrize(
    "case_id, args, expected",
    [
        ("truncated posterior", ["allocate", "{truncated_fit}", "--budget", "100", "--json", "{out}/a.json"], "truncated_fit.nc"),
        ("string loss CSV", ["fit", "{string_loss_csv}", "--out", "{out}/f.nc"], "string_loss.csv line 3"),
        ("malformed chance", ["allocate", "{fit}", "--budget", "100", "--chance", "d1<=0.1", "--json", "{out}/a.json"], "--chance"),
        ("output is a directory", ["predict", "{fit}", "--alloc", "d1=3", "--json", "{out}"], "is a directory"),
    ],
    ids=["truncated posterior", "string loss CSV", "malformed chance", "output is a directory"],
)
def test_real_process_prints_one_line_and_no_traceback(bad, tmp_path, case_id, args, expected):
    line = _one_line_exit_2(_format(args, bad, tmp_path), tmp_path)
    assert expected in line


def _one_line_exit_2(argv: list[str], cwd: Path) -> str:
    """Run the real CLI; check exit 2, nothing on stdout, no traceback, one line on stderr and no
    file left in ``cwd``; return that line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "bayescale.cli", *argv], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert _tree(cwd) == set()
    return lines[0]


@pytest.mark.parametrize(
    "args, flag",
    [
        (["fit", "{grid}", "--out", "{out}/f.nc", "--chains", "abc"], "--chains"),
        (["allocate", "{fit}", "--budget", "lots"], "--budget"),
        (["predict", "{fit}"], "--alloc"),
        (["fit", "{grid}", "--colour", "red"], "--colour"),
    ],
    ids=["not an integer", "not a number", "missing option", "unknown option"],
)
def test_flags_of_the_wrong_type_are_one_line_with_exit_2(bad, tmp_path, args, flag):
    """typer/click refuse these before a command runs; the command line turns their usage block
    into one line that names the flag and where the help is."""
    line = _one_line_exit_2(_format(args, bad, tmp_path), tmp_path)
    assert flag in line and f"'bayescale {args[0]} --help'" in line


def test_a_bare_command_group_still_shows_its_help():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "bayescale.cli", "grid"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "Usage: bayescale grid" in proc.stdout and "info" in proc.stdout, proc.stdout + proc.stderr


def test_the_battery_is_large_and_every_command_is_in_it():
    commands = {c[1][0] if c[1][0] != "grid" else "grid info" for c in CASES} | {"train"}
    assert len(CASES) + len(TRAIN_CASES) >= 30
    assert commands >= {"grid info", "simulate", "fit", "compare", "predict", "allocate", "hubs", "check", "report",
                        "demo", "phantoms", "train"}

"""Contract 2, the posterior (DESIGN.md), tested directly: what ``fit`` writes, what
``validate_posterior`` and ``load_posterior`` refuse, that ``save_posterior`` round-trips
exactly and atomically, and that ``law_draws``, ``diagnostics`` and ``require_amounts`` say
what the posterior holds. Every broken posterior is a mutated copy of a real NUTS fit (the
session's ``small_fit``: 2 chains x 1000 draws of the small simulated world)."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import xarray as xr

from bayescale.data.grid import data_scale, grid_fingerprint, select_split
from bayescale.errors import InputError
from bayescale.inference.posterior import (
    KHAT_LIMIT,
    diagnostics,
    law_draws,
    load_posterior,
    require_amounts,
    sampler_diagnostics,
    save_posterior,
    validate_posterior,
)
from bayescale.laws.mixing import MixingDraws
from bayescale.render.text import format_diagnostics
from bayescale.laws.transfer import LawDraws

GROUPS = ("posterior", "sample_stats", "log_likelihood", "observed_data", "constant_data")
TARGET_VARS = ("E", "A", "alpha", "x0", "sigma")
PAIR_VARS = ("T", "beta")


def mutated(idata, group: str, change):
    """A deep copy of ``idata`` whose ``group`` is ``change(dataset)``; ``idata`` is left as it was."""
    copy = idata.copy(deep=True)
    copy[group] = xr.DataTree(change(copy[group].to_dataset()))
    return copy


def without_group(idata, group: str):
    copy = idata.copy(deep=True)
    del copy[group]
    return copy


def with_attr(idata, **attrs):
    copy = idata.copy(deep=True)
    copy.attrs.update(attrs)
    return copy


def nan_at_first_draw(name):
    def change(ds):
        values = ds[name].values.copy()
        values[(0,) * values.ndim] = np.nan
        return ds.assign({name: (ds[name].dims, values)})
    return change


# ---------------------------------------------------------------------------
# what fit writes


def test_fit_writes_the_five_groups_and_the_law_variables_with_their_dims(small_fit, small_grid):
    assert set(GROUPS) <= set(small_fit.children)
    post = small_fit["posterior"].to_dataset()
    sources = [str(s) for s in small_grid["source"].values]
    targets = [str(t) for t in small_grid["target"].values]
    for name in TARGET_VARS:
        assert post[name].dims == ("chain", "draw", "target"), name
        assert np.all(np.isfinite(post[name].values)), name
    for name in PAIR_VARS:
        assert post[name].dims == ("chain", "draw", "source", "target"), name
    assert [str(s) for s in post["source"].values] == sources
    assert [str(t) for t in post["target"].values] == targets
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 1000
    # Positivity of the law's parameters (the model writes them as exp / sigmoid of reals).
    for name in TARGET_VARS:
        assert np.all(post[name].values > 0), name


def test_T_and_beta_are_exactly_one_on_a_targets_own_source_and_free_elsewhere(small_fit):
    post = small_fit["posterior"].to_dataset()
    for name in PAIR_VARS:
        values = post[name]
        for source in post["source"].values:
            for target in post["target"].values:
                cell = values.sel(source=source, target=target).values
                if source == target:
                    # Fixed, not sampled: exact equality (no tolerance) is the contract.
                    assert np.all(cell == 1.0), (name, source)
                else:
                    assert np.all(cell > 0) and np.std(cell) > 0, (name, source, target)
    beta_off = post["beta"].values[:, :, ~np.eye(post.sizes["source"], dtype=bool)]
    assert np.all(beta_off <= 1.0)


def test_constant_data_holds_the_grids_data_scale_computed_independently(small_fit, small_grid):
    # Independently of bayescale.data.grid.data_scale: the median of the non-zero amounts of the fit runs.
    fit_runs = small_grid["data"].values[small_grid["split"].values == "fit"]
    expected = float(np.median(fit_runs[fit_runs > 0]))
    stored = float(small_fit["constant_data"].to_dataset()["data_scale"].values)
    # Both are the float64 median of the same numbers: equal to the last bit.
    assert stored == expected
    assert data_scale(small_grid) == expected
    assert small_fit.attrs["data_scale"] == expected


def test_attrs_name_the_law_the_likelihood_the_method_and_the_grid(small_fit, small_grid):
    attrs = small_fit.attrs
    assert attrs["law"] == "transfer" and small_fit["posterior"].attrs["law"] == "transfer"
    assert attrs["likelihood"] == "normal"
    assert attrs["method"] == "nuts"
    assert attrs["grid_fingerprint"] == grid_fingerprint(small_grid)
    # The fingerprint tells grids apart: a grid with one loss changed has another one.
    other = small_grid.copy(deep=True)
    other["loss"].values[0, 0] *= 1.01
    assert grid_fingerprint(other) != attrs["grid_fingerprint"]


def test_observed_data_is_the_log_of_the_grids_observed_losses(small_fit, small_grid):
    obs = small_fit["observed_data"].to_dataset()
    runs = select_split(small_grid, "fit")
    for i in (0, obs.sizes["obs"] // 2, obs.sizes["obs"] - 1):
        run, target = str(obs["obs_run"].values[i]), str(obs["obs_target"].values[i])
        loss = float(runs["loss"].sel(run=run, target=target))
        assert obs["log_loss"].values[i] == pytest.approx(np.log(loss), rel=1e-12)
    ll = small_fit["log_likelihood"].to_dataset()["log_loss"]
    assert ll.dims == ("chain", "draw", "obs") and ll.sizes["obs"] == obs.sizes["obs"]
    assert np.all(np.isfinite(ll.values))


# ---------------------------------------------------------------------------
# save and load


def test_save_and_load_round_trip_is_exact(small_fit, tmp_path):
    path = tmp_path / "fit.nc"
    save_posterior(small_fit, path)
    loaded = load_posterior(path)
    assert set(loaded.children) == set(small_fit.children)
    for key, value in small_fit.attrs.items():
        assert loaded.attrs[key] == value, key
    for group in small_fit.children:
        before, after = small_fit[group].to_dataset(), loaded[group].to_dataset()
        assert set(after.data_vars) == set(before.data_vars), group
        for name in before.data_vars:
            # Exact: NetCDF stores the float32/float64 arrays bit for bit.
            np.testing.assert_array_equal(after[name].values, before[name].values, err_msg=f"{group}/{name}")
            assert after[name].dtype == before[name].dtype, (group, name)
            assert after[name].dims == before[name].dims, (group, name)
        for coord in before.coords:
            np.testing.assert_array_equal(after[coord].values.astype(str) if before[coord].dtype.kind == "U" else after[coord].values,
                                          before[coord].values, err_msg=f"{group}/{coord}")
    # And the draws a consumer reads are the same.
    a, b = law_draws(small_fit), law_draws(loaded)
    for name in TARGET_VARS + PAIR_VARS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.sources, a.targets, a.data_scale, a.law) == (b.sources, b.targets, b.data_scale, b.law)


BROKEN = {
    "no posterior group": (lambda i: without_group(i, "posterior"), "posterior"),
    "no sample_stats group": (lambda i: without_group(i, "sample_stats"), "sample_stats"),
    "no constant_data group": (lambda i: without_group(i, "constant_data"), "constant_data"),
    "no E": (lambda i: mutated(i, "posterior", lambda ds: ds.drop_vars("E")), "'E'"),
    "no sigma": (lambda i: mutated(i, "posterior", lambda ds: ds.drop_vars("sigma")), "'sigma'"),
    "no beta": (lambda i: mutated(i, "posterior", lambda ds: ds.drop_vars("beta")), "'beta'"),
    "alpha without target": (lambda i: mutated(i, "posterior", lambda ds: ds.assign(alpha=ds["alpha"].isel(target=0))), "'alpha'"),
    "T without source": (lambda i: mutated(i, "posterior", lambda ds: ds.assign(T=ds["T"].isel(source=0))), "'T'"),
    "T over (target, target)": (lambda i: mutated(i, "posterior", lambda ds: ds.assign(
        T=(("chain", "draw", "target", "target2"), ds["T"].values))), "'T'"),
    "NaN in A": (lambda i: mutated(i, "posterior", nan_at_first_draw("A")), "'A'"),
    "NaN in beta": (lambda i: mutated(i, "posterior", nan_at_first_draw("beta")), "'beta'"),
    "unknown law": (lambda i: with_attr(i, law="cubic"), "'cubic'"),
    "no data_scale": (lambda i: mutated(i, "constant_data", lambda ds: ds.drop_vars("data_scale")), "'data_scale'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_validate_and_load_refuse_a_broken_posterior_in_one_line_naming_file_and_variable(small_fit, tmp_path, case):
    breaker, named = BROKEN[case]
    broken = breaker(small_fit)
    validate_posterior(small_fit, "good.nc")  # the original is untouched and valid
    with pytest.raises(InputError) as error:
        validate_posterior(broken, "broken.nc")
    message = str(error.value)
    assert "\n" not in message and message.startswith("broken.nc: ") and named in message, message
    # The same refusal through the file: the message names the file on disk.
    path = tmp_path / "broken.nc"
    save_posterior(broken, path)
    with pytest.raises(InputError) as error:
        load_posterior(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and named in message, message


def test_load_refuses_a_missing_file_a_non_netcdf_file_and_a_netcdf_that_is_not_a_posterior(tmp_path, small_grid):
    missing = tmp_path / "nowhere.nc"
    with pytest.raises(InputError, match="no such posterior file") as error:
        load_posterior(missing)
    assert str(missing) in str(error.value)
    text = tmp_path / "fit.nc"
    text.write_text("run,data_a,loss_a\nr1,1,2\n")
    with pytest.raises(InputError, match="not a readable NetCDF posterior") as error:
        load_posterior(text)
    assert str(error.value).startswith(f"{text}: ") and "\n" not in str(error.value)
    grid_file = tmp_path / "grid.nc"
    small_grid.to_netcdf(grid_file, engine="netcdf4")  # a NetCDF file, but a grid, not a posterior
    with pytest.raises(InputError, match="not a bayescale posterior") as error:
        load_posterior(grid_file)
    assert str(error.value).startswith(f"{grid_file}: ")
    with pytest.raises(InputError, match="no such posterior file"):
        load_posterior(tmp_path)  # a folder is not a file


def test_save_is_atomic_no_partial_file_when_writing_fails(small_fit, tmp_path):
    # A directory as the target: refused before anything is written, the folder as it was.
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="is a directory"):
        save_posterior(small_fit, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    # A failure in the middle of writing (an attr NetCDF cannot store): an earlier file at the
    # path stays byte for byte, and no temporary file is left beside it.
    path = tmp_path / "fit.nc"
    save_posterior(small_fit, path)
    before = path.read_bytes()
    unwritable = with_attr(small_fit, unwritable={"a": 1})
    with pytest.raises(TypeError, match="attribute"):
        save_posterior(unwritable, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.nc", "out"]
    load_posterior(path)

    # And a fresh path that fails leaves nothing at all.
    fresh = tmp_path / "fresh.nc"
    with pytest.raises(TypeError, match="attribute"):
        save_posterior(unwritable, fresh)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.nc", "out"]


# ---------------------------------------------------------------------------
# law_draws, diagnostics, require_amounts


def test_law_draws_flattens_chain_then_draw(small_fit, small_draws):
    post = small_fit["posterior"].to_dataset()
    chains, n = post.sizes["chain"], post.sizes["draw"]
    assert isinstance(small_draws, LawDraws)
    assert small_draws.n_draws == chains * n
    for name in TARGET_VARS + PAIR_VARS:
        tree = post[name].values  # (chain, draw, ...): dims checked above to be in this order
        flat = getattr(small_draws, name)
        assert flat.shape == (chains * n,) + tree.shape[2:], name
        for c, d in ((0, 0), (0, n - 1), (1, 0), (1, 7), (chains - 1, n - 1)):
            # Row c * draws + d is element [c, d]: float32 draws widened to float64, so exact.
            np.testing.assert_array_equal(flat[c * n + d], tree[c, d], err_msg=f"{name}[{c}, {d}]")
        np.testing.assert_array_equal(flat, tree.reshape(flat.shape))
    # The transposed storage order (target before source) reads the same draws.
    # (``...``: the posterior may hold dims of its own beyond these, e.g. the run effect's ``run``.)
    transposed = mutated(small_fit, "posterior", lambda ds: ds.transpose("draw", "chain", "target", "source", ...))
    again = law_draws(transposed)
    np.testing.assert_array_equal(again.T, small_draws.T)
    np.testing.assert_array_equal(again.E, small_draws.E)
    assert small_draws.sources == tuple(str(s) for s in post["source"].values)
    assert small_draws.targets == tuple(str(t) for t in post["target"].values)
    assert small_draws.data_scale == float(small_fit["constant_data"].to_dataset()["data_scale"].values)
    assert small_draws.law == "transfer" and small_draws.likelihood == "normal" and small_draws.nu is None
    np.testing.assert_array_equal(small_draws.self_mask, np.eye(len(small_draws.sources)))


def _hyperparameters(post) -> list[str]:
    return sorted(n for n in post.data_vars if n.startswith(("mu_", "tau_")) or n == "nu")


def _independent_diagnostics(idata):
    """Max r-hat and min bulk ESS over every varying entry of the law's parameters and the hierarchy's
    hyperparameters, entry by entry with ArviZ's array functions (entries fixed at 1 have no variance
    and no r-hat), with the entry where each is worst."""
    post = idata["posterior"].to_dataset()
    rhats, esses = [], []
    for name in TARGET_VARS + PAIR_VARS + tuple(_hyperparameters(post)):
        values = np.asarray(post[name].values, dtype=np.float64)
        for index in np.ndindex(values.shape[2:]):
            chains = values[(slice(None), slice(None)) + index]  # (chain, draw)
            if np.std(chains) == 0:
                continue
            coords = [str(post[dim].values[i]) for dim, i in zip(post[name].dims[2:], index)]
            label = f"{name}({', '.join(coords)})" if coords else name
            rhats.append((float(az.rhat(chains)), label))
            esses.append((float(az.ess(chains, method="bulk")), label))
    return max(rhats), min(esses), len(rhats)


def test_diagnostics_agree_with_arviz_computed_here(small_fit):
    diag = diagnostics(small_fit)
    (max_rhat, rhat_at), (min_ess, ess_at), varying = _independent_diagnostics(small_fit)
    post = small_fit["posterior"].to_dataset()
    hyper = _hyperparameters(post)
    assert {"mu_alpha", "tau_alpha", "mu_T", "tau_h"} <= set(hyper)  # the hierarchy is there ...
    assert set(hyper) <= set(diag["variables"])  # ... and every hyperparameter is diagnosed
    n_sources = small_fit["posterior"].sizes["source"]
    n_hyper = sum(int(np.prod(post[n].shape[2:])) for n in hyper)
    assert varying == 5 * 4 + 2 * (n_sources * n_sources - n_sources) + n_hyper  # only T's and beta's diagonal are fixed
    # Same estimator on the same numbers (the library's goes through a Dataset, float32 values):
    # agreement to 1e-6 relative leaves room for float32 -> float64 conversion order only.
    assert diag["max_rhat"] == pytest.approx(max_rhat, rel=1e-6)
    assert diag["min_ess_bulk"] == pytest.approx(min_ess, rel=1e-6)
    assert diag["worst_rhat_entry"] == rhat_at and diag["worst_ess_entry"] == ess_at
    assert diag["worst_rhat_variable"] == rhat_at.split("(")[0] and diag["worst_ess_variable"] == ess_at.split("(")[0]
    assert diag["divergences"] == int(small_fit["sample_stats"]["diverging"].values.sum())
    assert diag["draws"] == 2000 and diag["chains"] == 2
    assert 1.0 <= diag["max_rhat"] < 1.1  # a real, if short, fit: near-converged
    assert np.isfinite(diag["min_ess_tail"]) and diag["min_ess_tail"] > 0
    assert diag["ok"] == (diag["max_rhat"] <= 1.01 and diag["divergences"] == 0 and diag["min_ess_bulk"] >= 400)
    text = format_diagnostics(diag)
    assert f"max r-hat {diag['max_rhat']:.3f} at {rhat_at}" in text and f" at {ess_at} " in text
    assert "[" not in text  # nothing a terminal's markup would swallow


@pytest.mark.parametrize("name", ["tau_alpha", "mu_T"])
def test_diagnostics_find_a_hyperparameter_whose_chains_disagree(small_fit, name):
    """A funnel shows in the hierarchy first: shift one chain of a hyperparameter and only it."""
    def shift(ds):
        values = ds[name].values.copy()
        values[0] = values[0] + 5.0 * values.std()  # chain 0 sits elsewhere: r-hat far above 1
        return ds.assign({name: (ds[name].dims, values)})

    before = diagnostics(small_fit)
    broken = mutated(small_fit, "posterior", shift)
    diag = diagnostics(broken)
    assert diag["worst_rhat_variable"] == name and diag["worst_rhat_entry"] == name
    assert diag["max_rhat"] > 1.5 > before["max_rhat"]
    assert diag["ok"] is False
    assert f"max r-hat {diag['max_rhat']:.3f} at {name} " in format_diagnostics(diag)
    # The law's own parameters are untouched: a check over them alone (as before) would not see it.
    law_only = sampler_diagnostics(broken, [v for v in TARGET_VARS + PAIR_VARS])
    assert law_only["max_rhat"] < 1.5 and law_only["worst_rhat_variable"] in TARGET_VARS + PAIR_VARS


def _svi_like(idata, **attrs):
    """The layout fit(method="svi") writes: one chain of independent draws, no sample_stats."""
    copy = without_group(idata, "sample_stats")
    copy.attrs.update({"method": "svi", "approximate": 1, **attrs})
    return copy


@pytest.mark.parametrize("khat, ok", [(0.2, True), (KHAT_LIMIT, True), (0.71, False), (3.1, False),
                                      (float("-inf"), True), (float("nan"), False)])
def test_an_svi_posterior_passes_only_with_a_pareto_khat_at_most_0_7(small_fit, khat, ok):
    diag = diagnostics(_svi_like(small_fit, psis_khat=khat))
    assert diag["approximate"] and diag["method"] == "svi"
    assert diag["psis_khat"] == khat or (np.isnan(khat) and np.isnan(diag["psis_khat"]))
    assert diag["ok"] is ok
    text = format_diagnostics(diag)
    assert "approximate posterior (svi)" in text
    if np.isfinite(khat):
        assert f"PSIS k-hat {khat:.2f}" in text and (("misses the posterior" in text) != ok)


def test_an_svi_posterior_without_a_khat_is_not_vouched_for(small_fit):
    diag = diagnostics(_svi_like(small_fit))
    assert np.isnan(diag["psis_khat"]) and diag["ok"] is False
    assert "no PSIS k-hat stored" in format_diagnostics(diag)


def test_diagnostics_count_every_divergence(small_fit):
    rng = np.random.default_rng(0)
    flips = rng.choice(1000, size=7, replace=False)

    def diverge(ds):
        values = ds["diverging"].values.copy()
        flat = values.reshape(-1)
        flat[flips] = True
        return ds.assign(diverging=(ds["diverging"].dims, values))

    before = int(small_fit["sample_stats"]["diverging"].values.sum())
    broken = mutated(small_fit, "sample_stats", diverge)
    expected = int(broken["sample_stats"]["diverging"].values.sum())
    assert before <= expected <= before + 7
    diag = diagnostics(broken)
    assert diag["divergences"] == expected and expected > 0 and diag["ok"] is False


def _mixing_posterior():
    """A small mixing-law posterior (the layout fit(law="mixing") writes), built by hand:
    require_amounts looks only at the family, so a NUTS fit here would only cost time."""
    rng = np.random.default_rng(1)
    chains, draws = 2, 20
    names = ["a", "b"]
    post = xr.Dataset(
        {
            "c": (("chain", "draw", "target"), rng.uniform(0.5, 1.5, (chains, draws, 2))),
            "k": (("chain", "draw", "target"), rng.uniform(0.5, 1.0, (chains, draws, 2))),
            "t": (("chain", "draw", "source", "target"), rng.normal(0, 1, (chains, draws, 2, 2))),
            "sigma": (("chain", "draw", "target"), rng.uniform(0.01, 0.02, (chains, draws, 2))),
        },
        coords={"chain": np.arange(chains), "draw": np.arange(draws), "source": names, "target": names},
        attrs={"law": "mixing"},
    )
    stats = xr.Dataset({"diverging": (("chain", "draw"), np.zeros((chains, draws), bool))},
                       coords={"chain": np.arange(chains), "draw": np.arange(draws)})
    const = xr.Dataset({"r_ref": ("source", np.array([0.5, 0.5])), "budget": 100.0}, coords={"source": names})
    tree = xr.DataTree.from_dict({"posterior": post, "sample_stats": stats, "constant_data": const})
    tree.attrs.update({"law": "mixing", "likelihood": "normal", "method": "nuts"})
    return tree


def test_require_amounts_passes_a_transfer_posterior_and_refuses_a_mixing_one(small_draws):
    assert require_amounts(small_draws, "allocate") is small_draws
    mixing = _mixing_posterior()
    validate_posterior(mixing, "mix.nc")  # a valid posterior of another law
    draws = law_draws(mixing)
    assert isinstance(draws, MixingDraws) and draws.n_draws == 40
    with pytest.raises(InputError) as error:
        require_amounts(draws, "allocate")
    message = str(error.value)
    assert "\n" not in message and "mixing" in message and "allocate" in message and "transfer" in message, message

import numpy as np
import pytest
import xarray as xr

from bayescale.errors import InputError
from bayescale.data.grid import run_budgets, select_split, validate_grid
from bayescale.data.simulate import draw_world, load_world, simulate_grid, true_params


def test_world_has_a_hub_and_an_island():
    w = draw_world(6, seed=5)
    off = ~np.eye(6, dtype=bool)
    out_transfer = np.where(off, w.T, 0).sum(axis=1)
    in_transfer = np.where(off, w.T, 0).sum(axis=0)
    assert np.argmax(out_transfer) == 0 and w.hubs == (w.domains[0],)
    assert np.argmin(out_transfer) == 5 and np.argmin(in_transfer) == 5 and w.islands == (w.domains[5],)
    assert np.all(np.diag(w.T) == 1) and np.all((w.beta > 0) & (w.beta <= 1))


def test_grid_is_valid_with_holdout_runs_above_every_fit_budget():
    g = simulate_grid(draw_world(4, seed=1), seed=1)
    validate_grid(g)
    fit_budgets = run_budgets(select_split(g, "fit"))
    holdout_budgets = run_budgets(select_split(g, "holdout"))
    assert holdout_budgets.size > 0 and float(holdout_budgets.min()) > float(fit_budgets.max())
    # single-domain ladders: every domain alone at every fit budget
    single = (g["data"] > 0).sum("source") == 1
    assert int(single.sum()) >= 4 * 4
    assert np.isfinite(g["loss"]).all()


def test_noise_has_the_world_sigma():
    w = draw_world(3, seed=2)
    w.design.mixtures_per_budget = 60
    g = simulate_grid(w, seed=2)
    resid = np.log(g["loss"].values) - np.log(w.loss(g["data"].values))
    np.testing.assert_allclose(resid.std(axis=0), w.sigma, rtol=0.15)


def test_truth_in_other_units_predicts_the_same_losses():
    w = draw_world(4, seed=3)
    g = simulate_grid(w, seed=3)
    d = np.random.default_rng(0).uniform(0, 100, (10, 4))
    for scale in (w.data_scale, 3.7, 250.0):
        t = true_params(g, data_scale=scale)
        dd = d / scale
        x = t["x0"].values + dd + np.einsum("ij,nij->nj", t["T"].values * (1 - np.eye(4)), dd[:, :, None] ** t["beta"].values[None])
        loss = t["E"].values + t["A"].values * x ** -t["alpha"].values
        np.testing.assert_allclose(loss, w.loss(d), rtol=1e-10)


def test_world_toml_overrides_and_errors(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text(
        '[world]\ndomains = ["a", "b", "c"]\ndata_scale = 10\n[targets.b]\nalpha = 0.5\n'
        "[transfer.a.c]\nT = 0.9\nbeta = 0.7\n[design]\nfit_budgets = [5, 10]\nholdout_budgets = [40]\n"
    )
    w = load_world(path, seed=0)
    assert w.domains == ("a", "b", "c") and w.alpha[1] == 0.5 and w.T[0, 2] == 0.9 and w.beta[0, 2] == 0.7
    assert w.design.fit_budgets == (5, 10)
    g = simulate_grid(w, seed=0)
    np.testing.assert_allclose(run_budgets(select_split(g, "holdout")).values, 40.0)

    bad = tmp_path / "bad.toml"
    for text, message in [
        ('[world]\ndomains = ["a", "b"]\n[targets.z]\nalpha = 0.5\n', "not in"),
        ('[world]\ndomains = ["a", "b"]\n[transfer.a.b]\nbeta = 1.5\n', "beta must lie in"),
        ('[world]\ndomains = ["a", "b"]\n[targets.a]\nalpha = -1\n', "must be > 0"),
        ('[world]\ndomains = ["a", "b"]\n[design]\nfit_budgets = [5, 50]\nholdout_budgets = [40]\n', "holdout budget"),
        ("[world\n", "not valid TOML"),
    ]:
        bad.write_text(text)
        with pytest.raises(InputError, match=message):
            simulate_grid(load_world(bad), seed=0)


def test_shipped_default_grid_is_the_medical_world():
    from bayescale.data.grid import load_grid
    from bayescale.workflows import REPO_DATA

    g = load_grid(REPO_DATA / "grids" / "default.nc")
    t = true_params(g)
    assert list(g["source"].values) == ["ct_abdomen", "ct_chest", "mri_t1_brain", "mri_t2_abdomen", "pet_wholebody"]
    # asymmetric transfer: abdominal CT helps chest CT more than the reverse
    assert float(t["T"].sel(source="ct_abdomen", target="ct_chest")) >= 2 * float(t["T"].sel(source="ct_chest", target="ct_abdomen"))
    assert isinstance(t["T"], xr.DataArray)


def test_broken_world_bends_past_its_break_and_matches_the_law_before_it():
    import dataclasses

    world = draw_world(3, seed=2)
    broken = dataclasses.replace(world, broken=(2.0, 0.5))
    small = np.full((1, 3), 0.2 * world.data_scale / 3)  # effective data well below 2
    large = np.full((1, 3), 50.0 * world.data_scale)
    np.testing.assert_allclose(broken.loss(small), world.loss(small))
    # Past the break the reducible loss falls more slowly, so the bent loss is higher.
    assert np.all(broken.loss(large) > world.loss(large))
    assert '"broken"' in broken.to_json() and '"broken"' not in world.to_json()

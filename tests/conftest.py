"""Shared fixtures: one small simulated world and its NUTS fit per test worker."""

from __future__ import annotations

from bayescale.inference.sampling import ensure_host_devices
import pytest

from bayescale.inference.fit import fit
from bayescale.data.grid import save_grid
from bayescale.inference.posterior import law_draws, save_posterior
from bayescale.data.simulate import draw_world, simulate_grid
from hypothesis import settings as _hypothesis_settings

# The tests sample (parallel chains): ask XLA for its host devices before anything starts JAX.
ensure_host_devices()

# Property tests draw the same examples on every run (reproducible CI; a failure replays).
_hypothesis_settings.register_profile("bayescale", derandomize=True)
_hypothesis_settings.load_profile("bayescale")


@pytest.fixture(scope="session")
def small_world():
    return draw_world(4, seed=11)


@pytest.fixture(scope="session")
def small_grid(small_world):
    return simulate_grid(small_world, seed=11)


@pytest.fixture(scope="session")
def small_fit(small_grid):
    """A real (short) NUTS fit of the small world: 2 chains x 500 draws."""
    return fit(small_grid, chains=2, warmup=300, draws=500, seed=1)


@pytest.fixture(scope="session")
def small_draws(small_fit):
    return law_draws(small_fit)


@pytest.fixture(scope="session")
def small_files(tmp_path_factory, small_grid, small_fit):
    """The small grid and posterior on disk, for command-line tests."""
    folder = tmp_path_factory.mktemp("small")
    grid_path, fit_path = folder / "grid.nc", folder / "fit.nc"
    save_grid(small_grid, grid_path)
    save_posterior(small_fit, fit_path)
    return grid_path, fit_path

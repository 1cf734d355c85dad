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


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Each test module compiles its own samplers; XLA keeps every one, and a worker that ran a few
    hundred of them exhausted its memory maps (vm.max_map_count) and died in an XLA compile (a
    segfault in CI; LLVM "Cannot allocate memory" in the sequential-design study). Release them
    after every module."""
    yield
    import jax

    jax.clear_caches()


@pytest.fixture(scope="session")
def small_world():
    return draw_world(4, seed=11)


@pytest.fixture(scope="session")
def small_grid(small_world):
    return simulate_grid(small_world, seed=11)


@pytest.fixture(scope="session")
def small_fit(small_grid):
    """A real (short) NUTS fit of the small world: 2 chains x 1000 draws after fit's default 500
    warm-up steps. With the level parameterisation 2 x (300 + 500) mixed too slowly on this world
    (r-hat 1.05-1.08, min bulk ESS 28-62 over seeds 1-3; docs/speed.md); 2 x (500 + 1000) gives
    r-hat 1.018-1.032, ESS 101-141 at about the same time (80-94 s), since warm-up dominates."""
    return fit(small_grid, chains=2, warmup=500, draws=1000, seed=1)


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


# Where every test must run (CI sets BAYESCALE_NO_SKIP=1 in .ci/run), a skipped test is a failure:
# a missing browser, extra or data folder would otherwise pass CI silently.
NO_SKIP = "BAYESCALE_NO_SKIP"


def _skip_is_failure(report) -> None:
    import os

    if os.environ.get(NO_SKIP) == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where every test must run ({NO_SKIP}=1): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _skip_is_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _skip_is_failure(outcome.get_result())

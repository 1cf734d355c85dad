import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayescale.laws import power as laws
from bayescale.data.grid import self_mask_for


def random_params(rng, n_sources=4, n_targets=4):
    names = [f"d{k}" for k in range(max(n_sources, n_targets))]
    mask = self_mask_for(names[:n_sources], names[:n_targets])
    T = np.where(mask > 0, 1.0, rng.uniform(0, 1, (n_sources, n_targets)))
    beta = np.where(mask > 0, 1.0, rng.uniform(0.3, 1, (n_sources, n_targets)))
    return dict(
        E=rng.uniform(0.1, 0.5, n_targets), A=rng.uniform(0.5, 2, n_targets), alpha=rng.uniform(0.2, 0.7, n_targets),
        x0=rng.uniform(0.02, 0.2, n_targets), T=T, beta=beta, self_mask=mask,
    )


def test_loss_matches_the_formula_written_out():
    rng = np.random.default_rng(0)
    p = random_params(rng)
    d = rng.uniform(0, 3, (7, 4))
    got = np.asarray(laws.loss(jnp.asarray(d), **p))
    for n in range(7):
        for j in range(4):
            x = p["x0"][j] + d[n, j] + sum(p["T"][i, j] * d[n, i] ** p["beta"][i, j] for i in range(4) if i != j)
            assert got[n, j] == pytest.approx(p["E"][j] + p["A"][j] * x ** -p["alpha"][j], rel=1e-5)


def test_log_loss_is_log_of_loss():
    rng = np.random.default_rng(1)
    p = random_params(rng)
    d = rng.uniform(0, 5, (20, 4))
    np.testing.assert_allclose(np.asarray(laws.log_loss(d, **p)), np.log(np.asarray(laws.loss(d, **p))), rtol=1e-5)


def test_loss_is_convex_and_decreasing_in_the_allocation():
    rng = np.random.default_rng(2)
    for _ in range(20):
        p = random_params(rng)
        a, b = rng.uniform(0, 4, (2, 50, 4))
        la, lb, mid = (np.asarray(laws.loss(x, **p)) for x in (a, b, (a + b) / 2))
        assert np.all(mid <= (la + lb) / 2 + 1e-6)  # convex along every segment
        more = a + rng.uniform(0, 1, a.shape)
        assert np.all(np.asarray(laws.loss(more, **p)) <= la + 1e-7)  # more data never hurts


def test_target_that_is_not_a_source_gets_only_transferred_data():
    rng = np.random.default_rng(3)
    p = random_params(rng, n_sources=3, n_targets=4)  # target d3 is not a source
    assert p["self_mask"][:, 3].sum() == 0
    zero_transfer = dict(p, T=p["self_mask"].copy())
    d = rng.uniform(0.5, 2, (5, 3))
    floor = p["E"][3] + p["A"][3] * p["x0"][3] ** -p["alpha"][3]
    np.testing.assert_allclose(np.asarray(laws.loss(d, **zero_transfer))[:, 3], floor, rtol=1e-6)


def test_gradient_is_finite_at_zero_data():
    rng = np.random.default_rng(4)
    p = random_params(rng)
    d = jnp.zeros((2, 4)).at[0, 1].set(1.0)
    grad = jax.grad(lambda beta: laws.log_loss(d, **dict(p, beta=beta)).sum())(jnp.asarray(p["beta"]))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_unknown_law_is_a_clear_error():
    from bayescale.errors import InputError

    from bayescale import laws as registry

    with pytest.raises(InputError, match="law: unknown law 'quadratic'; choose one of transfer, linear, independent, bend, interference, stack, mixing") as caught:
        registry.get("quadratic")
    assert caught.value.parameter == "law"

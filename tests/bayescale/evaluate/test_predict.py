import time

import numpy as np
import pytest

from bayescale.errors import InputError
from bayescale.evaluate.predict import loss_draws, predict
from bayescale.laws import transfer
from tests.references import transfer_loss as numpy_loss


def test_matches_an_independent_numpy_evaluation(small_draws):
    rng = np.random.default_rng(0)
    for D in rng.uniform(0, 200, (5, len(small_draws.sources))):
        np.testing.assert_allclose(loss_draws(small_draws, D), numpy_loss(small_draws, D), rtol=2e-5)


def test_many_allocations_at_once(small_draws):
    D = np.random.default_rng(1).uniform(0, 100, (300, len(small_draws.sources)))
    out = transfer.loss_draws(small_draws, D, chunk=128)  # chunks of 128 allocations: the padded last one too
    np.testing.assert_array_equal(loss_draws(small_draws, D), transfer.loss_draws(small_draws, D))
    assert out.shape == (small_draws.n_draws, 300, len(small_draws.targets))
    np.testing.assert_allclose(out[:, 17], numpy_loss(small_draws, D[17]), rtol=2e-5)


def test_summary_is_ordered_and_covers_the_draws(small_draws):
    alloc = {small_draws.sources[0]: 50.0, small_draws.sources[1]: 10.0}
    result = predict(small_draws, alloc, interval=0.8)
    assert result["interval"] == 0.8 and set(result["targets"]) == set(small_draws.targets)
    samples = numpy_loss(small_draws, np.array([50.0, 10.0] + [0.0] * (len(small_draws.sources) - 2)))
    for j, t in enumerate(small_draws.targets):
        row = result["targets"][t]
        assert row["lo"] <= row["median"] <= row["hi"]
        assert np.mean((samples[:, j] >= row["lo"]) & (samples[:, j] <= row["hi"])) == pytest.approx(0.8, abs=0.02)
    noisy = predict(small_draws, alloc, interval=0.8, noise=True)
    t0 = small_draws.targets[0]
    assert noisy["targets"][t0]["hi"] - noisy["targets"][t0]["lo"] > result["targets"][t0]["hi"] - result["targets"][t0]["lo"]


def test_more_data_predicts_lower_loss(small_draws):
    a = predict(small_draws, {small_draws.sources[0]: 10.0})
    b = predict(small_draws, {small_draws.sources[0]: 100.0})
    assert b["targets"][small_draws.targets[0]]["median"] < a["targets"][small_draws.targets[0]]["median"]


@pytest.mark.parametrize(
    "alloc, interval, message",
    [({"nope": 1.0}, 0.9, "unknown source domain 'nope'"), ({"d1": -3.0}, 0.9, ">= 0"), ({"d1": 1.0}, 1.5, "^interval must lie strictly between 0 and 1")],
)
def test_bad_input(small_draws, alloc, interval, message):
    with pytest.raises(InputError, match=message):
        predict(small_draws, alloc, interval)

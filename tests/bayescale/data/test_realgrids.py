"""Converters of real third-party grids (OpenLM scaling, RegMix) to the loss-grid contract.

Tests that read the published data skip when the shared data folder is absent
(``$BAYESCALE_SHARED_DATA`` or ``../shared/data``); the error-path tests write their own files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bayescale.data import realgrids
from bayescale.errors import InputError
from bayescale.data.grid import load_grid, save_grid, validate_grid

SHARED = realgrids.shared_data_dir()
needs_data = pytest.mark.skipif(
    SHARED is None or not (SHARED / realgrids.OPENLM_FOLDER).is_dir() or not (SHARED / realgrids.REGMIX_FOLDER).is_dir(),
    reason="shared third-party data not found (set $BAYESCALE_SHARED_DATA or provide ../shared/data)",
)


# ---------------------------------------------------------------------------
# OpenLM scaling


@pytest.fixture(scope="module")
def openlm_runs():
    return realgrids.read_openlm_runs()


@needs_data
def test_openlm_collection_reads_every_run(openlm_runs):
    assert len(openlm_runs) == 104
    assert {r.corpus for r in openlm_runs} == {"c4_original", "rpj", "rw_original"}
    for run in openlm_runs:
        assert len(run.loss) == 8 and set(run.loss) == set(run.loss_se)
        # the Chinchilla multiplier is tokens / (20 x params), up to rounding
        assert run.tokens / (20 * run.params) == pytest.approx(run.multiplier, rel=0.05)


@needs_data
def test_openlm_grid_per_corpus_and_size(openlm_runs):
    grids = realgrids.openlm_grids(openlm_runs)
    # 3 corpora x 4 small sizes; the 1B / 7B models (1-2 runs each) are left out
    assert len(grids) == 12
    assert ("rpj", "open_lm_1b") not in grids
    grid = grids[("rpj", "d=512_l=8_h=4")]
    assert grid.sizes == {"run": 8, "source": 1, "target": 8}
    assert list(grid["source"].values) == ["rpj"]
    assert "c4_val" in grid["target"].values and "paloma_ptb" in grid["target"].values
    assert not set(grid["source"].values) & set(grid["target"].values)  # every target gets data by transfer only
    assert grid.attrs["data_unit"] == "billion tokens"
    # holdout = the over-trained runs (multiplier >= 16)
    held = grid["chinchilla_multiplier"].values[grid["split"].values == "holdout"]
    assert sorted(held) == [16.0, 32.0]
    assert (grid["chinchilla_multiplier"].values[grid["split"].values == "fit"] < 16).all()
    validate_grid(grid)  # still a contract grid with the extra coordinates


@needs_data
def test_openlm_units_and_standard_errors_come_from_the_file():
    path = SHARED / realgrids.OPENLM_FOLDER / "rpj-d=512_l=8_h=4-4.0.json"
    record = json.loads(path.read_text())
    grid = realgrids.openlm_grid(SHARED / realgrids.OPENLM_FOLDER, corpus="rpj", model="d=512_l=8_h=4")
    run = grid.sel(run="rpj-d=512_l=8_h=4-4.0")
    assert float(run["data"].sel(source="rpj")) == pytest.approx(record["hyperparameters"]["tokens"] / 1e9)
    c4 = next(r for r in record["results"] if "c4_val" in r["val_data"][0])
    assert float(run["loss"].sel(target="c4_val")) == pytest.approx(c4["loss"])
    half_width = (c4["loss_tokens_upper_95"] - c4["loss_tokens_lower_95"]) / 2
    assert float(run["loss_se"].sel(target="c4_val")) == pytest.approx(half_width / 1.96, rel=1e-3)
    assert int(run["seed"]) == 124


@needs_data
def test_openlm_grid_of_all_corpora_puts_each_run_on_its_own_source(openlm_runs, tmp_path):
    grid = realgrids.openlm_grid(openlm_runs, model="d=96_l=8_h=4")
    assert list(grid["source"].values) == ["c4_original", "rpj", "rw_original"]
    assert ((grid["data"].values > 0).sum(axis=1) == 1).all()
    for corpus in grid["source"].values:
        on_corpus = grid["corpus"].values == corpus
        assert (grid["data"].sel(source=corpus).values[on_corpus] > 0).all()
    save_grid(grid, tmp_path / "g.nc")
    back = load_grid(tmp_path / "g.nc")
    np.testing.assert_allclose(back["loss_se"].values, grid["loss_se"].values)
    assert list(back["chinchilla_multiplier"].values) == list(grid["chinchilla_multiplier"].values)


@needs_data
def test_openlm_unknown_model_is_a_clear_error(openlm_runs):
    with pytest.raises(InputError, match="no OpenLM runs of model 'd=7_l=1_h=1'"):
        realgrids.openlm_grid(openlm_runs, corpus="rpj", model="d=7_l=1_h=1")


def _openlm_file(folder, name="rpj-tiny-1.0", **changes):
    record = {
        "dataset_name": "rpj",
        "hyperparameters": {"model": "cfg/tiny.json", "tokens": 2e8, "params": 1e7, "chinchilla_multiplier": 1.0},
        "results": [{"loss": 4.0, "loss_tokens_lower_95": 3.9, "loss_tokens_upper_95": 4.1, "val_data": ["x/c4_val/shard.tar"]}],
    }
    record.update(changes)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record))
    return path


def test_openlm_reader_on_a_small_folder(tmp_path):
    _openlm_file(tmp_path)
    run = realgrids.read_openlm_run(tmp_path / "rpj-tiny-1.0.json")
    assert run.model == "tiny" and run.corpus == "rpj" and run.loss == {"c4_val": 4.0}
    assert run.loss_se["c4_val"] == pytest.approx(0.1 / 1.959964)


def test_openlm_broken_json_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text('{"dataset_name": "rpj", ')
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON"):
        realgrids.read_openlm_runs(tmp_path)


def test_openlm_missing_key_names_the_file_and_key(tmp_path):
    path = _openlm_file(tmp_path, hyperparameters={"model": "m", "params": 1e7, "chinchilla_multiplier": 1.0})
    with pytest.raises(InputError, match=rf"{path.name}: missing key 'hyperparameters\.tokens'"):
        realgrids.read_openlm_run(path)


def test_openlm_inverted_interval_names_the_validation_set(tmp_path):
    path = _openlm_file(tmp_path, results=[{"loss": 4.0, "loss_tokens_lower_95": 4.2, "loss_tokens_upper_95": 4.1,
                                             "val_data": ["x/paloma_ptb/0.tar"]}])
    with pytest.raises(InputError, match=r"validation set 'paloma_ptb': loss_tokens_upper_95 .* below"):
        realgrids.read_openlm_run(path)


def test_missing_folder_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        realgrids.read_openlm_runs(tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"no \*\.json run files"):
        realgrids.read_openlm_runs(tmp_path)


def test_shared_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(realgrids.DATA_ENV, str(tmp_path))
    assert realgrids.shared_data_dir() == tmp_path
    monkeypatch.setenv(realgrids.DATA_ENV, str(tmp_path / "absent"))
    assert realgrids.shared_data_dir() is None
    with pytest.raises(InputError, match="no shared data folder"):
        realgrids.regmix_grid()


# ---------------------------------------------------------------------------
# RegMix


@needs_data
def test_regmix_grid_shapes_units_and_names():
    grid = realgrids.regmix_grid()
    assert grid.sizes == {"run": 512, "source": 17, "target": 13}
    assert "pile_cc" in grid["source"].values and "enron_emails" in grid["source"].values
    assert "enron_emails" not in grid["target"].values  # 4 training domains have no validation set
    assert set(grid["target"].values) <= set(grid["source"].values)
    assert grid.attrs["data_unit"] == "billion tokens"
    budgets = grid["data"].sum("source").values
    np.testing.assert_allclose(budgets, 1.0, atol=0.005)  # weights x 1B tokens, weights rounded to 3 decimals
    assert float(grid["loss"].sel(run="regmix-1", target="pile_cc")) == pytest.approx(5.169477939605713)
    assert float(grid["data"].sel(run="regmix-1", source="pile_cc")) == pytest.approx(0.787)


@needs_data
def test_regmix_holdout_is_a_seeded_fifth():
    a, b, c = (realgrids.regmix_grid(seed=s) for s in (0, 0, 1))
    assert int((a["split"] == "holdout").sum()) == 102
    assert (a["split"].values == b["split"].values).all()
    assert (a["split"].values != c["split"].values).any()


@needs_data
def test_regmix_target_subset_and_unknown_target():
    grid = realgrids.regmix_grid(targets=["pile_cc", "github"])
    assert list(grid["target"].values) == ["pile_cc", "github"]
    with pytest.raises(InputError, match="no validation set 'enron_emails'"):
        realgrids.regmix_grid(targets=["enron_emails"])


@pytest.fixture
def regmix_copy(tmp_path):
    """A small RegMix-shaped folder of our own (3 runs)."""
    folder = tmp_path / "regmix"
    folder.mkdir()
    (folder / realgrids.REGMIX_MIXTURE_FILE).write_text(
        "index,train_the_pile_arxiv,train_the_pile_github\n1,0.25,0.75\n2,1.0,0.0\n3,0.5,0.5\n")
    (folder / realgrids.REGMIX_LOSS_FILE).write_text(
        "index,metric/the_pile_arxiv_val_loss\n1,4.5\n2,3.9\n3,4.2\n")
    return folder


def test_regmix_reader_on_a_small_folder(regmix_copy):
    grid = realgrids.regmix_grid(regmix_copy, holdout_fraction=0.0)
    assert list(grid["source"].values) == ["arxiv", "github"]
    assert list(grid["target"].values) == ["arxiv"]
    np.testing.assert_allclose(grid["data"].values, [[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]])


def test_regmix_bad_cell_names_file_line_and_column(regmix_copy):
    path = regmix_copy / realgrids.REGMIX_MIXTURE_FILE
    path.write_text(path.read_text().replace("0.25", "abc"))
    with pytest.raises(InputError, match=r"train_mixture_1m\.csv line 2: column 'train_the_pile_arxiv' is 'abc'"):
        realgrids.regmix_grid(regmix_copy)


def test_regmix_missing_file_is_named(regmix_copy):
    (regmix_copy / realgrids.REGMIX_LOSS_FILE).unlink()
    with pytest.raises(InputError, match=r"train_pile_loss_1m\.csv: no such file"):
        realgrids.regmix_grid(regmix_copy)


def test_regmix_mismatched_runs_are_a_clear_error(regmix_copy):
    path = regmix_copy / realgrids.REGMIX_LOSS_FILE
    path.write_text(path.read_text().replace("\n3,", "\n4,"))
    with pytest.raises(InputError, match="run index does not match"):
        realgrids.regmix_grid(regmix_copy)


def test_regmix_negative_loss_is_rejected_by_the_grid_contract(regmix_copy):
    path = regmix_copy / realgrids.REGMIX_LOSS_FILE
    path.write_text(path.read_text().replace("3.9", "-3.9"))
    with pytest.raises(InputError, match="loss on run 'regmix-2', target 'arxiv'"):
        realgrids.regmix_grid(regmix_copy)


# ---------------------------------------------------------------------------
# the transfer law on a real grid


@needs_data
def test_transfer_law_fits_an_openlm_grid_whose_targets_are_not_sources(openlm_runs):
    """The existing fit() takes a grid with one source and 8 targets and extrapolates to
    the over-trained runs (short chains: a smoke test of the contract, not of calibration)."""
    from bayescale.evaluate.check import check_holdout
    from bayescale.inference.fit import fit
    from bayescale.inference.posterior import law_draws

    grid = realgrids.openlm_grid(openlm_runs, corpus="rpj", model="d=512_l=8_h=4")
    idata = fit(grid, chains=1, warmup=100, draws=100, target_accept=0.9, seed=0)
    draws = law_draws(idata)
    assert draws.sources == ("rpj",) and len(draws.targets) == 8
    assert draws.self_mask.sum() == 0
    scores = check_holdout(draws, grid)
    assert scores["n"] == 16
    assert scores["pearson_r"] > 0.95
    assert scores["median_abs_rel_error"] < 0.05


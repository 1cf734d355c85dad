"""`bayescale train` and `bayescale phantoms` end to end through typer's CliRunner."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("nibabel")

from typer.testing import CliRunner  # noqa: E402

from bayescale.cli import app  # noqa: E402
from bayescale.data.grid import load_grid  # noqa: E402
from tests.trainers.test_domains import TINY_CONFIG, write_config, write_dataset  # noqa: E402

runner = CliRunner()


def test_train_end_to_end_rerun_and_collect_only(tmp_path):
    write_dataset(tmp_path)
    config = write_config(tmp_path)
    out = tmp_path / "grid.nc"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "trained 7" in result.output and "runs: 7 (7 fit, 0 holdout)" in result.output
    ds = load_grid(out)
    assert ds.sizes["run"] == 7 and ds.attrs["data_unit"] == "volumes"
    assert (ds["steps"].values == 8).all()

    again = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "trained 0, skipped 7 finished" in again.output

    out.unlink()
    collected = runner.invoke(app, ["train", str(config), "--out", str(out), "--collect-only"])
    assert collected.exit_code == 0, collected.output
    assert "collected" in collected.output
    assert load_grid(out).sizes["run"] == 7


def test_train_with_progress_bars(tmp_path):
    write_dataset(tmp_path, n=3)
    config = write_config(tmp_path, TINY_CONFIG.replace("fit_budgets = [1, 2]\nmixtures_per_budget = 1", "fit_budgets = [1]"))
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "g.nc"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "done single-ct_a-n001-s0" in result.output


def test_train_with_a_design_file_appends_its_runs_to_the_grid(tmp_path):
    """The loop a user runs: train a grid, let propose recommend a run, train it into the same grid."""
    write_dataset(tmp_path, n=3)
    config = write_config(tmp_path, TINY_CONFIG.replace("fit_budgets = [1, 2]\nmixtures_per_budget = 1", "fit_budgets = [1]"))
    out, records = tmp_path / "grid.nc", tmp_path / "grid.nc.records"
    first = runner.invoke(app, ["train", str(config), "--out", str(out), "--workers", "1", "--no-progress"])
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_text() for p in records.glob("*.json")}  # finished_at and losses included
    assert len(before) == 3

    design = tmp_path / "proposed.toml"
    design.write_text('[design]\n[[design.runs]]\nid = "propose-r1-mix"\ndata = { ct_a = 1, mri_b = 1, pet_c = 0 }\nseed = 0\nsplit = "fit"\n')
    args = ["train", str(config), "--out", str(out), "--design", str(design), "--workers", "1", "--no-progress"]
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "(4 runs; trained 1, skipped 3 finished" in second.output
    ds = load_grid(out)
    assert list(ds["run"].values) == [*sorted(r.removesuffix(".json") for r in before), "propose-r1-mix"]
    added = ds.sel(run="propose-r1-mix")
    assert dict(zip(ds["source"].values, added["data"].values.tolist())) == {"ct_a": 1.0, "mri_b": 1.0, "pet_c": 0.0}
    assert str(added["split"].values) == "fit" and str(added["kind"].values) == "explicit"
    for name, text in before.items():  # the old runs were skipped, not retrained
        assert (records / name).read_text() == text

    out.unlink()
    collected = runner.invoke(app, ["train", str(config), "--out", str(out), "--design", str(design), "--collect-only"])
    assert collected.exit_code == 0, collected.output
    assert "(4 runs; collected" in collected.output and load_grid(out).sizes["run"] == 4

    overwrite = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "d.nc"), "--design", str(tmp_path / "d.nc")])
    assert overwrite.exit_code == 2 and "would overwrite the input file" in overwrite.output


@pytest.mark.parametrize(
    "change, expected",
    [
        (("modality = \"pet\"", "modality = \"xray\""), "unknown modality 'xray'"),
        (("glob = \"ct_a/ct_a_*.nii.gz\"", "glob = \"ct_a/none_*.nii.gz\""), "matches no file"),
    ],
)
def test_bad_manifest_exits_2_with_one_line_and_no_grid(tmp_path, change, expected):
    manifest = write_dataset(tmp_path)
    manifest.write_text(manifest.read_text().replace(*change))
    config = write_config(tmp_path)
    out = tmp_path / "grid.nc"
    result = runner.invoke(app, ["train", str(config), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "manifest.toml" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_bad_flags_exit_2(tmp_path):
    write_dataset(tmp_path)
    config = write_config(tmp_path)
    for args, expected in (
        (["--out", str(tmp_path / "g.nc"), "--executor", "slurm"], "--executor 'slurm'"),
        (["--out", str(tmp_path / "g.nc"), "--workers", "0"], "--workers 0"),
        (["--out", str(tmp_path / "g.nc"), "--address", "1.2.3.4:6379"], "--address is for --executor ray"),
        (["--out", str(config)], "would overwrite the input file"),
    ):
        result = runner.invoke(app, ["train", str(config), *args])
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output
    missing = runner.invoke(app, ["train", str(tmp_path / "absent.toml"), "--out", str(tmp_path / "g.nc")])
    assert missing.exit_code == 2 and "no such config file" in missing.output


def test_phantoms_command(tmp_path):
    out = tmp_path / "ph"
    result = runner.invoke(app, ["phantoms", "--out", str(out), "--per-domain", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 5 volumes" in result.output
    assert sorted(p.name for p in out.glob("*/*_0000.nii.gz")) == sorted(
        f"{d}_0000.nii.gz" for d in ("ct_abdomen", "ct_chest", "mri_t1_brain", "mri_t2_abdomen", "pet_wholebody")
    )
    bad = runner.invoke(app, ["phantoms", "--out", str(out), "--per-domain", "0"])
    assert bad.exit_code == 2 and "--per-domain 0" in bad.output

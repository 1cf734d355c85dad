"""analyses/recipe_probe.py: a recipe probe trains real runs, resumes, reports and refuses bad settings."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from bayescale.data.grid import load_grid  # noqa: E402
from bayescale.errors import InputError  # noqa: E402
from tests.trainers.test_domains import write_config, write_dataset  # noqa: E402
from trainers.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the script imports analyses.closed_loop
_spec = importlib.util.spec_from_file_location("recipe_probe", REPO / "analyses" / "recipe_probe.py")
rp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rp)


def test_settings_are_toml_values_and_bad_ones_are_named():
    assert rp.parse_setting("model.mask_ratio=0.5") == ("model", "mask_ratio", 0.5)
    assert rp.parse_setting("data.spacing=[4.0, 4.0, 4.0]") == ("data", "spacing", [4.0, 4.0, 4.0])
    assert rp.parse_setting('training.device="cpu"') == ("training", "device", "cpu")
    with pytest.raises(InputError, match="expected SECTION.KEY=VALUE"):
        rp.parse_setting("mask_ratio=0.5")
    with pytest.raises(InputError, match="section 'design' is not one of"):
        rp.parse_setting("design.seeds=[0]")
    with pytest.raises(InputError, match="is not a TOML value"):
        rp.parse_setting("model.mask_ratio=half")


def test_the_probe_config_is_the_shipped_recipe_with_the_changes_and_a_single_domain_design(tmp_path):
    base = REPO / "data" / "configs" / "phantom.toml"
    settings = [rp.parse_setting(s) for s in ("model.mask_ratio=0.6", "training.base_steps=2400", "training.steps_per_volume=50")]
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "train.toml").write_text(rp.probe_config_text(base, settings, folder, domains=["ct_abdomen", "pet_wholebody"],
                                                           budgets=[16, 4], seeds=[0, 1], name="p"))
    probe, shipped = load_config(folder / "train.toml"), load_config(base)
    assert probe.model.mask_ratio == 0.6 != shipped.model.mask_ratio
    assert probe.training.steps_for(48) == 2400 + 50 * 48 != shipped.training.steps_for(48)
    # the same phantoms, spacing and validation crops: the paths, rewritten relative to the probe, name the same files
    assert probe.data.manifest.resolve() == shipped.data.manifest.resolve()
    assert probe.data.cache_dir.resolve() == shipped.data.cache_dir.resolve()
    assert (probe.data.spacing, probe.data.crop, probe.data.validation_crops) == (shipped.data.spacing, shipped.data.crop, shipped.data.validation_crops)
    assert probe.model.hidden_size == shipped.model.hidden_size and probe.training.lr == shipped.training.lr
    d = probe.design
    assert d.fit_budgets == (4, 16) and d.seeds == (0, 1) and d.domains == ("ct_abdomen", "pet_wholebody") and d.mixtures_per_budget == 0
    # a fixed step count replaces the proportional one
    fixed = rp.probe_config_text(base, [("training", "steps", 100)], folder, domains=["ct_abdomen"], budgets=[1], seeds=[0], name="f")
    assert "steps_per_volume" not in tomllib.loads(fixed)["training"]


def test_a_probe_trains_resumes_and_reports(tmp_path, capsys):
    write_dataset(tmp_path)
    config = write_config(tmp_path)
    out = tmp_path / "probes"
    argv = ["--name", "tiny", "--config", str(config), "--out", str(out), "--budgets", "1,2", "--seeds", "0,1",
            "--set", "training.steps=6", "--workers", "1", "--quiet"]
    assert rp.main(argv) == 0
    grid = load_grid(out / "tiny" / "grid.nc")
    assert grid.sizes["run"] == 3 * 2 * 2  # three domains x two budgets x two seeds, single-domain runs only
    text = (out / "tiny" / "ladders.md").read_text()
    assert all(f"| {d} |" in text for d in ("ct_a", "mri_b", "pet_c"))
    records = sorted((out / "tiny" / "grid.nc.records").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in records}
    assert len(stamps) >= 12
    assert rp.main(argv) == 0  # resumes: nothing retrained
    assert {p: p.stat().st_mtime_ns for p in records} == stamps
    capsys.readouterr()
    assert rp.main(["--report", "--out", str(out)]) == 0
    assert "| tiny |" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert rp.main(["--name", "x", "--out", str(tmp_path), "--set", "model.mask_ratio"]) == 2
    assert capsys.readouterr().err.strip() == "error: --set 'model.mask_ratio': expected SECTION.KEY=VALUE, e.g. model.mask_ratio=0.5"
    assert rp.main(["--name", "a b", "--out", str(tmp_path)]) == 2
    assert rp.main(["--report", "--out", str(tmp_path / "none")]) == 2
    assert "no probes here" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "a b").exists()
    # a value the trainers refuse is named and leaves no probe folder behind
    base = REPO / "data" / "configs" / "phantom.toml"
    assert rp.main(["--name", "y", "--config", str(base), "--domains", "ct_abdomen", "--out", str(tmp_path),
                    "--set", "model.mask_ratio=2.0"]) == 2
    assert "mask_ratio" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()

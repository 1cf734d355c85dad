"""The demo job end to end on the shipped grid (short chains), and its resumption."""

import json

from rich.console import Console

from bayescale.inference.posterior import load_posterior
from bayescale.workflows import DEFAULT_CONFIG, run_demo


def short_config(tmp_path):
    text = DEFAULT_CONFIG.read_text()
    text = text.replace('grid = "../grids/phantom-mae.nc"', f'grid = "{DEFAULT_CONFIG.parent.parent / "grids" / "phantom-mae.nc"}"')
    text = text.replace("warmup = 1000", "warmup = 200").replace("draws = 1000", "draws = 200").replace("chains = 4", "chains = 2")
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


def test_demo_writes_every_output_and_resumes(tmp_path):
    config = short_config(tmp_path)
    out = tmp_path / "demo"
    console = Console(record=True, width=120)
    summary = run_demo(out, console=console, config_path=config)
    for name in ("fit.nc", "unaware.nc", "allocation.json", "check.json", "report.html"):
        assert (out / name).is_file(), name
    allocation = json.loads((out / "allocation.json").read_text())
    assert allocation["status"] == "optimal" and allocation["objective"] == "cvar:0.9"
    assert abs(sum(allocation["allocation"].values()) - 144) < 1e-3 * 144
    assert allocation["allocation"]["pet_wholebody"] <= 12 * (1 + 1e-6)  # availability cap
    assert set(allocation["baselines"]) == {"uniform", "proportional"}
    check = json.loads((out / "check.json").read_text())
    assert check["n"] == 60 and check["pearson_r"] > 0.8  # 12 held-out runs x 5 domains of real MAE training
    # the value of transfer is measured against the fair baseline: the independent law fitted to the same grid
    unaware = load_posterior(out / "unaware.nc")
    assert unaware.attrs["law"] == "independent" and unaware.attrs["grid_fingerprint"] == load_posterior(out / "fit.nc").attrs["grid_fingerprint"]
    assert unaware["posterior"].sizes["chain"] == 2 and unaware["posterior"].sizes["draw"] == 200  # the main fit's settings
    value = allocation["value_of_transfer"]
    assert value["transfer_baseline"] == "transfer_unaware" and value["vs_transfer_unaware"]["of_means"] is not None
    assert allocation["transfer_unaware"]["allocation"] is not None and "transfer_zeroed" in allocation
    text = console.export_text()
    assert "held-out check" in text and "diagnostics" in text
    flat = " ".join(text.split())  # the console wraps long lines
    assert "value of transfer: " in flat and "(the independent law fitted to the same grid)" in flat

    # A second run reuses the finished fits instead of sampling again.
    mtimes = [(out / name).stat().st_mtime_ns for name in ("fit.nc", "unaware.nc")]
    console = Console(record=True, width=120)
    run_demo(out, console=console, config_path=config)
    assert [(out / name).stat().st_mtime_ns for name in ("fit.nc", "unaware.nc")] == mtimes
    assert console.export_text().count("reusing") == 2
    assert summary["timings"]["fit"] > 0

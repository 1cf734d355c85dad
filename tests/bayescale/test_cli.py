"""The command line end to end, and its answers to bad input: one line, exit status 2, no file."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from bayescale.cli import app
from bayescale.data.grid import load_grid, save_grid

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_simulate_and_grid_info(tmp_path):
    out = tmp_path / "g.nc"
    r = invoke("simulate", "--domains", 3, "--seed", 4, "--out", out)
    assert r.exit_code == 0, r.output
    g = load_grid(out)
    assert g.sizes["source"] == 3 and "true_params" in g.attrs
    r = invoke("grid", "info", out)
    assert r.exit_code == 0 and "holdout" in r.output and "d1, d2, d3" in r.output


def test_grid_ladders_checks_the_goals_and_writes_them(tmp_path):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "data" / "grids" / "phantom-mae.nc"
    r = invoke("grid", "ladders", shipped, "--json", tmp_path / "ladders.json")
    assert r.exit_code == 0, r.output
    assert "| mri_t1_brain | 0.946 ± 6.4 % |" in r.output and "not all met" in r.output
    goals = json.loads((tmp_path / "ladders.json").read_text())
    assert goals["all_met"] is False and goals["domains"]["ct_abdomen"]["top_budget"] == 16
    assert invoke("grid", "ladders", shipped, "--strict").exit_code == 1  # the shipped recipe misses the spread goal
    # loose enough goals pass, and --strict then exits 0
    loose = invoke("grid", "ladders", shipped, "--strict", "--top-ratio", 1.4, "--max-spread", 0.5)
    assert loose.exit_code == 0, loose.output
    bad = invoke("grid", "ladders", shipped, "--max-spread", -0.1)
    assert bad.exit_code == 2 and "--max-spread -0.1" in bad.output


def test_fit_predict_allocate_check_report(tmp_path, small_files):
    grid_path, _ = small_files
    fit_path = tmp_path / "fit.nc"
    r = invoke("fit", grid_path, "--out", fit_path, "--chains", 2, "--warmup", 150, "--draws", 150, "--progress")
    assert r.exit_code == 0, r.output
    assert "max r-hat" in r.output and "divergences" in r.output
    # with --progress each NUTS warm-up says how long its draws will take: the fit and its leave-future-out fit
    assert r.output.count("warm-up took") == 2 and "150 draws per chain: about" in r.output
    assert "(smaller budgets): warm-up took" in r.output

    pj = tmp_path / "predict.json"
    r = invoke("predict", fit_path, "--alloc", "d1=100,d2=50", "--interval", 0.8, "--json", pj)
    assert r.exit_code == 0, r.output
    p = json.loads(pj.read_text())
    assert p["allocation"]["d1"] == 100 and p["interval"] == 0.8
    assert set(p["targets"]["d1"]) == {"mean", "median", "lo", "hi"}

    aj = tmp_path / "alloc.json"
    r = invoke("allocate", fit_path, "--budget", 200, "--objective", "cvar:0.9", "--max", "d1=150,d2=150,d3=150,d4=40", "--json", aj)
    assert r.exit_code == 0, r.output
    a = json.loads(aj.read_text())
    assert a["status"] == "optimal" and a["objective"] == "cvar:0.9"
    assert sum(a["allocation"].values()) == pytest.approx(200, rel=1e-4)
    assert set(a["baselines"]) == {"uniform", "proportional"}

    cj = tmp_path / "check.json"
    r = invoke("check", fit_path, grid_path, "--json", cj)
    assert r.exit_code == 0, r.output
    c = json.loads(cj.read_text())
    assert set(c) >= {"n", "pearson_r", "median_abs_rel_error", "coverage_50", "coverage_90"}

    r = invoke("report", fit_path, "--grid", grid_path, "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "report.html").stat().st_size > 10_000
    # without --unaware the report fits the independent law itself, so its value of transfer is the fair one
    assert "fitting the independent law" in r.output
    assert "(the value of modelling transfer)" in (tmp_path / "rep" / "report.html").read_text()


def test_allocate_and_report_take_an_unaware_posterior(tmp_path, small_files):
    """--unaware: the transfer-unaware baseline is the optimum under the independent law's saved posterior."""
    grid_path, fit_path = small_files
    unaware = tmp_path / "independent.nc"
    r = invoke("fit", grid_path, "--law", "independent", "--out", unaware, "--chains", 2, "--warmup", 150, "--draws", 100,
               "--no-progress")
    assert r.exit_code == 0, r.output
    options = ["--budget", 200, "--objective", "cvar:0.9", "--max", "d1=150,d2=150,d3=150,d4=40", "--uncertainty", 0]
    aj, own = tmp_path / "alloc.json", tmp_path / "own.json"
    r = invoke("allocate", fit_path, *options, "--unaware", unaware, "--json", aj)
    assert r.exit_code == 0, r.output
    assert "transfer_unaware is the optimum under the independent law" in r.output and "vs transfer_unaware" in r.output
    a = json.loads(aj.read_text())
    assert a["value_of_transfer"]["transfer_baseline"] == "transfer_unaware" and "vs_transfer_unaware" in a["value_of_transfer"]
    assert a["transfer_zeroed"]["description"].startswith("ablation: T = 0 inside the transfer posterior")
    # the baseline is what `allocate` recommends on the independent posterior alone
    r = invoke("allocate", unaware, *options, "--no-baselines", "--json", own)
    assert r.exit_code == 0, r.output
    mine = json.loads(own.read_text())
    for source, amount in mine["allocation"].items():
        assert a["transfer_unaware"]["allocation"][source] == pytest.approx(amount, rel=1e-9, abs=1e-9)
    assert a["transfer_unaware"]["objective_value_assumed"] == pytest.approx(mine["objective_value"], rel=1e-12)
    # the report takes it too (no fit of its own)
    r = invoke("report", fit_path, "--grid", grid_path, "--out", tmp_path / "rep", "--unaware", unaware)
    assert r.exit_code == 0, r.output
    assert "fitting the independent law" not in r.output
    assert "(the value of modelling transfer)" in (tmp_path / "rep" / "report.html").read_text()


@pytest.fixture()
def files(tmp_path, small_files):
    return tmp_path, *small_files


def _bad_grids(tmp_path, grid_path):
    g = load_grid(grid_path)
    cases = {}

    def write(name, ds):
        path = tmp_path / f"{name}.nc"
        ds.to_netcdf(path)
        cases[name] = path

    bad = g.copy(deep=True)
    bad["loss"][0, 0] = -0.5
    write("negative_loss", bad)
    bad = g.copy(deep=True)
    bad["loss"][1, 1] = 0.0
    write("zero_loss", bad)
    bad = g.copy(deep=True)
    bad["data"][2, 0] = -1.0
    write("negative_data", bad)
    runs = g["run"].values.copy()
    runs[1] = runs[0]
    write("duplicate_runs", g.assign_coords(run=runs))
    splits = g["split"].values.copy()
    splits[0] = "test"
    write("unknown_split", g.assign_coords(split=("run", splits)))
    text = tmp_path / "text.nc"
    text.write_text("run,loss\nr1,0.5\n")
    cases["not_netcdf"] = text
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(grid_path.read_bytes()[:500])
    cases["truncated"] = truncated
    cases["missing"] = tmp_path / "missing.nc"
    return cases


def test_bad_grids_are_refused_by_every_command_that_reads_them(files):
    tmp_path, grid_path, fit_path = files
    for name, path in _bad_grids(tmp_path, grid_path).items():
        for args in (["grid", "info", path], ["fit", path, "--out", tmp_path / f"fit-{name}.nc"], ["check", fit_path, path]):
            r = invoke(*args)
            assert r.exit_code == 2, (name, args, r.output)
            assert "Traceback" not in r.output
            assert str(path.name) in r.output, (name, r.output)
        assert not (tmp_path / f"fit-{name}.nc").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "{fit}", "--alloc", "nope=3"], "unknown source domain 'nope'"),
        (["predict", "{fit}", "--alloc", "d1=abc"], "--alloc: value for 'd1' is 'abc'"),
        (["predict", "{fit}", "--alloc", "d1"], "--alloc: expected name=value"),
        (["allocate", "{fit}", "--budget", "100", "--weights", "zz=1"], "--weights"),
        (["allocate", "{fit}", "--budget", "100", "--max", "zz=1"], "--max"),
        (["allocate", "{fit}", "--budget", "0"], "--budget"),
        (["allocate", "{fit}", "--budget", "-5"], "--budget"),
        (["allocate", "{fit}", "--budget", "100", "--min", "d1=80,d2=80"], "minimums sum to"),
        (["allocate", "{fit}", "--budget", "100", "--objective", "median"], "objective"),
        (["allocate", "{fit}", "--budget", "100", "--objective", "cvar:1.5"], "CVaR level"),
        (["predict", "{tmp}/nothing.nc", "--alloc", "d1=3"], "nothing.nc"),
        (["predict", "{grid}", "--alloc", "d1=3"], "not a bayescale posterior"),
        (["fit", "{grid}", "--out", "{tmp}/f.nc", "--law", "quadratic"], "unknown law"),
    ],
)
def test_bad_flags_get_one_line_and_exit_2(files, args, message):
    tmp_path, grid_path, fit_path = files
    json_path = tmp_path / "out.json"
    args = [a.format(fit=fit_path, grid=grid_path, tmp=tmp_path) for a in args] + (["--json", str(json_path)] if args[0] != "fit" else [])
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert r.output.strip().count("\n") == 0, r.output  # one line
    assert not json_path.exists() and not (tmp_path / "f.nc").exists()


def test_real_process_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_text("this is not a grid")
    proc = subprocess.run(
        [sys.executable, "-m", "bayescale.cli", "grid", "info", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "bad.nc" in proc.stderr


def test_csv_grids_fit_like_netcdf(tmp_path, small_grid):
    wide = tmp_path / "g.csv"
    rows = ["run,seed,split," + ",".join(f"data_{s}" for s in small_grid["source"].values) + "," + ",".join(f"loss_{t}" for t in small_grid["target"].values)]
    for k in range(small_grid.sizes["run"]):
        r = small_grid.isel(run=k)
        rows.append(
            f"{r['run'].item()},{int(r['seed'])},{r['split'].item()},"
            + ",".join(repr(float(v)) for v in r["data"].values)
            + ","
            + ",".join(repr(float(v)) for v in r["loss"].values)
        )
    wide.write_text("\n".join(rows) + "\n")
    g = load_grid(wide)
    np.testing.assert_allclose(g["loss"].values, small_grid["loss"].values)
    save_grid(g, tmp_path / "from_csv.nc")


def test_compare_strict_and_prior_only(tmp_path, small_files):
    grid_path, fit_path = small_files
    other = tmp_path / "independent.nc"
    r = invoke("fit", grid_path, "--out", other, "--law", "independent", "--chains", 1, "--warmup", 100, "--draws", 100, "--no-progress", "--strict")
    assert r.exit_code == 1 and other.exists()  # too short to pass --strict, and says so
    cj = tmp_path / "cmp.json"
    r = invoke("compare", fit_path, other, "--grid", grid_path, "--json", cj)
    assert r.exit_code == 0, r.output
    rows = json.loads(cj.read_text())["fits"]
    assert [row["law"] for row in rows] == ["transfer", "independent"]  # transfer fits a transfer world better
    assert rows[0]["elpd_diff"] == 0 and rows[1]["elpd_diff"] < 0 and "holdout" in rows[0]
    r = invoke("fit", grid_path, "--prior-only", "--draws", 200)
    assert r.exit_code == 0 and "prior predictive check" in r.output
    r = invoke("compare", fit_path)
    assert r.exit_code == 2 and "at least two" in r.output


def test_hubs_command(tmp_path, small_files):
    _, fit_path = small_files
    hj, png = tmp_path / "hubs.json", tmp_path / "hubs.png"
    r = invoke("hubs", fit_path, "--json", hj, "--figure", png)
    assert r.exit_code == 0, r.output
    summary = json.loads(hj.read_text())
    assert summary["domains"]["d1"]["label"] == "hub" and "effective_data_share" in summary["definitions"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the printed table keeps its bracketed intervals (rich would eat "[interval]" as markup)
    assert "alpha: median [90 % interval]." in r.output and "Asymmetry, clearest first" in r.output
    first = summary["asymmetry"][0]
    assert f"{first['source']} -> {first['target']}" in r.output and f"P = {first['p']:.2f}" in r.output


@pytest.mark.parametrize("cut, message", [("4", "run(s) to fit; need at least"), ("100000", "leaves no run above it"), ("-1", "must be a positive budget")])
def test_check_holdout_above_refuses_cuts_that_leave_too_little(small_files, tmp_path, cut, message):
    grid_path, fit_path = small_files
    r = invoke("check", fit_path, grid_path, "--holdout-above", cut, "--json", tmp_path / "c.json")
    assert r.exit_code == 2 and message in r.output and r.output.strip().count("\n") == 0, r.output
    assert not (tmp_path / "c.json").exists()


def test_check_holdout_above_refits_below_the_cut_and_scores_above_it(small_files, tmp_path):
    grid_path, fit_path = small_files
    out = tmp_path / "c.json"
    r = invoke("check", fit_path, grid_path, "--holdout-above", "32", "--chains", "2", "--warmup", "150", "--draws", "150", "--json", out)
    assert r.exit_code == 0, r.output
    scores = json.loads(out.read_text())
    budgets = load_grid(grid_path)["data"].sum("source").values
    assert scores["holdout_above"] == 32 and scores["n"] == int((budgets > 32).sum()) * load_grid(grid_path).sizes["target"]
    assert scores["pearson_r"] > 0.9 and scores["calibration"]["verdict"] in ("ok", "over-confident", "under-confident")


def test_check_figure_and_law_table(small_files, tmp_path):
    """check --laws fits each family on the same split and prints the extrapolation table;
    --figure saves predicted-vs-observed, PIT and coverage; --json carries both."""
    import matplotlib.image as mpimg

    grid_path, fit_path = small_files
    out, fig = tmp_path / "c.json", tmp_path / "check.png"
    r = invoke("check", fit_path, grid_path, "--laws", "transfer,independent", "--chains", 1, "--warmup", 150, "--draws", 150,
               "--figure", fig, "--json", out)
    assert r.exit_code == 0, r.output
    scores = json.loads(out.read_text())
    assert [row["law"] for row in scores["laws"]] == ["transfer", "independent"]
    assert scores["laws"][0]["pearson_r"] == pytest.approx(scores["pearson_r"])  # the given posterior, not a refit
    assert "fitting the independent law" in r.output and "fitting the transfer law" not in r.output  # reused
    assert "* lowest median |relative error|" in r.output
    curve = scores["coverage_curve"]
    assert len(curve["nominal"]) == 19 and curve["n"] == scores["n"]
    image = mpimg.imread(fig)
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side


@pytest.mark.parametrize(
    "args, message",
    [
        (("--laws", "transfer,nonsense"), "--laws: unknown law 'nonsense'"),
        (("--figure", "check.pdf"), "give a .png path"),
        (("--chains", "0"), "--chains, --warmup and --draws must be >= 1"),
    ],
)
def test_check_bad_flags_are_one_line_errors(small_files, tmp_path, args, message):
    grid_path, fit_path = small_files
    r = invoke("check", fit_path, grid_path, *args, "--json", tmp_path / "c.json")
    assert r.exit_code == 2 and message in r.output and r.output.strip().count("\n") == 0, r.output
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "check.pdf").exists()


@pytest.mark.parametrize("command", [["allocate", "{fit}", "--budget", "100"], ["predict", "{fit}", "--alloc", "{alloc}"],
                                     ["hubs", "{fit}"], ["propose", "{fit}", "{grid}", "--budget", "100", "--batch", "1",
                                                         "--outcomes", "8", "--decisions", "2"]],
                         ids=["allocate", "predict", "hubs", "propose"])
def test_json_dash_puts_the_json_alone_on_stdout(tmp_path, small_files, command):
    """``--json -``: stdout is the JSON and nothing else (a pipe into jq reads it), the table goes to
    stderr, and no file named '-' appears. In a real process: HiGHS or a library printing to the
    C-level stdout would show here."""
    grid_path, fit_path = small_files
    sources = [str(s) for s in load_grid(grid_path)["source"].values]
    args = [a.format(fit=fit_path, grid=grid_path, alloc=",".join(f"{s}=2" for s in sources)) for a in command]
    proc = subprocess.run([sys.executable, "-m", "bayescale.cli", *args, "--json", "-"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout)
    assert isinstance(payload, dict) and payload
    assert proc.stderr.strip() and not (tmp_path / "-").exists()
    # the same command writing to a file gives the same JSON
    again = invoke(*args, "--json", tmp_path / "out.json")
    assert again.exit_code == 0, again.output
    assert timeless(json.loads((tmp_path / "out.json").read_text())) == timeless(payload)


def timeless(value):
    """A JSON value without its timings (keys named 'seconds'), which differ from run to run."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def test_propose_writes_the_batch_as_json_and_as_a_design_the_trainers_read(tmp_path, small_files):
    from trainers.config import read_design_runs

    grid_path, fit_path = small_files
    sources = [str(s) for s in load_grid(grid_path)["source"].values]
    (tmp_path / "c.csv").write_text("name," + ",".join(sources) + "\none,4,0,0,0\ntwo,0,4,4,0\nthree,2,2,2,2\n")
    r = invoke("propose", fit_path, grid_path, "--budget", "100", "--candidates", tmp_path / "c.csv", "--batch", "2",
               "--outcomes", "16", "--decisions", "4", "--json", tmp_path / "p.json", "--design", tmp_path / "d.toml")
    assert r.exit_code == 0, r.output
    payload = json.loads((tmp_path / "p.json").read_text())
    chosen = [run["name"] for run in payload["batch"]]
    assert len(chosen) == 2 and set(chosen) <= {"one", "two", "three"}
    assert [run.id for run in read_design_runs(tmp_path / "d.toml")] == [f"propose-{k}-{n}" for k, n in enumerate(chosen, 1)]
    assert "2 runs to train next" in r.output and all(name in r.output for name in chosen)


@pytest.mark.parametrize("extra, message", [
    (["--criterion", "entropy"], "--criterion: 'entropy'"),
    (["--objective", "worst"], "--objective: propose cannot score 'worst'"),
    (["--candidates", "{tmp}/nothing.csv"], "--candidates {tmp}/nothing.csv: no such file"),
    (["--run-cost", "{tmp}/nothing.toml"], "--run-cost {tmp}/nothing.toml: neither 'volumes' nor a file"),
    (["--batch", "0"], "--batch: 0"),
    (["--design", "{tmp}/d.toml", "--max-run-budget", "3.3"], "--design: run"),  # 3.3 and its halvings: not whole volumes
])
def test_propose_bad_flags_are_one_line_errors_and_write_nothing(tmp_path, small_files, extra, message):
    grid_path, fit_path = small_files
    extra = [e.format(tmp=tmp_path) for e in extra]
    r = invoke("propose", fit_path, grid_path, "--budget", "100", "--outcomes", "8", "--decisions", "2", "--batch", "1",
               *extra, "--json", tmp_path / "p.json")
    assert r.exit_code == 2, r.output
    assert message.format(tmp=tmp_path) in r.output and r.output.strip().count("\n") == 0, r.output
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "d.toml").exists()

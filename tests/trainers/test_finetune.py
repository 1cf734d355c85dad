"""Downstream fine-tuning: weight transfer, foreign checkpoints, tiny real fine-tunes, the CLI and the study."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("nibabel")

from typer.testing import CliRunner  # noqa: E402

from bayescale.cli import app  # noqa: E402
from bayescale.errors import InputError  # noqa: E402
from tests.trainers.test_label_manifest import write_labelled  # noqa: E402
from trainers import finetune as ft  # noqa: E402
from trainers.checkpoint import save_checkpoint  # noqa: E402
from trainers.config import ModelConfig  # noqa: E402
from trainers.mae import build_model as build_mae  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()

MODEL = ModelConfig(patch_size=8, hidden_size=12, mlp_dim=24, num_layers=2, num_heads=2, decoder_hidden_size=12,
                    decoder_mlp_dim=24, decoder_num_layers=1, decoder_num_heads=2)
PRETRAINING = """
[data]
manifest = "manifest.toml"
spacing = 4.0
crop = 16
validation_per_domain = 1
[model]
patch_size = 8
hidden_size = 12
mlp_dim = 24
num_layers = 2
num_heads = 2
decoder_hidden_size = 12
decoder_mlp_dim = 24
decoder_num_layers = 1
decoder_num_heads = 2
[training]
steps = 4
[design]
fit_budgets = [1]
"""
FINETUNE = """
description = "tiny fine-tuning test"
pretraining = "pretraining.toml"
[data]
manifest = "manifest.toml"
cache_dir = "cache"
[finetune]
train_subjects = 3
test_subjects = 3
[segmentation]
steps = 3
batch_size = 2
feature_size = 4
structures = { liver = [5], lesion = [30] }
[classification]
steps = 3
batch_size = 2
train_subjects = 4
test_subjects = 4
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A labelled CT domain of 12 subjects (20^3 voxels, 4 mm), tiny configs and one MAE checkpoint."""
    folder = tmp_path_factory.mktemp("finetune")
    write_labelled(folder, n=12)
    (folder / "pretraining.toml").write_text(textwrap.dedent(PRETRAINING))
    (folder / "finetune.toml").write_text(textwrap.dedent(FINETUNE))
    checkpoint = make_checkpoint(folder / "records" / "enc-s0.pt", seed=0)
    return folder, folder / "finetune.toml", checkpoint


def make_checkpoint(path: Path, seed: int, model: ModelConfig = MODEL, crop=(16, 16, 16)) -> Path:
    torch.manual_seed(seed)
    mae = build_mae(model, crop)
    return save_checkpoint(path, mae, model, crop, path.stem)


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------
# weights


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_every_encoder_tensor_is_the_checkpoints(study, task):
    _, config_path, checkpoint = study
    config = ft.load_finetune_config(config_path)
    encoder = ft.load_encoder(str(checkpoint), config)
    mae_state = torch.load(checkpoint, weights_only=True)["state_dict"]
    model = ft.build_model(config, task, n_structures=2)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("vit.")}
    report = ft.transfer_encoder(model, encoder, MODEL.num_layers)
    vit = model.vit.state_dict()
    assert report["loaded"] == report["encoder_tensors"] == len(vit) and report["missing"] == []
    assert report["unused"] == ["cls_token"]  # the MAE's class token: MONAI's segmentation ViT has none
    for key, value in vit.items():
        source = f"blocks.{MODEL.num_layers}.{key[5:]}" if key.startswith("norm.") else key
        assert torch.equal(value, mae_state[source]), key
    assert torch.equal(vit["norm.weight"], mae_state["blocks.2.weight"])  # the MAE's final LayerNorm
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the decoder/head is untouched
    # and the model runs on a crop
    x = torch.rand(2, 1, 16, 16, 16)
    out = model(x) if task == "segmentation" else model(x, [1, 1])
    assert out.shape == ((2, 3, 16, 16, 16) if task == "segmentation" else (2,))


def test_scratch_encoder_reports_nothing_loaded(study):
    _, config_path, _ = study
    config = ft.load_finetune_config(config_path)
    encoder = ft.load_encoder("scratch", config)
    assert encoder.scratch and encoder.state is None
    report = ft.transfer_encoder(ft.build_model(config, "classification"), encoder, MODEL.num_layers)
    assert report["loaded"] == 0 and report["from"] == "scratch"


def _drop_key(path: Path) -> Path:
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["blocks.1.mlp.linear1.weight"]
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: make_checkpoint(p, 0, ModelConfig(**{**MODEL.__dict__, "hidden_size": 24})), "hidden_size = 24"),
        (lambda p: make_checkpoint(p, 0, ModelConfig(**{**MODEL.__dict__, "num_layers": 3})), "num_layers = 3"),
        (lambda p: make_checkpoint(p, 0, crop=(24, 24, 24)), "crop [24, 24, 24]"),
        (lambda p: _drop_key(make_checkpoint(p, 0)), "'blocks.1.mlp.linear1.weight' is missing"),
        (lambda p: p.write_bytes(b"not a checkpoint") and p, "not a readable checkpoint"),
    ],
)
def test_foreign_checkpoint_is_one_line_naming_the_file(study, tmp_path, make, expected):
    _, config_path, _ = study
    path = make(tmp_path / "foreign.pt")
    with pytest.raises(InputError) as excinfo:
        ft.load_encoder(str(path), ft.load_finetune_config(config_path))
    message = _one_line(excinfo)
    assert str(path) in message and expected in message


def test_run_id_needs_records_and_resolves_in_them(study):
    folder, config_path, checkpoint = study
    config = ft.load_finetune_config(config_path)
    with pytest.raises(InputError, match="needs --records"):
        ft.load_encoder("enc-s0", config)
    assert ft.load_encoder("enc-s0", config, records=folder / "records").path == checkpoint


@pytest.mark.parametrize(
    "change, expected",
    [
        (("structures = { liver = [5], lesion = [30] }", "structures = { liver = [5], other = [5] }"), "label id 5 to both"),
        (("structures = { liver = [5], lesion = [30] }", "structures = { liver = [0] }"), "between 1 and 32767"),
        (("feature_size = 4", "feature_size = 4\nwidth = 3"), "unknown key 'segmentation.width'"),
        (("steps = 3\nbatch_size = 2\ntrain", "steps = 0\nbatch_size = 2\ntrain"), "classification.steps is 0"),
        (("[finetune]", "[finetune]\ndevice = \"tpu\""), "finetune.device"),
    ],
)
def test_bad_config_is_one_line(study, tmp_path, change, expected):
    folder, config_path, _ = study
    bad = folder / "bad.toml"
    bad.write_text(config_path.read_text().replace(*change))
    with pytest.raises(InputError) as excinfo:
        ft.load_finetune_config(bad)
    assert expected in _one_line(excinfo) and str(bad) in str(excinfo.value)


# ---------------------------------------------------------------------------
# fine-tuning


def test_tiny_finetunes_are_finite_and_deterministic(study):
    _, config_path, checkpoint = study
    config = ft.load_finetune_config(config_path)
    encoder = ft.load_encoder(str(checkpoint), config)
    seg = ft.prepare_task_data(config, "ct", "segmentation")
    cls = ft.prepare_task_data(config, "ct", "classification")
    assert [p.name for p in seg.train_files] == ["ct_000.nii.gz", "ct_001.nii.gz", "ct_002.nii.gz"]
    assert [p.name for p in seg.test_files] == ["ct_003.nii.gz", "ct_004.nii.gz", "ct_005.nii.gz"]
    assert [p.name for p in cls.test_files] == [f"ct_{k:03d}.nii.gz" for k in range(4, 8)]

    a = ft.finetune(config, encoder, seg, seed=3)
    b = ft.finetune(config, encoder, seg, seed=3)
    m = a["metrics"]
    assert set(m["dice"]) == {"liver", "lesion"} and m["subjects_with_structure"] == {"liver": 3, "lesion": 2}
    assert all(0.0 <= d <= 1.0 for d in m["dice"].values()) and 0.0 <= m["mean_dice"] <= 1.0
    assert a["metrics"] == b["metrics"] and a["train_loss"] == b["train_loss"]  # same seed, same numbers
    assert a["transfer"]["loaded"] == a["transfer"]["encoder_tensors"] > 0
    assert np.isfinite(a["train_loss"]["final"]) and a["recipe"]["steps"] == 3

    c = ft.finetune(config, encoder, cls, seed=3)
    d = ft.finetune(config, encoder, cls, seed=3)
    assert 0.0 <= c["metrics"]["auroc"] <= 1.0 and c["metrics"] == d["metrics"]
    assert c["metrics"]["positives"] == 2 and c["metrics"]["negatives"] == 2
    other = ft.finetune(config, encoder, cls, seed=4)
    assert other["train_loss"] != c["train_loss"]  # the seed matters

    scratch = ft.finetune(config, ft.load_encoder("scratch", config), cls, seed=3)
    assert scratch["transfer"]["loaded"] == 0 and scratch["train_loss"] != c["train_loss"]


def test_label_volume_that_does_not_match_fails_before_finetuning(study, tmp_path):
    folder, config_path, _ = study
    config = ft.load_finetune_config(config_path)
    bad = folder / "ct" / "ct_004_label.nii.gz"
    keep = bad.read_bytes()
    try:
        import nibabel as nib

        nib.save(nib.Nifti1Image(np.zeros((20, 20, 19), np.uint8), np.diag([4.0, 4.0, 4.0, 1.0])), bad)
        with pytest.raises(InputError) as excinfo:
            ft.prepare_task_data(config, "ct", "segmentation")
        assert str(bad) in _one_line(excinfo) and "20x20x19" in str(excinfo.value)
        out = tmp_path / "result.json"
        result = runner.invoke(app, ["finetune", str(config_path), "--encoder", "scratch", "--target", "ct", "--task",
                                     "segmentation", "--out", str(out)])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
        assert "ct_004_label.nii.gz" in result.output and "Traceback" not in result.output and not out.exists()
    finally:
        bad.write_bytes(keep)


def test_window_grid_covers_the_volume():
    starts = ft.window_starts((53, 53, 40), (32, 32, 32), 0.0)
    assert len(starts) == 8 and (21, 21, 8) in starts and (0, 0, 0) in starts
    assert ft.window_starts((32, 32, 32), (32, 32, 32), 0.25) == [(0, 0, 0)]


# ---------------------------------------------------------------------------
# the command line


def test_cli_finetune_writes_json_and_bad_input_exits_2(study, tmp_path):
    folder, config_path, checkpoint = study
    out = tmp_path / "result.json"
    result = runner.invoke(app, ["finetune", str(config_path), "--encoder", "enc-s0", "--records", str(folder / "records"),
                                 "--target", "ct", "--task", "segmentation", "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "liver" in result.output and "mean" in result.output and "encoder tensors loaded: 31" in result.output
    saved = json.loads(out.read_text())
    assert saved["format"] == ft.RESULT_FORMAT and saved["seed"] == 1 and saved["encoder"]["name"] == "enc-s0"
    assert saved["encoder"]["sha256"] == ft.file_sha256(checkpoint)

    scratch = runner.invoke(app, ["finetune", str(config_path), "--encoder", "scratch", "--target", "ct", "--task",
                                  "classification"])
    assert scratch.exit_code == 0, scratch.output
    assert "AUROC" in scratch.output

    foreign = make_checkpoint(tmp_path / "foreign.pt", 0, ModelConfig(**{**MODEL.__dict__, "mlp_dim": 48}))
    for args, expected in (
        (["--encoder", str(foreign), "--target", "ct", "--task", "segmentation"], str(foreign)),
        (["--encoder", "scratch", "--target", "mri", "--task", "segmentation"], "--target mri"),
        (["--encoder", "scratch", "--target", "ct", "--task", "detection"], "--task 'detection'"),
        (["--encoder", "enc-s0", "--target", "ct", "--task", "segmentation"], "needs --records"),
    ):
        bad = runner.invoke(app, ["finetune", str(config_path), *args, "--out", str(tmp_path / "no.json")])
        assert bad.exit_code == 2, (args, bad.output)
        assert expected in bad.output and "Traceback" not in bad.output
        assert len(bad.output.strip().splitlines()) == 1
    assert not (tmp_path / "no.json").exists()


# ---------------------------------------------------------------------------
# the study (analyses/downstream.py) end to end, tiny


def test_downstream_study_smoke_and_resume(study, tmp_path, capsys):
    folder, config_path, _ = study
    spec = importlib.util.spec_from_file_location("downstream", REPO / "analyses" / "downstream.py")
    ds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ds)
    records = tmp_path / "records"
    for g in ("recommended", "proportional"):
        for s in (0, 1):
            make_checkpoint(records / f"{g}-s{s}.pt", seed=10 * s + len(g))
    out = tmp_path / "out"
    argv = ["--records", str(records), "--config", str(config_path), "--out", str(out), "--targets", "ct",
            "--groups", "recommended,proportional", "--smoke", "--no-progress"]
    assert ds.main(argv) == 0
    text = capsys.readouterr().out
    assert "12 runs (0 done before)" in text
    summary = json.loads((out / "results.json").read_text())
    rows = {(r["task"], r["strategy"]): r for r in summary["rows"]}
    assert set(rows) == {(t, s) for t in ("segmentation", "classification") for s in ("recommended", "proportional", "scratch")}
    for (task, strategy), r in rows.items():
        assert r["n"] == 2 and r["seeds"] == [0, 1] and 0.0 <= r["mean"] <= 1.0
        if strategy != "scratch":
            assert r["minus_scratch"]["n"] == 2
    assert (out / "downstream.png").stat().st_size > 0 and "| ct | segmentation |" in (out / "results.md").read_text()
    assert len(list((out / "runs").rglob("*.json"))) == 12
    # the paired interval of the study's differences, against one computed by hand
    for task in ("segmentation", "classification"):
        d = np.subtract(rows[(task, "recommended")]["values"], rows[(task, "scratch")]["values"])
        paired = rows[(task, "recommended")]["minus_scratch"]
        assert paired["mean"] == pytest.approx(d.mean())
        if d.std() > 0:
            half = stats.t.ppf(0.95, df=1) * d.std(ddof=1) / np.sqrt(2)
            assert paired["ci90"] == pytest.approx([d.mean() - half, d.mean() + half])
        else:
            assert paired["ci90"] is None
    rec, scr = rows[("segmentation", "recommended")], rows[("segmentation", "scratch")]
    for name in rec["dice"]:  # per structure, against the runs' own files
        by_seed = {s: json.loads(p.read_text())["metrics"]["dice"][name]
                   for s in (0, 1) for p in (out / "runs" / "ct" / "segmentation").glob(f"*-ft{s}.json")
                   if p.name.startswith("recommended")}
        base = {s: json.loads((out / "runs" / "ct" / "segmentation" / f"scratch-ft{s}.json").read_text())["metrics"]["dice"][name]
                for s in (0, 1)}
        assert rec["dice_minus_scratch"][name]["mean"] == pytest.approx(np.mean([by_seed[s] - base[s] for s in (0, 1)]))
    assert "Paired differences of Dice per structure" in (out / "results.md").read_text() and "dice_minus_scratch" not in scr
    d = np.array([0.012, 0.004, 0.009, 0.015, 0.006])
    half = stats.t.ppf(0.95, df=4) * d.std(ddof=1) / np.sqrt(5)
    assert ds._paired(d)["ci90"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert ds._paired([0.01])["ci90"] is None

    assert ds.main(argv) == 0  # resumable: nothing to redo
    assert "12 runs (12 done before)" in capsys.readouterr().out
    assert ds.main([*argv[:-2], "--min-seeds", "3", "--no-progress"]) == 2
    assert "at least 3 seeds" in capsys.readouterr().out

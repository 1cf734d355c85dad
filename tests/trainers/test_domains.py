"""Manifests, configs and MONAI preprocessing: parsing, every bad input, crop sizes and value ranges."""

from __future__ import annotations

import gzip
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
nib = pytest.importorskip("nibabel")

from bayescale.errors import InputError  # noqa: E402
from trainers.config import load_config  # noqa: E402
from trainers.domains import load_manifest, load_volumes, prepare_data  # noqa: E402

MODALITY_RANGES = {"ct": (-1000.0, 1500.0), "mri": (0.0, 800.0), "pet": (0.0, 14.0)}


def write_volume(path: Path, modality: str, seed: int, shape=(20, 20, 20), spacing=(4.0, 4.0, 4.0)) -> Path:
    """A small smooth random volume in the modality's units (HU, arbitrary, SUV), RAS affine."""
    rng = np.random.default_rng(seed)
    lo, hi = MODALITY_RANGES[modality]
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    centre = rng.uniform(-0.4, 0.4, (3, 1, 1, 1))
    blob = np.exp(-((grid - centre) ** 2).sum(0) / rng.uniform(0.1, 0.4))
    image = lo + (hi - lo) * (0.2 * blob + 0.1 * rng.random(shape))
    affine = np.diag([*spacing, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.int16 if modality == "ct" else np.float32
    nib.save(nib.Nifti1Image(image.astype(dtype), affine), path)
    return path


def write_dataset(folder: Path, domains=(("ct_a", "ct"), ("mri_b", "mri"), ("pet_c", "pet")), n: int = 4, **kw) -> Path:
    """NIfTI volumes folder/<name>/<name>_<k>.nii.gz and a manifest folder/manifest.toml."""
    lines = []
    for j, (name, modality) in enumerate(domains):
        for k in range(n):
            write_volume(folder / name / f"{name}_{k:03d}.nii.gz", modality, seed=100 * j + k, **kw)
        lines += ["[[domains]]", f'name = "{name}"', f'modality = "{modality}"', f'glob = "{name}/{name}_*.nii.gz"', ""]
    manifest = folder / "manifest.toml"
    manifest.write_text("\n".join(lines))
    return manifest


TINY_CONFIG = """
description = "tiny test grid"
[data]
manifest = "manifest.toml"
spacing = 4.0
crop = 16
validation_per_domain = 1
validation_crops = 2
cache_dir = "cache"
[model]
patch_size = 8
hidden_size = 12
mlp_dim = 24
num_layers = 1
num_heads = 2
decoder_hidden_size = 12
decoder_mlp_dim = 24
decoder_num_layers = 1
decoder_num_heads = 2
[training]
batch_size = 2
lr = 1e-3
steps = 8
eval_batch_size = 4
log_every = 4
[design]
fit_budgets = [1, 2]
mixtures_per_budget = 1
seeds = [0]
"""


def write_config(folder: Path, text: str = TINY_CONFIG, name: str = "config.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def dataset(tmp_path):
    manifest = write_dataset(tmp_path)
    return tmp_path, manifest


# ---------------------------------------------------------------------------
# manifests


def test_manifest_splits_each_domain(dataset):
    folder, manifest = dataset
    m = load_manifest(manifest, validation_per_domain=1)
    assert m.names == ["ct_a", "mri_b", "pet_c"]
    ct = m["ct_a"]
    assert ct.modality == "ct"
    assert [p.name for p in ct.validation] == ["ct_a_000.nii.gz"]
    assert [p.name for p in ct.train] == ["ct_a_001.nii.gz", "ct_a_002.nii.gz", "ct_a_003.nii.gz"]
    assert m.fingerprint() == load_manifest(manifest, validation_per_domain=1).fingerprint()


def test_manifest_explicit_split_and_file_list(dataset):
    folder, _ = dataset
    manifest = folder / "explicit.toml"
    manifest.write_text(textwrap.dedent("""
        [[domains]]
        name = "ct_a"
        modality = "CT"
        files = ["ct_a/ct_a_000.nii.gz", "ct_a/ct_a_001.nii.gz", "ct_a/ct_a_002.nii.gz"]
        validation = ["ct_a/ct_a_002.nii.gz"]
        window = [-200, 300]
    """))
    d = load_manifest(manifest)["ct_a"]
    assert d.modality == "ct" and d.window == (-200.0, 300.0)
    assert [p.name for p in d.validation] == ["ct_a_002.nii.gz"]
    assert [p.name for p in d.train] == ["ct_a_000.nii.gz", "ct_a_001.nii.gz"]


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "body, expected",
    [
        ('name = "x"\nmodality = "ultrasound"\nglob = "ct_a/*.nii.gz"', "unknown modality 'ultrasound'"),
        ('name = "x"\nmodality = "ct"\nglob = "nothing/*.nii.gz"', "matches no file"),
        ('name = "x"\nmodality = "ct"\nfiles = []', "empty domain"),
        ('name = "x"\nmodality = "ct"\nfiles = ["ct_a/ct_a_000.nii.gz"]', "needs at least 2"),
        ('name = "x"\nmodality = "ct"\nfiles = ["ct_a/missing.nii.gz"]', "not a file"),
        ('name = "x"\nmodality = "ct"\nfiles = ["../elsewhere.nii.gz"]', "outside the manifest's folder"),
        ('name = "x"\nmodality = "ct"\nfiles = ["/etc/hostname"]', "absolute path"),
        ('name = "x"\nmodality = "mri"\nglob = "mri_b/*.nii.gz"\nwindow = [0, 1]', "window applies to ct"),
        ('name = "x"\nmodality = "ct"\nglob = "ct_a/*.nii.gz"\ncolour = "red"', "unknown key 'colour'"),
    ],
)
def test_bad_manifest_names_the_file_and_domain(dataset, body, expected):
    folder, _ = dataset
    manifest = folder / "bad.toml"
    manifest.write_text("[[domains]]\n" + body + "\n")
    with pytest.raises(InputError) as excinfo:
        load_manifest(manifest, validation_per_domain=1)
    message = _one_line_error(excinfo)
    assert expected in message
    assert str(manifest) in message
    assert "'x'" in message


def test_manifest_without_domains_and_invalid_toml(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("root = '.'\n")
    with pytest.raises(InputError, match="no domains"):
        load_manifest(empty)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[domains]\nname=")
    with pytest.raises(InputError, match="not valid TOML"):
        load_manifest(broken)
    with pytest.raises(InputError, match="no such manifest"):
        load_manifest(tmp_path / "absent.toml")


def test_glob_leading_outside_is_refused(tmp_path):
    write_dataset(tmp_path / "outside", domains=(("ct_a", "ct"),), n=3)
    inner = tmp_path / "inner"
    inner.mkdir()
    manifest = inner / "m.toml"
    manifest.write_text('[[domains]]\nname = "x"\nmodality = "ct"\nglob = "../outside/ct_a/*.nii.gz"\n')
    with pytest.raises(InputError, match="outside the manifest's folder"):
        load_manifest(manifest, 1)


def test_absolute_paths_need_the_flag(dataset, tmp_path):
    folder, _ = dataset
    manifest = folder / "abs.toml"
    pattern = (folder / "ct_a" / "*.nii.gz").as_posix()
    manifest.write_text(f'[[domains]]\nname = "x"\nmodality = "ct"\nglob = "{pattern}"\n')
    with pytest.raises(InputError, match="allow_absolute_paths"):
        load_manifest(manifest, 1)
    manifest.write_text(f'allow_absolute_paths = true\n[[domains]]\nname = "x"\nmodality = "ct"\nglob = "{pattern}"\n')
    assert len(load_manifest(manifest, 1)["x"].train) == 3


# ---------------------------------------------------------------------------
# configs


def test_config_reads_and_resolves_paths(dataset):
    folder, manifest = dataset
    config = load_config(write_config(folder))
    assert config.data.manifest == manifest
    assert config.data.crop == (16, 16, 16) and config.data.spacing == (4.0, 4.0, 4.0)
    assert config.training.steps_for(1) == 8 and config.training.steps_for(100) == 8
    assert config.design.fit_budgets == (1, 2)


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("crop = 16", "crop = 20", "not a multiple of model.patch_size"),
        ("hidden_size = 12", "hidden_size = 16", "divisible by 6"),
        ("steps = 8", "steps_per_volume = 4.0\nsteps = 8", "exactly one of steps"),
        ("lr = 1e-3", "lr = -1.0", "training.lr is -1"),
        ("batch_size = 2", "batch_sise = 2", "unknown key 'training.batch_sise'"),
        ("fit_budgets = [1, 2]", "fit_budgets = [1, 2]\nholdout_budgets = [2]", "above every fit budget"),
    ],
)
def test_bad_config_names_the_file_and_key(dataset, old, new, expected):
    folder, _ = dataset
    path = write_config(folder, TINY_CONFIG.replace(old, new))
    with pytest.raises(InputError) as excinfo:
        load_config(path)
    message = _one_line_error(excinfo)
    assert expected in message and str(path) in message


# ---------------------------------------------------------------------------
# preprocessing


def test_preprocessing_gives_crop_sized_unit_range_volumes(dataset):
    folder, manifest = dataset
    config = load_config(write_config(folder))
    m = load_manifest(manifest, 1)
    data = prepare_data(config, m, folder / "cache")
    for name, arrays in data.domains.items():
        assert arrays.n_train == 3
        assert arrays.val_crops.shape == (2, 1, 16, 16, 16)  # 1 validation volume x 2 fixed crops
        assert arrays.val_mean_crops.shape == arrays.val_crops.shape
        for volume in arrays.train:
            assert volume.dtype == np.float32 and volume.shape[0] == 1
            assert all(s >= 16 for s in volume.shape[1:])
            assert volume.min() >= 0.0 and volume.max() <= 1.0
            assert volume.max() > volume.min()
    # CT window [-1000, 1000]: -1000 HU -> 0, the blob's peak (~ -500 + ...) inside (0, 1)
    assert data.domains["ct_a"].train[0].min() == pytest.approx(0.0, abs=0.1)
    # MRI percentile normalisation reaches both ends of [0, 1]
    mri = data.domains["mri_b"].train[0]
    assert mri.min() == 0.0 and mri.max() == 1.0
    # the cache makes a second preparation identical
    again = prepare_data(config, m, folder / "cache")
    np.testing.assert_array_equal(again.domains["pet_c"].train[1], data.domains["pet_c"].train[1])
    np.testing.assert_array_equal(again.domains["mri_b"].val_crops, data.domains["mri_b"].val_crops)


def test_random_training_crops_have_the_crop_size(dataset):
    from trainers.domains import train_crop_transform

    folder, manifest = dataset
    config = load_config(write_config(folder))
    data = prepare_data(config, load_manifest(manifest, 1), None)
    t = train_crop_transform((16, 16, 16), seed=3)
    import torch

    crops = [t({"image": torch.from_numpy(data.domains["ct_a"].train[0])})["image"] for _ in range(5)]
    assert all(tuple(c.shape) == (1, 16, 16, 16) for c in crops)
    from monai.data import Dataset

    # through a MONAI Dataset (which wraps non-Compose transforms and reseeds them) it is the same
    dataset = Dataset([{"image": torch.from_numpy(data.domains["ct_a"].train[0])}], transform=train_crop_transform((16, 16, 16), seed=3))
    again = [dataset[0]["image"] for _ in range(5)]
    for a, b in zip(crops, again):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_corrupt_nifti_names_the_file(dataset):
    folder, manifest = dataset
    bad = folder / "mri_b" / "mri_b_002.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    config = load_config(write_config(folder))
    with pytest.raises(InputError) as excinfo:
        prepare_data(config, load_manifest(manifest, 1), folder / "cache")
    message = _one_line_error(excinfo)
    assert "mri_b_002.nii.gz" in message and "'mri_b'" in message


def test_truncated_nifti_names_the_file(dataset):
    folder, manifest = dataset
    bad = folder / "pet_c" / "pet_c_001.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    config = load_config(write_config(folder))
    with pytest.raises(InputError, match="pet_c_001.nii.gz"):
        prepare_data(config, load_manifest(manifest, 1), None)


def test_volume_smaller_than_the_crop(tmp_path):
    manifest = write_dataset(tmp_path, domains=(("small", "ct"),), n=3, shape=(12, 20, 20))
    config = load_config(write_config(tmp_path))
    m = load_manifest(manifest, 1)
    with pytest.raises(InputError) as excinfo:
        load_volumes(m["small"], m["small"].train, config.data, str(manifest))
    message = _one_line_error(excinfo)
    assert "smaller than the crop 16x16x16" in message and "small_001.nii.gz" in message

"""Labels in manifests: label globs paired with images by file stem, labels_csv, and every bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
nib = pytest.importorskip("nibabel")

from bayescale.errors import InputError  # noqa: E402
from trainers.config import DataConfig  # noqa: E402
from trainers.domains import file_stem, load_manifest  # noqa: E402
from trainers.downstream_data import check_label_volumes, load_labelled  # noqa: E402


def write_labelled(folder: Path, n: int = 4, shape=(20, 20, 20), spacing=(4.0, 4.0, 4.0)) -> Path:
    """CT images ct/ct_00k.nii.gz, label volumes ct/ct_00k_label.nii.gz, ct/labels.csv; a manifest."""
    rng = np.random.default_rng(0)
    (folder / "ct").mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    rows = ["subject,lesion"]
    for k in range(n):
        label = np.zeros(shape, np.uint8)
        label[4:14, 4:14, 4:14] = 5
        if k % 2:
            label[8:11, 8:11, 8:11] = 30
        image = (-100 + 150 * (label > 0) - 60 * (label == 30) + 10 * rng.standard_normal(shape)).astype(np.int16)
        nib.save(nib.Nifti1Image(image, affine), folder / "ct" / f"ct_{k:03d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "ct" / f"ct_{k:03d}_label.nii.gz")
        rows.append(f"ct_{k:03d},{k % 2}")
    (folder / "ct" / "labels.csv").write_text("\n".join(rows) + "\n")
    manifest = folder / "manifest.toml"
    manifest.write_text(textwrap.dedent("""
        [[domains]]
        name = "ct"
        modality = "ct"
        glob = "ct/ct_[0-9][0-9][0-9].nii.gz"
        label = "ct/ct_*_label.nii.gz"
        labels_csv = "ct/labels.csv"
        window = [-200, 300]
    """))
    return manifest


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_labels_pair_with_images_by_stem(tmp_path):
    manifest = write_labelled(tmp_path)
    d = load_manifest(manifest, validation_per_domain=1)["ct"]
    assert [(i.name, lab.name) for i, lab in d.labels] == [(f"ct_{k:03d}.nii.gz", f"ct_{k:03d}_label.nii.gz") for k in range(4)]
    assert [(i.name, c) for i, c in d.classes] == [(f"ct_{k:03d}.nii.gz", k % 2) for k in range(4)]
    assert d.class_name == "lesion" and d.labels_csv == (tmp_path / "ct" / "labels.csv").resolve()
    assert d.label_of(d.files[2]).name == "ct_002_label.nii.gz" and d.class_of(d.files[3]) == 1
    # labels do not change what pretraining sees
    plain = tmp_path / "plain.toml"
    plain.write_text('[[domains]]\nname = "ct"\nmodality = "ct"\nglob = "ct/ct_[0-9][0-9][0-9].nii.gz"\nwindow = [-200, 300]\n')
    assert load_manifest(plain, 1).fingerprint() == load_manifest(manifest, 1).fingerprint()


def test_label_glob_alias_and_labels_in_another_folder(tmp_path):
    write_labelled(tmp_path)
    (tmp_path / "labels").mkdir()
    for k in range(4):  # same stem as the image, other folder (the Medical Segmentation Decathlon layout)
        (tmp_path / "ct" / f"ct_{k:03d}_label.nii.gz").rename(tmp_path / "labels" / f"ct_{k:03d}.nii.gz")
    manifest = tmp_path / "alias.toml"
    manifest.write_text('[[domains]]\nname = "ct"\nmodality = "ct"\nglob = "ct/ct_*.nii.gz"\nlabel_glob = "labels/*.nii.gz"\n')
    d = load_manifest(manifest, 1)["ct"]
    assert [(i.name, lab.parent.name) for i, lab in d.labels] == [(f"ct_{k:03d}.nii.gz", "labels") for k in range(4)]
    assert file_stem("a/b_label.nii.gz") == "b_label" and file_stem("x.nii") == "x"


@pytest.mark.parametrize(
    "extra, expected",
    [
        ('label = "ct/ct_00[0-3].nii.gz"', "also one of the domain's images"),
        ('label = "ct/labels.csv"', "pairs none with an image"),
        ('label = "ct/nothing_*.nii.gz"', "matches no file"),
        ('label = "ct/*_label.nii.gz"\nlabel_glob = "ct/*_label.nii.gz"', "not both"),
        ('labels_csv = "ct/missing.csv"', "not a file"),
        ('labels_csv = "../outside.csv"', "outside the manifest's folder"),
    ],
)
def test_bad_label_keys_are_one_line_errors(tmp_path, extra, expected):
    write_labelled(tmp_path)
    manifest = tmp_path / "bad.toml"
    manifest.write_text(f'[[domains]]\nname = "ct"\nmodality = "ct"\nglob = "ct/ct_[0-9][0-9][0-9].nii.gz"\n{extra}\n')
    with pytest.raises(InputError) as excinfo:
        load_manifest(manifest, 1)
    message = _one_line(excinfo)
    assert expected in message and str(manifest) in message


@pytest.mark.parametrize(
    "csv, expected",
    [
        ("subject,lesion\nct_000,2\n", "lesion of 'ct_000' is '2'; expected 0 or 1"),
        ("subject,lesion\nct_000,1\nct_000,0\n", "appears twice"),
        ("subject,lesion\nother_000,1\n", "pairs with an image"),
        ("subject\n", "header row"),
    ],
)
def test_bad_labels_csv_names_the_file(tmp_path, csv, expected):
    manifest = write_labelled(tmp_path)
    (tmp_path / "ct" / "labels.csv").write_text(csv)
    with pytest.raises(InputError) as excinfo:
        load_manifest(manifest, 1)
    message = _one_line(excinfo)
    assert expected in message and "labels.csv" in message


def _rewrite_label(path: Path, shape=None, affine=None) -> None:
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    if shape is not None:
        data = np.zeros(shape, np.uint8)
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)


def test_label_volume_with_another_shape_names_the_file(tmp_path):
    manifest = write_labelled(tmp_path)
    bad = tmp_path / "ct" / "ct_002_label.nii.gz"
    _rewrite_label(bad, shape=(20, 20, 18))
    d = load_manifest(manifest, 1)["ct"]  # headers are read before fine-tuning, not for pretraining
    with pytest.raises(InputError) as excinfo:
        check_label_volumes(d, d.files, str(manifest))
    message = _one_line(excinfo)
    assert str(bad) in message and "20x20x18" in message and "20x20x20" in message


def test_label_volume_with_another_affine_names_the_file(tmp_path):
    manifest = write_labelled(tmp_path)
    bad = tmp_path / "ct" / "ct_001_label.nii.gz"
    shifted = np.diag([4.0, 4.0, 4.0, 1.0])
    shifted[0, 3] = 8.0
    _rewrite_label(bad, affine=shifted)
    d = load_manifest(manifest, 1)["ct"]
    with pytest.raises(InputError) as excinfo:
        load_labelled(d, d.files, DataConfig(manifest=manifest, spacing=(4.0, 4.0, 4.0), crop=(16, 16, 16)), str(manifest))
    message = _one_line(excinfo)
    assert str(bad) in message and "different affine" in message


def test_labels_are_preprocessed_with_their_images(tmp_path):
    manifest = write_labelled(tmp_path)
    d = load_manifest(manifest, 1)["ct"]
    data = DataConfig(manifest=manifest, spacing=(6.0, 6.0, 6.0), crop=(8, 8, 8))
    out = load_labelled(d, d.files, data, str(manifest), cache_dir=tmp_path / "cache")
    again = load_labelled(d, d.files, data, str(manifest), cache_dir=tmp_path / "cache")  # from the cache
    for v, w in zip(out, again):
        assert v.image.shape[1:] == v.label.shape == (14, 14, 14)  # 20 voxels of 4 mm at 6 mm (MONAI rounds up)
        assert 0.0 <= v.image.min() and v.image.max() <= 1.0
        assert set(np.unique(v.label)) <= {0, 5, 30}  # nearest neighbour: no new label values
        assert np.array_equal(v.label, w.label) and np.array_equal(v.image, w.image)
    assert (out[1].label == 30).any() and not (out[0].label == 30).any()
    # the liver-like block is brighter than the background in the preprocessed image too
    assert out[0].image[0][out[0].label == 5].mean() > out[0].image[0][out[0].label == 0].mean() + 0.2

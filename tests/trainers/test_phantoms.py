"""Phantom domains: files, geometry, modality conventions, variation, determinism, resumability."""

from __future__ import annotations

import csv
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
ndimage = pytest.importorskip("scipy.ndimage")

from trainers import phantoms as ph  # noqa: E402

SEED = 3
N = 6
ABDOMEN_ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    paths = ph.write_phantoms(out, per_domain=N, seed=SEED)
    return out, paths


def _load(path):
    img = nib.load(path)
    return img, np.asarray(img.dataobj)


def _label_path(image_path: Path) -> Path:
    return image_path.with_name(image_path.name.replace(".nii.gz", "_label.nii.gz"))


def _pairs(written, domain):
    for p in written[1][domain]:
        img, data = _load(p)
        lab, labels = _load(_label_path(p))
        yield img, img.get_fdata(dtype=np.float32), lab, labels


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_files_exist_and_load(written):
    out, paths = written
    assert set(paths) == set(ph.DOMAINS)
    for d, ps in paths.items():
        assert [p.name for p in ps] == [f"{d}_{k:04d}.nii.gz" for k in range(N)]
        for p in ps:
            assert p.parent == out / d and p.exists() and _label_path(p).exists()
            img, data = _load(p)
            assert data.shape == ph.GRIDS[d].shape
            assert np.all(np.isfinite(data))
        assert (out / d / "labels.csv").exists()
        assert not [f for f in (out / d).iterdir() if f.name.startswith(".")], "temporary files left behind"


def test_affine_spacing_and_orientation(written):
    for d in ph.DOMAINS:
        grid = ph.GRIDS[d]
        img, _ = _load(written[1][d][0])
        assert img.header.get_zooms() == pytest.approx(grid.spacing)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert np.allclose(img.affine, grid.affine())
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert img.header.get_xyzt_units()[0] == "mm"
        fov = np.asarray(grid.shape) * np.asarray(grid.spacing)
        assert fov[0] >= 240 and fov[1] >= 240 and fov[2] >= 200
        # the volume centre sits at the world origin
        centre = img.affine @ np.r_[(np.asarray(grid.shape) - 1) / 2, 1]
        assert np.allclose(centre[:3], 0)


def test_ct_in_hounsfield_units(written):
    for d in ("ct_abdomen", "ct_chest"):
        for img, hu, _, labels in _pairs(written, d):
            assert img.get_data_dtype() == np.int16
            assert hu.min() >= -1024 and hu.max() <= 3071
            assert np.mean(hu < -950) > 0.15, "air around the patient"
            body = labels > 0
            assert np.all(np.median(hu[~body]) < -900)

            def med(name):  # of the eroded organ: away from partial volume with neighbours
                core = ndimage.binary_erosion(labels == ph.LABELS[name])
                return float(np.median(hu[core])) if core.sum() > 20 else None

            assert -160 < float(np.median(hu[(labels == ph.LABELS["body"]) & (hu < 0)])) < -40, "fat"
            assert 20 < med("muscle") < 100
            if d == "ct_abdomen" or med("liver") is not None:  # the chest may hold only a sliver of liver dome
                assert 35 < med("liver") < 130
            assert np.percentile(hu[labels == ph.LABELS["bone"]], 90) > 300
            # away from partial volume, soft tissue is 0-100 HU (up to ~160 at full contrast enhancement)
            soft = ndimage.binary_erosion(np.isin(labels, [ph.LABELS[k] for k in ("liver", "spleen", "muscle")]))
            assert np.mean((hu[soft] > 0) & (hu[soft] < 160)) > 0.9
            if d == "ct_chest":
                assert med("lung_right") < -600 and med("lung_left") < -600
                assert 0 < med("heart") < 250


def _background(labels, margin=4):
    return ~ndimage.binary_dilation(labels > 0, iterations=margin)


def test_mri_positive_with_rician_background(written):
    for d in ("mri_t1_brain", "mri_t2_abdomen"):
        for img, data, _, labels in _pairs(written, d):
            assert img.get_data_dtype() == np.float32
            assert data.min() >= 0
            bg = data[_background(labels)]
            assert bg.size > 10_000
            assert bg.mean() > 0 and np.mean(bg > 0) > 0.99, "a noise floor, not zeros"
            # magnitude of complex Gaussian noise: Rayleigh, mean/sd = sqrt(pi/2)/sqrt(2 - pi/2) = 1.91
            ratio = bg.mean() / bg.std()
            assert 1.75 < ratio < 2.1, ratio
            assert np.median(data[labels > 0]) > 5 * bg.mean(), "signal well above the noise floor"


def test_mri_contrasts(written):
    def mean(data, labels, name, erode=False):  # eroded: away from partial volume with neighbours
        mask = labels == ph.LABELS[name]
        return float(np.median(data[ndimage.binary_erosion(mask) if erode else mask]))

    for _, data, _, labels in _pairs(written, "mri_t1_brain"):
        assert mean(data, labels, "white_matter") > mean(data, labels, "grey_matter") > mean(data, labels, "ventricles")
    for _, data, _, labels in _pairs(written, "mri_t2_abdomen"):
        assert mean(data, labels, "spleen", True) > mean(data, labels, "liver", True)
        assert mean(data, labels, "kidney_left", True) > mean(data, labels, "liver", True)


def test_pet_sparse_coarse_and_hot_organs(written):
    pet_zoom = min(ph.GRIDS["pet_wholebody"].spacing)
    assert all(pet_zoom > max(ph.GRIDS[d].spacing) for d in ph.DOMAINS if d != "pet_wholebody")
    for img, suv, _, labels in _pairs(written, "pet_wholebody"):
        assert img.get_data_dtype() == np.float32
        assert suv.min() >= 0
        assert np.median(suv) < 0.1 * np.percentile(suv, 99)
        body = float(suv[labels == ph.LABELS["body"]].mean())
        assert suv[labels == ph.LABELS["bladder"]].mean() > 4 * body
        assert suv[labels == ph.LABELS["brain"]].mean() > 3 * body
        assert suv[labels == 0].mean() < body


def test_labels_match_images(written):
    out, paths = written
    for d in ph.DOMAINS:
        rows = {r["subject"]: r["lesion"] for r in _read_csv(out / d / "labels.csv")}
        assert set(rows) == {f"{d}_{k:04d}" for k in range(N)}
        allowed = set(ph.DOMAIN_LABELS[d].values())
        for k, (img, _, lab, labels) in enumerate(_pairs(written, d)):
            assert labels.dtype == np.uint8 and lab.get_data_dtype() == np.uint8
            assert labels.shape == img.shape and np.allclose(lab.affine, img.affine)
            assert set(np.unique(labels)) <= allowed
            has = bool((labels == ph.LABELS["lesion"]).any())
            assert has == (rows[f"{d}_{k:04d}"] == "1") == ph.subject_has_lesion(d, k, SEED)


def test_subjects_differ(written):
    for d in ph.DOMAINS:
        a = _load(written[1][d][0])[1]
        b = _load(written[1][d][1])[1]
        assert not np.array_equal(a, b)
    cases = (("ct_abdomen", "liver"), ("mri_t2_abdomen", "spleen"), ("ct_chest", "lung_right"), ("mri_t1_brain", "ventricles"))
    for d, organ in cases:
        vols = [int((labels == ph.LABELS[organ]).sum()) for *_, labels in _pairs(written, d)]
        assert min(vols) > 0
        assert np.std(vols) / np.mean(vols) > 0.05, (d, organ, vols)


def test_deterministic_and_prefix(written, tmp_path):
    for d in ("ct_abdomen", "mri_t1_brain"):
        img1, lab1, les1 = ph.generate_subject(d, 2, SEED)
        img2, lab2, les2 = ph.generate_subject(d, 2, SEED)
        assert np.asarray(img1.dataobj).tobytes() == np.asarray(img2.dataobj).tobytes()
        assert np.asarray(lab1.dataobj).tobytes() == np.asarray(lab2.dataobj).tobytes() and les1 == les2
        assert np.array_equal(np.asarray(img1.dataobj), _load(written[1][d][2])[1])
        other = np.asarray(ph.generate_subject(d, 2, SEED + 1)[0].dataobj)
        assert not np.array_equal(other, np.asarray(img1.dataobj))
    # fewer subjects: the same first ones
    short = ph.write_phantoms(tmp_path, per_domain=2, seed=SEED, domains=["ct_chest", "pet_wholebody"])
    for d, ps in short.items():
        for k, p in enumerate(ps):
            assert np.array_equal(_load(p)[1], _load(written[1][d][k])[1])
            assert np.array_equal(_load(_label_path(p))[1], _load(_label_path(written[1][d][k]))[1])


def test_shared_anatomy(written):
    for organ in ABDOMEN_ORGANS:
        assert ph.DOMAIN_LABELS["ct_abdomen"][organ] == ph.DOMAIN_LABELS["mri_t2_abdomen"][organ] == ph.LABELS[organ]
    for d in ("ct_abdomen", "mri_t2_abdomen"):
        for *_, labels in _pairs(written, d):
            present = set(np.unique(labels))
            assert {ph.LABELS[o] for o in (*ABDOMEN_ORGANS, "bone", "aorta", "bowel")} <= present
    shared_with_chest = {"body", "muscle", "bone", "aorta", "liver"}
    for *_, labels in _pairs(written, "ct_chest"):
        present = set(np.unique(labels))
        assert {ph.LABELS[o] for o in shared_with_chest | {"lung_right", "lung_left", "heart"}} <= present
    for *_, labels in _pairs(written, "mri_t1_brain"):
        present = set(np.unique(labels))
        assert {ph.LABELS[o] for o in ("bone", "grey_matter", "white_matter", "csf", "ventricles")} <= present


def test_resumable(tmp_path):
    d = "pet_wholebody"
    calls = []
    ph.write_phantoms(tmp_path, per_domain=2, seed=1, domains=[d])
    files = sorted((tmp_path / d).glob("*.nii.gz"))
    before = {f: f.stat().st_mtime_ns for f in files}
    assert len(files) == 4
    ph.write_phantoms(tmp_path, per_domain=3, seed=1, domains=[d], progress=lambda *a: calls.append(a))
    assert calls == [(d, 0, False), (d, 1, False), (d, 2, True)]
    assert all(f.stat().st_mtime_ns == t for f, t in before.items())
    assert len(_read_csv(tmp_path / d / "labels.csv")) == 3
    # a file written with another seed is not taken for this one
    ph.write_phantoms(tmp_path, per_domain=1, seed=2, domains=[d])
    data = _load(tmp_path / d / f"{d}_0000.nii.gz")[1]
    assert np.array_equal(data, np.asarray(ph.generate_subject(d, 0, 2)[0].dataobj))


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(img, path):
        Path(path).write_bytes(b"\x1f\x8b truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(ph.nib, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ph.write_phantoms(tmp_path, per_domain=1, domains=["pet_wholebody"])
    assert list((tmp_path / "pet_wholebody").iterdir()) == []


def test_lesion_classes_are_mixed(written):
    for d in ph.DOMAINS:
        rate = np.mean([ph.subject_has_lesion(d, k, 0) for k in range(60)])
        assert 0.25 < rate < 0.65, (d, rate)
    flags = [r["lesion"] for d in ph.DOMAINS for r in _read_csv(written[0] / d / "labels.csv")]
    assert {"0", "1"} <= set(flags)


def test_manifest(written, tmp_path):
    out, _ = written
    path = ph.write_manifest(out, tmp_path / "phantoms.toml")
    manifest = tomllib.loads(path.read_text())
    root = Path(manifest["root"])
    assert root == out.resolve()
    assert [m["name"] for m in manifest["domains"]] == list(ph.DOMAINS)
    for m in manifest["domains"]:
        assert m["modality"] == ph.DOMAINS[m["name"]]
        images = sorted(root.glob(m["glob"]))
        labels = sorted(root.glob(m["label_glob"]))
        assert len(images) == len(labels) == N
        assert not any(p.name.endswith("_label.nii.gz") for p in images)
    assert manifest["labels"]["liver"] == ph.LABELS["liver"]


def test_unknown_domain():
    with pytest.raises(ValueError, match="unknown phantom domain"):
        ph.generate_subject("xray_hand", 0, 0)


def test_module_imports_without_torch():
    code = "import sys, trainers.phantoms; assert 'torch' not in sys.modules and 'monai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_an_older_generator_revision_is_rewritten(tmp_path, monkeypatch):
    """A brain subject written by revision 1 (no rev= in its header) is regenerated; a current one is kept."""
    d = "mri_t1_brain"
    assert ph.REVISION[d] == 2
    ph.write_phantoms(tmp_path, per_domain=2, seed=0, domains=[d])
    img0, _ = ph.subject_paths(tmp_path, d, 0)
    img1, _ = ph.subject_paths(tmp_path, d, 1)
    assert nib.load(img0).header["descrip"].tobytes().split(b"\0")[0].decode().endswith("rev=2")
    # stamp subject 0 as revision 1, as files written before the revision carry no rev=
    for p in ph.subject_paths(tmp_path, d, 0):
        img = nib.load(p)
        img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
        img.header["descrip"] = f"bayescale phantom {d} seed=0 index=0".encode()
        nib.save(img, p)
    assert not ph.subject_is_current(tmp_path, d, 0, 0) and ph.subject_is_current(tmp_path, d, 1, 0)
    kept = img1.stat().st_mtime_ns
    calls = []
    ph.write_phantoms(tmp_path, per_domain=2, seed=0, domains=[d], progress=lambda *a: calls.append(a))
    assert calls == [(d, 0, True), (d, 1, False)]
    assert img1.stat().st_mtime_ns == kept
    assert ph.subject_is_current(tmp_path, d, 0, 0)
    # the rewritten file is what the current generator makes
    assert np.array_equal(np.asarray(nib.load(img0).dataobj), np.asarray(ph.generate_subject(d, 0, 0)[0].dataobj))


def test_other_domains_keep_revision_one_headers(tmp_path):
    """Domains whose generator did not change write the same header as before (no rev=), so their files stay valid."""
    ph.write_phantoms(tmp_path, per_domain=1, seed=0, domains=["pet_wholebody"])
    img, _ = ph.subject_paths(tmp_path, "pet_wholebody", 0)
    assert nib.load(img).header["descrip"].tobytes().split(b"\0")[0].decode() == "bayescale phantom pet_wholebody seed=0 index=0"
    assert ph.subject_is_current(tmp_path, "pet_wholebody", 0, 0)

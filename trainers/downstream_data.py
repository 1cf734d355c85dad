"""Labelled data for downstream fine-tuning: label checks, preprocessing with labels, fresh phantoms.

* :func:`check_label_volumes`: every label volume's shape and affine against its image (headers
  only), one-line :class:`InputError` naming the file, before any fine-tuning starts.
* :func:`load_labelled`: the pretraining preprocessing of :func:`trainers.domains.preprocess_transform`
  (load, RAS, the config's spacing, the domain's intensity transform) applied to image and label
  volume together (labels resampled with nearest neighbour), cached on disk like the pretraining
  volumes (``PersistentDataset``).
* :func:`write_downstream_phantoms`: subjects ``first .. first + count - 1`` of the phantom
  population (same generator and seed as the pretraining phantoms, so they are new subjects of the
  same domains that no pretraining run saw), with their label volumes and ``labels.csv``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bayescale.errors import InputError
from trainers.config import DataConfig
from trainers.domains import Domain, _root_cause, checked_volume, file_stem, preprocess_transform

AFFINE_TOLERANCE_MM = 1e-3


def _header(path: Path, where: str, what: str):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return tuple(int(n) for n in img.shape), np.asarray(img.affine, dtype=float)
    except Exception as error:  # nibabel raises several types for foreign or truncated files
        raise InputError(f"{where}: cannot read {what} {path} as a NIfTI volume ({_root_cause(error)})") from None


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def check_label_volumes(domain: Domain, images, where: str) -> None:
    """Every image in ``images`` has a label volume of the same shape and affine (headers only)."""
    for image in images:
        label = domain.label_of(image)
        here = f"{where}: domain {domain.name!r}"
        if label is None:
            raise InputError(f"{here}: {image} has no label volume (the domain's label glob pairs none with it)")
        ishape, iaff = _header(image, here, "image")
        lshape, laff = _header(label, here, "label volume")
        if _spatial(lshape) != _spatial(ishape):
            raise InputError(
                f"{here}: label volume {label} has shape {'x'.join(map(str, lshape))} but its image {image.name} has "
                f"{'x'.join(map(str, ishape))}"
            )
        if not np.allclose(laff, iaff, rtol=0, atol=AFFINE_TOLERANCE_MM):
            worst = float(np.abs(laff - iaff).max())
            raise InputError(
                f"{here}: label volume {label} has a different affine from its image {image.name} (largest difference "
                f"{worst:.4g}); labels must lie on the image's voxel grid"
            )


def check_classes(domain: Domain, images, where: str) -> np.ndarray:
    """The class label of every image (from the domain's labels_csv); a missing one is an InputError."""
    out = []
    for image in images:
        value = domain.class_of(image)
        if value is None:
            source = domain.labels_csv or "labels_csv"
            raise InputError(f"{where}: domain {domain.name!r}: {image} has no class label ({source} has no row {file_stem(image)!r})")
        out.append(value)
    return np.asarray(out, dtype=np.int64)


@dataclass
class LabelledVolume:
    image: np.ndarray  # (1, x, y, z) float32 in [0, 1]
    label: np.ndarray | None  # (x, y, z) int16 label ids, on the image's preprocessed grid
    source: Path


def _cache_key(domain: Domain, data: DataConfig, with_labels: bool) -> str:
    payload = json.dumps({"modality": domain.modality, "intensity": domain.intensity(), "spacing": list(data.spacing),
                          "labels": with_labels, "version": 1}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def load_labelled(domain: Domain, images, data: DataConfig, where: str, cache_dir: Path | None = None,
                  with_labels: bool = True) -> list[LabelledVolume]:
    """Preprocessed images (and label volumes) of ``images``, through the pretraining preprocessing.

    Check the label volumes first (:func:`check_label_volumes`); a volume that fails to load or is
    smaller than the crop after resampling is an InputError naming the file.
    """
    from monai.data import CacheDataset, PersistentDataset, get_track_meta, set_track_meta

    images = [Path(p) for p in images]
    if with_labels:
        check_label_volumes(domain, images, where)
    items = []
    for p in images:
        item = {"image": str(p)}
        stamps = [p]
        if with_labels:
            item["label"] = str(domain.label_of(p))
            stamps.append(domain.label_of(p))
        try:
            item["stamp"] = ";".join(f"{q.stat().st_size}:{q.stat().st_mtime_ns}" for q in stamps)
        except OSError as error:
            raise InputError(f"{where}: domain {domain.name!r}: cannot read {error.filename} ({error.strerror or error})") from None
        items.append(item)
    transform = preprocess_transform(domain, data, label=with_labels)
    track_meta = get_track_meta()
    set_track_meta(True)  # Spacing needs each volume's affine
    out: list[LabelledVolume] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = None
            if cache_dir is not None:
                folder = Path(cache_dir) / f"{domain.modality}-{_cache_key(domain, data, with_labels)}"
                folder.mkdir(parents=True, exist_ok=True)
                dataset = PersistentDataset(items, transform=transform, cache_dir=folder)
            for k, item in enumerate(items):
                try:
                    if dataset is not None:
                        result = dataset[k]
                    else:
                        result = CacheDataset([item], transform=transform, progress=False, num_workers=0)[0]
                except InputError:
                    raise
                except Exception as error:  # a reader or transform failure is a property of the files
                    what = f"{item['image']}" + (f" or its label volume {item['label']}" if with_labels else "")
                    raise InputError(f"{where}: domain {domain.name!r}: cannot read {what} ({_root_cause(error)})") from None
                image = checked_volume(result["image"], item["image"], domain, data, where)
                label = None
                if with_labels:
                    raw = np.asarray(result["label"], dtype=np.float32)
                    if raw.shape != image.shape:
                        raise InputError(f"{where}: domain {domain.name!r}: label volume {item['label']} does not resample to its image's grid")
                    if not np.isfinite(raw).all() or raw.min() < 0 or raw.max() > 32767 or not np.array_equal(raw, np.round(raw)):
                        raise InputError(f"{where}: domain {domain.name!r}: label volume {item['label']} holds values that are not label ids (integers >= 0)")
                    label = raw[0].astype(np.int16)
                out.append(LabelledVolume(image=image, label=label, source=Path(item["image"])))
    finally:
        set_track_meta(track_meta)
    return out


# ---------------------------------------------------------------------------
# fresh labelled phantoms


def write_downstream_phantoms(out_dir: Path, domains, first: int, count: int, seed: int = 0, progress=None) -> None:
    """Subjects ``first .. first + count - 1`` of each phantom domain (image, label volume, labels.csv).

    Same layout and generator as :func:`trainers.phantoms.write_phantoms` (which always starts at
    subject 0): a subject whose two files record the same (domain, seed, index) and the domain's
    current generator revision is skipped.
    """
    from trainers.phantoms import (
        DOMAINS,
        _save_atomic,
        _write_text_atomic,
        generate_subject,
        subject_has_lesion,
        subject_is_current,
        subject_paths,
    )

    out = Path(out_dir)
    for d in domains:
        if d not in DOMAINS:
            raise InputError(f"phantoms.domains: unknown phantom domain {d!r}; known: {', '.join(DOMAINS)}")
    for d in domains:
        (out / d).mkdir(parents=True, exist_ok=True)
        rows = ["subject,lesion"]
        for k in range(first, first + count):
            img_path, lab_path = subject_paths(out, d, k)
            if not subject_is_current(out, d, k, seed):
                img, lab, _ = generate_subject(d, k, seed)
                _save_atomic(lab, lab_path)
                _save_atomic(img, img_path)
                if progress is not None:
                    progress(d, k)
            rows.append(f"{img_path.name[: -len('.nii.gz')]},{int(subject_has_lesion(d, k, seed))}")
        target = out / d / "labels.csv"
        text = "\n".join(rows) + "\n"
        if not target.exists() or target.read_text() != text:
            _write_text_atomic(text, target)


def downstream_phantoms_missing(out_dir: Path, domains, first: int, count: int, seed: int = 0) -> int:
    """How many subjects (and labels.csv files) are missing or from an older generator revision."""
    from trainers.phantoms import subject_is_current

    out = Path(out_dir)
    missing = sum(1 for d in domains for k in range(first, first + count) if not subject_is_current(out, d, k, seed))
    return missing + sum(1 for d in domains if not (out / d / "labels.csv").exists())

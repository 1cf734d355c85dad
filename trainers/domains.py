"""Domains from a manifest, their MONAI preprocessing, and the cached arrays every run trains on.

A manifest is a TOML file; every path in it is relative to the manifest's folder (or to ``root``,
itself relative to that folder) and must stay inside that folder unless ``allow_absolute_paths =
true``::

    root = "phantoms"                     # optional; default: the manifest's folder

    [[domains]]
    name = "ct_abdomen"
    modality = "ct"                       # ct | mri | pet
    glob = "ct_abdomen/ct_abdomen_[0-9][0-9][0-9][0-9].nii.gz"   # or files = ["a.nii.gz", ...]
    # optional explicit split (file lists or globs); otherwise the first
    # validation_per_domain files (sorted) are the validation set and the rest the training pool
    # validation = ["ct_abdomen/ct_abdomen_0000.nii.gz"]
    # train = "ct_abdomen/ct_abdomen_00[1-9]?.nii.gz"
    window = [-1000, 1000]                # CT: HU window mapped to [0, 1]

MRI domains take ``percentiles = [1, 99]`` (mapped to [0, 1], clipped), PET domains ``suv_max``
(SUV clipped to [0, suv_max] and scaled to [0, 1]). Keys written by
:func:`trainers.phantoms.write_manifest` that training does not use (``spacing``, ``shape``, a
``[labels]`` table) are accepted and ignored.

Labels (optional; pretraining ignores them, downstream fine-tuning, :mod:`trainers.finetune`, reads
them)::

    label = "ct_abdomen/ct_abdomen_[0-9][0-9][0-9][0-9]_label.nii.gz"   # or a list; alias: label_glob
    labels_csv = "ct_abdomen/labels.csv"  # header row, then: subject (file stem), class (0 or 1)

A label volume pairs with the image of the same file stem (the name without ``.nii.gz``/``.nii``),
or with the image whose stem is its own minus one of the suffixes ``_label``, ``_labels``,
``_seg``, ``_mask``, ``_gt``: ``x_0004_label.nii.gz`` and ``labels/x_0004.nii.gz`` both pair with
``x_0004.nii.gz``. Label files that pair with no image are ignored, but a label glob that pairs
with none at all is an error, as are two label volumes for one image. A ``labels_csv`` row pairs
with the image whose stem is its first column. Shapes and affines of label volumes are checked
against their images before fine-tuning (:func:`trainers.downstream_data.check_label_volumes`), not
here: pretraining does not need to read them.

Preprocessing is MONAI: LoadImage (nibabel), Orientation (RAS), Spacing (the config's common
spacing), the modality's intensity transform; its output is cached on disk with
``PersistentDataset`` (one file per volume, keyed by the file's path, size and mtime and by the
preprocessing parameters) so that runs and worker processes never preprocess a volume twice.
Random training crops come after the cache (:func:`train_crop_transform`); validation uses fixed
crops (the centre, then fixed-seed positions) taken once, here.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bayescale.errors import InputError
from trainers.config import DataConfig, TrainConfig, _Table, read_toml

MODALITIES = ("ct", "mri", "pet")
DEFAULT_CT_WINDOW = (-1000.0, 1000.0)
DEFAULT_MRI_PERCENTILES = (1.0, 99.0)
DEFAULT_PET_SUV_MAX = 10.0
_IGNORED_DOMAIN_KEYS = ("spacing", "shape", "description")
LABEL_SUFFIXES = ("_label", "_labels", "_seg", "_mask", "_gt")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Domain:
    """One domain of a manifest: its files split into a training pool and a validation set."""

    name: str
    modality: str
    train: tuple[Path, ...]
    validation: tuple[Path, ...]
    window: tuple[float, float] = DEFAULT_CT_WINDOW
    percentiles: tuple[float, float] = DEFAULT_MRI_PERCENTILES
    suv_max: float = DEFAULT_PET_SUV_MAX
    labels: tuple[tuple[Path, Path], ...] = ()  # (image, label volume), in image order
    classes: tuple[tuple[Path, int], ...] = ()  # (image, class label from labels_csv)
    class_name: str | None = None  # the labels_csv header of the class column
    labels_csv: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """Every image of the domain (validation set and training pool), sorted."""
        return tuple(sorted({*self.validation, *self.train}))

    def label_of(self, image: Path) -> Path | None:
        return dict(self.labels).get(Path(image))

    def class_of(self, image: Path) -> int | None:
        return dict(self.classes).get(Path(image))

    def intensity(self) -> dict:
        if self.modality == "ct":
            return {"window": list(self.window)}
        if self.modality == "mri":
            return {"percentiles": list(self.percentiles)}
        return {"suv_max": self.suv_max}


@dataclass(frozen=True)
class Manifest:
    path: Path
    folder: Path
    domains: tuple[Domain, ...]

    def __getitem__(self, name: str) -> Domain:
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]

    def fingerprint(self) -> list:
        """What the data of every domain is: names, modality, intensity and (file, size) lists."""
        out = []
        for d in self.domains:
            files = [[_rel(p, self.folder), _size(p)] for p in (*d.validation, *d.train)]
            out.append({"name": d.name, "modality": d.modality, "intensity": d.intensity(),
                        "validation": len(d.validation), "files": files})
        return out


def _rel(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.as_posix()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


# ---------------------------------------------------------------------------
# the manifest


def load_manifest(path: str | Path, validation_per_domain: int = 4) -> Manifest:
    """Read a manifest, resolve its files and split each domain into training pool and validation set.

    Raises :class:`InputError` naming the manifest and the domain for an unknown modality, a
    glob that matches nothing, a missing file, an empty domain, a path outside the manifest's
    folder, or a domain with too few files for its validation set plus one training volume.
    """
    path = Path(path)
    where = str(path)
    raw = read_toml(path, "manifest")
    top = _Table(raw, where)
    folder = path.resolve().parent
    allow_absolute = top.bool("allow_absolute_paths", False)
    root_text = top.str("root", ".")
    root = _resolve(root_text, folder, folder, allow_absolute, f"{where}: root")
    top.raw("labels")  # class labels of the phantoms: not used for pretraining
    entries = top.raw("domains", None)
    top.done()
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{where}: no domains; add [[domains]] tables with name, modality and glob (or files)")
    domains: list[Domain] = []
    seen: dict[str, int] = {}
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InputError(f"{where}: domains entry {k + 1} is not a table")
        t = _Table(entry, where, "")
        name = t.str("name", None)
        if not name:
            raise InputError(f"{where}: domains entry {k + 1} has no name")
        if not _NAME_RE.match(name):
            raise InputError(f"{where}: domain name {name!r} must start with a letter or digit and use only letters, digits, '_', '.', '-'")
        if name in seen:
            raise InputError(f"{where}: domain {name!r} appears twice (entries {seen[name] + 1} and {k + 1})")
        seen[name] = k
        t.context = f"domain {name!r}: "
        domains.append(_read_domain(t, name, where, root, folder, allow_absolute, validation_per_domain))
    return Manifest(path=path, folder=folder, domains=tuple(domains))


def _read_domain(t: _Table, name: str, where: str, root: Path, folder: Path, allow_absolute: bool, n_val: int) -> Domain:
    here = f"{where}: domain {name!r}"
    modality = t.raw("modality", None)
    if not isinstance(modality, str) or modality.lower() not in MODALITIES:
        raise InputError(f"{here}: unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    modality = modality.lower()
    for key in _IGNORED_DOMAIN_KEYS:
        t.raw(key)
    if t.has("glob") and t.has("files"):
        raise InputError(f"{here}: give either glob or files, not both")
    if not t.has("glob") and not t.has("files") and not t.has("train"):
        raise InputError(f"{here}: no files; give glob = \"...\" or files = [...]")
    files = None
    if t.has("glob") or t.has("files"):
        key = "glob" if t.has("glob") else "files"
        files = _file_set(t.raw(key), key, here, root, folder, allow_absolute)
    explicit_val = _file_set(t.raw("validation"), "validation", here, root, folder, allow_absolute) if t.has("validation") else None
    explicit_train = _file_set(t.raw("train"), "train", here, root, folder, allow_absolute) if t.has("train") else None
    count = t.int("validation_count", n_val, minimum=1)

    if explicit_val is not None:
        validation = explicit_val
        if explicit_train is not None:
            train = explicit_train
        else:
            train = [p for p in (files or []) if p not in set(validation)]
    else:
        pool = explicit_train if files is None else files
        if explicit_train is not None and files is not None:
            raise InputError(f"{here}: train without validation: list the validation files too (or drop train)")
        if len(pool) < count + 1:
            raise InputError(
                f"{here}: {len(pool)} file{'s' if len(pool) != 1 else ''}; it needs at least {count + 1} "
                f"({count} for validation and one to train on)"
            )
        validation, train = pool[:count], pool[count:]
    overlap = sorted(set(validation) & set(train))
    if overlap:
        raise InputError(f"{here}: {overlap[0]} is in both the training and the validation set")
    if not train:
        raise InputError(f"{here}: empty domain: no training volumes left after the validation split")
    if not validation:
        raise InputError(f"{here}: empty validation set")

    window = _pair(t, "window", DEFAULT_CT_WINDOW, here)
    percentiles = _pair(t, "percentiles", DEFAULT_MRI_PERCENTILES, here)
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise InputError(f"{here}: percentiles {list(percentiles)} must satisfy 0 <= low < high <= 100")
    suv_max = t.float("suv_max", DEFAULT_PET_SUV_MAX, positive=True)
    for key, applies in (("window", "ct"), ("percentiles", "mri"), ("suv_max", "pet")):
        if t.has(key) and modality != applies:
            raise InputError(f"{here}: {key} applies to {applies} domains, not to modality {modality!r}")
    images = sorted({*train, *validation})
    labels = _read_label_volumes(t, here, images, root, folder, allow_absolute)
    classes, class_name, csv_path = _read_labels_csv(t, here, images, root, folder, allow_absolute)
    t.done()
    return Domain(name=name, modality=modality, train=tuple(train), validation=tuple(validation),
                  window=window, percentiles=percentiles, suv_max=suv_max, labels=labels, classes=classes,
                  class_name=class_name, labels_csv=csv_path)


def file_stem(path: Path | str) -> str:
    """A volume's name without its extension: ``x.nii.gz`` -> ``x``, ``x.nii`` -> ``x``."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _image_stems(images, here: str) -> dict[str, Path | None]:
    stems: dict[str, Path | None] = {}
    for p in images:
        s = file_stem(p)
        stems[s] = None if s in stems else p  # None: two images share the stem (ambiguous)
    return stems


def _read_label_volumes(t: _Table, here: str, images, root: Path, folder: Path, allow_absolute: bool):
    """``label`` (or its alias ``label_glob``): label volumes paired with the images by file stem."""
    if t.has("label") and t.has("label_glob"):
        raise InputError(f"{here}: give label or label_glob (the same thing), not both")
    key = "label" if t.has("label") else "label_glob"
    if not t.has(key):
        t.raw("label")
        t.raw("label_glob")
        return ()
    value = t.raw(key)
    label_files = _file_set(value, key, here, root, folder, allow_absolute)
    stems = _image_stems(images, here)
    image_set = set(images)
    pairs: dict[Path, Path] = {}
    for lab in label_files:
        if lab in image_set:
            raise InputError(f"{here}: {key} matches {lab}, which is also one of the domain's images; narrow the image glob or the label glob")
        s = file_stem(lab)
        candidates = [s] + [s[: -len(x)] for x in LABEL_SUFFIXES if s.endswith(x) and len(s) > len(x)]
        for c in candidates:
            if c not in stems:
                continue
            image = stems[c]
            if image is None:
                raise InputError(f"{here}: label volume {lab} pairs with more than one image of stem {c!r}")
            if image in pairs:
                raise InputError(f"{here}: {image} has two label volumes, {pairs[image]} and {lab}")
            pairs[image] = lab
            break
    if not pairs:
        example = file_stem(images[0]) if images else "x"
        raise InputError(
            f"{here}: {key} {value!r} matches {len(label_files)} file{'s' if len(label_files) != 1 else ''} but pairs none "
            f"with an image of the domain (e.g. {label_files[0].name}); a label pairs with the image of the same file stem, "
            f"optionally plus _label, _seg or _mask (e.g. {example}_label.nii.gz for {example}.nii.gz)"
        )
    return tuple((image, pairs[image]) for image in images if image in pairs)


def _read_labels_csv(t: _Table, here: str, images, root: Path, folder: Path, allow_absolute: bool):
    """``labels_csv``: one class label (0 or 1) per subject, paired with the images by file stem."""
    import csv

    if not t.has("labels_csv"):
        t.raw("labels_csv")
        return (), None, None
    text = t.str("labels_csv")
    if not text.strip():
        raise InputError(f"{here}: labels_csv is empty; expected a path")
    path = _resolve(text, root, folder, allow_absolute, f"{here}: labels_csv")
    if not path.is_file():
        raise InputError(f"{here}: labels_csv names {path}, which is not a file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read the labels CSV ({' '.join(str(error).split())})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows or len(rows[0]) < 2:
        raise InputError(f"{path}: expected a header row 'subject,<class name>' and one row per subject")
    class_name = rows[0][1].strip() or "class"
    stems = _image_stems(images, here)
    values: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 2:
            raise InputError(f"{path}: line {line} has {len(row)} column; expected subject,{class_name}")
        subject, raw = file_stem(row[0].strip()), row[1].strip()
        if raw not in ("0", "1"):
            raise InputError(f"{path}: line {line}: {class_name} of {subject!r} is {raw!r}; expected 0 or 1")
        if subject in values:
            raise InputError(f"{path}: line {line}: subject {subject!r} appears twice")
        values[subject] = int(raw)
    classes = [(p, values[file_stem(p)]) for p in images if file_stem(p) in values and stems.get(file_stem(p)) is not None]
    if not classes:
        raise InputError(f"{path}: none of its {len(values)} subjects pairs with an image of {here.split(': ', 1)[-1]} by file stem")
    return tuple(classes), class_name, path


def _pair(t: _Table, key: str, default, here: str) -> tuple[float, float]:
    value = t.raw(key, list(default))
    if (not isinstance(value, list) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value) or not value[0] < value[1]):
        raise InputError(f"{here}: {key} is {value!r}; expected [low, high] with low < high")
    return float(value[0]), float(value[1])


def _resolve(text: str, base: Path, folder: Path, allow_absolute: bool, what: str) -> Path:
    p = Path(text).expanduser()
    if p.is_absolute():
        if not allow_absolute:
            raise InputError(f"{what} {text!r} is an absolute path; set allow_absolute_paths = true in the manifest to allow it")
        return Path(p)
    full = (base / p).resolve()
    if not allow_absolute and not full.is_relative_to(folder):
        raise InputError(f"{what} {text!r} leads outside the manifest's folder; set allow_absolute_paths = true to allow it")
    return full


def _file_set(value, key: str, here: str, root: Path, folder: Path, allow_absolute: bool) -> list[Path]:
    """A glob (str) or a list of files and globs -> sorted, distinct, existing paths."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or any(not isinstance(v, str) for v in items):
        raise InputError(f"{here}: {key} is {value!r}; expected a glob string or a list of file names")
    if not items:
        raise InputError(f"{here}: empty domain: {key} is an empty list")
    out: list[Path] = []
    for item in items:
        if not item.strip():
            raise InputError(f"{here}: {key} has an empty entry")
        if globlib.has_magic(item):
            base = Path(item).expanduser()
            if base.is_absolute() and not allow_absolute:
                raise InputError(f"{here}: {key} {item!r} is an absolute path; set allow_absolute_paths = true in the manifest to allow it")
            pattern = str(base if base.is_absolute() else root / base)
            matches = sorted(Path(m).resolve() for m in globlib.glob(pattern, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(f"{here}: {key} {item!r} matches no file (looked in {root})")
            for m in matches:
                if not allow_absolute and not m.is_relative_to(folder):
                    raise InputError(f"{here}: {key} {item!r} matches {m}, outside the manifest's folder")
            out.extend(matches)
        else:
            p = _resolve(item, root, folder, allow_absolute, f"{here}: {key}")
            if not p.is_file():
                raise InputError(f"{here}: {key} names {p}, which is not a file")
            out.append(p)
    distinct = sorted(dict.fromkeys(out))
    return distinct


# ---------------------------------------------------------------------------
# MONAI preprocessing


def preprocess_transform(domain: Domain, data: DataConfig, label: bool = False):
    """The deterministic MONAI chain of one domain: load, RAS, common spacing, intensity to [0, 1].

    ``label``: also load the item's ``"label"`` volume through the same chain (same orientation
    and spacing; nearest-neighbour resampling; no intensity transform), for fine-tuning. The
    image's chain is the same either way.
    """
    from monai.transforms import (
        Compose,
        EnsureTyped,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        ScaleIntensityRangePercentilesd,
        Spacingd,
    )

    keys = ["image", "label"] if label else "image"
    chain = [
        LoadImaged(keys=keys, reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=np.float32),
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=data.spacing, mode=("bilinear", "nearest") if label else "bilinear",
                 padding_mode="border", dtype=np.float32),
    ]
    if domain.modality == "ct":
        lo, hi = domain.window
        chain.append(ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    elif domain.modality == "mri":
        lo, hi = domain.percentiles
        chain.append(ScaleIntensityRangePercentilesd(keys="image", lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True))
    else:
        chain.append(ScaleIntensityRanged(keys="image", a_min=0.0, a_max=domain.suv_max, b_min=0.0, b_max=1.0, clip=True))
    chain.append(EnsureTyped(keys=keys, dtype=np.float32, track_meta=False))
    return Compose(chain)


def train_crop_transform(crop, seed: int):
    """Random training crops (after the cache), with their own seeded random state."""
    from monai.transforms import Compose, RandSpatialCropd

    # A Compose of our own, seeded after construction: MONAI's Dataset would otherwise wrap the
    # crop in a Compose that reseeds it from MONAI's global seed (random unless set).
    t = Compose([RandSpatialCropd(keys="image", roi_size=tuple(crop), random_size=False)])
    t.set_random_state(seed=seed % (2**32))
    return t


def _preprocess_key(domain: Domain, data: DataConfig) -> str:
    payload = json.dumps({"modality": domain.modality, "intensity": domain.intensity(), "spacing": list(data.spacing),
                          "version": 1}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _root_cause(error: BaseException) -> str:
    seen = set()
    while error.__cause__ is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def checked_volume(image, path, domain: Domain, data: DataConfig, where: str) -> np.ndarray:
    """A preprocessed image as a float32 (1, X, Y, Z) array; one-line InputError if it is not one
    finite 3D volume at least as large as the crop."""
    array = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
    if array.ndim != 4 or array.shape[0] != 1:
        raise InputError(f"{where}: domain {domain.name!r}: {path} has shape {array.shape[1:]} after loading; expected one 3D volume")
    if not np.isfinite(array).all():
        raise InputError(f"{where}: domain {domain.name!r}: {path} holds NaN or infinite values")
    if any(s < c for s, c in zip(array.shape[1:], data.crop)):
        raise InputError(
            f"{where}: domain {domain.name!r}: {path} is {'x'.join(map(str, array.shape[1:]))} voxels at "
            f"{'x'.join(f'{s:g}' for s in data.spacing)} mm, smaller than the crop {'x'.join(map(str, data.crop))}"
        )
    return array


def load_volumes(domain: Domain, files, data: DataConfig, where: str, cache_dir: Path | None = None) -> list[np.ndarray]:
    """Preprocessed volumes (float32, shape (1, x, y, z), values in [0, 1]) of ``files``.

    Through ``PersistentDataset`` when ``cache_dir`` is set (else ``CacheDataset`` in memory). An
    unreadable or corrupt file, or one smaller than the crop after resampling, is an
    :class:`InputError` naming the manifest, the domain and the file.
    """
    from monai.data import CacheDataset, PersistentDataset, get_track_meta, set_track_meta

    # Spacing needs each volume's affine, which only travels with meta tracking on.
    track_meta = get_track_meta()
    set_track_meta(True)
    try:
        return _load_volumes(domain, files, data, where, cache_dir, CacheDataset, PersistentDataset)
    finally:
        set_track_meta(track_meta)


def _load_volumes(domain, files, data, where, cache_dir, CacheDataset, PersistentDataset) -> list[np.ndarray]:
    items = []
    for p in files:
        try:
            st = p.stat()
        except OSError as error:
            raise InputError(f"{where}: domain {domain.name!r}: cannot read {p} ({error.strerror or error})") from None
        items.append({"image": str(p), "stamp": f"{st.st_size}:{st.st_mtime_ns}"})
    transform = preprocess_transform(domain, data)
    out: list[np.ndarray] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cache_dir is not None:
            folder = Path(cache_dir) / f"{domain.modality}-{_preprocess_key(domain, data)}"
            folder.mkdir(parents=True, exist_ok=True)
            dataset = PersistentDataset(items, transform=transform, cache_dir=folder)
            getter = dataset.__getitem__
        else:
            dataset = None
            getter = None
        for k, item in enumerate(items):
            try:
                if getter is not None:
                    result = getter(k)
                else:
                    result = CacheDataset([item], transform=transform, progress=False, num_workers=0)[0]
            except InputError:
                raise
            except Exception as error:  # any reader or transform failure is a property of the file
                raise InputError(
                    f"{where}: domain {domain.name!r}: cannot read {item['image']} as a NIfTI volume ({_root_cause(error)})"
                ) from None
            out.append(checked_volume(result["image"], item["image"], domain, data, where))
    return out


# ---------------------------------------------------------------------------
# prepared data: what every run needs, computed once


@dataclass
class DomainArrays:
    """The cached arrays of one domain."""

    name: str
    modality: str
    train: list[np.ndarray]  # the training pool, in manifest order
    val_crops: np.ndarray  # (n, 1, cx, cy, cz): the fixed validation crops
    val_mean_crops: np.ndarray  # (n, 1, cx, cy, cz): the mean training volume at the same positions
    val_sources: list[str] = field(default_factory=list)  # "file#k" of every validation crop

    @property
    def n_train(self) -> int:
        return len(self.train)


@dataclass
class PreparedData:
    domains: dict[str, DomainArrays]
    crop: tuple[int, int, int]

    def nbytes(self) -> int:
        n = 0
        for d in self.domains.values():
            n += sum(a.nbytes for a in d.train) + d.val_crops.nbytes + d.val_mean_crops.nbytes
        return n


def stable_int(*parts) -> int:
    """A platform-independent 31-bit integer from any printable parts (seeds from names)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def crop_starts(shape, crop, n: int, seed) -> list[tuple[int, int, int]]:
    """n crop corners in a volume of ``shape``: the centre first, then uniform fixed-seed positions."""
    starts = [tuple((s - c) // 2 for s, c in zip(shape, crop))]
    rng = np.random.default_rng(seed)
    for _ in range(n - 1):
        starts.append(tuple(int(rng.integers(0, s - c + 1)) for s, c in zip(shape, crop)))
    return starts


def _cut(volume: np.ndarray, start, crop) -> np.ndarray:
    sx, sy, sz = (min(max(s, 0), n - c) for s, n, c in zip(start, volume.shape[1:], crop))
    return volume[:, sx:sx + crop[0], sy:sy + crop[1], sz:sz + crop[2]]


def prepare_domain(domain: Domain, config: TrainConfig, where: str, cache_dir: Path | None, progress=None) -> DomainArrays:
    data = config.data
    crop = data.crop
    val = load_volumes(domain, domain.validation, data, where, cache_dir)
    if progress:
        progress(domain.name, len(val))
    train = load_volumes(domain, domain.train, data, where, cache_dir)
    if progress:
        progress(domain.name, len(train))
    crops, means, sources = [], [], []
    for k, (path, volume) in enumerate(zip(domain.validation, val)):
        starts = crop_starts(volume.shape[1:], crop, data.validation_crops, [config.training.mask_seed, stable_int(domain.name), k])
        for j, start in enumerate(starts):
            crops.append(_cut(volume, start, crop))
            # the mean training volume at the same position (clamped into each training volume)
            means.append(np.mean([_cut(t, start, crop) for t in train], axis=0, dtype=np.float64).astype(np.float32))
            sources.append(f"{path.name}#{j}")
    return DomainArrays(name=domain.name, modality=domain.modality, train=train,
                        val_crops=np.stack(crops), val_mean_crops=np.stack(means), val_sources=sources)


def prepare_data(config: TrainConfig, manifest: Manifest, cache_dir: Path | None = None, progress=None) -> PreparedData:
    """Preprocess (or read from the cache) every volume of every domain, and cut the validation crops.

    This reads every file, so every bad file is found here, before any training starts.
    """
    where = str(manifest.path)
    domains = {d.name: prepare_domain(d, config, where, cache_dir, progress) for d in manifest.domains}
    return PreparedData(domains=domains, crop=tuple(config.data.crop))

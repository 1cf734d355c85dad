"""Procedural 3D phantom domains written as NIfTI: a stand-in for CT, MRI and PET collections.

Five domains, each a population of subjects whose anatomy varies (shape, size, position, rotation,
texture) so that more volumes genuinely teach a model more:

``ct_abdomen``      abdominal CT in Hounsfield units (int16): body outline, fat, muscle, spine, ribs,
                    liver, spleen, kidneys, stomach, pancreas, gallbladder, aorta, IVC, bowel loops;
                    non-contrast or portal-venous phase; lesions are hypodense liver/kidney/spleen masses.
``ct_chest``        chest CT (int16 HU) sharing the body outline, spine, ribs, aorta, muscle and fat of
                    the abdomen plus lungs with vessels, heart, airways, sternum, scapulae and the liver
                    dome; lesions are lung nodules.
``mri_t2_abdomen``  T2-weighted abdominal MRI (float32, arbitrary units) of the same organs as the CT
                    abdomen with T2 contrast, a smooth multiplicative bias field and Rician noise.
``mri_t1_brain``    T1-weighted head MRI (float32): scalp fat, skull, CSF, folded grey/white matter,
                    deep grey nuclei, ventricles, cerebellum, eyes; lesions are gliomas with oedema.
``pet_wholebody``   FDG-like PET in SUV (float32) on coarse 8 mm voxels: low background, hot brain,
                    heart, kidneys and bladder, Gaussian point-spread blur and Poisson counting noise;
                    lesions are hot spots.

Every subject k of domain d depends only on (seed, d, k), through ``np.random.default_rng([seed,
d_index, k])``, so writing 10 subjects and then 20 gives the same first 10. Anatomy is drawn in a
canonical patient frame (mm, RAS+: x towards the patient's right, y anterior, z superior) and mapped
to the voxel grid through a random rotation, shift and scaling per subject; the NIfTI affine is a
plain RAS+ one (``nib.aff2axcodes`` gives ``('R', 'A', 'S')``) centred on the volume.

Only numpy, scipy and nibabel are used here (no torch, no MONAI).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "DOMAINS",
    "GRIDS",
    "LABELS",
    "DOMAIN_LABELS",
    "LESION_RATE",
    "Grid",
    "generate_subject",
    "read_lesion_labels",
    "subject_has_lesion",
    "subject_paths",
    "write_phantoms",
    "write_manifest",
]

DOMAINS: dict[str, str] = {
    "ct_abdomen": "ct",
    "ct_chest": "ct",
    "mri_t1_brain": "mri",
    "mri_t2_abdomen": "mri",
    "pet_wholebody": "pet",
}
"""Domain name -> modality (``ct``, ``mri`` or ``pet``). The order fixes each domain's index in the seed."""


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (x, y, z) and spacing in mm, centred on the world origin, RAS+."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def fov(self) -> tuple[float, float, float]:
        return tuple(n * s for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]

    def affine(self) -> np.ndarray:
        """Voxel index -> world mm (RAS+): diagonal spacing, volume centre at (0, 0, 0)."""
        a = np.diag([*self.spacing, 1.0])
        a[:3, 3] = -(np.asarray(self.shape) - 1) / 2 * np.asarray(self.spacing)
        return a

    def world_axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates of voxel centres as three broadcastable open arrays (float32)."""
        axes = []
        for i, (n, s) in enumerate(zip(self.shape, self.spacing)):
            c = ((np.arange(n) - (n - 1) / 2) * s).astype(np.float32)
            shape = [1, 1, 1]
            shape[i] = n
            axes.append(c.reshape(shape))
        return tuple(axes)  # type: ignore[return-value]


GRIDS: dict[str, Grid] = {
    "ct_abdomen": Grid((64, 64, 48), (5.0, 5.0, 5.0)),  # 320 x 320 x 240 mm
    "ct_chest": Grid((64, 64, 48), (5.5, 5.5, 5.0)),  # 352 x 352 x 240 mm
    "mri_t1_brain": Grid((64, 64, 52), (4.0, 4.0, 4.0)),  # 256 x 256 x 208 mm
    "mri_t2_abdomen": Grid((64, 64, 40), (5.5, 5.5, 6.0)),  # 352 x 352 x 240 mm
    "pet_wholebody": Grid((40, 40, 56), (8.0, 8.0, 8.0)),  # 320 x 320 x 448 mm
}
"""Voxel grid of each domain. Every field of view is >= 256 mm in x/y and >= 208 mm in z."""

LABELS: dict[str, int] = {
    "background": 0,
    "body": 1,  # skin, subcutaneous and visceral fat, other soft tissue
    "muscle": 2,
    "bone": 3,  # vertebrae, ribs, sternum, scapulae, skull
    "spinal_canal": 4,
    "liver": 5,
    "spleen": 6,
    "kidney_right": 7,
    "kidney_left": 8,
    "aorta": 9,
    "ivc": 10,
    "stomach": 11,
    "gallbladder": 12,
    "pancreas": 13,
    "bowel": 14,
    "lung_right": 15,
    "lung_left": 16,
    "heart": 17,
    "airway": 18,
    "bladder": 19,
    "brain": 20,
    "grey_matter": 21,
    "white_matter": 22,
    "deep_grey": 23,
    "csf": 24,
    "ventricles": 25,
    "cerebellum": 26,
    "eye": 27,
    "lesion": 30,
}
"""One label id per structure, shared by all domains (liver is 5 in every domain that has a liver)."""

_ABDOMEN_LABELS = [
    "background", "body", "muscle", "bone", "spinal_canal", "liver", "spleen", "kidney_right",
    "kidney_left", "aorta", "ivc", "stomach", "gallbladder", "pancreas", "bowel", "lesion",
]  # fmt: skip
DOMAIN_LABELS: dict[str, dict[str, int]] = {
    "ct_abdomen": {k: LABELS[k] for k in _ABDOMEN_LABELS},
    "mri_t2_abdomen": {k: LABELS[k] for k in _ABDOMEN_LABELS},
    "ct_chest": {
        k: LABELS[k]
        for k in [
            "background", "body", "muscle", "bone", "spinal_canal", "liver", "spleen", "aorta", "ivc",
            "stomach", "lung_right", "lung_left", "heart", "airway", "lesion",
        ]
    },  # fmt: skip
    "mri_t1_brain": {
        k: LABELS[k]
        for k in [
            "background", "body", "bone", "grey_matter", "white_matter", "deep_grey", "csf",
            "ventricles", "cerebellum", "eye", "lesion",
        ]
    },  # fmt: skip
    "pet_wholebody": {
        k: LABELS[k]
        for k in [
            "background", "body", "muscle", "bone", "liver", "spleen", "kidney_right", "kidney_left",
            "aorta", "bowel", "lung_right", "lung_left", "heart", "bladder", "brain", "lesion",
        ]
    },  # fmt: skip
}
"""Label ids that can occur in each domain's label volumes (a subset of ``LABELS``)."""

LESION_RATE: dict[str, float] = {d: 0.45 for d in DOMAINS}
"""Probability that a subject carries a lesion (its class label in ``labels.csv``)."""

_FILE_RE = re.compile(r"^(?P<domain>[a-z0-9_]+)_(?P<index>\d{4})\.nii\.gz$")
_DESCRIP_RE = re.compile(
    r"bayescale phantom (?P<domain>\S+) seed=(?P<seed>-?\d+) index=(?P<index>\d+)(?: rev=(?P<rev>\d+))?"
)

REVISION: dict[str, int] = {d: 1 for d in DOMAINS} | {"mri_t1_brain": 2}
"""Generator revision of each domain, written into every file's header (no ``rev=``: revision 1).

A file of an older revision is regenerated by :func:`write_phantoms`, so a changed generator
never trains on stale volumes. Revision 2 of ``mri_t1_brain``: heads placed as loosely as clinical
head MRI places them (up to 15/20/15 mm off centre, 15/8/10 degrees of tilt, scale 0.88-1.12;
revision 1 had 6/8/6 mm, 8/4/6 degrees, 0.93-1.07), so that the mean volume no longer knows where
the head is (trainers/NOTES-recipe.md, probe 3).
"""


# --------------------------------------------------------------------------------------------------
# tissues: finer than labels; each modality maps them to intensities

AIR, FAT, MUSCLE, CORTICAL, MARROW, DISC, CSF, CORD, LIVER, HEPATIC_VESSEL, SPLEEN = range(11)
KIDNEY_CORTEX, KIDNEY_MEDULLA, ARTERY, VEIN, PANCREAS, GUT_WALL, GUT_FLUID, GAS, BILE = range(11, 20)
LUNG, LUNG_VESSEL, MYOCARDIUM, URINE, GM, WM, DEEP_GM, VITREOUS, TUMOR, NECROSIS = range(20, 30)
EDEMA, TABLE, GLAND = range(30, 33)
N_TISSUES = 33

# (mean, between-subject sd); contrast-phase enhancement for CT is added separately
_CT_HU = {
    AIR: (-1000, 0), FAT: (-100, 8), MUSCLE: (48, 5), CORTICAL: (1000, 120), MARROW: (260, 50),
    DISC: (85, 8), CSF: (8, 3), CORD: (32, 4), LIVER: (58, 6), HEPATIC_VESSEL: (40, 4),
    SPLEEN: (47, 4), KIDNEY_CORTEX: (34, 4), KIDNEY_MEDULLA: (30, 4), ARTERY: (42, 4), VEIN: (40, 4),
    PANCREAS: (40, 5), GUT_WALL: (40, 5), GUT_FLUID: (15, 8), GAS: (-1000, 0), BILE: (10, 4),
    LUNG: (-850, 25), LUNG_VESSEL: (40, 5), MYOCARDIUM: (45, 4), URINE: (8, 3), GM: (38, 2),
    WM: (28, 2), DEEP_GM: (36, 2), VITREOUS: (10, 2), TUMOR: (32, 6), NECROSIS: (15, 4),
    EDEMA: (20, 3), TABLE: (120, 20), GLAND: (30, 6),
}  # fmt: skip
_CT_ENHANCE = {  # HU added at full portal-venous enhancement
    LIVER: 45, HEPATIC_VESSEL: 130, SPLEEN: 65, KIDNEY_CORTEX: 150, KIDNEY_MEDULLA: 70, ARTERY: 150,
    VEIN: 120, PANCREAS: 55, GUT_WALL: 45, LUNG_VESSEL: 110, MYOCARDIUM: 70, TUMOR: 25, GLAND: 10,
}  # fmt: skip
_CT_TEXTURE = {  # HU of smooth within-tissue heterogeneity
    FAT: 12, MUSCLE: 7, LIVER: 5, SPLEEN: 5, KIDNEY_CORTEX: 8, MARROW: 70, LUNG: 35, GUT_FLUID: 15,
    TUMOR: 12, GUT_WALL: 8, PANCREAS: 10, GLAND: 25, CORTICAL: 150,
}  # fmt: skip

_T2 = {  # T2-weighted abdomen, relative signal
    AIR: (0, 0), FAT: (0.72, 0.06), MUSCLE: (0.16, 0.02), CORTICAL: (0.02, 0.005), MARROW: (0.55, 0.05),
    DISC: (0.5, 0.08), CSF: (1.0, 0.05), CORD: (0.45, 0.04), LIVER: (0.24, 0.03),
    HEPATIC_VESSEL: (0.06, 0.02), SPLEEN: (0.48, 0.05), KIDNEY_CORTEX: (0.48, 0.05),
    KIDNEY_MEDULLA: (0.62, 0.05), ARTERY: (0.04, 0.02), VEIN: (0.1, 0.04), PANCREAS: (0.32, 0.04),
    GUT_WALL: (0.3, 0.04), GUT_FLUID: (0.8, 0.12), GAS: (0, 0), BILE: (1.0, 0.05), LUNG: (0.03, 0.01),
    LUNG_VESSEL: (0.05, 0.01), MYOCARDIUM: (0.22, 0.03), URINE: (1.0, 0.05), GM: (0.5, 0.02),
    WM: (0.4, 0.02), DEEP_GM: (0.45, 0.02), VITREOUS: (1.0, 0.03), TUMOR: (0.72, 0.12),
    NECROSIS: (0.95, 0.05), EDEMA: (0.7, 0.05), TABLE: (0, 0), GLAND: (0.4, 0.05),
}  # fmt: skip
_T2_TEXTURE = {FAT: 0.06, LIVER: 0.05, SPLEEN: 0.05, GUT_FLUID: 0.15, MARROW: 0.12, TUMOR: 0.12, MUSCLE: 0.05}

_T1 = {  # T1-weighted head, relative signal
    AIR: (0, 0), FAT: (0.95, 0.04), MUSCLE: (0.33, 0.03), CORTICAL: (0.03, 0.01), MARROW: (0.7, 0.06),
    CSF: (0.09, 0.02), GM: (0.42, 0.03), WM: (0.7, 0.03), DEEP_GM: (0.52, 0.03), VITREOUS: (0.07, 0.02),
    TUMOR: (0.3, 0.05), NECROSIS: (0.1, 0.03), EDEMA: (0.45, 0.04), GAS: (0, 0), ARTERY: (0.15, 0.04),
    GUT_WALL: (0.35, 0.04), GLAND: (0.5, 0.05),
}  # fmt: skip
_T1_TEXTURE = {FAT: 0.05, MUSCLE: 0.06, WM: 0.025, GM: 0.04, MARROW: 0.1, TUMOR: 0.15, EDEMA: 0.06}

_SUV = {  # FDG PET, SUV; a few are redrawn per subject in _render_pet
    AIR: (0, 0), FAT: (0.3, 0.05), MUSCLE: (0.7, 0.1), CORTICAL: (0.4, 0.05), MARROW: (1.4, 0.25),
    DISC: (0.6, 0.1), CSF: (0.2, 0.05), CORD: (1.0, 0.15), LIVER: (2.4, 0.3), HEPATIC_VESSEL: (1.8, 0.2),
    SPLEEN: (1.9, 0.25), KIDNEY_CORTEX: (3.0, 0.5), KIDNEY_MEDULLA: (8.0, 3.0), ARTERY: (1.7, 0.2),
    VEIN: (1.7, 0.2), PANCREAS: (1.5, 0.2), GUT_WALL: (1.8, 0.5), GUT_FLUID: (1.0, 0.3), GAS: (0, 0),
    BILE: (0.5, 0.1), LUNG: (0.4, 0.08), LUNG_VESSEL: (1.2, 0.2), MYOCARDIUM: (4.0, 2.0),
    URINE: (20.0, 8.0), GM: (9.0, 1.5), WM: (3.0, 0.4), DEEP_GM: (10.0, 1.5), VITREOUS: (0.3, 0.05),
    TUMOR: (8.0, 3.0), NECROSIS: (1.0, 0.3), EDEMA: (2.0, 0.3), TABLE: (0, 0), GLAND: (0.8, 0.2),
}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# geometry


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix (degrees about x, then y, then z)."""
    ax, ay, az = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _local(P, c, rot=None):
    x = [P[0] - np.float32(c[0]), P[1] - np.float32(c[1]), P[2] - np.float32(c[2])]
    if rot is None:
        return x
    r = np.asarray(rot, dtype=np.float32)
    return [r[0, i] * x[0] + r[1, i] * x[1] + r[2, i] * x[2] for i in range(3)]


def _ellipsoid(P, c, r, rot=None) -> np.ndarray:
    """Normalised radius of an ellipsoid (< 1 inside); a radius of None makes that axis infinite."""
    acc = None
    for xi, ri in zip(_local(P, c, rot), r):
        if ri is None:
            continue
        term = (xi / np.float32(ri)) ** 2
        acc = term if acc is None else acc + term
    return np.sqrt(acc)


def _tube(P, points, radii) -> np.ndarray:
    """Distance to a polyline divided by its (linearly varying) radius (< 1 inside)."""
    pts = np.asarray(points, dtype=np.float64)
    rad = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),))
    best = None
    for p0, p1, r0, r1 in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
        d = p1 - p0
        x = _local(P, p0)
        dd = max(float(d @ d), 1e-9)
        t = np.clip((x[0] * d[0] + x[1] * d[1] + x[2] * d[2]) / np.float32(dd), 0.0, 1.0).astype(np.float32)
        dist = np.sqrt((x[0] - t * d[0]) ** 2 + (x[1] - t * d[1]) ** 2 + (x[2] - t * d[2]) ** 2)
        f = dist / (r0 + t * (r1 - r0)).astype(np.float32)
        best = f if best is None else np.minimum(best, f)
    return best


def _sphere_depth(P, c, r, rot=None) -> np.ndarray:
    """Radial distance (mm, positive inside) to the surface of an ellipsoid."""
    x = _local(P, c, rot)
    f = np.sqrt(sum((xi / np.float32(ri)) ** 2 for xi, ri in zip(x, r)))
    norm = np.sqrt(x[0] ** 2 + x[1] ** 2 + x[2] ** 2)
    fs = np.maximum(f, 0.05)
    return np.where(f > 0.05, norm * (1 / fs - 1), 1e3).astype(np.float32)


class _Canvas:
    """Tissue and label volumes for one subject, with its canonical coordinates and random fields."""

    def __init__(self, grid: Grid, rng: np.random.Generator, *, rot_deg, shift_mm, scale, aniso=0.04):
        self.grid, self.rng, self.shape = grid, rng, grid.shape
        X, Y, Z = grid.world_axes()
        ang = rng.uniform(-1, 1, 3) * np.asarray(rot_deg, dtype=float)
        self.R = _rotation(*ang)
        self.t = rng.uniform(-1, 1, 3) * np.asarray(shift_mm, dtype=float)
        self.s = rng.uniform(*scale) * rng.uniform(1 - aniso, 1 + aniso, 3)
        d = (X - np.float32(self.t[0]), Y - np.float32(self.t[1]), Z - np.float32(self.t[2]))
        R = self.R.astype(np.float32)
        self.P = tuple(
            ((R[0, i] * d[0] + R[1, i] * d[1] + R[2, i] * d[2]) / np.float32(self.s[i])).astype(np.float32)
            for i in range(3)
        )
        self.world = (X, Y, Z)
        self.tissue = np.zeros(self.shape, np.uint8)
        self.label = np.zeros(self.shape, np.uint8)

    def to_world(self, p) -> np.ndarray:
        return self.R @ (self.s * np.asarray(p, dtype=float)) + self.t

    def fit(self, half: float, axis: int, margin: float = 12.0) -> float:
        """half (a canonical half-width, mm) reduced where needed so the subject stays inside the field of view."""
        room = self.grid.fov[axis] / 2 - margin - abs(self.t[axis])
        return float(min(half, room / self.s[axis]))

    def paint(self, mask, tissue: int, label: str | None = None) -> None:
        self.tissue[mask] = tissue
        if label is not None:
            self.label[mask] = LABELS[label]

    def field(self, scale_mm: float) -> np.ndarray:
        """A smooth Gaussian random field with unit sd and correlation length ~scale_mm."""
        sigma = scale_mm / np.asarray(self.grid.spacing)
        k = max(1, int(sigma.min() / 1.5))
        low = tuple(-(-n // k) + 2 for n in self.shape)
        z = self.rng.standard_normal(low).astype(np.float32)
        z = ndimage.gaussian_filter(z, sigma / k, mode="wrap", truncate=3.0)
        for axis, n in enumerate(self.shape):  # separable linear upsampling by k
            if k > 1:
                pos = np.arange(n, dtype=np.float32) / np.float32(k)
                i0 = pos.astype(np.intp)
                w = (pos - i0).reshape([-1 if a == axis else 1 for a in range(3)])
                z = np.take(z, i0, axis=axis) * (1 - w) + np.take(z, i0 + 1, axis=axis) * w
            else:
                z = np.take(z, np.arange(n), axis=axis)
        z -= z.mean()
        return z / max(float(z.std()), 1e-6)

    def pick(self, mask: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
        """Canonical coordinates of a random voxel of mask (of fallback, or the centre, when it is empty)."""
        idx = np.flatnonzero(mask)
        if idx.size == 0 and fallback is not None:
            idx = np.flatnonzero(fallback)
        if idx.size == 0:
            idx = np.array([np.ravel_multi_index(tuple(n // 2 for n in self.shape), self.shape)])
        i = np.unravel_index(idx[self.rng.integers(idx.size)], self.shape)
        return np.array([float(self.P[a][i]) for a in range(3)])


@dataclass
class _Torso:
    a: float
    b: float
    bpost: float
    fat: float
    musc: float
    y_sp: float
    depth: np.ndarray
    cavity: np.ndarray

    @property
    def ac(self) -> float:
        return self.a - self.fat - self.musc

    @property
    def bc(self) -> float:
        return self.b - self.fat - self.musc


def _torso(cv: _Canvas, chest: bool, table: bool) -> _Torso:
    """Body outline, subcutaneous fat, muscle wall and cavity fat (and the CT table under the patient)."""
    rng, (U, V, W) = cv.rng, cv.P
    a = rng.uniform(125, 158) if chest else rng.uniform(115, 150)
    b = a * rng.uniform(0.64, 0.78)
    taper = rng.uniform(-0.12, 0.12)
    grow = (1 + 0.65 * abs(taper)) * 1.04  # largest taper and outline perturbation
    a = cv.fit(a * grow, 0) / grow
    b = cv.fit(b * grow, 1, margin=20) / grow
    fat = rng.uniform(5, 30) * a / 135
    musc = rng.uniform(7, 12)
    p = rng.uniform(2.0, 2.6)
    bpost = b * rng.uniform(0.86, 0.95)
    zs = 1 + np.float32(taper) * W / np.float32(240)
    by = np.where(V < 0, np.float32(bpost), np.float32(b)) * zs
    rho = (np.abs(U / (np.float32(a) * zs)) ** p + np.abs(V / by) ** p) ** np.float32(1 / p)
    rho = rho * (1 + np.float32(0.02) * np.clip(cv.field(40), -2, 2))
    rxy = np.hypot(U, V)
    depth = np.where(rho > 0.05, rxy * (1 / np.maximum(rho, np.float32(0.05)) - 1), np.float32(1e3))
    if table:  # curved carbon table under the patient, in world coordinates
        top = cv.to_world([0, -bpost, 0])[1] - rng.uniform(1, 6)
        Xw, Yw = cv.world[0], cv.world[1]
        surf = np.float32(top) + Xw**2 / np.float32(1800)
        slab = (Yw < surf) & (Yw > surf - 12) & (np.abs(Xw) < 200) & np.ones(cv.shape, bool)
        slab |= (Yw < surf - 32) & (Yw > surf - 42) & (np.abs(Xw) < 180)
        cv.paint(slab, TABLE)
    fat_local = np.float32(fat) * (1 + np.float32(0.25) * cv.field(60))
    cv.paint(depth > 0, FAT, "body")
    cv.paint(depth > fat_local, MUSCLE, "muscle")
    cavity = depth > fat_local + np.float32(musc)
    cv.paint(cavity, FAT, "body")
    y_sp = -bpost + fat + rng.uniform(40, 50)
    return _Torso(a, b, bpost, fat, musc, y_sp, depth, cavity)


def _back_muscles(cv: _Canvas, tor: _Torso, psoas_top: float | None) -> None:
    rng, P = cv.rng, cv.P
    inside = tor.depth > tor.fat
    for s in (1, -1):
        c = (s * rng.uniform(28, 36), tor.y_sp - rng.uniform(34, 42), 0)
        f = _ellipsoid(P, c, (rng.uniform(22, 30), rng.uniform(17, 23), None))
        cv.paint((f < 1) & inside, MUSCLE, "muscle")
        if psoas_top is not None:
            x0 = s * rng.uniform(22, 30)
            bottom = (s * rng.uniform(45, 60), tor.y_sp + 25, -260)
            f = _tube(P, [(x0, tor.y_sp + 5, psoas_top), bottom], [6, rng.uniform(22, 30)])
            cv.paint((f < 1) & tor.cavity, MUSCLE, "muscle")


def _spine(cv: _Canvas, tor: _Torso) -> None:
    rng, (U, V, W) = cv.rng, cv.P
    x0, bend, ph0 = (np.float32(v) for v in (rng.normal(0, 2), rng.uniform(-5, 5), rng.uniform(0, 6.3)))
    xs = x0 + bend * np.sin(W / np.float32(120) + ph0)  # a gentle scoliotic curve
    rvx, rvy = rng.uniform(19, 25), rng.uniform(15, 19)
    fv = np.sqrt(((U - xs) / np.float32(rvx)) ** 2 + ((V - np.float32(tor.y_sp)) / np.float32(rvy)) ** 2)
    h, disc = rng.uniform(26, 32), rng.uniform(5, 8)
    phase = np.mod(W - np.float32(rng.uniform(0, h)), np.float32(h))
    isdisc = phase < disc
    body = fv < 1
    cv.paint(body & ~isdisc, MARROW, "bone")
    cv.paint(body & ~isdisc & (fv > 0.8), CORTICAL, "bone")
    cv.paint(body & isdisc, DISC, "body")
    canal_y = tor.y_sp - rvy - 9
    rc = np.hypot(U - xs, V - np.float32(canal_y))
    arch = ~isdisc & (phase < h * 0.85)
    posterior_end = -tor.bpost + tor.fat + 6
    cv.paint(arch & (rc < 15) & (V < tor.y_sp - rvy + 2), CORTICAL, "bone")
    cv.paint(arch & (np.abs(U - xs) < 4) & (V < canal_y) & (V > posterior_end), CORTICAL, "bone")
    transverse = (np.abs(V - np.float32(canal_y + 4)) < 4) & (np.abs(U - xs) < 38) & (phase > h * 0.3) & (phase < h * 0.7)
    cv.paint(transverse, CORTICAL, "bone")
    cv.paint(rc < 8, CSF, "spinal_canal")
    cv.paint(rc < 4.5, CORD, "spinal_canal")


def _ribs(cv: _Canvas, tor: _Torso, chest: bool, z_min: float) -> None:
    rng, (U, V, W) = cv.rng, cv.P
    pitch, thick, slope = rng.uniform(24, 30), rng.uniform(8, 11), rng.uniform(0.3, 0.5)
    phase = np.mod(W + np.float32(slope) * (V - np.float32(tor.y_sp)) - np.float32(rng.uniform(0, pitch)), np.float32(pitch))
    shell = np.abs(tor.depth - np.float32(tor.fat + 0.5 * tor.musc + 2)) < 3.5
    ring = shell & (phase < thick) & (np.abs(U) > 25) & (W > z_min)
    front = V > (0.5 * tor.b if chest else 0.12 * tor.b)
    cv.paint(ring & ~front, CORTICAL, "bone")
    if chest:
        cv.paint(ring & front & (np.abs(U) > 20), DISC, "body")  # costal cartilage


def _vessels(cv: _Canvas, tor: _Torso, z_top: float, z_bottom: float, ivc_top: float) -> None:
    rng, P = cv.rng, cv.P
    xa, ra = -rng.uniform(10, 20), rng.uniform(9, 14)
    f = _tube(P, [(xa, tor.y_sp + 28, z_top), (xa + rng.uniform(-4, 4), tor.y_sp + 26, z_bottom)], ra)
    cv.paint(f < 1, ARTERY, "aorta")
    xi = rng.uniform(18, 26)
    f = _ellipsoid(P, (xi, tor.y_sp + 32, 0), (rng.uniform(10, 14), rng.uniform(7, 10), None))
    cv.paint((f < 1) & (P[2] < ivc_top) & (P[2] > z_bottom), VEIN, "ivc")


def _organ_lesion(cv: _Canvas, organs: list[tuple[np.ndarray, float]], region: np.ndarray, r_range, necrotic=True) -> None:
    """A perturbed spherical mass centred in one of the organ masks (chosen by weight)."""
    rng = cv.rng
    w = np.array([wt for _, wt in organs], dtype=float)
    k = rng.choice(len(organs), p=w / w.sum())
    c = cv.pick(organs[k][0], fallback=region)
    r = rng.uniform(*r_range)
    N = np.clip(cv.field(6), -3, 3)
    f = _ellipsoid(cv.P, c, (r, r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2)))
    mass = (f < 1 + np.float32(0.15) * N) & region
    cv.paint(mass, TUMOR, "lesion")
    if necrotic and r > 13 and rng.random() < 0.5:
        cv.paint(mass & (f < 0.5), NECROSIS, "lesion")
    cv.paint(_nearest(cv, c), TUMOR, "lesion")


def _nearest(cv: _Canvas, c) -> tuple:
    """Index (as a tuple of 1-element arrays) of the voxel whose canonical coordinates are nearest c."""
    d = (cv.P[0] - np.float32(c[0])) ** 2 + (cv.P[1] - np.float32(c[1])) ** 2 + (cv.P[2] - np.float32(c[2])) ** 2
    i = np.unravel_index(int(np.argmin(d)), cv.shape)
    return tuple(np.array([j]) for j in i)


# --------------------------------------------------------------------------------------------------
# anatomy builders: each fills a canvas's tissue and label volumes


def _abdomen(cv: _Canvas, lesion: bool, table: bool) -> None:
    rng, P = cv.rng, cv.P
    _, V, W = P
    tor = _torso(cv, chest=False, table=table)
    ac, bc, y_sp = tor.ac, tor.bc, tor.y_sp
    cav = tor.cavity
    zL = rng.uniform(20, 50)
    zK = zL - rng.uniform(45, 65)
    N1, B, G = cv.field(25), cv.field(9), cv.field(14)

    # bowel loops fill the lower cavity, colon on both flanks
    z_bowel = zL - rng.uniform(15, 40)
    region = cav & (W < np.float32(z_bowel) + 15 * N1) & (V > y_sp + 10)
    loops = region & (np.abs(B) < rng.uniform(0.45, 0.65))
    lumen = loops & (np.abs(B) < 0.22)
    gas_thr = rng.uniform(0.6, 1.6)
    cv.paint(loops, GUT_WALL, "bowel")
    cv.paint(lumen & (G <= gas_thr), GUT_FLUID, "bowel")
    cv.paint(lumen & (G > gas_thr), GAS, "bowel")
    for s in (1, -1):
        x0 = s * rng.uniform(0.62, 0.75) * ac
        top, bottom = (x0, -0.05 * bc, z_bowel + rng.uniform(10, 40)), (x0 + s * rng.uniform(-8, 8), 0.0, -260)
        f = _tube(P, [top, bottom], rng.uniform(14, 21))
        colon = (f < 1) & cav
        cv.paint(colon, GUT_WALL, "bowel")
        cv.paint(colon & (f < 0.75) & (G > 0.2), GAS, "bowel")
        cv.paint(colon & (f < 0.75) & (G <= 0.2), GUT_FLUID, "bowel")

    # stomach (gas rises anteriorly in a supine patient)
    size = rng.uniform(0.7, 1.2)
    cs = (-0.32 * ac, 0.36 * bc, zL + rng.uniform(15, 35))
    rs = (0.3 * ac * size, 0.3 * bc * size, 45 * size)
    f = _ellipsoid(P, cs, rs, _rotation(0, 0, rng.uniform(-45, -15)))
    stomach = (f < 1 + 0.06 * N1) & cav
    cv.paint(stomach, GUT_WALL, "stomach")
    content = stomach & (f < 0.8)
    gas_level = cs[1] + rs[1] * rng.uniform(0.1, 0.8)
    cv.paint(content, GUT_FLUID, "stomach")
    cv.paint(content & (V > gas_level), GAS, "stomach")

    # liver (right lobe plus a left lobe reaching across the midline) with vessels
    rl = np.array([0.62 * ac, 0.8 * bc, 75.0]) * rng.uniform(0.85, 1.15, 3)
    cl = (0.33 * ac, 0.05 * bc, zL)
    fl = _ellipsoid(P, cl, rl, _rotation(rng.normal(0, 5), rng.normal(0, 6), rng.normal(-5, 8)))
    c_left = (-0.12 * ac, 0.45 * bc, zL + rng.uniform(10, 35))
    fll = _ellipsoid(P, c_left, (0.38 * ac * rng.uniform(0.6, 1.3), 0.28 * bc, 35 * rng.uniform(0.7, 1.2)))
    liver_f = np.minimum(fl, fll)
    liver = (liver_f < 1 + 0.07 * N1) & cav
    cv.paint(liver, LIVER, "liver")
    vessels = liver & (np.abs(B) < 0.09) & (fl < 0.85)
    cv.paint(vessels, HEPATIC_VESSEL, "liver")

    # spleen (size varies up to splenomegaly)
    ss = float(np.exp(rng.normal(0, 0.18)))
    c_sp = (-0.62 * ac, -0.28 * bc, zL + rng.uniform(0, 20))
    fsp = _ellipsoid(P, c_sp, (26 * ss, 45 * ss, 50 * ss), _rotation(0, 0, rng.uniform(30, 50)))
    spleen = (fsp < 1 + 0.06 * N1) & cav
    cv.paint(spleen, SPLEEN, "spleen")

    _back_muscles(cv, tor, psoas_top=zK + 20)

    # kidneys: cortex, medulla, sinus fat at the hilum
    kidney_f = {}
    for s, name in ((1, "kidney_right"), (-1, "kidney_left")):
        c = (s * rng.uniform(48, 62), y_sp + rng.uniform(4, 14), zK + (-12 if s > 0 else 0) + rng.normal(0, 6))
        r = (rng.uniform(21, 28), rng.uniform(19, 25), rng.uniform(44, 58))
        rot = _rotation(0, s * rng.uniform(8, 20), s * rng.uniform(20, 40))
        f = _ellipsoid(P, c, r, rot)
        x_loc = _local(P, c, rot)[0] * np.float32(s)
        kid = f < 1
        cv.paint(kid, KIDNEY_CORTEX, name)
        cv.paint(kid & (f < 0.72), KIDNEY_MEDULLA, name)
        cv.paint(kid & (f < 0.5) & (x_loc < 0), FAT, name)
        kidney_f[name] = f

    # pancreas: head by the duodenum, body across the aorta, tail to the splenic hilum
    rp = rng.uniform(9, 14)
    pts = [(rng.uniform(10, 25), y_sp + 50, zK + 18), (-15, y_sp + 62, zK + 28), (-0.6 * ac, y_sp + 42, zK + rng.uniform(35, 50))]
    f = _tube(P, pts, [rp * 1.3, rp, rp * 0.8])
    cv.paint((f < 1 + 0.1 * N1) & cav, PANCREAS, "pancreas")

    if rng.random() < 0.85:
        c_gb = (0.2 * ac, 0.38 * bc, zL - rng.uniform(25, 45))
        f = _ellipsoid(P, c_gb, (14 * rng.uniform(0.6, 1.2), 16, 28 * rng.uniform(0.6, 1.2)), _rotation(30, 0, 0))
        cv.paint((f < 1) & cav, BILE, "gallbladder")

    _vessels(cv, tor, z_top=300, z_bottom=-300, ivc_top=300)
    _spine(cv, tor)
    _ribs(cv, tor, chest=False, z_min=zL - rng.uniform(20, 45))

    if lesion:
        organs = [
            ((cv.label == LABELS["liver"]) & (fl < 0.8), 0.65),
            ((cv.label == LABELS["kidney_right"]) & (kidney_f["kidney_right"] < 0.8), 0.1),
            ((cv.label == LABELS["kidney_left"]) & (kidney_f["kidney_left"] < 0.8), 0.1),
            ((cv.label == LABELS["spleen"]) & (fsp < 0.8), 0.15),
        ]
        _organ_lesion(cv, organs, cav, (7, 22))


def _chest(cv: _Canvas, lesion: bool, table: bool) -> None:
    rng, P = cv.rng, cv.P
    U, V, W = P
    tor = _torso(cv, chest=True, table=table)
    ac, bc, y_sp = tor.ac, tor.bc, tor.y_sp
    cav = tor.cavity
    zD = rng.uniform(-120, -80)  # top of the right hemidiaphragm
    N1, B, B2 = cv.field(25), cv.field(14), cv.field(14)

    # breasts (half of the subjects) and pectoral muscles
    if rng.random() < 0.5:
        bs = rng.uniform(0.5, 1.2)
        for s in (1, -1):
            f = _ellipsoid(P, (s * 0.42 * tor.a, 0.82 * tor.b, zD + rng.uniform(20, 50)), (55 * bs, 38 * bs, 50 * bs))
            breast = (f < 1) & (cv.label == 0) & (V > 0)
            cv.paint(breast, FAT, "body")
            cv.paint(breast & (f < 0.8) & (N1 > 0.0), GLAND, "body")
    pect = (tor.depth > tor.fat) & (tor.depth < tor.fat + rng.uniform(14, 24))
    pect &= (V > 0.3 * tor.b) & (W > zD + 20) & (np.abs(U) > 15)
    cv.paint(pect, MUSCLE, "muscle")

    # hemidiaphragm domes; below them liver (right), stomach and spleen (left)
    def dome(s: int, z0: float) -> np.ndarray:
        r2 = ((U - np.float32(s * 0.45 * ac)) / np.float32(0.6 * ac)) ** 2 + (V / np.float32(0.9 * bc)) ** 2
        return np.float32(z0) + np.float32(40) * (1 - np.minimum(r2, np.float32(1.5)))

    dome_r, dome_l = dome(1, zD), dome(-1, zD - rng.uniform(5, 20))
    fl = _ellipsoid(P, (0.3 * ac, 0.0, zD - 45), np.array([0.68 * ac, 0.85 * bc, 90]) * rng.uniform(0.9, 1.1, 3))
    cv.paint((fl < 1) & cav & (W < dome_r - 3), LIVER, "liver")
    fsp = _ellipsoid(P, (-0.62 * ac, -0.3 * bc, zD - 50), (26, 45, 50), _rotation(0, 0, 40))
    cv.paint((fsp < 1) & cav & (W < dome_l - 3), SPLEEN, "spleen")
    fst = _ellipsoid(P, (-0.3 * ac, 0.3 * bc, zD - 45), (0.3 * ac, 0.32 * bc, 45))
    st = (fst < 1) & cav & (W < dome_l - 3)
    cv.paint(st, GUT_WALL, "stomach")
    cv.paint(st & (fst < 0.8) & (V > 0.3 * bc + rng.uniform(-10, 10)), GAS, "stomach")
    cv.paint(st & (fst < 0.8) & (V <= 0.3 * bc), GUT_FLUID, "stomach")

    # lungs fill each hemithorax above its dome, lateral to the mediastinum
    inner = tor.depth > tor.fat + tor.musc + 3
    lungs = {}
    for s, name, dm in ((1, "lung_right", dome_r), (-1, "lung_left", dome_l)):
        lung = inner & (np.float32(s) * U > 10 + 6 * N1 + 10 * (V > 0.45 * bc)) & (W > dm)
        cv.paint(lung, LUNG, name)
        lungs[name] = lung

    # heart with pericardial fat, myocardium and blood pool
    rh = np.array([rng.uniform(45, 56), rng.uniform(36, 46), rng.uniform(40, 50)])
    ch = (-0.18 * ac + rng.normal(0, 5), 0.2 * bc, zD + rng.uniform(35, 55))
    roth = _rotation(rng.uniform(-25, -10), 0, rng.uniform(-40, -20))
    fh = _ellipsoid(P, ch, rh, roth)
    cv.paint((fh < 1.12) & cav, FAT, "body")
    cv.paint((fh < 1) & cav, MYOCARDIUM, "heart")
    cv.paint((fh < 0.75) & cav, ARTERY, "heart")

    # great vessels, airways, oesophagus
    top = 400.0
    z_arch = ch[2] + rng.uniform(90, 120)
    xa = -0.15 * ac
    asc = (0.05 * ac, 0.12 * bc)
    ra = rng.uniform(11, 15)
    f = _tube(P, [(asc[0], asc[1], ch[2] + 20), (asc[0], asc[1], z_arch), (xa, y_sp + 30, z_arch), (xa, y_sp + 28, -top)], ra)
    cv.paint(f < 1, ARTERY, "aorta")
    f = _tube(P, [(-0.1 * ac, 0.25 * bc, ch[2] + 30), (-0.05 * ac, 0.05 * bc, ch[2] + 65)], 13)
    cv.paint(f < 1, ARTERY, "body")
    hila = [(s * 0.33 * ac, y_sp + 40, ch[2] + 55) for s in (1, -1)]
    for h in hila:
        f = _tube(P, [(-0.05 * ac, 0.05 * bc, ch[2] + 65), h], 8)
        cv.paint(f < 1, ARTERY, "body")
    f = _tube(P, [(0.2 * ac, 0.08 * bc, top), (0.2 * ac, 0.08 * bc, ch[2] + 20)], rng.uniform(8, 11))
    cv.paint(f < 1, VEIN, "body")
    f = _tube(P, [(0.15 * ac, y_sp + 32, ch[2] - 10), (0.15 * ac, y_sp + 32, -top)], rng.uniform(9, 12))
    cv.paint(f < 1, VEIN, "ivc")
    z_car = ch[2] + rng.uniform(60, 80)
    rt = rng.uniform(8, 10.5)
    f = _tube(P, [(0, y_sp + 45, top), (0, y_sp + 45, z_car)], rt)
    for h in hila:
        f = np.minimum(f, _tube(P, [(0, y_sp + 45, z_car), (h[0] * 1.15, y_sp + 42, z_car - 30)], rt * 0.65))
    cv.paint(f < 1, GUT_WALL, "airway")
    cv.paint(f < 0.7, GAS, "airway")
    f = _tube(P, [(-8, y_sp + 25, top), (-0.2 * ac, 0.15 * bc, zD - 20)], rng.uniform(6, 9))
    cv.paint((f < 1) & cav, GUT_WALL, "body")

    # pulmonary vessels, denser towards the hila
    near = np.minimum(*[_tube(P, [h, h], 1.0) for h in hila])
    width = np.float32(0.15) + np.float32(0.35) * np.exp(-near / np.float32(60))
    tree = (np.abs(B) < width) & (np.abs(B2) < width)  # intersections of two zero sheets: curved lines
    for name, lung in lungs.items():
        cv.paint(lung & (cv.label == LABELS[name]) & tree, LUNG_VESSEL, name)

    # bones: spine, ribs, sternum, scapulae
    _back_muscles(cv, tor, psoas_top=None)
    _spine(cv, tor)
    _ribs(cv, tor, chest=True, z_min=-1e9)
    fst = _ellipsoid(P, (0, tor.b - tor.fat - 12, 0), (rng.uniform(12, 16), rng.uniform(6, 8), None))
    cv.paint((fst < 1) & (W > zD - 20), CORTICAL, "bone")
    cv.paint((fst < 0.6) & (W > zD - 20), MARROW, "bone")
    scap = np.abs(tor.depth - np.float32(tor.fat + rng.uniform(14, 22))) < 3.5
    scap &= (V < -0.3 * tor.b) & (np.abs(U) > 45) & (np.abs(U) < 115) & (W > zD + rng.uniform(60, 90))
    cv.paint(scap, CORTICAL, "bone")

    if lesion:
        side = "lung_left" if rng.random() < 0.45 else "lung_right"
        c = cv.pick(lungs[side] & (cv.label == LABELS[side]), fallback=cav)
        r = rng.uniform(5, 15)
        f = _ellipsoid(P, c, (r, r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2)))
        nodule = (f < 1 + np.float32(0.3) * np.clip(B, -2, 2)) & cav
        cv.paint(nodule, TUMOR, "lesion")
        cv.paint(_nearest(cv, c), TUMOR, "lesion")


def _head(cv: _Canvas, lesion: bool) -> None:
    rng, P = cv.rng, cv.P
    U, _, W = P
    age = rng.random()  # atrophy: wider sulci and larger ventricles
    a, b, c = rng.uniform(68, 78), rng.uniform(88, 98), rng.uniform(92, 100)
    ch = (0.0, -5.0, -8.0)
    N1, S, B, F = cv.field(30), cv.field(9), cv.field(5), cv.field(12)
    fh = _ellipsoid(P, ch, (a, b, c))
    head = fh < 1 + np.float32(0.015) * N1
    cv.paint(head, MUSCLE, "body")
    cv.paint(head & (F > 1.1) & (W < -45), FAT, "body")
    scalp = head & (_ellipsoid(P, ch, (a - 4, b - 4, c - 4)) >= 1)
    cv.paint(scalp, FAT, "body")
    # sinuses and eyes
    for s in (1, -1):
        f = _ellipsoid(P, (s * 22, b - 45, -62), (14, 16, 18))
        cv.paint((f < 1) & head, GAS, "body")
        f = _ellipsoid(P, (s * rng.uniform(28, 34), b - rng.uniform(24, 30), -32 + rng.normal(0, 3)), (17, 17, 15))
        cv.paint((f < 1) & head, FAT, "body")
        re = rng.uniform(10.5, 12.5)
        f = _ellipsoid(P, (s * rng.uniform(28, 34), b - rng.uniform(24, 30), -32), (re, re, re))
        cv.paint((f < 1) & head, VITREOUS, "eye")
    # skull and intracranial volume
    ci = (0.0, -8.0, 12.0)
    ri = (a - 12, b - 13, c * 0.72)
    t = rng.uniform(5, 8)
    fsk = _ellipsoid(P, ci, (ri[0] + t, ri[1] + t, ri[2] + t))
    cv.paint(fsk < 1, CORTICAL, "bone")
    cv.paint((fsk < 1) & (_ellipsoid(P, ci, (ri[0] + t / 2, ri[1] + t / 2, ri[2] + t / 2)) > 1) & (t > 6.5), MARROW, "bone")
    icv = _ellipsoid(P, ci, ri) < 1
    cv.paint(icv, CSF, "csf")
    # cerebrum: sulci are the zero sheets of a smooth field, cut in from the surface; grey matter
    # lines them, white matter fills the gyral cores
    depth = _sphere_depth(P, ci, ri)
    csf_w = 1.0 + 2.5 * age
    sulc_depth = rng.uniform(14, 20)
    w_s = 0.1 + 0.12 * age
    gm_t = rng.uniform(7, 10)
    aS = np.abs(S)
    cereb_c = (0.0, -55.0, -38.0)
    fcb = _ellipsoid(P, cereb_c, (rng.uniform(44, 52), rng.uniform(28, 34), rng.uniform(20, 25)))
    midline = np.float32(rng.normal(0, 1.5))
    fissure = (np.abs(U - midline) < 1.5 + 2 * age) & (W > 22)
    cleft = (aS < w_s) & (depth < csf_w + sulc_depth)
    brain = icv & (depth > csf_w) & ~cleft & ~fissure & (fcb > 1.08) & (W > -48)
    cv.paint(brain, GM, "grey_matter")
    lining = (aS < w_s + 0.4) & (depth < csf_w + sulc_depth + gm_t)
    medial = (np.abs(U - midline) < 3 + gm_t) & (W > 22)
    wm = brain & (depth > csf_w + gm_t) & ~lining & ~medial
    cv.paint(wm, WM, "white_matter")
    # cerebellum and brainstem
    cv.paint(icv & (fcb < 1), GM, "cerebellum")
    cv.paint(icv & (fcb < 0.6) | (icv & (fcb < 0.9) & (np.abs(B) < 0.35)), WM, "cerebellum")
    f = _tube(P, [(0, -18, 5), (0, -28, -40), (0, -32, -200)], [13, 11, 9])
    cv.paint(f < 1, WM, "white_matter")
    # deep grey nuclei and ventricles
    v = 0.8 + 1.1 * age
    for s in (1, -1):
        for cc, rr in (((s * (12 + 3 * age), -8, 6), (9, 14, 9)), ((s * (20 + 2 * age), 10, 10), (7, 15, 10))):
            f = _ellipsoid(P, cc, rr, _rotation(0, 0, s * 10))
            cv.paint((f < 1) & brain, DEEP_GM, "deep_grey")
        horns = [(s * (9 + 3 * v), 32, 12), (s * (5 + 3 * v), 15, 20), (s * (6 + 5 * v), -25, 18), (s * (14 + 5 * v), -38, 5)]
        vent = _tube(P, horns, [3.5 * v, 6 * v, 6 * v, 4 * v])
        vent = np.minimum(vent, _tube(P, [(s * (14 + 5 * v), -38, 5), (s * (26 + 3 * v), -12, -18)], 2.5 * v))
        cv.paint(vent < 1, CSF, "ventricles")
    f = _tube(P, [(0, 6, 2), (0, -14, 0)], 1.2 + 1.5 * v)
    cv.paint(f < 1, CSF, "ventricles")

    if lesion:
        c = cv.pick((cv.label == LABELS["white_matter"]) & (W > 0), fallback=brain)
        r = rng.uniform(8, 22)
        f = _ellipsoid(P, c, (r, r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2)), _rotation(*rng.uniform(0, 90, 3)))
        grow = np.float32(0.15) * np.clip(B, -3, 3)
        tissue_ok = np.isin(cv.label, [LABELS["white_matter"], LABELS["grey_matter"], LABELS["deep_grey"]])
        edema = (f < rng.uniform(1.3, 1.8) + 2 * grow) & tissue_ok
        cv.paint(edema, EDEMA, "lesion")
        core = (f < 1 + grow) & icv
        cv.paint(core, TUMOR, "lesion")
        if r > 12:
            cv.paint(core & (f < 0.5), NECROSIS, "lesion")
        cv.paint(_nearest(cv, c), TUMOR, "lesion")


def _wholebody(cv: _Canvas, lesion: bool) -> None:
    """A compressed head-to-pelvis body for PET: only what FDG shows matters."""
    rng, P = cv.rng, cv.P
    _, V, W = P
    N1, B = cv.field(40), cv.field(14)
    a = cv.fit(rng.uniform(115, 150), 0)
    b = cv.fit(a * rng.uniform(0.64, 0.78), 1)
    fat = rng.uniform(6, 30) * a / 135
    z_sh = rng.uniform(45, 70)
    torso = _ellipsoid(P, (0, 0, 0), (a, b, None)) < 1 + np.float32(0.02) * N1
    torso &= W < z_sh
    cv.paint(torso, FAT, "body")
    inner_f = _ellipsoid(P, (0, 0, 0), (a - fat, b - fat, None))
    cv.paint(torso & (inner_f < 1), MUSCLE, "muscle")
    cav = torso & (_ellipsoid(P, (0, 0, 0), (a - fat - 10, b - fat - 10, None)) < 1)
    cv.paint(cav, FAT, "body")
    neck = _tube(P, [(0, -5, z_sh - 10), (0, -5, z_sh + 45)], rng.uniform(42, 50))
    cv.paint(neck < 1, MUSCLE, "body")
    ch = (0.0, 5.0, z_sh + 95 + rng.uniform(-10, 10))
    rh = (rng.uniform(62, 70), rng.uniform(78, 88), rng.uniform(62, 72))
    fhead = _ellipsoid(P, ch, rh)
    cv.paint(fhead < 1, MUSCLE, "body")
    fb = _ellipsoid(P, (ch[0], ch[1] - 5, ch[2] + 8), (rh[0] - 10, rh[1] - 12, rh[2] - 14))
    cv.paint(fb < 1, GM, "brain")
    cv.paint(fb < 0.8, WM, "brain")
    for s in (1, -1):
        f = _ellipsoid(P, (s * 14, ch[1] - 8, ch[2] + 2), (9, 14, 9))
        cv.paint(f < 1, DEEP_GM, "brain")

    y_sp = -b + fat + rng.uniform(40, 50)
    zH = z_sh - rng.uniform(60, 80)  # heart centre
    for s, name in ((1, "lung_right"), (-1, "lung_left")):
        f = _ellipsoid(P, (s * 0.45 * a, -0.05 * b, zH + 15), (0.42 * a, 0.75 * b, 70))
        cv.paint((f < 1) & cav, LUNG, name)
    rh = (rng.uniform(40, 50), rng.uniform(34, 42), rng.uniform(38, 46))
    fh = _ellipsoid(P, (-0.2 * a, 0.2 * b, zH), rh, _rotation(-15, 0, -30))
    cv.paint((fh < 1) & cav, MYOCARDIUM, "heart")
    cv.paint((fh < 0.65) & cav, ARTERY, "heart")
    zL = zH - rng.uniform(60, 75)
    fl = _ellipsoid(P, (0.35 * a, 0.0, zL), np.array([0.6 * a, 0.72 * b, 55]) * rng.uniform(0.85, 1.15, 3))
    cv.paint((fl < 1 + np.float32(0.06) * N1) & cav, LIVER, "liver")
    ss = float(np.exp(rng.normal(0, 0.2)))
    fs = _ellipsoid(P, (-0.6 * a, -0.3 * b, zL + 10), (22 * ss, 38 * ss, 40 * ss))
    cv.paint((fs < 1) & cav, SPLEEN, "spleen")
    zK = zL - rng.uniform(45, 60)
    for s, name in ((1, "kidney_right"), (-1, "kidney_left")):
        c = (s * rng.uniform(48, 60), y_sp + 12, zK + (-10 if s > 0 else 0))
        f = _ellipsoid(P, c, (rng.uniform(20, 26), rng.uniform(18, 23), rng.uniform(40, 52)), _rotation(0, s * 12, s * 30))
        cv.paint((f < 1) & cav, KIDNEY_CORTEX, name)
        cv.paint((f < 0.45) & cav, KIDNEY_MEDULLA, name)  # urine in the collecting system
    z_bowel = zK - 15
    loops = cav & (W < z_bowel) & (np.abs(B) < 0.5) & (V > y_sp + 10)
    cv.paint(loops, GUT_WALL, "bowel")
    cv.paint(loops & (np.abs(B) < 0.2), GUT_FLUID, "bowel")
    rbl = rng.uniform(20, 40)
    fbl = _ellipsoid(P, (0, 0.15 * b, -200 + rng.uniform(0, 20)), (rbl * 1.2, rbl, rbl * 0.9))
    cv.paint((fbl < 1) & cav, URINE, "bladder")
    f = _tube(P, [(-15, y_sp + 28, zH + 60), (-15, y_sp + 28, -200)], rng.uniform(9, 13))
    cv.paint((f < 1) & torso, ARTERY, "aorta")
    fv = _ellipsoid(P, (0, y_sp, 0), (22, 17, None))
    cv.paint((fv < 1) & torso, MARROW, "bone")
    f = _ellipsoid(P, (0, y_sp - 25, 0), (7, 7, None))
    cv.paint((f < 1) & (W < z_sh + 40), CORD, "bone")
    for s in (1, -1):  # iliac bones
        f = _ellipsoid(P, (s * 0.6 * a, y_sp + 10, -185), (30, 45, 35), _rotation(0, 0, s * 30))
        cv.paint((f < 1) & torso & (f > 0.6), CORTICAL, "bone")
        cv.paint((f < 0.6) & torso, MARROW, "bone")

    if lesion:
        body = cv.label > 0
        sites = [
            (cv.label == LABELS["liver"], 0.3), (np.isin(cv.label, [LABELS["lung_right"], LABELS["lung_left"]]), 0.3),
            (cv.label == LABELS["bone"], 0.15), ((cv.label == LABELS["body"]) & cav, 0.25),
        ]  # fmt: skip
        w = np.array([s[1] for s in sites])
        for _ in range(int(rng.integers(1, 5))):
            c = cv.pick(sites[rng.choice(len(sites), p=w / w.sum())][0], fallback=body)
            r = rng.uniform(6, 15)
            f = _ellipsoid(P, c, (r, r, r))
            cv.paint((f < 1) & body, TUMOR, "lesion")
            cv.paint(_nearest(cv, c), TUMOR, "lesion")


# --------------------------------------------------------------------------------------------------
# modality renderers: tissue volume -> image


def _lut(table: dict[int, tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    lut = np.zeros(N_TISSUES, np.float32)
    for t in range(N_TISSUES):
        m, sd = table.get(t, (0.0, 0.0))
        lut[t] = m + sd * rng.standard_normal()
    return lut


def _texture(cv: _Canvas, amps: dict[int, float], scale_mm: float) -> np.ndarray:
    amp = np.zeros(N_TISSUES, np.float32)
    for t, v in amps.items():
        amp[t] = v
    return amp[cv.tissue] * cv.field(scale_mm)


def _render_ct(cv: _Canvas) -> np.ndarray:
    rng = cv.rng
    enhance = 0.0 if rng.random() < 0.5 else rng.uniform(0.6, 1.0)
    lut = _lut(_CT_HU, rng)
    for t, v in _CT_ENHANCE.items():
        lut[t] += enhance * v
    hu = lut[cv.tissue] + _texture(cv, _CT_TEXTURE, 12.0)
    hu[cv.tissue == LUNG] += np.float32(rng.uniform(20, 60)) * np.clip(-cv.P[1] / np.float32(120), 0, 1)[cv.tissue == LUNG]
    hu = ndimage.gaussian_filter(hu, 0.55 * 5.0 / np.asarray(cv.grid.spacing), truncate=3.0)
    noise = ndimage.gaussian_filter(rng.standard_normal(cv.shape).astype(np.float32), 0.6)
    noise *= np.float32(rng.uniform(8, 25)) / max(float(noise.std()), 1e-6)
    hu = hu + noise
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _render_mri(cv: _Canvas, table: dict, tex: dict) -> np.ndarray:
    rng = cv.rng
    lut = _lut(table, rng)
    s = lut[cv.tissue] * (1 + _texture(cv, tex, 10.0))
    s = np.maximum(ndimage.gaussian_filter(s, 0.5, truncate=3.0), 0)
    # smooth multiplicative bias field: a random smooth field plus a linear coil gradient
    X, Y, Z = (w / np.float32(150) for w in cv.world)
    g = rng.normal(0, 0.15, 3).astype(np.float32)
    bias = np.exp(np.float32(rng.uniform(0.1, 0.25)) * cv.field(120) + g[0] * X + g[1] * Y + g[2] * Z)
    s = s * bias
    ref = float(np.median(s[cv.label > 0])) if np.any(cv.label > 0) else 1.0
    sigma = np.float32(rng.uniform(0.02, 0.05) * ref)
    n1 = rng.standard_normal(cv.shape).astype(np.float32)
    n2 = rng.standard_normal(cv.shape).astype(np.float32)
    mag = np.sqrt((s + sigma * n1) ** 2 + (sigma * n2) ** 2)  # Rician magnitude
    return (mag * np.float32(rng.uniform(300, 1500))).astype(np.float32)


def _render_pet(cv: _Canvas) -> np.ndarray:
    rng = cv.rng
    lut = np.maximum(_lut(_SUV, rng), 0)
    lut[MYOCARDIUM] = float(np.exp(rng.uniform(np.log(1.2), np.log(12.0))))  # fasting state varies a lot
    lut[URINE] = rng.uniform(8, 45)
    lut[KIDNEY_MEDULLA] = lut[URINE] * rng.uniform(0.2, 0.6)
    lut[TUMOR] = rng.uniform(4, 18)
    act = lut[cv.tissue] * np.maximum(1 + _texture(cv, {LIVER: 0.08, GUT_WALL: 0.5, MUSCLE: 0.15, MARROW: 0.2, GM: 0.1}, 16.0), 0)
    fwhm = rng.uniform(9, 13)  # effective PSF including reconstruction, mm
    act = ndimage.gaussian_filter(act, fwhm / 2.355 / np.asarray(cv.grid.spacing), truncate=3.0)
    k = rng.uniform(4, 14)  # counts per SUV per voxel: the noise level
    counts = rng.poisson(np.maximum(act, 0) * k).astype(np.float32)
    pet = ndimage.gaussian_filter(counts / np.float32(k), 0.6, truncate=3.0)
    return np.maximum(pet, 0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# public API


def _domain_index(domain: str) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"unknown phantom domain {domain!r}; known: {', '.join(DOMAINS)}")
    return list(DOMAINS).index(domain)


def _rng(domain: str, index: int, seed: int) -> np.random.Generator:
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    return np.random.default_rng([int(seed), _domain_index(domain), int(index)])


def subject_has_lesion(domain: str, index: int, seed: int = 0) -> bool:
    """Class label of subject ``index``: the first draw of its generator, so it is cheap to compute."""
    return bool(_rng(domain, index, seed).random() < LESION_RATE[domain])


def _nifti(data: np.ndarray, grid: Grid, descrip: str) -> nib.Nifti1Image:
    affine = grid.affine()
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)  # scanner anatomical
    img.set_sform(affine, code=1)
    img.header["descrip"] = descrip.encode()[:79]
    return img


def generate_subject(domain: str, index: int, seed: int = 0) -> tuple[nib.Nifti1Image, nib.Nifti1Image, bool]:
    """Subject ``index`` of ``domain``: (image, label volume, lesion present). Depends only on (seed, domain, index)."""
    rng = _rng(domain, index, seed)
    lesion = bool(rng.random() < LESION_RATE[domain])
    grid = GRIDS[domain]
    if domain in ("ct_abdomen", "mri_t2_abdomen", "ct_chest"):
        cv = _Canvas(grid, rng, rot_deg=(4, 3, 6), shift_mm=(12, 10, 15), scale=(0.88, 1.12))
        ct = DOMAINS[domain] == "ct"
        (_chest if domain == "ct_chest" else _abdomen)(cv, lesion, table=ct)
        image = _render_ct(cv) if ct else _render_mri(cv, _T2, _T2_TEXTURE)
    elif domain == "mri_t1_brain":
        cv = _Canvas(grid, rng, rot_deg=(15, 8, 10), shift_mm=(15, 20, 15), scale=(0.88, 1.12))  # revision 2
        _head(cv, lesion)
        image = _render_mri(cv, _T1, _T1_TEXTURE)
    else:
        cv = _Canvas(grid, rng, rot_deg=(3, 3, 5), shift_mm=(10, 10, 12), scale=(0.9, 1.1))
        _wholebody(cv, lesion)
        image = _render_pet(cv)
    descrip = f"bayescale phantom {domain} seed={seed} index={index}" + (f" rev={REVISION[domain]}" if REVISION[domain] > 1 else "")
    return _nifti(image, grid, descrip), _nifti(cv.label, grid, descrip + " label"), lesion


def subject_paths(out_dir: str | os.PathLike, domain: str, index: int) -> tuple[Path, Path]:
    """(image path, label path) of a subject under out_dir."""
    folder = Path(out_dir) / domain
    stem = f"{domain}_{index:04d}"
    return folder / f"{stem}.nii.gz", folder / f"{stem}_label.nii.gz"


def _save_atomic(img: nib.Nifti1Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.{os.getpid()}.tmp.nii.gz")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_text_atomic(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _recorded(path: Path) -> tuple[str, int, int, int] | None:
    """(domain, seed, index, revision) written in a phantom file's header, or None if unreadable."""
    try:
        raw = nib.load(path).header["descrip"].tobytes().split(b"\0")[0].decode(errors="replace")
    except Exception:
        return None
    m = _DESCRIP_RE.search(raw)
    return (m["domain"], int(m["seed"]), int(m["index"]), int(m["rev"] or 1)) if m else None


def subject_is_current(out_dir: str | os.PathLike, domain: str, index: int, seed: int) -> bool:
    """Whether subject ``index`` of ``domain`` is on disk, both files written by this generator revision."""
    want = (domain, seed, index, REVISION[domain])
    return all(p.exists() and _recorded(p) == want for p in subject_paths(out_dir, domain, index))


def write_phantoms(
    out_dir: str | os.PathLike,
    per_domain: int = 20,
    seed: int = 0,
    domains: Iterable[str] | None = None,
    progress: Callable[[str, int, bool], None] | None = None,
) -> dict[str, list[Path]]:
    """Write ``per_domain`` subjects of each domain under ``out_dir``; return the image paths per domain.

    Layout: ``out_dir/<domain>/<domain>_NNNN.nii.gz`` (image), ``..._NNNN_label.nii.gz`` (labels) and
    ``out_dir/<domain>/labels.csv`` (``subject,lesion`` for every image in the folder). Files are written
    to a temporary name and renamed, so an interrupted run leaves no truncated volume; a subject whose
    two files exist and whose header records the same (domain, seed, index) and the domain's current
    :data:`REVISION` is skipped, so a run can be resumed or extended (and an older revision is
    rewritten). ``progress(domain, index, written)`` is called after each subject.
    """
    out = Path(out_dir)
    names = list(DOMAINS) if domains is None else list(domains)
    for d in names:
        _domain_index(d)
    if per_domain < 0:
        raise ValueError(f"per_domain must be >= 0, got {per_domain}")
    result: dict[str, list[Path]] = {}
    for d in names:
        (out / d).mkdir(parents=True, exist_ok=True)
        paths = []
        for k in range(per_domain):
            img_path, lab_path = subject_paths(out, d, k)
            done = subject_is_current(out, d, k, seed)
            if not done:
                img, lab, _ = generate_subject(d, k, seed)
                _save_atomic(lab, lab_path)
                _save_atomic(img, img_path)  # the image last: its presence marks a complete subject
            paths.append(img_path)
            if progress is not None:
                progress(d, k, not done)
        rows = ["subject,lesion"]
        for p in sorted((out / d).glob(f"{d}_[0-9][0-9][0-9][0-9].nii.gz")):
            m = _FILE_RE.match(p.name)
            if not m or m["domain"] != d:
                continue
            k = int(m["index"])
            rec = _recorded(p) if k >= per_domain else None
            rows.append(f"{p.name[: -len('.nii.gz')]},{int(subject_has_lesion(d, k, rec[1] if rec else seed))}")
        _write_text_atomic("\n".join(rows) + "\n", out / d / "labels.csv")
        result[d] = paths
    return result


def read_lesion_labels(out_dir: str | os.PathLike, domain: str) -> dict[str, bool]:
    """``labels.csv`` of a domain folder as {subject: lesion}."""
    with open(Path(out_dir) / domain / "labels.csv", newline="") as fh:
        return {row["subject"]: row["lesion"] == "1" for row in csv.DictReader(fh)}


def write_manifest(out_dir: str | os.PathLike, path: str | os.PathLike, domains: Iterable[str] | None = None) -> Path:
    """Write a TOML manifest of the phantom domains under out_dir (globs relative to ``root``)."""
    out = Path(out_dir).resolve()
    names = list(DOMAINS) if domains is None else list(domains)
    lines = ["# phantom domains written by trainers.phantoms", f'root = "{out.as_posix()}"', ""]
    for d in names:
        grid = GRIDS[d]
        pattern = f"{d}/{d}_[0-9][0-9][0-9][0-9]"
        lines += [
            "[[domains]]",
            f'name = "{d}"',
            f'modality = "{DOMAINS[d]}"',
            f'glob = "{pattern}.nii.gz"',
            f'label_glob = "{pattern}_label.nii.gz"',
            f'labels_csv = "{d}/labels.csv"',
            f"spacing = [{', '.join(f'{s:g}' for s in grid.spacing)}]",
            f"shape = [{', '.join(str(n) for n in grid.shape)}]",
            "",
        ]
    lines.append("[labels]")
    lines += [f"{k} = {v}" for k, v in LABELS.items()]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomic("\n".join(lines) + "\n", p)
    return p

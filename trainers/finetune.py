"""Downstream fine-tuning of pretrained MAE encoders: segmentation (UNETR) and classification (ViT).

``bayescale finetune CONFIG.toml --encoder RUN_ID|PATH.pt|scratch --target DOMAIN --task
segmentation|classification [--seed N]`` is :func:`run_finetune`. The config (see
``data/configs/finetune.toml``) points at the pretraining config (encoder architecture, crop,
spacing) and at a manifest whose domains carry labels (``label`` globs and ``labels_csv``, see
:mod:`trainers.domains`).

The fixed recipe
----------------
* **Subjects.** The labelled images of the target domain, sorted by name: the first
  ``train_subjects`` are the fine-tuning set, the next ``test_subjects`` the fixed test split
  (disjoint, the same for every encoder and seed; a task table may set its own sizes). The shipped
  config uses fresh phantom subjects 60..159 (written by
  :func:`trainers.downstream_data.write_downstream_phantoms`), which no pretraining run saw: the
  pretraining phantoms are subjects 0..59. Segmentation fine-tunes on 16 and tests on 24;
  classification, whose test pass is cheap, fine-tunes on 24 and tests on 64.
* **Preprocessing** is the pretraining's (:func:`trainers.domains.preprocess_transform`: RAS, the
  pretraining spacing, the domain's intensity window); label volumes go through the same chain
  with nearest-neighbour resampling. Crops are the pretraining crop (32^3), which the encoder's
  fixed sin-cos position embeddings were built for.
* **Segmentation**: a UNETR (:class:`EncoderUNETR`) whose ViT is the MAE encoder. MONAI's
  ``UNETR`` fixes a 16^3 patch and 12 layers (skips from layers 3, 6, 9), which the 8^3-patch,
  3-layer MAE encoder does not have, so this is the same design built from MONAI's UNETR blocks
  (``UnetrBasicBlock``, ``UnetrPrUpBlock``, ``UnetrUpBlock``, ``UnetOutBlock``) for the encoder's
  patch size and depth: log2(patch) up-sampling stages, skips from evenly spaced layers. Classes:
  background plus the config's ``structures`` (each a set of label ids; the rest is background).
  Training: 32^3 crops of image and label whose centres are drawn from every class equally often
  (MONAI ``RandCropByLabelClassesd``; ``crops = "random"`` for uniform positions), DiceCE loss,
  AdamW with linear warm-up and cosine decay (the pretraining schedule), ``steps`` steps of
  ``batch_size`` crops. Test: MONAI
  sliding-window inference over each whole preprocessed test volume, argmax, ``DiceMetric`` per
  structure (a structure absent from a subject's ground truth is skipped for that subject), mean
  over subjects, and the mean over structures.
* **Classification** (the per-subject class label of ``labels_csv``, e.g. lesion present): the
  encoder (MONAI ``ViT``: patch embedding, blocks and final norm are the MAE encoder's) and a
  linear one-logit head (:class:`EncoderClassifier`). A subject is the fixed sliding-window grid
  of 32^3 windows covering its volume; the final token features of all its windows are
  max-pooled (a lesion anywhere) and the head gives the logit. Training: BCE loss, same optimiser
  and schedule, ``batch_size`` subjects per step (``flips = true`` adds random flips). Test: AUROC
  (MONAI ``compute_roc_auc``) of the subject scores, plus accuracy at 0.5.
* **Seeds.** ``seed`` fixes the initial weights of everything the checkpoint does not provide (the
  UNETR decoder, the head, the whole encoder for ``scratch``) and the crops and batches; the same
  seed gives every encoder the same decoder initialisation and the same batches (common random
  numbers), so scratch and pretrained runs differ only in the encoder's weights. Torch runs with
  deterministic algorithms and a fixed thread count: a run is reproducible on a given CPU.

Encoder checkpoints are :mod:`trainers.checkpoint` files (read with ``weights_only=True``); one
whose architecture (encoder sizes or crop) differs from the pretraining config's, or that lacks an
encoder tensor, is a one-line InputError naming the file before any data is read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bayescale.errors import InputError
from trainers.config import DEVICES, TrainConfig, _Table, load_config, read_toml

RESULT_FORMAT = "bayescale.trainers.finetune/1"
TASKS = ("segmentation", "classification")
ENCODER_FIELDS = ("patch_size", "hidden_size", "mlp_dim", "num_layers", "num_heads")

# ---------------------------------------------------------------------------
# the config


@dataclass(frozen=True)
class TaskRecipe:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_fraction: float
    min_lr_fraction: float
    encoder_lr_scale: float  # the encoder's learning rate is lr * encoder_lr_scale
    overlap: float  # sliding windows: fraction of the crop two neighbouring windows share
    sw_batch_size: int  # windows per forward pass at test time
    train_subjects: int  # the first train_subjects labelled images (sorted) are fine-tuned on ...
    test_subjects: int  # ... the next test_subjects are the fixed test split


@dataclass(frozen=True)
class SegmentationRecipe(TaskRecipe):
    feature_size: int = 8
    structures: tuple[tuple[str, tuple[int, ...]], ...] = ()
    crops: str = "balanced"  # balanced (centres drawn per class, MONAI RandCropByLabelClassesd) | random


@dataclass(frozen=True)
class ClassificationRecipe(TaskRecipe):
    pooling: str = "max"  # max | mean over a subject's windows
    flips: bool = False  # random flips of the training windows (augmentation)


@dataclass(frozen=True)
class DownstreamPhantoms:
    out: Path
    domains: tuple[str, ...]
    first: int
    count: int
    seed: int


@dataclass(frozen=True)
class FinetuneConfig:
    path: Path
    description: str
    pretraining: TrainConfig
    manifest: Path
    cache_dir: Path | None
    records: Path | None
    phantoms: DownstreamPhantoms | None
    device: str
    threads: int
    segmentation: SegmentationRecipe
    classification: ClassificationRecipe

    def recipe(self, task: str) -> TaskRecipe:
        return self.segmentation if task == "segmentation" else self.classification

    def recipe_dict(self, task: str) -> dict:
        """What fixes a fine-tune's result besides encoder, target and seed (stored in results, hashed)."""
        data = self.pretraining.data
        r = asdict(self.recipe(task))
        if "structures" in r:
            r["structures"] = {name: list(ids) for name, ids in self.segmentation.structures}
        return {
            "task": task,
            "crop": list(data.crop),
            "spacing": list(data.spacing),
            "encoder": {k: getattr(self.pretraining.model, k) for k in ENCODER_FIELDS},
            **r,
        }

    def recipe_hash(self, task: str) -> str:
        return hashlib.sha256(json.dumps(self.recipe_dict(task), sort_keys=True).encode()).hexdigest()[:16]


_DEFAULTS = {
    "segmentation": dict(steps=600, batch_size=2, lr=3e-3, weight_decay=0.01, warmup_fraction=0.1,
                         min_lr_fraction=0.05, encoder_lr_scale=1.0, overlap=0.25, sw_batch_size=4),
    "classification": dict(steps=120, batch_size=4, lr=1e-3, weight_decay=0.01, warmup_fraction=0.1,
                           min_lr_fraction=0.05, encoder_lr_scale=1.0, overlap=0.0, sw_batch_size=8),
}


def _recipe(t: _Table, task: str, where: str, train_subjects: int, test_subjects: int):
    d = _DEFAULTS[task]
    common = dict(
        train_subjects=t.int("train_subjects", train_subjects, minimum=1),
        test_subjects=t.int("test_subjects", test_subjects, minimum=2),
        steps=t.int("steps", d["steps"], minimum=1),
        batch_size=t.int("batch_size", d["batch_size"], minimum=1),
        lr=t.float("lr", d["lr"], positive=True),
        weight_decay=t.float("weight_decay", d["weight_decay"], minimum=0.0),
        warmup_fraction=t.float("warmup_fraction", d["warmup_fraction"], minimum=0.0, maximum=1.0),
        min_lr_fraction=t.float("min_lr_fraction", d["min_lr_fraction"], minimum=0.0, maximum=1.0),
        encoder_lr_scale=t.float("encoder_lr_scale", d["encoder_lr_scale"], minimum=0.0),
        overlap=t.float("overlap", d["overlap"], minimum=0.0, maximum=0.9),
        sw_batch_size=t.int("sw_batch_size", d["sw_batch_size"], minimum=1),
    )
    if task == "classification":
        recipe = ClassificationRecipe(**common, pooling=t.str("pooling", "max", choices=("max", "mean")),
                                      flips=t.bool("flips", False))
        t.done()
        return recipe
    feature_size = t.int("feature_size", 8, minimum=1)
    raw = t.raw("structures", None)
    if not isinstance(raw, dict) or not raw:
        raise t.fail("structures", "must be a table of structure = [label ids], e.g. structures = { liver = [5], kidneys = [7, 8] }")
    structures, seen = [], {}
    for name, ids in raw.items():
        if isinstance(ids, int) and not isinstance(ids, bool):
            ids = [ids]
        if (not isinstance(ids, list) or not ids
                or any(isinstance(i, bool) or not isinstance(i, int) or not 0 < i < 32768 for i in ids)):
            raise t.fail("structures", f"gives {name} = {ids!r}; expected a list of label ids between 1 and 32767")
        for i in ids:
            if i in seen:
                raise t.fail("structures", f"gives label id {i} to both {seen[i]} and {name}")
            seen[i] = name
        structures.append((str(name), tuple(int(i) for i in ids)))
    recipe = SegmentationRecipe(**common, feature_size=feature_size, structures=tuple(structures),
                                crops=t.str("crops", "balanced", choices=("balanced", "random")))
    t.done()
    return recipe


def load_finetune_config(path: str | Path) -> FinetuneConfig:
    """Read and check a fine-tuning config (one-line InputError naming the file and key)."""
    path = Path(path)
    where = str(path)
    raw = read_toml(path, "fine-tuning config")
    base = path.resolve().parent
    top = _Table(raw, where)
    description = top.str("description", "")
    pre_path = _resolved(top.path("pretraining", base, required=True))
    records = _resolved(top.path("records", base))
    if not top.has("finetune"):
        raise InputError(f"{where}: no [finetune] section (train_subjects, test_subjects); is this a fine-tuning config?")
    pretraining = load_config(pre_path)

    phantoms = None
    if top.has("phantoms"):
        t = top.table("phantoms")
        domains = t.raw("domains", None)
        if not isinstance(domains, list) or not domains or any(not isinstance(x, str) for x in domains):
            raise t.fail("domains", f"is {domains!r}; expected a list of phantom domain names")
        phantoms = DownstreamPhantoms(
            out=_resolved(t.path("out", base, required=True)),
            domains=tuple(domains),
            first=t.int("first", 60, minimum=0),
            count=t.int("count", 40, minimum=2),
            seed=t.int("seed", pretraining.phantoms.seed if pretraining.phantoms else 0, minimum=0),
        )
        t.done()

    if not top.has("data"):
        raise InputError(f"{where}: no [data] section (it names the manifest of the labelled domains)")
    t = top.table("data")
    manifest = _resolved(t.path("manifest", base, required=True))
    cache_dir = _resolved(t.path("cache_dir", base))
    t.done()

    t = top.table("finetune")
    train_subjects = t.int("train_subjects", 16, minimum=1)
    test_subjects = t.int("test_subjects", 24, minimum=2)
    device = t.str("device", "cpu", choices=DEVICES)
    threads = t.int("threads", 1, minimum=1)
    t.done()

    segmentation = _recipe(top.table("segmentation"), "segmentation", where, train_subjects, test_subjects)
    classification = _recipe(top.table("classification"), "classification", where, train_subjects, test_subjects)
    top.done()
    _check_architecture(pretraining, where)
    return FinetuneConfig(path=path, description=description, pretraining=pretraining, manifest=manifest,
                          cache_dir=cache_dir, records=records, phantoms=phantoms, device=device, threads=threads,
                          segmentation=segmentation, classification=classification)


def _resolved(path: Path | None) -> Path | None:
    return None if path is None else path.resolve()


def _check_architecture(pre: TrainConfig, where: str) -> None:
    p = pre.model.patch_size
    stages = int(round(math.log2(p))) if p > 0 else 0
    if 2 ** stages != p or stages < 2:
        raise InputError(f"{where}: the pretraining model's patch_size {p} must be a power of two >= 4 for the UNETR decoder")
    if pre.model.num_layers < stages - 1:
        raise InputError(f"{where}: the pretraining model has {pre.model.num_layers} layers; the UNETR decoder for patch {p} needs >= {stages - 1}")


# ---------------------------------------------------------------------------
# encoders


@dataclass
class Encoder:
    """Where a fine-tune's encoder weights come from: ``scratch`` (none) or a checkpoint file."""

    name: str  # "scratch", or the checkpoint's run id (its file stem if it records none)
    path: Path | None = None
    state: dict | None = None  # the MAE encoder tensors the ViT takes, by their MAE names
    sha256: str | None = None
    unused: tuple[str, ...] = ()  # MAE encoder tensors the ViT has no place for (its class token)

    @property
    def scratch(self) -> bool:
        return self.path is None

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.path) if self.path else None, "sha256": self.sha256}


def encoder_path(text: str, records: Path | None, where: str = "--encoder") -> Path | None:
    """``scratch`` -> None; a path (``.pt`` or with a slash) as is; a run id -> ``records/<id>.pt``."""
    text = text.strip()
    if text == "scratch":
        return None
    if text.endswith(".pt") or "/" in text or os.sep in text:
        return Path(text)
    if records is None:
        raise InputError(f"{where} {text}: a run id needs --records DIR (the records folder of the pretraining runs), or give the checkpoint's path")
    from trainers.checkpoint import checkpoint_path

    return checkpoint_path(Path(records), text)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _vit_encoder_keys(config: FinetuneConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the encoder tensors of MONAI's ViT in the config's architecture."""
    model = _vit(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def mae_key(vit_key: str, num_layers: int) -> str:
    """The MaskedAutoEncoderViT name of a ViT encoder tensor: the MAE's final LayerNorm is blocks[num_layers]."""
    if vit_key.startswith("norm."):
        return f"blocks.{num_layers}.{vit_key[len('norm.'):]}"
    return vit_key


def load_encoder(text: str, config: FinetuneConfig, records: Path | None = None) -> Encoder:
    """Resolve ``--encoder`` and read its checkpoint; a foreign architecture is a one-line InputError naming the file."""
    from trainers.checkpoint import load_checkpoint

    path = encoder_path(text, records if records is not None else config.records)
    if path is None:
        return Encoder(name="scratch")
    payload = load_checkpoint(path)
    found, expected = payload["model_config"], config.pretraining.model
    for f in ENCODER_FIELDS:
        if getattr(found, f) != getattr(expected, f):
            raise InputError(
                f"{path}: encoder from a different architecture: {f} = {getattr(found, f)}, but {config.pretraining.path} "
                f"has {getattr(expected, f)}"
            )
    crop = [int(c) for c in payload["crop"]] if isinstance(payload["crop"], (list, tuple)) else payload["crop"]
    if crop != list(config.pretraining.data.crop):
        raise InputError(f"{path}: encoder built for crop {crop}, but {config.pretraining.path} crops {list(config.pretraining.data.crop)} "
                         f"(the position embeddings depend on it)")
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: checkpoint state_dict is not a dict of tensors")
    out = {}
    L = expected.num_layers
    for key, shape in _vit_encoder_keys(config).items():
        source = mae_key(key, L)
        tensor = state.get(source)
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{path}: encoder tensor {source!r} is missing from the checkpoint (needed for {key!r})")
        if tuple(tensor.shape) != shape:
            raise InputError(f"{path}: encoder tensor {source!r} has shape {tuple(tensor.shape)}, expected {shape}")
        if not torch.isfinite(tensor).all():
            raise InputError(f"{path}: encoder tensor {source!r} holds NaN or infinite values")
        out[source] = tensor
    run = payload.get("run") if isinstance(payload.get("run"), str) else path.stem
    unused = tuple(sorted(k for k in state if k not in out and (k == "cls_token" or k.startswith(("patch_embedding.", "blocks.")))))
    return Encoder(name=run, path=path, state=out, sha256=file_sha256(path), unused=unused)


# ---------------------------------------------------------------------------
# models


def _vit(config: FinetuneConfig):
    from monai.networks.nets import ViT

    m = config.pretraining.model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")
        return ViT(in_channels=1, img_size=tuple(config.pretraining.data.crop), patch_size=m.patch_size,
                   hidden_size=m.hidden_size, mlp_dim=m.mlp_dim, num_layers=m.num_layers, num_heads=m.num_heads,
                   proj_type="conv", pos_embed_type="sincos", classification=False, qkv_bias=False,
                   spatial_dims=3)


class EncoderUNETR(torch.nn.Module):
    """UNETR (Hatamizadeh et al. 2022) for a ViT of any power-of-two patch size and depth.

    ``vit`` is MONAI's ViT (sin-cos position embeddings, as in the MAE). With patch ``2^u`` the
    decoder has ``u`` up-sampling stages; skips come from the input (``encoder1``) and from the
    hidden states of ``u - 1`` evenly spaced layers (layers 1 and 2 of 3 for the 8^3-patch MAE),
    each brought to its stage's resolution by ``UnetrPrUpBlock``. For patch 16 and 12 layers this is
    MONAI's ``UNETR`` (skips from layers 3, 6, 9 instead of 4, 7, 10).
    """

    def __init__(self, config: FinetuneConfig, out_channels: int, feature_size: int):
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock

        super().__init__()
        m = config.pretraining.model
        crop = tuple(config.pretraining.data.crop)
        u = int(round(math.log2(m.patch_size)))
        f = feature_size
        self.vit = _vit(config)
        self.hidden_size = m.hidden_size
        self.feat_size = tuple(c // m.patch_size for c in crop)
        self.taps = [int(round((i + 1) * m.num_layers / u)) - 1 for i in range(u - 1)]
        self.encoder1 = UnetrBasicBlock(spatial_dims=3, in_channels=1, out_channels=f, kernel_size=3, stride=1,
                                        norm_name="instance", res_block=True)
        # skip i (from layer taps[i]) at resolution feat * 2^(u-1-i) with f * 2^(i+1) channels
        self.skips = torch.nn.ModuleList(
            UnetrPrUpBlock(spatial_dims=3, in_channels=m.hidden_size, out_channels=f * 2 ** (i + 1), num_layer=u - 2 - i,
                           kernel_size=3, stride=1, upsample_kernel_size=2, norm_name="instance", conv_block=True,
                           res_block=True)
            for i in range(u - 1)
        )
        # decoder stage j: to resolution feat * 2^(j+1), f * 2^(u-1-j) channels
        self.decoders = torch.nn.ModuleList(
            UnetrUpBlock(spatial_dims=3, in_channels=m.hidden_size if j == 0 else f * 2 ** (u - j), out_channels=f * 2 ** (u - 1 - j),
                         kernel_size=3, upsample_kernel_size=2, norm_name="instance", res_block=True)
            for j in range(u)
        )
        self.out = UnetOutBlock(spatial_dims=3, in_channels=f, out_channels=out_channels)

    def proj_feat(self, x):
        x = x.view(x.size(0), *self.feat_size, self.hidden_size)
        return x.permute(0, 4, 1, 2, 3).contiguous()

    def forward(self, x_in):
        x, hidden = self.vit(x_in)
        skips = [block(self.proj_feat(hidden[t])) for block, t in zip(self.skips, self.taps)]
        skips.reverse()  # deepest (lowest resolution) first
        skips.append(self.encoder1(x_in))
        d = self.proj_feat(x)
        for decoder, skip in zip(self.decoders, skips):
            d = decoder(d, skip)
        return self.out(d)


class EncoderClassifier(torch.nn.Module):
    """The MAE encoder (MONAI ViT) and a linear head on its token features, pooled over a subject.

    A subject is a set of windows; the encoder's final (normalised) token features of all its
    windows are max-pooled (or mean-pooled) into one vector, and a linear layer gives one logit.
    Max-pooling tokens suits "is there a lesion anywhere"; the MAE's class token, which its
    pretraining never asked to summarise anything, is not used.
    """

    def __init__(self, config: FinetuneConfig, pooling: str = "max"):
        super().__init__()
        self.vit = _vit(config)
        self.head = torch.nn.Linear(config.pretraining.model.hidden_size, 1)
        self.pooling = pooling

    def features(self, windows):
        tokens, _ = self.vit(windows)  # (windows, tokens, hidden), after the final norm
        return tokens.amax(dim=1) if self.pooling == "max" else tokens.mean(dim=1)

    def pool(self, per_window, counts: list[int]):
        parts = per_window.split(list(counts))
        return torch.stack([p.amax(dim=0) if self.pooling == "max" else p.mean(dim=0) for p in parts])

    def forward(self, windows, counts: list[int]):
        return self.head(self.pool(self.features(windows), counts))[:, 0]


def transfer_encoder(model, encoder: Encoder, num_layers: int) -> dict:
    """Copy the MAE encoder's tensors into ``model.vit``; every ViT encoder tensor must be loaded.

    Returns ``{"loaded": n, "encoder_tensors": n, "missing": [...], "unused": [...]}``: ``missing``
    is always empty for a checkpoint (a missing tensor is an InputError naming the file), ``unused``
    lists checkpoint encoder tensors the model has no place for (the MAE's class token).
    """
    targets = dict(model.vit.state_dict())
    if encoder.scratch:
        return {"from": "scratch", "loaded": 0, "encoder_tensors": len(targets), "missing": [], "unused": [],
                "note": "every encoder tensor initialised from the seed"}
    new_state, missing = {}, []
    for key, current in targets.items():
        source = encoder.state.get(mae_key(key, num_layers))
        if source is None or tuple(source.shape) != tuple(current.shape):
            missing.append(key)
        else:
            new_state[key] = source.to(current.dtype)
    if missing:
        raise InputError(f"{encoder.path}: encoder tensors missing for {', '.join(missing[:4])}")
    result = model.vit.load_state_dict(new_state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"{encoder.path}: encoder weights did not load ({result})")
    loaded = model.vit.state_dict()
    for key, value in new_state.items():  # the weights now in the model are the checkpoint's, bit for bit
        if not torch.equal(loaded[key], value):
            raise RuntimeError(f"{encoder.path}: {key} differs from the checkpoint after loading")
    return {"from": str(encoder.path), "loaded": len(new_state), "encoder_tensors": len(targets), "missing": [],
            "unused": list(encoder.unused)}


def build_model(config: FinetuneConfig, task: str, n_structures: int = 0):
    if task == "segmentation":
        return EncoderUNETR(config, out_channels=n_structures + 1, feature_size=config.segmentation.feature_size)
    return EncoderClassifier(config, pooling=config.classification.pooling)


# ---------------------------------------------------------------------------
# data


@dataclass
class TaskData:
    target: str
    task: str
    train_files: list[Path]
    test_files: list[Path]
    train: list  # LabelledVolume
    test: list
    train_classes: np.ndarray | None = None
    test_classes: np.ndarray | None = None
    class_name: str | None = None
    seconds: float = 0.0


def ensure_downstream_phantoms(config: FinetuneConfig, console=None) -> None:
    from trainers.downstream_data import downstream_phantoms_missing, write_downstream_phantoms

    ph = config.phantoms
    if ph is None:
        return
    missing = downstream_phantoms_missing(ph.out, ph.domains, ph.first, ph.count, ph.seed)
    if not missing:
        return
    if console is not None:
        console.print(f"writing labelled phantoms {ph.first}..{ph.first + ph.count - 1} of {', '.join(ph.domains)} to {ph.out} ...",
                      highlight=False)
    write_downstream_phantoms(ph.out, ph.domains, ph.first, ph.count, ph.seed)


def split_subjects(config: FinetuneConfig, target: str, task: str):
    """(domain, train files, test files) of a target: the first labelled files, then the test split."""
    from trainers.domains import load_manifest

    manifest = load_manifest(config.manifest, validation_per_domain=1)
    where = str(config.manifest)
    try:
        domain = manifest[target]
    except KeyError:
        raise InputError(f"--target {target}: no such domain in {where}; it has {', '.join(manifest.names)}") from None
    if task == "segmentation":
        if not domain.labels:
            raise InputError(f"{where}: domain {target!r} has no label volumes (add label = \"...\" to its [[domains]] entry)")
        files = [image for image, _ in domain.labels]
        kind = "label volumes"
    else:
        if not domain.classes:
            raise InputError(f"{where}: domain {target!r} has no class labels (add labels_csv = \"...\" to its [[domains]] entry)")
        files = [image for image, _ in domain.classes]
        kind = "class labels"
    files = sorted(files)
    recipe = config.recipe(task)
    need = recipe.train_subjects + recipe.test_subjects
    if len(files) < need:
        raise InputError(
            f"{where}: domain {target!r} has {len(files)} images with {kind}; {config.path} asks for {recipe.train_subjects} "
            f"to fine-tune on and {recipe.test_subjects} to test on ({task})"
        )
    train, test = files[: recipe.train_subjects], files[recipe.train_subjects: need]
    return domain, train, test


def prepare_task_data(config: FinetuneConfig, target: str, task: str, console=None) -> TaskData:
    """Read, check and preprocess the target's fine-tuning and test subjects (before any training)."""
    from trainers.downstream_data import check_classes, load_labelled

    t0 = time.perf_counter()
    if task not in TASKS:
        raise InputError(f"--task {task!r}: expected segmentation or classification")
    ensure_downstream_phantoms(config, console)
    domain, train_files, test_files = split_subjects(config, target, task)
    where = str(config.manifest)
    data = config.pretraining.data
    seg = task == "segmentation"
    train = load_labelled(domain, train_files, data, where, config.cache_dir, with_labels=seg)
    test = load_labelled(domain, test_files, data, where, config.cache_dir, with_labels=seg)
    out = TaskData(target=target, task=task, train_files=train_files, test_files=test_files, train=train, test=test)
    if seg:
        for name, ids in config.segmentation.structures:
            if not any(np.isin(v.label, ids).any() for v in train):
                raise InputError(f"{config.path}: structure {name!r} (label ids {list(ids)}) appears in none of the "
                                 f"{len(train)} fine-tuning label volumes of {target!r}")
    else:
        out.train_classes = check_classes(domain, train_files, where)
        out.test_classes = check_classes(domain, test_files, where)
        out.class_name = domain.class_name
        for split, values in (("fine-tuning", out.train_classes), ("test", out.test_classes)):
            if len(set(values.tolist())) < 2:
                raise InputError(f"{where}: domain {target!r}: the {split} subjects all have {domain.class_name} = "
                                 f"{int(values[0])}; AUROC needs both classes (change the split sizes in {config.path})")
    out.seconds = time.perf_counter() - t0
    return out


def window_starts(shape, crop, overlap: float) -> list[tuple[int, int, int]]:
    """Corners of the sliding-window grid that covers a volume (as MONAI's sliding window places them)."""
    axes = []
    for s, c in zip(shape, crop):
        step = max(1, int(c * (1 - overlap)))
        n = max(1, math.ceil((s - c) / step) + 1) if s > c else 1
        axes.append(sorted({min(i * step, s - c) for i in range(n)}))
    return [(x, y, z) for x in axes[0] for y in axes[1] for z in axes[2]]


def cut_windows(volume: np.ndarray, crop, overlap: float) -> np.ndarray:
    cx, cy, cz = crop
    return np.stack([volume[:, x:x + cx, y:y + cy, z:z + cz] for x, y, z in window_starts(volume.shape[1:], crop, overlap)])


# ---------------------------------------------------------------------------
# training


def _optimizer(model, recipe: TaskRecipe):

    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # the fixed sin-cos position embeddings
        encoder = name.startswith("vit.")
        decay = not (p.ndim < 2 or "token" in name or "pos" in name)
        groups.setdefault((encoder, decay), []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "weight_decay": recipe.weight_decay if decay else 0.0,
          "lr_scale": recipe.encoder_lr_scale if encoder else 1.0}
         for (encoder, decay), ps in sorted(groups.items())],
        lr=recipe.lr, betas=(0.9, 0.999),
    )


def _set_lr(optimizer, recipe: TaskRecipe, step: int) -> None:
    from trainers.run import lr_factor

    factor = lr_factor(step, recipe.steps, recipe.warmup_fraction, recipe.min_lr_fraction)
    for group in optimizer.param_groups:
        group["lr"] = recipe.lr * factor * group["lr_scale"]


def _check_loss(value: float, step: int, what: str) -> None:
    if not math.isfinite(value):
        raise RuntimeError(f"{what}: training loss became {value} at step {step + 1}")


def _lut(structures) -> np.ndarray:
    top = max(i for _, ids in structures for i in ids)
    lut = np.zeros(max(top + 1, 32768), np.int64)
    for k, (_, ids) in enumerate(structures, start=1):
        lut[list(ids)] = k
    return lut


def _train_segmentation(model, data: TaskData, config: FinetuneConfig, run_seed: int, device, progress) -> list:
    from monai.data import Dataset, list_data_collate
    from monai.losses import DiceCELoss
    from monai.transforms import Compose, RandCropByLabelClassesd, RandSpatialCropd
    from torch.utils.data import DataLoader, RandomSampler

    recipe = config.segmentation
    lut = _lut(recipe.structures)
    items = [{"image": torch.from_numpy(v.image), "label": torch.from_numpy(lut[v.label][None])} for v in data.train]
    size = tuple(config.pretraining.data.crop)
    if recipe.crops == "balanced":  # crop centres drawn from every class (background included) equally often
        crop = Compose([RandCropByLabelClassesd(keys=["image", "label"], label_key="label", spatial_size=size,
                                                num_classes=len(recipe.structures) + 1, num_samples=1, warn=False)])
    else:
        crop = Compose([RandSpatialCropd(keys=["image", "label"], roi_size=size, random_size=False)])
    crop.set_random_state(seed=run_seed % (2**32))
    generator = torch.Generator().manual_seed(run_seed)
    sampler = RandomSampler(items, replacement=True, num_samples=recipe.steps * recipe.batch_size, generator=generator)
    loader = DataLoader(Dataset(items, transform=crop), batch_size=recipe.batch_size, sampler=sampler, num_workers=0,
                        collate_fn=list_data_collate)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = _optimizer(model, recipe)
    model.train()
    curve = []
    for step, batch in enumerate(loader):
        _set_lr(optimizer, recipe, step)
        loss = loss_fn(model(batch["image"].to(device)), batch["label"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        _check_loss(value, step, f"fine-tune {data.target}/segmentation")
        curve.append(value)
        if progress is not None:
            progress(step + 1, recipe.steps)
    return curve


def _evaluate_segmentation(model, data: TaskData, config: FinetuneConfig, device) -> dict:
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric

    recipe = config.segmentation
    lut = _lut(recipe.structures)
    n = len(recipe.structures)
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    rows = []
    model.eval()
    with torch.no_grad():
        for v in data.test:
            x = torch.from_numpy(v.image)[None].to(device)
            logits = sliding_window_inference(x, tuple(config.pretraining.data.crop), recipe.sw_batch_size, model,
                                              overlap=recipe.overlap, mode="constant")
            pred = torch.nn.functional.one_hot(logits.argmax(1), n + 1).permute(0, 4, 1, 2, 3).float()
            truth = torch.nn.functional.one_hot(torch.from_numpy(lut[v.label]).to(device)[None], n + 1).permute(0, 4, 1, 2, 3).float()
            rows.append(metric(pred, truth)[0].double().cpu().numpy())
    table = np.stack(rows)  # (subjects, structures), NaN where the structure is absent from the truth
    per_structure, present = {}, {}
    for k, (name, _) in enumerate(recipe.structures):
        col = table[:, k]
        ok = np.isfinite(col)
        present[name] = int(ok.sum())
        per_structure[name] = float(col[ok].mean()) if ok.any() else None
    defined = [d for d in per_structure.values() if d is not None]
    return {
        "dice": per_structure,
        "mean_dice": float(np.mean(defined)) if defined else None,
        "subjects_with_structure": present,
        "per_subject_dice": {f.name: [None if not np.isfinite(x) else float(x) for x in row] for f, row in zip(data.test_files, table)},
    }


def _windows(volumes, config: FinetuneConfig):

    crop = tuple(config.pretraining.data.crop)
    overlap = config.classification.overlap
    return [torch.from_numpy(np.ascontiguousarray(cut_windows(v.image, crop, overlap))) for v in volumes]


def _train_classification(model, data: TaskData, config: FinetuneConfig, run_seed: int, device, progress) -> list:

    recipe = config.classification
    windows = _windows(data.train, config)
    labels = torch.from_numpy(data.train_classes.astype(np.float32))
    generator = torch.Generator().manual_seed(run_seed)
    optimizer = _optimizer(model, recipe)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    curve = []
    for step in range(recipe.steps):
        _set_lr(optimizer, recipe, step)
        idx = torch.randint(len(windows), (recipe.batch_size,), generator=generator).tolist()
        if recipe.flips:
            views = []
            for i in idx:  # random flips of a subject's windows: lesion presence does not change
                axes = [a for a, f in zip((2, 3, 4), torch.rand(3, generator=generator) < 0.5) if f]
                views.append(windows[i].flip(axes) if axes else windows[i])
            x = torch.cat(views).to(device)
        else:
            x = torch.cat([windows[i] for i in idx]).to(device)
        logits = model(x, [len(windows[i]) for i in idx])
        loss = loss_fn(logits, labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        _check_loss(value, step, f"fine-tune {data.target}/classification")
        curve.append(value)
        if progress is not None:
            progress(step + 1, recipe.steps)
    return curve


def _evaluate_classification(model, data: TaskData, config: FinetuneConfig, device) -> dict:
    from monai.metrics import compute_roc_auc

    windows = _windows(data.test, config)
    model.eval()
    scores = []
    bs = config.classification.sw_batch_size
    with torch.no_grad():
        for w in windows:
            features = torch.cat([model.features(w[i:i + bs].to(device)) for i in range(0, len(w), bs)])
            logit = model.head(model.pool(features, [len(w)]))[0, 0]
            scores.append(float(torch.sigmoid(logit)))
    y = data.test_classes
    s = np.asarray(scores)
    auroc = float(compute_roc_auc(torch.tensor(s), torch.tensor(y)))
    return {
        "auroc": auroc,
        "accuracy": float(np.mean((s >= 0.5) == (y == 1))),
        "class": data.class_name,
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
        "scores": {f.name: {"score": float(p), "label": int(c)} for f, p, c in zip(data.test_files, s, y)},
    }


def finetune(config: FinetuneConfig, encoder: Encoder, data: TaskData, seed: int,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Fine-tune ``encoder`` on ``data`` with the config's recipe and score it on the test split."""
    import monai

    from trainers.domains import stable_int
    from trainers.run import resolve_device, seed_everything, torch_settings

    task = data.task
    recipe = config.recipe(task)
    device = resolve_device(config.device)
    n_structures = len(config.segmentation.structures)
    run_seed = stable_int(seed, "finetune", data.target, task)
    t0 = time.perf_counter()
    with torch_settings(config.threads, device):
        seed_everything(seed)  # decoder / head (and a scratch encoder): the same for every encoder at this seed
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")
            model = build_model(config, task, n_structures)
        transfer = transfer_encoder(model, encoder, config.pretraining.model.num_layers)
        model = model.to(device)
        seed_everything(run_seed)  # crops and batches: the same for every encoder at this seed
        train = _train_segmentation if task == "segmentation" else _train_classification
        curve = train(model, data, config, run_seed, device, progress)
        t1 = time.perf_counter()
        evaluate = _evaluate_segmentation if task == "segmentation" else _evaluate_classification
        metrics = evaluate(model, data, config, device)
        t2 = time.perf_counter()
    tail = curve[-max(1, len(curve) // 10):]
    return {
        "format": RESULT_FORMAT,
        "task": task,
        "target": data.target,
        "seed": seed,
        "encoder": encoder.describe(),
        "transfer": transfer,
        "config": str(config.path),
        "recipe": config.recipe_dict(task),
        "recipe_hash": config.recipe_hash(task),
        "train_subjects": [p.name for p in data.train_files],
        "test_subjects": [p.name for p in data.test_files],
        "metrics": metrics,
        "train_loss": {"first": curve[0], "final": float(np.mean(tail)), "every_10": curve[::10]},
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "seconds": {"train": t1 - t0, "test": t2 - t1, "total": t2 - t0, "data": data.seconds},
        "device": device.type,
        "threads": config.threads,
        "torch": torch.__version__,
        "monai": monai.__version__,
    }


def run_finetune(config_path: str | Path, encoder: str, target: str, task: str, seed: int = 0,
                 records: Path | None = None, console=None, progress=None) -> dict:
    """Everything ``bayescale finetune`` does: check config, encoder and data, then fine-tune and test."""
    if task not in TASKS:
        raise InputError(f"--task {task!r}: expected segmentation or classification")
    if seed < 0:
        raise InputError(f"--seed {seed}: expected a seed >= 0")
    config = load_finetune_config(config_path)
    enc = load_encoder(encoder, config, records)
    data = prepare_task_data(config, target, task, console)
    return finetune(config, enc, data, seed, progress)


def format_result(result: dict) -> str:
    m = result["metrics"]
    head = (f"{result['task']} on {result['target']}, encoder {result['encoder']['name']}, seed {result['seed']}: "
            f"{len(result['train_subjects'])} fine-tuning / {len(result['test_subjects'])} test subjects, "
            f"{result['recipe']['steps']} steps, {result['seconds']['total']:.1f} s "
            f"(encoder tensors loaded: {result['transfer']['loaded']})")
    if result["task"] == "segmentation":
        lines = [head, f"{'structure':<16} {'Dice':>7} {'subjects':>9}"]
        for name, dice in m["dice"].items():
            lines.append(f"{name:<16} {'-' if dice is None else f'{dice:.3f}':>7} {m['subjects_with_structure'][name]:>9}")
        lines.append(f"{'mean':<16} {'-' if m['mean_dice'] is None else f'{m['mean_dice']:.3f}':>7}")
        return "\n".join(lines)
    return "\n".join([head, f"AUROC {m['auroc']:.3f}, accuracy {m['accuracy']:.3f} ({m['positives']} with {m['class']}, {m['negatives']} without)"])

"""Encoder checkpoints of pretraining runs: what fine-tuning starts from.

A checkpoint is ``torch.save`` of a plain dict (tensors, strings, numbers: nothing that needs
pickle to rebuild), so it is read back with ``torch.load(..., weights_only=True)`` and a file
from elsewhere cannot run code. It sits beside the run's record: ``<records>/<run id>.pt``.

Contents: ``format`` (:data:`CHECKPOINT_FORMAT`), ``run`` (the run id), ``model`` (the
:class:`~trainers.config.ModelConfig` as a dict), ``crop`` (the input size the position
embeddings were built for) and ``state_dict`` (the whole MaskedAutoEncoderViT; fine-tuning
takes the encoder part: ``patch_embedding.*``, ``blocks.0 .. blocks.{num_layers - 1}`` and the
encoder's final LayerNorm, which MONAI's MAE keeps as ``blocks.{num_layers}``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bayescale._files import atomic_path
from bayescale.errors import InputError
from trainers.config import ModelConfig

CHECKPOINT_FORMAT = "bayescale.trainers.checkpoint/1"


def checkpoint_path(records_dir: Path, run_id: str) -> Path:
    from trainers.collect import check_run_id

    check_run_id(run_id, str(records_dir))
    return Path(records_dir) / f"{run_id}.pt"


def save_checkpoint(path: Path, model, model_config: ModelConfig, crop, run_id: str) -> Path:
    """Write the model's weights atomically (temporary file, then rename)."""
    import torch

    payload = {
        "format": CHECKPOINT_FORMAT,
        "run": run_id,
        "model": asdict(model_config),
        "crop": [int(c) for c in crop],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint safely (``weights_only=True``); a file that is not one is a one-line InputError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: encoder checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        first = " ".join(str(error).split())[:200]
        raise InputError(f"{path}: not a readable checkpoint ({type(error).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"{path}: not a bayescale encoder checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    for key in ("model", "crop", "state_dict"):
        if key not in payload:
            raise InputError(f"{path}: checkpoint without {key!r}")
    try:
        payload["model_config"] = ModelConfig(**payload["model"])
    except TypeError as error:
        raise InputError(f"{path}: checkpoint model settings are not this trainer's ({error})") from None
    return payload

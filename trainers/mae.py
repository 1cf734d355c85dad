"""The model and its loss: MONAI's ``MaskedAutoEncoderViT``, patchified targets, masked MSE, evaluation.

``MaskedAutoEncoderViT(x)`` returns ``(pred, mask)``: ``pred`` (B, N, prod(patch) * C) is the
decoder's reconstruction of every patch token, ``mask`` (B, N) is 1 where the token was masked
(hidden from the encoder) and 0 where it was visible. It computes no loss; the target is the input
cut into the same tokens (:func:`patchify`, token order = the patch-embedding convolution's
``flatten(2)`` order, x then y then z), and the loss is the mean squared error over the voxels of
the masked tokens (:func:`masked_mse`). Masks are drawn from torch's global CPU generator, so a
run seeds it, and evaluation forks it with a fixed seed: every run sees the same masks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from einops import rearrange

from trainers.config import ModelConfig


def build_model(model: ModelConfig, crop) -> torch.nn.Module:
    import warnings

    from monai.networks.nets import MaskedAutoEncoderViT

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")  # inside MONAI's sin-cos embedding
        return _mae(MaskedAutoEncoderViT, model, crop)


def _mae(cls, model: ModelConfig, crop) -> torch.nn.Module:
    return cls(
        in_channels=1,
        img_size=tuple(crop),
        patch_size=model.patch_size,
        hidden_size=model.hidden_size,
        mlp_dim=model.mlp_dim,
        num_layers=model.num_layers,
        num_heads=model.num_heads,
        masking_ratio=model.mask_ratio,
        decoder_hidden_size=model.decoder_hidden_size,
        decoder_mlp_dim=model.decoder_mlp_dim,
        decoder_num_layers=model.decoder_num_layers,
        decoder_num_heads=model.decoder_num_heads,
        spatial_dims=3,
    )


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, N, p*p*p*C), tokens in the order of MONAI's patch embedding."""
    return rearrange(x, "b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)", p1=patch, p2=patch, p3=patch)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over the voxels of the masked tokens: shape (B,).

    ``pred`` and ``target`` are (B, N, P); ``mask`` (B, N) is 1 for masked tokens.
    """
    mask = mask.to(pred.dtype)
    per_token = (pred - target).pow(2).mean(dim=-1)
    return (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def mae_loss(model: torch.nn.Module, x: torch.Tensor, patch: int) -> torch.Tensor:
    """The training loss of one batch: masked MSE averaged over the batch."""
    pred, mask = model(x)
    return masked_mse(pred, patchify(x, patch), mask).mean()


@torch.no_grad()
def evaluate(model: torch.nn.Module, crops: np.ndarray, mean_crops: np.ndarray, *, patch: int, mask_seed: int,
             batch_size: int, device: torch.device) -> dict:
    """Masked MSE of ``model`` on fixed validation crops with a fixed mask seed.

    Returns the mean over crops, its standard error, and the loss of the trivial predictor
    "the mean training volume" (``mean_crops``) on exactly the same masked tokens.
    """
    was_training = model.training
    model.eval()
    losses, base = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mask_seed)
        for start in range(0, len(crops), batch_size):
            # torch.tensor copies: the crops may be read-only (Ray's object store), which from_numpy
            # warns about from every worker; one batch's copy is small beside its forward pass.
            x = torch.tensor(crops[start:start + batch_size], device=device)
            m = torch.tensor(mean_crops[start:start + batch_size], device=device)
            pred, mask = model(x)
            target = patchify(x, patch)
            losses.append(masked_mse(pred.float(), target, mask).double().cpu())
            base.append(masked_mse(patchify(m, patch), target, mask).double().cpu())
    model.train(was_training)
    per_crop = torch.cat(losses).numpy()
    per_base = torch.cat(base).numpy()
    n = len(per_crop)
    se = float(per_crop.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"loss": float(per_crop.mean()), "loss_se": se, "baseline_loss": float(per_base.mean()), "n": n}

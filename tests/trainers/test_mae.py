"""The model's loss: patch order, masked MSE by hand, fixed evaluation masks."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("einops")

from trainers.config import ModelConfig  # noqa: E402
from trainers.mae import build_model, evaluate, masked_mse, patchify  # noqa: E402

TINY = ModelConfig(patch_size=4, hidden_size=12, mlp_dim=24, num_layers=1, num_heads=2, decoder_hidden_size=12,
                   decoder_mlp_dim=24, decoder_num_layers=1, decoder_num_heads=2, mask_ratio=0.75)


def test_masked_mse_equals_a_hand_computation():
    # 2 samples, 3 tokens of 2 voxels each
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]], [[0.5, 0.5], [1.0, 3.0], [0.0, 0.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.0, 0.0], [1.0, 1.0]]])
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]])  # 1 = masked
    # sample 0: tokens 0 and 2 -> ((1 + 1) / 2 + (4 + 0) / 2) / 2 = (1 + 2) / 2 = 1.5
    # sample 1: tokens 1 and 2 -> ((1 + 9) / 2 + (1 + 1) / 2) / 2 = (5 + 1) / 2 = 3.0
    got = masked_mse(pred, target, mask)
    assert got.tolist() == pytest.approx([1.5, 3.0])
    # visible tokens do not count: changing them changes nothing
    pred2 = pred.clone()
    pred2[0, 1] = 100.0
    pred2[1, 0] = -7.0
    assert masked_mse(pred2, target, mask).tolist() == pytest.approx([1.5, 3.0])


def test_patchify_matches_the_patch_embedding_token_order():
    """Token t of patchify is the patch the MONAI patch-embedding convolution turns into token t."""
    model = build_model(TINY, (8, 12, 16))
    conv = model.patch_embedding.patch_embeddings
    assert isinstance(conv, torch.nn.Conv3d)
    x = torch.randn(2, 1, 8, 12, 16)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0] = 1.0  # channel 0 sums the patch's voxels
        conv.bias.zero_()
        tokens = conv(x).flatten(2).transpose(-1, -2)  # how PatchEmbeddingBlock orders tokens
    patches = patchify(x, 4)
    assert patches.shape == (2, 2 * 3 * 4, 64)
    torch.testing.assert_close(tokens[..., 0], patches.sum(-1), rtol=1e-5, atol=1e-4)


def test_model_returns_prediction_and_mask():
    model = build_model(TINY, (8, 8, 8))
    pred, mask = model(torch.rand(3, 1, 8, 8, 8))
    assert pred.shape == (3, 8, 64)
    assert mask.shape == (3, 8)
    assert mask.sum(1).tolist() == [6, 6, 6]  # 0.75 of 8 tokens masked


def test_evaluation_uses_fixed_masks_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    model = build_model(TINY, (8, 8, 8))
    crops = np.random.default_rng(1).random((5, 1, 8, 8, 8)).astype(np.float32)
    means = np.full_like(crops, crops.mean())
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = evaluate(model, crops, means, patch=4, mask_seed=7, batch_size=2, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(10)  # move the global generator on: the evaluation must not care
    b = evaluate(model, crops, means, patch=4, mask_seed=7, batch_size=2, device=torch.device("cpu"))
    assert a == b
    c = evaluate(model, crops, means, patch=4, mask_seed=8, batch_size=2, device=torch.device("cpu"))
    assert c["loss"] != a["loss"]
    assert a["n"] == 5 and a["loss_se"] > 0
    # a constant predictor equal to the data mean scores about the data's variance
    assert a["baseline_loss"] == pytest.approx(float(crops.var()), rel=0.2)

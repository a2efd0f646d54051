"""PSNR and SSIM to the FP images against closed forms and scikit-image's SSIM."""

from __future__ import annotations

import math

import pytest
import torch

from fraqat.eval.similarity import K1, K2, psnr, ssim, ssim_per_image

C1, C2 = (K1 * 2) ** 2, (K2 * 2) ** 2


def _pair(seed: int, shape=(2, 3, 40, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) * 2 - 1
    return x, (x + 0.3 * torch.randn(shape, generator=g)).clamp(-1, 1)


def test_identical_images():
    x, _ = _pair(0)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6) and psnr(x, x) is None


def test_constant_images_follow_the_luminance_term():
    """Flat images: no variance, so SSIM is the luminance term alone."""
    a, b = 0.2, -0.4
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    want = (2 * a * b + C1) / (a * a + b * b + C1)
    assert ssim(x, y) == pytest.approx(want, rel=1e-5)


def test_psnr_of_a_uniform_error():
    x = torch.zeros(1, 3, 8, 8)
    assert psnr(x + 0.1, x) == pytest.approx(10 * math.log10(4 / 0.01))


def test_matches_scikit_image():
    """Values scikit-image 0.26.0 gives for these pairs (structural_similarity with
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2,
    channel_axis=0); recomputed when scikit-image is installed."""
    x, y = _pair(0)
    got = ssim_per_image(x, y).tolist()
    assert got == pytest.approx([0.5936342, 0.6116355], abs=2e-6)
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return
    for i in range(len(x)):
        ref = structural_similarity(x[i].numpy(), y[i].numpy(), channel_axis=0,
                                    gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=2.0)
        assert got[i] == pytest.approx(float(ref), abs=1e-5)


def test_small_images_narrow_the_window_and_shapes_must_match():
    x, y = _pair(1, (3, 1, 8, 8))
    assert ssim_per_image(x, y).shape == (3,)
    with pytest.raises(ValueError, match="one shape"):
        ssim(x, y[:, :, :4])

"""Image similarity of a quantized model's images to the FP model's own (same prompts, same
seeds): PSNR and SSIM, as quantized-diffusion papers print them beside FID.

SSIM is Wang et al. (2004) with the usual constants: an 11 x 11 Gaussian window of sigma 1.5
(narrowed to the image on small images), K1 = 0.01, K2 = 0.03, the data range of images in
[-1, 1] (2.0), computed per channel over the valid window positions and averaged, as
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=2)`` does (the test compares them). Written here in
torch because the project's dependencies hold no SSIM (torchmetrics and scikit-image are
not in them). LPIPS is left out: the ``lpips`` package fetches its torchvision backbone's
weights from the network on first use.
"""

from __future__ import annotations

import math

import torch

DATA_RANGE = 2.0  # images in [-1, 1]
K1, K2, SIGMA, WINDOW = 0.01, 0.03, 1.5, 11


def psnr(images: torch.Tensor, reference: torch.Tensor, data_range: float = DATA_RANGE
         ) -> float | None:
    """PSNR in dB over all pixels; None when the images are identical."""
    mse = float((images.double() - reference.double()).pow(2).mean())
    return 10 * math.log10(data_range**2 / mse) if mse > 0 else None


def _window(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_per_image(images: torch.Tensor, reference: torch.Tensor,
                   data_range: float = DATA_RANGE, batch_size: int = 16) -> torch.Tensor:
    """(N,) mean SSIM of each image (N, C, H, W) to its reference."""
    if images.shape != reference.shape or images.dim() != 4:
        raise ValueError(f"expected two (N, C, H, W) batches of one shape, got "
                         f"{tuple(images.shape)} and {tuple(reference.shape)}")
    size = min(WINDOW, images.shape[-1], images.shape[-2])
    size -= 1 - size % 2  # odd
    g = _window(size, SIGMA, torch.float64)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    channels = images.shape[1]
    wx = g.view(1, 1, 1, size).repeat(channels, 1, 1, 1)
    wy = g.view(1, 1, size, 1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid positions only
        t = torch.nn.functional.conv2d(t, wx, groups=channels)
        return torch.nn.functional.conv2d(t, wy, groups=channels)

    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].double()
        y = reference[i : i + batch_size].double()
        mx, my = blur(x), blur(y)
        vx, vy = blur(x * x) - mx * mx, blur(y * y) - my * my
        cov = blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out.append(s.mean(dim=(1, 2, 3)))
    return torch.cat(out).float()


def ssim(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean SSIM over the images."""
    return float(ssim_per_image(images, reference).mean())

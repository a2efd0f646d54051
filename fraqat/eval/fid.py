"""Fréchet Inception Distance through clean-fid, in two feature spaces.

* ``classifier`` (default, offline): the penultimate layer of the evaluation CNN
  (:mod:`fraqat.eval.classifier`), applied to the 8x8 images directly.
* ``inception``: clean-fid's own Inception (``InceptionV3W``, the StyleGAN2/TF-ported weights)
  behind clean-fid's own "clean" resizer (PIL bicubic to 299x299, no uint8 rounding). Only from
  ``eval.inception_path`` on disk; nothing is downloaded.

Why features are computed here and not through ``cleanfid.fid.compute_fid(...,
custom_feat_extractor=...)``: ``compute_fid`` reads folders of image files or draws its own
random ``z`` for a generator ``G(z)``, while our samples are tensors from *fixed* prompts and
noise (the point of the comparison), so it would mean writing 500 image files per model and
rounding the samples to uint8; and its resize to 299x299 only makes the 8x8 classifier undo it
again (about 1 s of PIL work per 100 images here). :class:`ClassifierFeatureExtractor` is that
custom extractor anyway, for whoever wants ``compute_fid`` on folders (a test checks it agrees
with the direct path). Everything
statistical is clean-fid's: :func:`cleanfid.fid.frechet_distance` on (mu, sigma), the same
computation as :func:`cleanfid.fid.fid_from_feats`.

Note that FID is biased by the number of samples: compare only numbers made with the same
``eval.num_images`` against the same reference (the held-out real images).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from fraqat.checked import reading
from fraqat.errors import FraqatError
from fraqat.eval.classifier import DigitClassifier, load_classifier

FEATURE_SPACES = ("classifier", "inception")
INCEPTION_FILE = "inception-2015-12-05.pt"  # the name clean-fid's InceptionV3W loads
CPU = torch.device("cpu")

FeatureFn = Callable[[torch.Tensor], np.ndarray]


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] -> (N, 3, H, W) float32 in [0, 255], clean-fid's input range."""
    x = (images.float().clamp(-1, 1) + 1.0) * 127.5
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@dataclass(frozen=True)
class Stats:
    """Mean and covariance of a feature set (what clean-fid stores as reference statistics)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, feats: np.ndarray) -> Stats:
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or len(feats) < 2:
            raise FraqatError(f"FID needs >= 2 feature vectors of shape (N, D), got {feats.shape}")
        return cls(np.mean(feats, axis=0), np.cov(feats, rowvar=False), len(feats))


def _cfid() -> ModuleType:
    """clean-fid's ``fid`` module, imported on first use: it pulls in torchvision and
    torch._dynamo (seconds per process), which every stage importing this module but not
    scoring FID (pretrain, calibrate, teacher, tune, train) would otherwise pay."""
    from cleanfid import fid

    return fid


def frechet(a: Stats, b: Stats) -> float:
    """clean-fid's Fréchet distance ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    with contextlib.redirect_stdout(io.StringIO()):  # its "singular product" notice
        return float(_cfid().frechet_distance(a.mu, a.sigma, b.mu, b.sigma))


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two feature arrays (N, D), via :func:`cleanfid.fid.fid_from_feats`."""
    with contextlib.redirect_stdout(io.StringIO()):
        return float(_cfid().fid_from_feats(np.asarray(feats1, np.float64),
                                         np.asarray(feats2, np.float64)))


def classifier_features(model: DigitClassifier, batch_size: int = 1024) -> FeatureFn:
    @torch.no_grad()
    def fn(images: torch.Tensor) -> np.ndarray:
        model.eval()
        x = images.float().clamp(-1, 1)
        return torch.cat([model.features(x[i : i + batch_size])
                          for i in range(0, len(x), batch_size)]).numpy()
    return fn


class ClassifierFeatureExtractor(nn.Module):
    """The classifier trunk as a clean-fid ``custom_feat_extractor``.

    clean-fid hands it float32 (B, 3, 299, 299) in [0, 255] after its clean (bicubic) resize.
    Bicubic interpolation passes through the original samples, so reading the output pixel
    nearest each 8x8 pixel centre undoes the resize almost exactly (mean error 0.003 on the
    [-1, 1] scale for the digits; area-averaging back instead errs by 0.09 and moved the FID of
    real digits against themselves from 0 to 97).
    """

    def __init__(self, model: DigitClassifier, size: int | None = None):
        super().__init__()
        self.model, self.size = model.eval(), size or model.image_size

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x.float().mean(dim=1, keepdim=True)
        h, w = gray.shape[-2:]
        centre = torch.arange(self.size) + 0.5
        rows = torch.round(centre * h / self.size - 0.5).long()
        cols = torch.round(centre * w / self.size - 0.5).long()
        small = gray[:, :, rows][:, :, :, cols] / 127.5 - 1.0
        return self.model.features(small)


def clean_resize(images: torch.Tensor) -> torch.Tensor:
    """clean-fid's "clean" resize (PIL bicubic, float, no rounding) of [-1, 1] images to
    (N, 3, 299, 299) in [0, 255]."""
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    pixels = to_pixels(images).permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([resize(img) for img in pixels])).permute(0, 3, 1, 2)


def extract_clean(feature_model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                  batch_size: int = 50) -> np.ndarray:
    """Features of [-1, 1] images the way clean-fid computes them for its own extractors."""
    return np.concatenate([_cfid().get_batch_features(clean_resize(images[i : i + batch_size]),
                                                   feature_model, CPU)
                           for i in range(0, len(images), batch_size)])


def load_inception(path: str | Path | None) -> nn.Module:
    """clean-fid's ``InceptionV3W`` from a weights file on disk (``download=False``)."""
    from cleanfid.inception_torchscript import InceptionV3W

    if not path or not Path(path).is_file():
        raise FraqatError(f"eval.feature_space=inception needs eval.inception_path to point at "
                          f"clean-fid's {INCEPTION_FILE} on disk (got {path!r}; nothing is "
                          "downloaded; or use eval.feature_space=classifier)")
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory() as tmp:  # InceptionV3W loads <folder>/INCEPTION_FILE
        folder = path.parent
        if path.name != INCEPTION_FILE:
            folder = Path(tmp)
            os.symlink(path, folder / INCEPTION_FILE)
        with reading(path, "clean-fid TorchScript Inception file", "point eval.inception_path "
                     f"at clean-fid's {INCEPTION_FILE}, or use eval.feature_space=classifier"):
            return InceptionV3W(str(folder), download=False).eval()


def feature_fn(space: str, classifier_dir: str | Path,
               inception_path: str | None = None) -> FeatureFn:
    """The feature function of ``space`` (see module docstring)."""
    if space == "classifier":
        return classifier_features(load_classifier(classifier_dir))
    if space == "inception":
        model = load_inception(inception_path)
        return lambda images: extract_clean(model, images)
    raise FraqatError(f"feature space {space!r} is not known "
                      f"(allowed: {', '.join(FEATURE_SPACES)})")

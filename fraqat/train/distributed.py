"""Data-parallel training through PyTorch's own engine (torchrun + DistributedDataParallel).

``fraqat train`` under ``torchrun --nproc-per-node N`` splits every step's global batch into N
equal slices; DDP averages the gradients, so the update equals the one-process update for the
same global batch (up to floating-point reduction order). Rank 0 alone writes checkpoints,
logs and outputs. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from fraqat.errors import ParamsError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def backend_for(device: str, local_rank: int, gpus: int) -> str:
    """``nccl`` when this rank trains on its own GPU, ``gloo`` when the run trains on the CPU
    (``device: cpu``, or no GPU visible); one line if a rank has no GPU of its own."""
    if device == "cpu" or gpus == 0:
        return "gloo"
    if local_rank >= gpus:
        raise ParamsError(f"params.yaml: device: {device!r} under torchrun needs one GPU per "
                          f"rank, but rank {local_rank} sees {gpus} GPU(s) (allowed: "
                          f"--nproc-per-node <= {gpus}, or device: cpu)")
    return "nccl"


def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); no-op otherwise.

    ``device`` is params.yaml's: a CPU run uses gloo even where GPUs are visible.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend_for(device, local, torch.cuda.device_count())
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend)
    return True


def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``auto`` (CUDA when visible); under torchrun, this rank's GPU."""
    if name not in ("cpu", "cuda", "auto"):
        raise ParamsError(f"params.yaml: device: {name!r} is not allowed "
                          "(allowed: cpu, cuda, auto)")
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ParamsError("params.yaml: device: 'cuda' but no CUDA GPU is visible "
                          "(allowed here: cpu, auto)")
    if name == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def broadcast_path(path: str) -> str:
    """Rank 0's ``path`` on every rank (one scratch folder that all ranks write into)."""
    if world_size() == 1:
        return path
    box = [path]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's equal slice of a global batch (the batch size must divide evenly)."""
    n = world_size()
    if len(indices) % n:
        raise ValueError(f"batch_size={len(indices)} is not divisible by the world size {n} "
                         "(allowed: a multiple of --nproc-per-node)")
    per = len(indices) // n
    return indices[rank() * per : (rank() + 1) * per]


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.AVG if dist.get_backend() == "nccl"
                    else dist.ReduceOp.SUM)
    return value if dist.get_backend() == "nccl" else value / world_size()

"""Fully sharded data parallelism for QAT students: PyTorch FSDP2 (``fully_shard``).

Each rank keeps 1/N of every parameter, gradient and AdamW moment (fp32: 16 bytes per
parameter / N) instead of DDP's full replica, which is what lets FLUX.1 (11.9 B parameters:
190 GB of fp32 training state) train on 4 × 80 GB GPUs at all.

**Fake-quant sees the whole weight.** ``fully_shard`` all-gathers a wrapped module's parameters
in its pre-forward hook and registers the unsharded tensors on the modules for the duration of
the forward (and again for the backward), so ``QuantLinear.forward`` reads the full weight
``W`` and its per-tensor max |W| or per-channel scales are those of one process. A scale
computed on a shard would be wrong; ``tests/test_sharding.py`` shows a sharded run equals an
unsharded one.

**Units.** Every block of the model's block lists (diffusers: ``transformer_blocks``,
``single_transformer_blocks``) is one FSDP unit (one all-gather per block, the next block's
prefetched during the current one); the root unit holds the rest (embeddings, norms, output).

**Replicated parameters.** ``fully_shard`` cannot shard 0-dim parameters; the only ones in a
quantized model are the activation quantizers' scales. They stay replicated in fp32 (so the
calibrated INT8 activation grid is the same as in one process). A trainable one (learned
activation scales) would need its own gradient all-reduce: rejected with one line.

**Mixed precision** (:func:`mixed_precision`): on CUDA the parameters are all-gathered and
computed in bf16 and gradients reduce-scattered in fp32; the sharded master weights and AdamW
state stay fp32 (so the weight fake-quant reads bf16(W), what bf16 autocast would feed the
matmul anyway). On the CPU everything stays fp32, which makes the CPU test exact.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from fraqat.errors import ParamsError

PARALLEL = ("ddp", "fsdp")


def check_parallel(name: str) -> str:
    if name not in PARALLEL:
        raise ParamsError(f"params.yaml: train.parallel: {name!r} is not allowed "
                          f"(allowed: {', '.join(PARALLEL)})")
    return name


def mixed_precision(device_type: str) -> MixedPrecisionPolicy:
    """bf16 all-gather + compute, fp32 gradient reduction on CUDA; fp32 throughout on the CPU."""
    if device_type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def device_mesh(device: torch.device) -> DeviceMesh:
    """A 1-D mesh over all ranks of the default process group (NCCL on CUDA, gloo on CPU)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return init_device_mesh(device.type, (world,))


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: every entry of a ``ModuleList`` whose name ends in ``blocks``."""
    return [block for name, mod in model.named_modules()
            if isinstance(mod, nn.ModuleList) and name.endswith("blocks") for block in mod]


def replicated_params(model: nn.Module) -> set[nn.Parameter]:
    """Parameters kept out of sharding: the 0-dim ones (activation-quantizer scales)."""
    scalars = {p for p in model.parameters() if p.dim() == 0}
    trained = sorted(n for n, p in model.named_parameters() if p in scalars and p.requires_grad)
    if trained:
        raise ParamsError("params.yaml: train.parallel: 'fsdp' cannot train scalar parameters "
                          f"(here {trained[0]}; learned activation scales) (allowed: "
                          "quant.learn_act_scale: false with fsdp, or train.parallel: ddp)")
    return scalars


def shard(model: nn.Module, mesh: DeviceMesh, *, mp_policy: MixedPrecisionPolicy | None = None,
          reshard_after_forward: bool = True) -> nn.Module:
    """``fully_shard`` each block, then the root, in place (bottom-up, as FSDP2 requires).

    Parameters must be identical on every rank (same seed / same loaded weights): each rank
    keeps its own slice. Build the optimizer *after* this call: it must hold the sharded
    parameters.
    """
    mp = mp_policy or mixed_precision(mesh.device_type)
    kept = replicated_params(model)
    for block in block_modules(model):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward,
                    ignored_params=kept)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward,
                ignored_params=kept)
    return model


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device (no memory).

    Taken before :func:`shard`, it is the plain module that :func:`gather` fills back in.
    """
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"),
                                   requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def gather(sharded: nn.Module, plain: nn.Module) -> nn.Module:
    """Fill ``plain`` (a :func:`meta_copy`) with ``sharded``'s full state; a collective.

    Every rank receives the full tensors. Host-side state that is not a tensor (each quantized
    layer's weight bits and its cached grid bits, calibration flags, train/eval mode: every
    scalar instance attribute) is copied too.
    """
    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    device = next(sharded.parameters()).device  # a DTensor reports its local device
    plain.to_empty(device=device)
    plain.load_state_dict(full, strict=True)
    with torch.no_grad():  # non-persistent buffers are not in the state dict; never sharded
        for name, buf in sharded.named_buffers():
            plain.get_buffer(name).copy_(buf)
    plain_modules = dict(plain.named_modules())
    for name, mod in sharded.named_modules():
        target = plain_modules[name].__dict__
        target.update({k: v for k, v in mod.__dict__.items()
                       if k in target and isinstance(v, bool | int | float | str | None)})
    return plain


@contextmanager
def meta_parameters() -> Iterator[None]:
    """Build modules with parameters on the meta device and buffers for real.

    For models too large for one device (FLUX.1, 12 B): construct, :func:`shard`, then
    :func:`materialize` each rank's slice. Buffers (small; some are computed at construction,
    e.g. positional tables) stay real, so nothing of the model's own maths is lost.
    """
    register = nn.Module.register_parameter

    def to_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"),
                                                  requires_grad=param.requires_grad)

    nn.Module.register_parameter = to_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


@torch.no_grad()
def materialize(model: nn.Module, device: torch.device, seed: int = 0,
                std: float = 0.02) -> nn.Module:
    """Allocate each rank's shard of a meta-built (sharded) model and fill it at random.

    Weights ~ N(0, std²) per rank (a benchmark stand-in for a checkpoint: timings do not depend
    on the values), norm weights 1, biases 0; buffers that were real keep their constructed
    values, those created on the meta device (e.g. by a module swap) must be set by the caller.
    """
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()
               if b.device.type != "meta"}
    model.to_empty(device=device)
    for name, b in model.named_buffers():
        if name in buffers:
            b.copy_(buffers[name])
    rank = dist.get_rank() if dist.is_initialized() else 0
    gen = torch.Generator(device=device).manual_seed(seed * 1009 + rank)
    for mod_name, mod in model.named_modules():
        is_norm = "norm" in type(mod).__name__.lower() or "norm" in mod_name.rpartition(".")[2]
        for name, p in mod.named_parameters(recurse=False):
            local = p.to_local() if hasattr(p, "to_local") else p
            if name == "bias":
                local.zero_()
            elif is_norm:
                local.fill_(1.0)
            else:
                local.normal_(0.0, std, generator=gen)
    return model

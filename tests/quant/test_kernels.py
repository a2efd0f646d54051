"""fraqat.quant.kernels: the fused GPU fake-quant (through ops) equals the CPU reference bit
for bit (GPU only)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fraqat.quant import kernels, ops
from fraqat.quant.activations import ActQuantizer
from fraqat.quant.core import QParams, fake_quantize, grid_tensor, quantize_with_qparams

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_triton = pytest.mark.skipif(not (CUDA and kernels.triton_available()),
                                  reason="needs a CUDA device and Triton")


def _data(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2.0 + 0.3).to(dtype)


def _fq_and_grad(x: torch.Tensor, g: torch.Tensor, bits: float,
                 **kw) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    y = (ops.fake_quantize if x.is_cuda else fake_quantize)(x, bits, **kw)
    (dx,) = torch.autograd.grad(y, x, g)
    return y.detach().cpu(), dx.cpu()


def _compare(x: torch.Tensor, bits: float, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(forward, grad) of the CUDA path minus the CPU reference; both should be exactly 0."""
    g = _data(tuple(x.shape), seed=99, dtype=x.dtype)
    y_ref, dx_ref = _fq_and_grad(x, g, bits, **kw)
    y, dx = _fq_and_grad(x.cuda(), g.cuda(), bits, **kw)
    assert y.dtype == y_ref.dtype and dx.dtype == dx_ref.dtype and y.shape == y_ref.shape
    return y.float() - y_ref.float(), dx.float() - dx_ref.float()


def test_backend_selection_without_gpu_is_safe() -> None:
    assert kernels.current_backend() in kernels.BACKENDS
    with pytest.raises(ValueError, match="allowed"), kernels.use_backend("cuda-magic"):
        pass
    x = _data((4, 5), 0)
    assert torch.equal(fake_quantize(x, 4.5), fake_quantize(x, 4.5))  # CPU: reference only


def test_import_without_triton() -> None:
    """The module imports and reports 'reference' where Triton is missing (CI, this CPU box)."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "from fraqat.quant import kernels; assert not kernels.triton_available()\n"
            "assert kernels.current_backend() == 'reference'")
    env = {k: v for k, v in os.environ.items() if k != "FRAQAT_FUSED"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("granularity,group_size", [("tensor", 64), ("channel", 64),
                                                    ("group", 64), ("group", 48)])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2.0, 3.05, 4.0, 4.5, 8.0])
def test_triton_equals_cpu_reference(dtype, granularity, group_size, symmetric, bits) -> None:
    with kernels.use_backend("triton"):
        for shape in [(257, 130), (64, 3, 3, 3), (5000,)]:
            x = _data(shape, seed=int(bits * 10) + len(shape), dtype=dtype)
            dy, ddx = _compare(x, bits, granularity=granularity, group_size=group_size,
                               symmetric=symmetric)
            assert dy.abs().max() == 0 and ddx.abs().max() == 0, (shape, dy.abs().max())


@gpu
@needs_triton
def test_clamped_values_get_no_gradient() -> None:
    """Asymmetric fractional grids can clamp the extreme code: the per-group flag path."""
    with kernels.use_backend("triton"):
        seen = 0
        for gran in ["tensor", "channel", "group"]:
            for seed in range(6):
                x = _data((96, 200), seed)
                g = torch.ones_like(x)
                _, dx_ref = _fq_and_grad(x, g, 3.05, granularity=gran, symmetric=False)
                _, dx = _fq_and_grad(x.cuda(), g.cuda(), 3.05, granularity=gran,
                                     symmetric=False)
                assert torch.equal(dx, dx_ref)
                seen += int((dx_ref == 0).any())
        assert seen > 0, "no case clamped: the test lost its purpose"


@gpu
@needs_triton
def test_large_tensor_and_fallbacks() -> None:
    with kernels.use_backend("triton"):
        x = _data((4096, 3000), 5)  # several programs per row, partial last block
        for gran in ["tensor", "channel", "group"]:
            dy, ddx = _compare(x, 4.5, granularity=gran)
            assert dy.abs().max() == 0 and ddx.abs().max() == 0
        # axis 1 and non-contiguous inputs are copied to the kernel's layout: same values
        dy, ddx = _compare(_data((6, 40, 5), 6), 4.0, granularity="group", group_size=8,
                           axis=1)
        assert dy.abs().max() == 0 and ddx.abs().max() == 0
        dy, ddx = _compare(_data((40, 30), 7).t(), 4.0, granularity="tensor")
        assert dy.abs().max() == 0 and ddx.abs().max() == 0
        # a group too large for one program: the PyTorch reference runs on the GPU
        x = _data((2, kernels.MAX_GROUP + 1), 8).cuda()
        assert kernels.fake_quant(x, grid_tensor(4.0).cuda(), "channel", 64, True,
                                  torch.float32) is None
        ref = fake_quantize(x.cpu(), 4.0, granularity="channel")
        assert torch.equal(ops.fake_quantize(x, 4.0, granularity="channel").cpu(), ref)


@gpu
@needs_triton
def test_out_dtype_equals_cast_of_reference() -> None:
    x = _data((300, 200), 9)
    with kernels.use_backend("triton"):
        y = ops.fake_quantize(x.cuda(), 4.5, out_dtype=torch.bfloat16)
    assert torch.equal(y.cpu(), fake_quantize(x, 4.5).to(torch.bfloat16))


@gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_given_qparams_activation_path(dtype) -> None:
    qp = QParams(torch.tensor(0.02), torch.tensor(120, dtype=torch.int32), 0, 255)
    x = _data((64, 1000), 10, dtype)
    g = _data((64, 1000), 11)
    xr = x.float().requires_grad_(True)
    y_ref = quantize_with_qparams(xr, qp)
    (dx_ref,) = torch.autograd.grad(y_ref, xr, g)
    xc = x.cuda().requires_grad_(True)
    qpc = QParams(qp.scale.cuda(), qp.zero_point.cuda(), 0, 255)
    with kernels.use_backend("triton"):
        y = ops.fake_quantize_given(xc, qpc, out_dtype=torch.float32)
        y2 = ops.fake_quantize_given(xc, qpc, out_dtype=torch.bfloat16)
    (dx,) = torch.autograd.grad(y, xc, g.cuda())
    assert torch.equal(y.cpu(), y_ref.detach())
    assert torch.equal(dx.cpu(), dx_ref.to(dtype)) and (dx_ref == 0).any()
    assert torch.equal(y2.cpu(), y_ref.detach().to(torch.bfloat16))


@gpu
@needs_triton
def test_act_quantizer_on_gpu_matches_cpu() -> None:
    """Same frozen qparams (calibrated on the CPU), same outputs and layout on the GPU."""
    x = _data((8, 64, 6, 5), 12)
    cpu = ActQuantizer(8)
    cpu.observe()
    cpu(x * 0.5)
    cpu.freeze()
    gpu_q = ActQuantizer(8).cuda()
    gpu_q.load_state_dict(cpu.state_dict())
    xc = x.cuda().to(memory_format=torch.channels_last).requires_grad_(True)
    with kernels.use_backend("triton"):
        y = gpu_q(xc)
    assert y.is_contiguous(memory_format=torch.channels_last)  # cuDNN keeps its fast kernels
    assert torch.equal(y.cpu(), cpu(x))
    (dx,) = torch.autograd.grad(y, xc, torch.ones_like(y))
    assert dx.is_contiguous(memory_format=torch.channels_last)


@gpu
@needs_triton
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_cuda_op_backends_equal_cpu(backend: str) -> None:
    """The CUDA reference reads the bit-width from a device tensor: IEEE divisions, so it
    equals the CPU too (eager CUDA's ``t / python_float`` would not)."""
    x = _data((512, 384), 13)
    with kernels.use_backend(backend):
        for gran in ("tensor", "channel", "group"):
            dy, ddx = _compare(x, 4.5, granularity=gran)
            assert dy.abs().max() == 0 and ddx.abs().max() == 0, gran


@pytest.mark.skipif(not kernels.triton_available(), reason="needs Triton (its CPU interpreter)")
def test_packed_mask_kernels_in_interpreter() -> None:
    """The activation kernel's bit-packed mask and its backward equal the reference on any
    layout (Triton's CPU interpreter runs the same kernels on CPU tensors)."""
    code = """
import torch
from fraqat.quant import kernels, ops
from fraqat.quant.core import QParams, quantize_with_qparams
qp = QParams(torch.tensor(0.02), torch.tensor(120, dtype=torch.int32), 0, 255)
for seed, shape, cl in [(0, (3, 5, 7, 9), False), (1, (2, 6, 5, 4), True), (2, (4099,), False)]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 2 + 0.3
    x = x.to(memory_format=torch.channels_last) if cl else x
    g = torch.randn(shape, generator=gen)
    xr = x.clone().requires_grad_(True)
    yr = quantize_with_qparams(xr, qp)
    (dr,) = torch.autograd.grad(yr, xr, g)
    y, bits = kernels.fake_quant_given(x, qp.scale, qp.zero_point, 0, 255, torch.float32,
                                       mask="bits")
    assert bits.numel() == -(-x.numel() // 8)
    dx = kernels.masked_grad_bits(g, bits, tuple(y.shape), y.stride(), torch.float32)
    assert torch.equal(y, yr.detach()) and torch.equal(dx, dr) and (dr == 0).any()
    assert y.stride() == dx.stride() == torch.empty_like(x).stride()
    y0, none = kernels.fake_quant_given(x, qp.scale, qp.zero_point, 0, 255, torch.float32,
                                        mask="none")
    assert torch.equal(y0, y) and none.numel() == 0
    xo = x.clone().requires_grad_(True)  # the layers' path: autograd through the packed mask
    yo = ops.fake_quantize_given(xo, qp)
    (do,) = torch.autograd.grad(yo, xo, g)
    assert torch.equal(yo, yr.detach()) and torch.equal(do, dr)
    with torch.no_grad():
        assert torch.equal(ops.fake_quantize_given(x, qp), y)
"""
    env = {**os.environ, "TRITON_INTERPRET": "1", "FRAQAT_FUSED": "triton"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

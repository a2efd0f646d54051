"""The Triton kernels behind :mod:`fraqat.quant.kernels` (imported only where Triton is).

Same arithmetic as the PyTorch reference of :mod:`fraqat.quant.core`: IEEE divisions via
``div_rn``, ``x * (1/s)``, round half to even, the same clamp bounds.
"""

import os

import triton
import triton.language as tl

try:
    from triton.language.extra import libdevice
except ImportError:  # older Triton layouts
    libdevice = None
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (debugging)
_NATIVE_RINT = libdevice is not None and not _INTERPRET

if _NATIVE_RINT:
    @triton.jit
    def _rint(v):
        return libdevice.rint(v)  # round half to even, like torch.round
else:
    @triton.jit
    def _rint(v):  # round half to even via fp32's 2**23 (the interpreter lacks libdevice)
        a = tl.abs(v)
        r = tl.where(a < 8388608.0, (a + 8388608.0) - 8388608.0, a)
        return tl.where(v < 0, -r, r)

@triton.jit
def _scale_zp(nlo, hi, qconst, SYMMETRIC: tl.constexpr):
    """scale, 1/scale, zero point from -min(x,0) and max(x,0): the reference's math."""
    if SYMMETRIC:
        scale = tl.maximum(tl.math.div_rn(tl.maximum(nlo, hi), qconst), 1.1920928955078125e-07)
        inv = tl.math.div_rn(1.0, scale)
        zp = tl.zeros_like(scale)
    else:
        scale = tl.maximum(tl.math.div_rn(hi + nlo, qconst), 1.1920928955078125e-07)
        inv = tl.math.div_rn(1.0, scale)
        zp = _rint(nlo * inv)
    return scale, inv, zp

@triton.jit
def _quant(x, scale, inv, zp, qlo, qhi):
    """(clamp(round(x * (1/s)) + z) - z) * s, and whether the code was inside the range."""
    q = _rint(x * inv) + zp
    inside = (q >= qlo) & (q <= qhi)
    return (tl.minimum(tl.maximum(q, qlo), qhi) - zp) * scale, inside

@triton.jit
def _tensor_stats_kernel(x_ptr, stats_ptr, n, BLOCK: tl.constexpr):
    """Grid-wide -min(x,0), max(x,0): non-negative floats order like their int32 bits."""
    lo = tl.zeros([BLOCK], tl.float32)
    hi = tl.zeros([BLOCK], tl.float32)
    for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
        lo = tl.minimum(lo, x)
        hi = tl.maximum(hi, x)
    tl.atomic_max(stats_ptr, (-tl.min(lo, 0)).to(tl.int32, bitcast=True))
    tl.atomic_max(stats_ptr + 1, tl.max(hi, 0).to(tl.int32, bitcast=True))

@triton.jit
def _tensor_fwd_kernel(x_ptr, y_ptr, stats_ptr, grid_ptr, scale_ptr, zp_ptr, aux_ptr, n,
                       given_lo, given_hi, SYMMETRIC: tl.constexpr, GIVEN: tl.constexpr,
                       BLOCK: tl.constexpr, MASK: tl.constexpr):
    """GIVEN: fixed scale/zp, writes the in-range mask to aux (MASK 1: a byte per value,
    2: a bit per value, 0: none). Else: scale from the stats, written by program 0, and
    aux[0] = 1 if anything clamped."""
    if GIVEN:
        scale = tl.load(scale_ptr)
        inv = tl.math.div_rn(1.0, scale)
        zp = tl.load(zp_ptr).to(tl.float32)
        qlo = given_lo
        qhi = given_hi
    else:
        qlo = tl.load(grid_ptr + 1)
        qhi = tl.load(grid_ptr + 2)
        nlo = tl.load(stats_ptr).to(tl.float32, bitcast=True)
        hi = tl.load(stats_ptr + 1).to(tl.float32, bitcast=True)
        scale, inv, zp = _scale_zp(nlo, hi, tl.load(grid_ptr), SYMMETRIC)
        if tl.program_id(0) == 0:
            tl.store(scale_ptr, scale)
            tl.store(zp_ptr, zp)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    y, inside = _quant(x, scale, inv, zp, qlo, qhi)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)
    if GIVEN:
        if MASK == 1:
            tl.store(aux_ptr + offs, inside.to(tl.uint8), mask=valid)
        if MASK == 2:  # BLOCK is a multiple of 8: a program writes whole bytes
            flags = tl.reshape((inside & valid).to(tl.int32), (BLOCK // 8, 8))
            byte = tl.sum(flags << tl.arange(0, 8)[None, :], axis=1)
            boffs = tl.program_id(0) * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
            tl.store(aux_ptr + boffs, byte.to(tl.uint8), mask=boffs < (n + 7) // 8)
    else:
        if tl.max((valid & (inside == 0)).to(tl.int32), 0) > 0:
            tl.atomic_max(aux_ptr, 1)

@triton.jit
def _tensor_bwd_kernel(g_ptr, x_ptr, dx_ptr, grid_ptr, scale_ptr, zp_ptr, clamped_ptr, n,
                       BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    g = tl.load(g_ptr + offs, mask=valid, other=0.0)
    clamped = tl.load(clamped_ptr) != 0  # x is read only if something clamped
    scale = tl.load(scale_ptr)
    x = tl.load(x_ptr + offs, mask=valid & clamped, other=0.0).to(tl.float32)
    _, inside = _quant(x, scale, tl.math.div_rn(1.0, scale), tl.load(zp_ptr),
                       tl.load(grid_ptr + 1), tl.load(grid_ptr + 2))
    dx = tl.where(inside | (clamped == 0), g.to(tl.float32), 0.0)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=valid)

@triton.jit
def _masked_grad_kernel(g_ptr, m_ptr, dx_ptr, n, BLOCK: tl.constexpr, BITS: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    g = tl.load(g_ptr + offs, mask=valid, other=0.0)
    if BITS:
        byte = tl.load(m_ptr + offs // 8, mask=valid, other=0).to(tl.int32)
        inside = ((byte >> (offs % 8)) & 1) != 0
    else:
        inside = tl.load(m_ptr + offs, mask=valid, other=0) != 0
    tl.store(dx_ptr + offs, tl.where(inside, g.to(tl.float32), 0.0).to(
        dx_ptr.dtype.element_ty), mask=valid)

@triton.jit
def _group_offsets(n_groups, row_len, group, gpr, BLOCK_G: tl.constexpr,
                   G_PAD: tl.constexpr, EVEN: tl.constexpr):
    gid = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gvalid = gid < n_groups
    e = tl.arange(0, G_PAD)
    if EVEN:  # groups tile the tensor: a mask constant along rows keeps loads vectorized
        valid = gvalid[:, None] & (e[None, :] < G_PAD)
        offs = gid.to(tl.int64)[:, None] * G_PAD + e[None, :]
    else:
        col0 = (gid % gpr) * group
        glen = tl.minimum(group, row_len - col0)
        valid = gvalid[:, None] & (e[None, :] < glen[:, None])
        offs = (gid // gpr).to(tl.int64)[:, None] * row_len + col0[:, None] + e[None, :]
    return gid, gvalid, offs, valid

@triton.jit
def _group_fwd_kernel(x_ptr, y_ptr, grid_ptr, scale_ptr, zp_ptr, flag_ptr, n_groups,
                      row_len, group, gpr, SYMMETRIC: tl.constexpr, BLOCK_G: tl.constexpr,
                      G_PAD: tl.constexpr, EVEN: tl.constexpr):
    gid, gvalid, offs, valid = _group_offsets(n_groups, row_len, group, gpr, BLOCK_G, G_PAD,
                                              EVEN)
    x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    nlo = tl.maximum(-tl.min(x, 1), 0.0)  # padding zeros change neither, as in the reference
    hi = tl.maximum(tl.max(x, 1), 0.0)
    scale, inv, zp = _scale_zp(nlo, hi, tl.load(grid_ptr), SYMMETRIC)
    y, inside = _quant(x, scale[:, None], inv[:, None], zp[:, None], tl.load(grid_ptr + 1),
                       tl.load(grid_ptr + 2))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)
    tl.store(scale_ptr + gid, scale, mask=gvalid)
    tl.store(zp_ptr + gid, zp, mask=gvalid)
    clamped = tl.max((valid & (inside == 0)).to(tl.int32), 1)
    tl.store(flag_ptr + gid, clamped, mask=gvalid)

@triton.jit
def _group_bwd_kernel(g_ptr, x_ptr, dx_ptr, grid_ptr, scale_ptr, zp_ptr, flag_ptr, n_groups,
                      row_len, group, gpr, BLOCK_G: tl.constexpr, G_PAD: tl.constexpr,
                      EVEN: tl.constexpr):
    gid, gvalid, offs, valid = _group_offsets(n_groups, row_len, group, gpr, BLOCK_G, G_PAD,
                                              EVEN)
    clamped = tl.load(flag_ptr + gid, mask=gvalid, other=0) != 0
    scale = tl.load(scale_ptr + gid, mask=gvalid, other=1.0)
    zp = tl.load(zp_ptr + gid, mask=gvalid, other=0.0)
    x = tl.load(x_ptr + offs, mask=valid & clamped[:, None], other=0.0).to(tl.float32)
    _, inside = _quant(x, scale[:, None], tl.math.div_rn(1.0, scale)[:, None], zp[:, None],
                       tl.load(grid_ptr + 1), tl.load(grid_ptr + 2))
    g = tl.load(g_ptr + offs, mask=valid, other=0.0)
    dx = tl.where(inside | (clamped[:, None] == 0), g.to(tl.float32), 0.0)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=valid)

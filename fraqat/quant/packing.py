"""Integer codes in the smallest container: two 4-bit codes per byte, or one byte, or int32.

Pure functions, no layers. A code range ``[qmin, qmax]`` (:func:`fraqat.quant.core.code_range`,
fractional bit-widths included: 3.5 bits is [-5, 5]) is stored offset by ``qmin`` as unsigned
values ``u = code - qmin`` in ``[0, qmax - qmin]``, so one layout serves the symmetric and the
asymmetric grids. 4-bit values pack low nibble first (the ONNX INT4 order): element ``2i`` in
bits 0-3 of byte ``i``, element ``2i + 1`` in bits 4-7.
"""

from __future__ import annotations

import math

import torch

# container bits -> storage dtype (values per byte follow from the bits)
STORAGE = {4: torch.uint8, 8: torch.uint8, 32: torch.int32}


def container_bits(qmin: int, qmax: int) -> int:
    """The smallest container of :data:`STORAGE` that holds ``qmax - qmin + 1`` levels."""
    levels = qmax - qmin + 1
    for bits in sorted(STORAGE):
        if levels <= 2**bits:
            return bits
    raise ValueError(f"{levels} levels do not fit a 32-bit container")


def packed_numel(numel: int, bits: int) -> int:
    """Storage elements for ``numel`` codes: ceil(numel / 2) bytes at 4 bits, else numel."""
    return math.ceil(numel / 2) if bits == 4 else numel


def pack(codes: torch.Tensor, qmin: int, bits: int) -> torch.Tensor:
    """Flat storage of integer ``codes`` (any shape) offset by ``qmin``, ``bits`` per code."""
    u = (codes.reshape(-1).to(torch.int64) - qmin)
    if u.numel() and (int(u.min()) < 0 or int(u.max()) >= 2**bits):
        raise ValueError(f"codes outside [{qmin}, {qmin + 2**bits - 1}] for a {bits}-bit container")
    if bits != 4:
        return u.to(STORAGE[bits])
    if u.numel() % 2:
        u = torch.cat([u, u.new_zeros(1)])
    pairs = u.view(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8)


def unpack(stored: torch.Tensor, qmin: int, bits: int, numel: int) -> torch.Tensor:
    """The flat int32 codes :func:`pack` stored (``numel`` of them)."""
    if bits == 4:
        u = torch.stack([stored & 0x0F, stored >> 4], dim=1).reshape(-1)[:numel]
    else:
        u = stored.reshape(-1)[:numel]
    return u.to(torch.int32) + qmin

"""fraqat: Quantization Aware Training with Fractional bits for diffusion models.

The public names load lazily (PEP 562), so ``import fraqat.paths`` does not pull in the
quantization code: each stage's imports, and so its DVC code dependencies, stay its own.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"QuantConfig": "quant.layers", "quantize_model": "quant.layers",
            "set_weight_bits": "quant.layers",
            "fake_quantize": "quant.ops", "load_converted": "quant.converted",
            "make_schedule": "schedule"}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fraqat' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fraqat.{_EXPORTS[name]}"), name)

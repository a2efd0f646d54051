"""fraqat: Quantization Aware Training with Fractional bits for diffusion models."""

from fraqat.modules import QuantConfig, quantize_model, set_weight_bits
from fraqat.ops import fake_quantize
from fraqat.schedule import make_schedule

__all__ = ["QuantConfig", "fake_quantize", "make_schedule", "quantize_model", "set_weight_bits"]
__version__ = "0.1.0"

"""Fake quantization: the pure core, its GPU kernels, the one dispatch point, quantized layers."""

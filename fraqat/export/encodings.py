"""AIMET encoding format 1.0.0 (what aimet-onnx 2.x ``export`` writes), keyed by ONNX tensor names.

AIMET dequantizes ``x = (q + offset) * scale`` with ``q`` unsigned in [0, 2**bw - 1], so a
symmetric signed grid has ``offset = -2**(bw-1)`` (-8 at 4 bits, -128 at 8 bits: the
narrow-range codes [-7, 7] lie inside and -8 is never used) and an asymmetric one
``offset = -zero_point``. ``qnn-onnx-converter --quantization_overrides`` and aimet-onnx's
``load_encodings_to_sim`` read this file beside the float graph (:func:`fraqat.export.strip_qdq`).
"""

from __future__ import annotations

import numpy as np

from fraqat.export.specs import ActSpec, WeightSpec

AIMET_VERSION = "1.0.0"


def aimet_encodings(weights: dict[str, WeightSpec], acts: dict[str, ActSpec],
                    act_tensors: dict[str, str], weight_tensors: dict[str, str]) -> dict:
    """One param encoding per quantized weight, one activation encoding per quantized tensor."""
    params = [_param_encoding(weight_tensors[n], s) for n, s in weights.items()]
    seen: dict[str, dict] = {}
    for name, spec in acts.items():
        seen.setdefault(act_tensors[name], _act_encoding(act_tensors[name], spec))
    return {"version": AIMET_VERSION, "activation_encodings": list(seen.values()),
            "param_encodings": params}


def _offsets(bits: int, symmetric: bool, zero_point: np.ndarray) -> list[int]:
    if symmetric:
        return [-(2 ** (bits - 1))] * zero_point.size
    return [-int(z) for z in zero_point.reshape(-1)]


def _param_encoding(tensor: str, spec: WeightSpec) -> dict:
    enc = {"name": tensor, "dtype": "INT", "enc_type": spec.enc_type, "bw": spec.bits,
           "is_sym": spec.symmetric, "scale": [float(s) for s in spec.scale.reshape(-1)],
           "offset": _offsets(spec.bits, spec.symmetric, spec.zero_point)}
    if spec.block_size is not None:
        enc["block_size"] = spec.block_size
    return enc


def _act_encoding(tensor: str, spec: ActSpec) -> dict:
    return {"name": tensor, "dtype": "INT", "enc_type": "PER_TENSOR", "bw": spec.bits,
            "is_sym": spec.symmetric, "scale": [spec.scale],
            "offset": _offsets(spec.bits, spec.symmetric, np.array([spec.zero_point]))}

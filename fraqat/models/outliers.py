"""Function-preserving weight outliers, like those of large pretrained DiTs.

The embedded teacher's weights are nearly Gaussian (abs-max/std 2-5), so a 4-bit grid fits
them; the paper's models have a few channels far outside the bulk, which is what makes direct
low-bit QAT hard. Rescaling a channel of a producer by 1/a and the matching input column of its
consumer by a leaves the FP function unchanged, because the path between them is linear in that
channel:

* ``attn.to_v`` output row c (and bias) / a   ->   ``attn.to_out[0]`` input column c * a
  (softmax and Sana's linear attention are both linear in V, channel by channel);
* ``ff.conv_depth`` channel c of the value half (and bias) / a   ->   ``ff.conv_point`` input
  column c * a (GLUMBConv: ``x * silu(gate)`` is linear in x).

:func:`add_outliers` does this on ``fraction`` of the channels of every such pair;
:func:`weight_stats` reports abs-max/std and kurtosis (Pearson, Gaussian = 3) of each weight.
"""

from __future__ import annotations

import torch
from torch import nn


def _pairs(model: nn.Module) -> list[tuple[str, nn.Linear, nn.Linear, int]]:
    """(name, producer, consumer, number of channels that may be rescaled)."""
    out = []
    for name, mod in model.named_modules():
        if hasattr(mod, "to_v") and hasattr(mod, "to_out"):
            out.append((f"{name}.to_v->to_out", mod.to_v, mod.to_out[0], mod.to_v.out_features))
        if hasattr(mod, "conv_depth") and hasattr(mod, "conv_point"):
            out.append((f"{name}.conv_depth->conv_point", mod.conv_depth, mod.conv_point,
                        mod.conv_point.in_channels))  # the value half of conv_depth's output
    return out


@torch.no_grad()
def add_outliers(model: nn.Module, fraction: float, factor: float,
                 seed: int = 0) -> dict[str, list[int]]:
    """Scale ``max(1, round(fraction * n))`` seeded channels of every pair (module docstring)
    by ``factor`` in the consumer and ``1 / factor`` in the producer, in place; returns the
    rescaled channels per pair."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} is not allowed (allowed: a number in (0, 1])")
    if not factor > 0:
        raise ValueError(f"factor={factor!r} is not allowed (allowed: a number > 0)")
    g = torch.Generator().manual_seed(seed)
    chosen = {}
    for name, producer, consumer, n in _pairs(model):
        idx = torch.randperm(n, generator=g)[:max(1, round(fraction * n))]
        producer.weight[idx] /= factor
        if producer.bias is not None:
            producer.bias[idx] /= factor
        consumer.weight[:, idx] *= factor
        chosen[name] = sorted(idx.tolist())
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no value/output or GLU pairs to rescale "
                         "(allowed: a Sana-style transformer)")
    return chosen


def weight_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """abs-max/std and kurtosis of every Linear/Conv weight with more than one element."""
    out = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and w is not None and w.numel() > 1:
            w = w.detach().double().flatten()
            z = (w - w.mean()) / w.std()
            out[name] = {"absmax_over_std": float(w.abs().max() / w.std()),
                         "kurtosis": float((z ** 4).mean())}
    return out


def summarize(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    """Max and median over layers of both statistics (what the report quotes)."""
    def col(key: str) -> torch.Tensor:
        return torch.tensor([s[key] for s in stats.values()])
    return {f"{agg}_{key}": float(fn(col(key))) for key in ("absmax_over_std", "kurtosis")
            for agg, fn in (("max", torch.max), ("median", torch.median))}

"""The report's figures: pure functions from tables/arrays to PNG files (Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from fraqat.io import atomic_path
from fraqat.methods import NAMES


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_fid(table: pd.DataFrame, path: Path, noise: str = "noise") -> None:
    """FID per method with error bars; the ``noise`` row's FID goes into the title."""
    models = table[table["method"] != noise]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(models["method"], models["fid_mean"], yerr=models["fid_std"].fillna(0), capsize=4,
           color="tab:blue")
    ax.set_ylabel("FID (to held-out real digits)")
    noise_fid = table.loc[table["method"] == noise, "fid_mean"]
    title = "FID per method (mean ± std over seeds)"
    if len(noise_fid):
        title += f"; noise: {float(noise_fid.iloc[0]):.1f}"
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def plot_training(logs: dict[tuple[str, int], pd.DataFrame], path: Path) -> None:
    fig, (ax_loss, ax_bits) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    colors = {m: f"C{i}" for i, m in enumerate(NAMES)}
    for (method, seed), df in sorted(logs.items()):
        color = colors.get(method, "k")
        label = method if seed == min(s for m, s in logs if m == method) else None
        style = ["-", "--", ":", "-."][seed % 4]
        if "loss" in df:
            ax_loss.plot(df["step"], df["loss"], style, color=color, label=label, lw=1)
        if "bits" in df:
            ax_bits.plot(df["step"], df["bits"], style, color=color, label=label, lw=1)
    ax_loss.set_ylabel("distillation loss")
    if logs:
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8)
    else:
        ax_loss.text(0.5, 0.5, "no training logs", ha="center", transform=ax_loss.transAxes)
    ax_bits.set_ylabel("weight bits")
    ax_bits.set_xlabel("step")
    ax_loss.set_title("training (line style = seed)", fontsize=9)
    _save(fig, path)


def plot_mosaic(rows: list[tuple[str, torch.Tensor]], path: Path, columns: int,
                pad: int = 1) -> None:
    """One row of 8x8 images per (name, images); drawn as a single image (a 100-axes figure
    takes seconds to lay out)."""
    n = min([columns, *[len(x) for _, x in rows]])
    side, rgb = rows[0][1].shape[-1], rows[0][1].shape[1] == 3  # a real pipeline's RGB images
    cell = side + pad
    mosaic = np.full((len(rows) * cell + pad, n * cell + pad, 3 if rgb else 1), np.nan)
    for r, (_, images) in enumerate(rows):
        for c in range(n):
            y, x = pad + r * cell, pad + c * cell
            mosaic[y : y + side, x : x + side] = \
                images[c].float().clamp(-1, 1).permute(1, 2, 0).numpy()[..., : mosaic.shape[2]]
    fig, ax = plt.subplots(figsize=(n * 0.45 + 1, len(rows) * 0.45 + 0.5))
    if rgb:
        ax.imshow(np.nan_to_num((mosaic + 1) / 2, nan=0.75), interpolation="nearest")
    else:
        cmap = plt.get_cmap("gray_r").with_extremes(bad="#9fb4d9")
        ax.imshow(mosaic[..., 0], cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    mid = (side - 1) / 2
    ax.set_yticks([pad + r * cell + mid for r in range(len(rows))], [name for name, _ in rows],
                  fontsize=7)
    ax.set_xticks([pad + c * cell + mid for c in range(n)], [str(c % 10) for c in range(n)],
                  fontsize=7)
    ax.tick_params(length=0)
    ax.set_title("samples: the same prompts (digit below) and noise for every method", fontsize=8)
    _save(fig, path)

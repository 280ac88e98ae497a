"""Figures of the CT application: images as PNG and the benchmark figure (written atomically)."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from fpntools.atomic_io import atomic_write_bytes

__all__ = ["save_png", "save_bench_figure"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(path: str | os.PathLike, fig: Any) -> None:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def save_png(path: str | os.PathLike, images: np.ndarray) -> None:
    """One image ``(n, n)`` or a row of images ``(N, n, n)``, grey levels ``[0, 1]``, as a PNG."""
    plt = _pyplot()
    imgs = images[None] if images.ndim == 2 else images
    n = imgs.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3), squeeze=False)
    for ax, im in zip(axes[0], imgs):
        ax.imshow(im, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.tight_layout()
    _save_figure(path, fig)


def save_bench_figure(path: str | os.PathLike, truth: np.ndarray, recs: dict[str, np.ndarray], n_show: int = 2) -> None:
    """Ground truth and each method's reconstruction (top row per image, with its PSNR) and the absolute error
    map below, for the first ``n_show`` images."""
    plt = _pyplot()
    n_show = min(n_show, truth.shape[0])
    cols = 1 + len(recs)
    fig, axes = plt.subplots(2 * n_show, cols, figsize=(2.6 * cols, 2.6 * 2 * n_show), squeeze=False)
    for i in range(n_show):
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top[0].imshow(truth[i], cmap="gray", vmin=0, vmax=1)
        top[0].set_title(f"truth #{i}", fontsize=9)
        bottom[0].axis("off")
        for j, (name, rec) in enumerate(recs.items(), start=1):
            err = np.abs(rec[i] - truth[i])
            mse = float(np.mean((rec[i] - truth[i]) ** 2))
            psnr_i = 10 * np.log10(1.0 / max(mse, 1e-12))
            top[j].imshow(rec[i], cmap="gray", vmin=0, vmax=1)
            top[j].set_title(f"{name} {psnr_i:.1f} dB", fontsize=9)
            bottom[j].imshow(err, cmap="magma", vmin=0, vmax=0.25)
            bottom[j].set_title(f"|{name} - truth|", fontsize=9)
        for ax in list(top) + list(bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    _save_figure(path, fig)

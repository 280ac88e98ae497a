"""Figures of the CT application: images as PNG and the benchmark figure (written atomically)."""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

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


def save_bench_figure(path: str | os.PathLike, panels: Sequence[Any], title: str = "",
                      error_max: float = 0.25) -> None:
    """The figure of ``ct bench``: per panel (a ground truth and each method's reconstruction,
    :class:`problems.ct.bench.FigurePanel`) one row with the truth and the reconstructions (PSNR in the title)
    and one row with the absolute error maps ``|x_method - x|`` (colour scale ``[0, error_max]``)."""
    from fpntools.metrics import psnr

    plt = _pyplot()
    if not panels:
        raise ValueError("save_bench_figure needs at least one panel")
    cols = 1 + max(len(p.recs) for p in panels)
    fig, axes = plt.subplots(2 * len(panels), cols, figsize=(2.6 * cols, 2.7 * 2 * len(panels)), squeeze=False,
                             constrained_layout=True)
    for i, panel in enumerate(panels):
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top[0].imshow(panel.truth, cmap="gray", vmin=0, vmax=1)
        top[0].set_title(f"truth: {panel.label}", fontsize=8)
        for ax in list(top) + list(bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in list(top[len(panel.recs) + 1:]) + [bottom[0]] + list(bottom[len(panel.recs) + 1:]):
            ax.axis("off")
        im = None
        for j, (name, rec) in enumerate(panel.recs.items(), start=1):
            top[j].imshow(rec, cmap="gray", vmin=0, vmax=1)
            top[j].set_title(f"{name}: {float(psnr(rec, panel.truth)):.2f} dB", fontsize=9)
            im = bottom[j].imshow(np.abs(rec - panel.truth), cmap="magma", vmin=0, vmax=error_max)
            bottom[j].set_title(f"|{name} - truth|", fontsize=9)
        if im is not None:
            fig.colorbar(im, ax=list(bottom[1:len(panel.recs) + 1]), fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=10)
    _save_figure(path, fig)

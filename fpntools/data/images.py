"""Image folders: ``root/<class name>/<image file>``, one sub-directory per class (sorted names -> labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fpntools.errors import UserInputError

__all__ = ["load_image_folder", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def load_image_folder(
    root: str | Path, size: tuple[int, int] | None = None, grayscale: bool = False
) -> tuple[Tensor, Tensor, list[str]]:
    """Read every image under ``root/<class>/`` into ``(images (N, C, H, W) float in [0, 1], labels, classes)``.

    Images are converted to RGB (``C = 3``) or grayscale (``C = 1``). Without ``size`` all images must share
    one size; with ``size = (H, W)`` they are resized bilinearly.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserInputError(f"image folder {root} has no class sub-directories (expected root/<class>/<image>)")
    images: list[Tensor] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserInputError(f"class folder {root / name} contains no images ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("L" if grayscale else "RGB"), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise UserInputError(f"cannot read image {f}: {exc}") from None
            t = torch.from_numpy(arr.copy())
            t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
            if size is not None:
                t = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]
            elif images and t.shape != images[0].shape:
                raise UserInputError(
                    f"image {f} has size {tuple(t.shape[1:])} but earlier images have {tuple(images[0].shape[1:])}; "
                    "pass size=(H, W) to resize"
                )
            images.append(t)
            labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), classes

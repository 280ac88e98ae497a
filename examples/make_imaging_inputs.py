"""Write the inputs of the README's imaging examples into a folder (default ``out/imaging``).

``camera.png``: scikit-image's camera picture, central 128x128 crop; ``noisy.png``: the same plus Gaussian noise
of standard deviation 0.1 (pixel range [0, 1]); ``mask.png``: white = known pixel, black = missing, 25% of the
8x8 blocks missing; ``coffee_noisy.png``: scikit-image's coffee picture (colour), central 256x256 crop, plus
Gaussian noise of standard deviation 0.1 on every channel. ``python examples/make_imaging_inputs.py [FOLDER]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from skimage import data, io


def main(folder: str = "out/imaging", size: int = 128, sigma: float = 0.1, missing: float = 0.25) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    img = data.camera().astype(np.float64) / 255.0
    i0, j0 = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    clean = img[i0 : i0 + size, j0 : j0 + size]
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + sigma * rng.standard_normal(clean.shape), 0.0, 1.0)
    blocks = rng.random((size // 8, size // 8)) >= missing
    mask = np.kron(blocks, np.ones((8, 8), dtype=bool))
    to8 = lambda a: (np.round(a * 255)).astype(np.uint8)  # noqa: E731
    io.imsave(out / "camera.png", to8(clean), check_contrast=False)
    io.imsave(out / "noisy.png", to8(noisy), check_contrast=False)
    io.imsave(out / "mask.png", to8(mask.astype(np.float64)), check_contrast=False)
    rgb = data.coffee().astype(np.float64) / 255.0
    i0, j0 = (rgb.shape[0] - 256) // 2, (rgb.shape[1] - 256) // 2
    rgb = rgb[i0 : i0 + 256, j0 : j0 + 256]
    io.imsave(out / "coffee_noisy.png", to8(np.clip(rgb + sigma * rng.standard_normal(rgb.shape), 0.0, 1.0)),
              check_contrast=False)
    print(f"wrote {out}/camera.png, noisy.png, mask.png ({size}x{size}, sigma {sigma}, {missing:.0%} blocks missing), "
          f"coffee_noisy.png (256x256 RGB, sigma {sigma})")


if __name__ == "__main__":
    main(*sys.argv[1:2])

"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; ships with scikit-learn, no download)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = ["Split", "load_digits"]


@dataclass
class Split:
    """A train/test split of tensors (``x`` float, ``y`` long)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def train(self) -> TensorDataset:
        return TensorDataset(self.x_train, self.y_train)

    @property
    def test(self) -> TensorDataset:
        return TensorDataset(self.x_test, self.y_test)


def load_digits(flat: bool = True, test_fraction: float = 0.25, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> Split:
    """Digits scaled to ``[0, 1]`` then standardised with the training mean/std (per pixel-agnostic scalar).

    ``flat=True`` gives ``(N, 64)``, ``flat=False`` images ``(N, 1, 8, 8)``. The split is stratified-free,
    a seeded random permutation (``test_fraction`` of the samples for testing).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sk

    d = _sk()
    x = torch.tensor(d.data, dtype=dtype) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    if not flat:
        x = x.reshape(-1, 1, 8, 8)
    return Split(x[tr], y[tr], x[te], y[te])

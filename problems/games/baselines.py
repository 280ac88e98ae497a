"""Baselines for equilibrium prediction: regress the equilibrium directly, or predict a constant.

* :class:`MLPRegressor`: ``z(d) = P_C(MLP(s(d)))`` (``s`` standardises the contexts as in the N-FPN), an MLP whose ``n + m`` outputs are projected onto
  ``C = Delta_n x Delta_m`` (so the prediction is always a pair of mixed strategies), trained on the same
  squared error as the N-FPN.
* :class:`ConstantPredictor`: the mean training equilibrium ``(mean x*, mean y*)`` (in ``C`` by convexity),
  whatever the context.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from problems.games.model import ContextScaler, check_context_tensor, mlp, simplex_product

__all__ = ["MLPRegressor", "ConstantPredictor"]


class MLPRegressor(nn.Module):
    """``d -> P_C(MLP(d))`` with ``layers`` hidden layers of width ``hidden``; ``forward`` returns ``(z, None)``."""

    def __init__(self, n: int, m: int, context_dim: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.n, self.m, self.context_dim = n, m, context_dim
        self.net = mlp(context_dim, n + m, hidden, layers)
        self.scaler = ContextScaler(context_dim)
        self.project = simplex_product(n, m)

    def fit_contexts(self, d: Tensor) -> None:
        """Standardise contexts with the training contexts ``d`` (as the N-FPN does)."""
        self.scaler.fit(d)

    def forward(self, d: Tensor) -> tuple[Tensor, None]:
        d = check_context_tensor(d, self.context_dim)
        return self.project(self.net(self.scaler(d))), None

    def predict(self, d: Tensor) -> Tensor:
        return self.forward(d)[0]


class ConstantPredictor(nn.Module):
    """Predicts the stored mean equilibrium ``z_bar`` for every context; ``fit(z_train)`` sets it."""

    def __init__(self, n: int, m: int, context_dim: int) -> None:
        super().__init__()
        self.n, self.m, self.context_dim = n, m, context_dim
        self.register_buffer(
            "z_bar", torch.cat([torch.full((n,), 1.0 / n), torch.full((m,), 1.0 / m)])
        )

    def fit(self, z: Tensor) -> "ConstantPredictor":
        """Store the mean of training equilibria ``z`` ``(N, n + m)``."""
        self.z_bar.copy_(z.mean(dim=0))
        return self

    def forward(self, d: Tensor) -> tuple[Tensor, None]:
        d = check_context_tensor(d, self.context_dim)
        return self.z_bar.to(d).expand(d.shape[0], -1).clone(), None

    def predict(self, d: Tensor) -> Tensor:
        return self.forward(d)[0]

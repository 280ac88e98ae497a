"""Engine quickstart: one DEQ layer, every solver and backward mode, and what `info` tells you.

Run: python examples/engine_quickstart.py
"""

from __future__ import annotations

import torch
from torch import nn

import fpntools


class Layer(nn.Module):
    """z -> tanh(W z + U x): a contraction because ||W||_2 = 0.9."""

    def __init__(self, width: int = 64, in_dim: int = 16) -> None:
        super().__init__()
        self.W = nn.Linear(width, width, bias=False)
        self.U = nn.Linear(in_dim, width)
        with torch.no_grad():
            self.W.weight.mul_(0.9 / torch.linalg.matrix_norm(self.W.weight, 2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.W(z) + self.U(x))

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.W.in_features)


def main() -> None:
    torch.manual_seed(0)
    layer = Layer()
    x = torch.randn(32, 16)

    print("forward solvers (tol 1e-6):")
    for solver in ["picard", "km", "anderson", "broyden"]:
        with torch.no_grad():
            _, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), solver, tol=1e-6, max_iter=200)
        print("  ", info.summary())

    print("backward modes: cosine similarity of the W-gradient with the implicit gradient")
    grads = {}
    for backward in ["implicit", "unroll", "phantom", "jfb"]:
        layer.zero_grad()
        z, info = fpntools.fixed_point(lambda z: layer(z, x), layer.initial_state(x), backward=backward, tol=1e-6)
        z.square().sum().backward()
        grads[backward] = layer.W.weight.grad.flatten().clone()
    for name, g in grads.items():
        print(f"   {name:9s} {torch.nn.functional.cosine_similarity(g, grads['implicit'], dim=0).item():.6f}")

    print("as a module:")
    deq = fpntools.FixedPoint(layer, solver="anderson", backward="implicit", tol=1e-5, m=6)
    z, info = deq(x)
    print("  ", z.shape, info.summary())


if __name__ == "__main__":
    main()

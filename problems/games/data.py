"""Data sets of (context, certified equilibrium) pairs for a contextual game family.

``make_dataset(GameDataConfig(...))`` samples contexts, builds the games, computes their equilibria
(:func:`problems.games.equilibria.solve_games`) and keeps only certified samples:

* the Nash gap of the stored equilibrium under the true game is at most ``max_gap`` (default ``1e-9``);
* for general-sum families, with ``unique_only`` (default), only games whose support enumeration lists
  exactly one equilibrium are kept, so the target ``d -> z*(d)`` is a function.  Contexts are drawn in
  rounds until enough are accepted; the acceptance rate is reported in ``GameDataset.acceptance``
  (the data distribution is the context distribution *conditioned on a unique equilibrium*).

Zero-sum games from continuous distributions have a unique equilibrium with probability one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from fpntools.errors import UserInputError
from problems.games.equilibria import nash_gap, solve_games
from problems.games.families import ContextualGameFamily, make_family

__all__ = ["GameDataConfig", "GameDataset", "make_dataset", "nash_gap_torch", "MAX_GAMES"]

#: Most games a data set may hold (train + test); each is solved exactly, about a millisecond apiece.
MAX_GAMES = 1_000_000


@dataclass
class GameDataConfig:
    """Which games and how many.

    Attributes:
        family: ``"rps"``, ``"zero-sum"`` or ``"general"`` (see :mod:`problems.games.families`).
        n_actions: actions per player for the random families (``rps`` is always 3x3).
        context_dim: dimension ``p`` of the context.
        n_train, n_test: sizes of the training and held-out splits (disjoint context draws).
        family_seed: seed of the context -> payoff map (the *task*).
        data_seed: seed of the context draws (the *samples*).
        unique_only: keep only general-sum games with a unique equilibrium.
        max_gap: certification threshold on the Nash gap.
    """

    family: str = "rps"
    n_actions: int = 3
    context_dim: int = 4
    n_train: int = 1000
    n_test: int = 500
    family_seed: int = 0
    data_seed: int = 1
    unique_only: bool = True
    max_gap: float = 1e-9

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_test < 0:
            raise UserInputError(f"need n_train >= 1 and n_test >= 0, got {self.n_train}, {self.n_test}")
        if self.n_train + self.n_test > MAX_GAMES:
            raise UserInputError(f"n_train + n_test must be at most {MAX_GAMES:,}, got {self.n_train + self.n_test:,}")
        if not 0.0 <= self.max_gap < float("inf"):
            raise UserInputError(f"max_gap must be a finite number >= 0, got {self.max_gap}")

    def make_family(self) -> ContextualGameFamily:
        return make_family(self.family, self.n_actions, self.context_dim, self.family_seed)

    def sizes(self) -> tuple[int, int, int]:
        """``(n, m, context_dim)`` of the family's games (checked, nothing allocated)."""
        fam = self.make_family()
        return fam.n, fam.m, self.context_dim

    def splits(self) -> tuple["GameDataset", "GameDataset"]:
        """``(train, test)``: :func:`make_dataset` of this configuration."""
        return make_dataset(self)


@dataclass
class GameDataset:
    """Contexts ``d`` ``(N, p)``, games ``A, B`` ``(N, n, m)``, equilibria ``x, y`` and their Nash ``gap``.

    ``A``, ``B`` and ``gap`` are ``None`` for data without payoffs (a user's file of contexts and equilibria):
    then no Nash gap can be scored (:attr:`has_payoffs`).
    """

    d: np.ndarray
    A: np.ndarray | None
    B: np.ndarray | None
    x: np.ndarray
    y: np.ndarray
    gap: np.ndarray | None
    acceptance: float = 1.0
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.d.shape[0])

    @property
    def n(self) -> int:
        return int(self.x.shape[1])

    @property
    def m(self) -> int:
        return int(self.y.shape[1])

    @property
    def has_payoffs(self) -> bool:
        """Whether the true games are known (so Nash gaps can be scored)."""
        return self.A is not None and self.B is not None

    def tensors(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``(d, z*)`` as tensors, ``z* = (x*, y*)`` of shape ``(N, n + m)``."""
        return torch.as_tensor(self.d, dtype=dtype), torch.as_tensor(np.concatenate([self.x, self.y], 1), dtype=dtype)

    def subset(self, idx: np.ndarray | slice) -> "GameDataset":
        def part(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return GameDataset(
            self.d[idx], part(self.A), part(self.B), self.x[idx], self.y[idx], part(self.gap), self.acceptance, self.info
        )

    def nash_gap(self, z: Tensor | np.ndarray) -> np.ndarray:
        """Nash gap under the *true* games of predictions ``z = (x, y)`` ``(N, n + m)`` (float64); raises
        ``ValueError`` for data without payoffs."""
        if self.A is None or self.B is None:
            raise ValueError("this data set holds no payoff matrices: no Nash gap")
        z = z.detach().cpu().double().numpy() if isinstance(z, Tensor) else np.asarray(z, dtype=np.float64)
        return nash_gap(self.A, self.B, z[:, : self.n], z[:, self.n :])


def nash_gap_torch(A: Tensor, B: Tensor, z: Tensor) -> Tensor:
    """Differentiable torch version of :func:`problems.games.equilibria.nash_gap` for ``z = (x, y)``."""
    n = A.shape[1]
    x, y = z[:, :n], z[:, n:]
    Ay = torch.bmm(A, y.unsqueeze(-1)).squeeze(-1)
    Btx = torch.bmm(B.transpose(1, 2), x.unsqueeze(-1)).squeeze(-1)
    return Ay.max(1).values - (x * Ay).sum(1) + Btx.max(1).values - (y * Btx).sum(1)


def _solve_certified(
    family: ContextualGameFamily, d: np.ndarray, config: GameDataConfig
) -> tuple[np.ndarray, ...]:
    A, B = family.payoffs(d)
    eq = solve_games(A, B, family.zero_sum)
    keep = np.isfinite(eq.gap) & (eq.gap <= config.max_gap)
    if not family.zero_sum and config.unique_only:
        keep &= eq.count == 1
    return d[keep], A[keep], B[keep], eq.x[keep], eq.y[keep], eq.gap[keep]


def make_dataset(config: GameDataConfig, max_rounds: int = 20) -> tuple[GameDataset, GameDataset]:
    """Certified ``(train, test)`` data sets for ``config`` (module docstring). Deterministic given the seeds."""
    family = config.make_family()
    total = config.n_train + config.n_test
    rng_seed = config.data_seed
    parts: list[tuple[np.ndarray, ...]] = []
    drawn = accepted = 0
    for r in range(max_rounds):
        need = total - accepted
        if need <= 0:
            break
        draw = need if r == 0 and family.zero_sum else int(need * 2.5) + 16
        d = family.sample_contexts(draw, seed=rng_seed + 1000003 * r)
        part = _solve_certified(family, d, config)
        drawn += draw
        accepted += len(part[0])
        parts.append(part)
    if accepted < total:
        raise RuntimeError(f"only {accepted} of {total} certified games after {drawn} draws")
    d, A, B, x, y, gap = (np.concatenate(cols)[:total] for cols in zip(*parts))
    rate = accepted / max(drawn, 1)
    info = {"family": family.describe(), "method": "lp" if family.zero_sum else "support-enumeration", **asdict(config)}
    full = GameDataset(d, A, B, x, y, gap, rate, info)
    return full.subset(slice(0, config.n_train)), full.subset(slice(config.n_train, total))

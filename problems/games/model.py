"""Nash fixed point network (N-FPN): predict the equilibrium of a contextual game as the fixed point of a
projected-gradient map of a *learned* game (Heaton, McKenzie, Li, Wu Fung, Osher, Yin, "Learn to predict
equilibria via fixed point networks").

Learned game.  A small network maps the (standardised, :class:`ContextScaler`) context ``d`` to two ``n x m``
matrices ``Z(d)``, ``G_raw(d)``, (optionally, ``linear_terms``) a vector ``q(d) = (q_x(d), q_y(d))`` in
``R^{n+m}`` and (optionally, ``temperature = T > 0``) the players' regularisers ``mu_x(d), mu_y(d)``::

    mu_x(d) = mu exp(T tanh t_x(d)),   mu_y(d) = mu exp(T tanh t_y(d))           (mu_x = mu_y = mu for T = 0)
    G(d) = (gamma / mu) sqrt(mu_x mu_y) G_raw(d) / max(1, ||G_raw(d)||_F)      (common-interest part)
    A_theta(d) = Z(d) + G(d),   B_theta(d) = -Z(d) + G(d)                     (player payoffs)

and each player maximises its bilinear payoff minus a linear term and a quadratic regulariser:
player 1 ``x^T A_theta y - q_x^T x - mu_x/2 ||x||^2``, player 2 ``x^T B_theta y - q_y^T y - mu_y/2 ||y||^2``.
The game gradient (the stacked gradients of the players' *costs*) of ``z = (x, y)`` is affine::

    F_theta(z; d) = J(d) z + q(d),     J(d) = [[ mu_x I,        -A_theta(d) ],
                                               [ -B_theta(d)^T,  mu_y I      ]]

Its symmetric part is ``[[mu_x I, -G], [-G^T, mu_y I]] >= (1 - gamma / mu) min(mu_x, mu_y) I`` (since
``2 u^T G v <= (gamma / mu)(mu_x ||u||^2 + mu_y ||v||^2)``), so ``F_theta`` is strongly monotone with modulus
``s(d) = lambda_min(sym J(d)) > 0`` and Lipschitz with ``L(d) = ||J(d)||_2``.  The learned game therefore has
exactly one equilibrium, the solution of the variational inequality::

    find z* in C = Delta_n x Delta_m  with  <F_theta(z*; d), z - z*> >= 0  for all z in C,

equivalently the fixed point of the projected-gradient map ``T(z; d) = P_C(z - alpha F_theta(z; d))`` for
any ``alpha > 0``.  With the per-sample step ``alpha(d) = s(d) / L(d)^2`` the map is a contraction,
``||T(z) - T(z')|| <= sqrt(1 - s^2 / L^2) ||z - z'||``, so the forward solve converges and JFB (which
differentiates one application of ``T`` at the fixed point) gives a descent direction.  The step size is
treated as a constant of the map (detached): it does not change the fixed point.

Face solve (``face_solve``, default).  Sharp learned games (payoffs large against ``mu_x``, ``mu_y``: equilibria
on faces of the simplices) are stiff for the iteration.  The fixed-point solver therefore only supplies a
starting support; :meth:`NashFPN.face_polish` finishes with an active-set method on the linear KKT system of
the face (certified: ``z >= 0`` on the support, reduced costs ``>= 0`` off it) and returns the face solution,
exact to round-off, whose autograd derivative is the implicit derivative of the equilibrium map.

How the fixed point is solved and differentiated is the model's :class:`fpntools.SolveConfig`
(``NFPNConfig.solve``; default Anderson, JFB, tolerance ``1e-6`` on the residual ``||T(z) - z|| / ||T(z)||``,
at most 20 iterations with the face solve, 200 without); the equilibrium module is
:func:`fpntools.make_fixed_point` of :class:`BatchMap`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from fpntools.config_dict import checked_fields
from fpntools.errors import UserInputError
from fpntools.info import FixedPointInfo, Status
from fpntools.operators import AffineSet, DavisYin, Nonnegative, SimplexProduct
from fpntools.solve_config import SolveConfig, make_fixed_point

__all__ = [
    "NFPNConfig",
    "ContextScaler",
    "GameOperator",
    "LearnedGame",
    "NashFPN",
    "BatchMap",
    "check_context_tensor",
    "simplex_product",
    "default_solve",
    "mlp",
    "mlp_param_count",
    "MAX_PARAMS",
]

#: Largest network (number of parameters) a games model may ask for; checked before anything is allocated.
MAX_PARAMS = 50_000_000


def simplex_product(n: int, m: int) -> SimplexProduct:
    """The projection ``P_C`` onto ``C = Delta_n x Delta_m`` of flat states ``(B, n + m)``."""
    return SimplexProduct((n, m))


def block_sums(n: int, m: int) -> AffineSet:
    """Projection onto the affine hull ``{z : sum x = 1, sum y = 1}`` of ``C`` (Davis-Yin's ``prox_f``)."""
    S = torch.zeros(2, n + m, dtype=torch.float64)
    S[0, :n], S[1, n:] = 1.0, 1.0
    return AffineSet(S, torch.ones(2, dtype=torch.float64))


def check_context_tensor(d: Any, context_dim: int) -> Tensor:
    """Validate contexts for a model: a finite floating tensor of shape ``(B, context_dim)``.

    A single context ``(context_dim,)`` is promoted to ``(1, context_dim)``; numpy arrays are converted.
    Raises :class:`~fpntools.errors.UserInputError` naming the wrong shape or the non-finite entry.
    """
    if not isinstance(d, Tensor):
        try:
            d = torch.as_tensor(d, dtype=torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UserInputError(f"context must be a numeric tensor, got {type(d).__name__}: {exc}") from None
    if not d.is_floating_point():
        d = d.to(torch.get_default_dtype())
    if d.ndim == 1:
        d = d.unsqueeze(0)
    if d.ndim != 2 or d.shape[1] != context_dim:
        raise UserInputError(
            f"context must have shape (batch, {context_dim}) (context dimension {context_dim}), got {tuple(d.shape)}"
        )
    if not bool(torch.isfinite(d).all()):
        bad = torch.nonzero(~torch.isfinite(d))[0].tolist()
        raise UserInputError(f"context holds a non-finite value (NaN or inf) at index {tuple(bad)}")
    return d


def default_solve(face_solve: bool = False) -> SolveConfig:
    """The N-FPN's default solve: Anderson (memory 5), JFB backward, tolerance ``1e-6`` (relative residual
    ``||T(z) - z|| / ||T(z)||``; ``||T(z)||`` lies in ``[sqrt(1/n + 1/m), sqrt(2)]`` on ``C``, so this is an
    absolute tolerance within a factor ``sqrt(2)``), at most 200 iterations, the same in evaluation.

    With ``face_solve`` the solver only gives the starting support of the exact face solve
    (:meth:`NashFPN.face_polish`): the same settings with at most 20 iterations."""
    cfg = SolveConfig(solver="anderson", backward="jfb", tol=1e-6, max_iter=200)
    return cfg.with_(max_iter=20, eval_max_iter=20) if face_solve else cfg


@dataclass
class NFPNConfig:
    """Hyper-parameters of :class:`NashFPN`.

    Attributes:
        hidden, layers: width and number of hidden layers of the payoff network ``d -> (Z, G_raw)``.
        mu: quadratic regulariser ``mu`` of both players (the monotone part of ``F_theta``).
        gamma: bound on the common-interest part, ``||G||_F <= gamma`` (times ``sqrt(mu_x mu_y) / mu`` with
            ``temperature``); must be below ``mu`` (modulus ``mu - gamma``, or ``(1 - gamma / mu) min(mu_x,
            mu_y)``). ``gamma = 0`` restricts the learned games to zero-sum (plus regulariser). Default ``0.9``.
        splitting: ``"pg"``, the projected-gradient map ``T(z) = P_C(z - alpha F(z))`` with the exact
            simplex-product projection, or ``"davis-yin"``: :class:`fpntools.operators.DavisYin` with
            ``prox_g`` the projection onto ``z >= 0``, ``prox_f`` the projection onto the affine hull
            ``{sum x = 1, sum y = 1}`` and ``grad_h = F_theta`` (cocoercive with constant ``s / L^2``), step
            ``min_batch alpha(d)``; its fixed point ``w*`` gives the equilibrium ``z* = max(w*, 0)``.
        linear_terms: also learn linear payoff terms ``q(d) = (q_x, q_y)`` (player 1 maximises
            ``x^T A y - q_x^T x - mu/2 ||x||^2``, likewise player 2), so ``F_theta(z) = J z + q``.
        temperature: ``T >= 0``, learned per-player regularisers: the network also outputs ``t(d) in R^2`` and
            the players' regularisers are ``mu_x(d) = mu exp(T tanh t_x(d))``, ``mu_y(d)`` likewise (each player's
            own "temperature": how sharply it best-responds, ``x = P_Delta((A y - q_x) / mu_x)``), with the
            common-interest bound scaled to ``||G|| <= (gamma / mu) sqrt(mu_x mu_y)``; the modulus is then at
            least ``(1 - gamma / mu) min(mu_x, mu_y)``. Default ``2``; ``0``: both players use ``mu``. The
            outputs ``t`` start at zero (both players at ``mu``, tanh in its linear range): from a random tilt,
            training could stall with saturated temperatures (zero-sum 3x3: error 0.24 instead of 0.08 after 40
            epochs).
        face_solve: after the solve, replace the fixed point by the exact solution of the learned VI on the
            face of ``C`` that the fixed point lies on (its support): the KKT system of that face is linear
            (:meth:`NashFPN.face_solution`), so its batched dense solve gives the equilibrium to round-off and,
            differentiated by autograd, the exact implicit gradient (the fixed point's own backward, ``solve``,
            is then used only for the samples whose face solution is not certified). On by default.
        solve: how the fixed point is solved and differentiated; ``None``: :func:`default_solve` of
            ``face_solve``; a dict (from JSON) is converted with :meth:`fpntools.SolveConfig.from_dict`.
    """

    hidden: int = 64
    layers: int = 2
    mu: float = 1.0
    gamma: float = 0.9
    splitting: str = "pg"
    linear_terms: bool = True
    temperature: float = 2.0
    face_solve: bool = True
    solve: SolveConfig | None = None

    def __post_init__(self) -> None:
        if self.solve is None:
            self.solve = default_solve(self.face_solve)
        if isinstance(self.solve, dict):
            self.solve = SolveConfig.from_dict(self.solve)
        if not isinstance(self.solve, SolveConfig):
            raise UserInputError(f"solve must be a SolveConfig, got {type(self.solve).__name__}")
        if self.splitting not in ("pg", "davis-yin"):
            raise UserInputError(f"splitting must be 'pg' or 'davis-yin', got {self.splitting!r}")
        if not 0.0 <= self.gamma < self.mu:
            raise UserInputError(f"need 0 <= gamma < mu for a strongly monotone game, got gamma={self.gamma}, mu={self.mu}")
        if self.hidden < 1 or self.layers < 0:
            raise UserInputError(f"hidden must be >= 1 and layers >= 0, got {self.hidden}, {self.layers}")
        if not 0.0 <= self.temperature <= 20.0:
            raise UserInputError(f"temperature (log-range of the players' regularisers) must lie in [0, 20], got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NFPNConfig":
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`~fpntools.errors.UserInputError`. Files written
        before ``temperature`` and ``face_solve`` existed lack them: they describe models without either."""
        fields = checked_fields(cls, d, "N-FPN configuration")
        return cls(**{**_BEFORE_FACE_SOLVE, **fields})


#: What a configuration without the ``temperature`` / ``face_solve`` keys (an older weights file) means.
_BEFORE_FACE_SOLVE = {"temperature": 0.0, "face_solve": False}


def mlp_param_count(inp: int, out: int, hidden: int, layers: int) -> int:
    """Number of parameters of :func:`mlp` (weights and biases), computed without building it."""
    width, total = inp, 0
    for _ in range(layers):
        total += (width + 1) * hidden
        width = hidden
    return total + (width + 1) * out


def mlp(inp: int, out: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` hidden ``Linear + GELU`` blocks of width ``hidden`` followed by a linear read-out.

    Raises :class:`~fpntools.errors.UserInputError` before allocating when the sizes are not positive or the
    network would have more than :data:`MAX_PARAMS` parameters.
    """
    if min(inp, out, hidden) < 1 or layers < 0:
        raise UserInputError(f"network sizes must be positive, got input {inp}, output {out}, hidden {hidden}, layers {layers}")
    count = mlp_param_count(inp, out, hidden, layers)
    if count > MAX_PARAMS:
        raise UserInputError(
            f"a network with hidden width {hidden} and {layers} hidden layers ({inp} inputs, {out} outputs) would have "
            f"{count:.3g} parameters, above the limit {MAX_PARAMS:.0e}"
        )
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


class ContextScaler(nn.Module):
    """Standardises contexts, ``(d - mean) / scale``, with the training contexts' mean and standard deviation
    (buffers, stored with the weights; identity until :meth:`fit`). Users' contexts come in any units."""

    def __init__(self, context_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(context_dim))
        self.register_buffer("scale", torch.ones(context_dim))

    @torch.no_grad()
    def fit(self, d: Tensor) -> "ContextScaler":
        """Set ``mean`` and ``scale`` from contexts ``d`` ``(N, p)``; constant entries get scale 1."""
        d = d.to(self.mean)
        mean = d.mean(dim=0)
        std = d.std(dim=0) if d.shape[0] > 1 else torch.zeros_like(mean)
        tiny = std <= 1e-12 * mean.abs().clamp_min(1.0)
        self.mean.copy_(mean)
        self.scale.copy_(torch.where(tiny, torch.ones_like(std), std))
        return self

    def forward(self, d: Tensor) -> Tensor:
        return (d - self.mean) / self.scale


@dataclass
class GameOperator:
    """The learned game gradient of a batch, ``F(z) = J z + q``, with the step ``alpha`` of its map.

    Attributes:
        J: ``(B, N, N)``, ``N = n + m``.
        q: ``(B, N)`` linear payoff terms (zeros when ``NFPNConfig.linear_terms`` is off).
        alpha: ``(B, 1)`` step ``s / L^2`` (detached).
    """

    J: Tensor
    q: Tensor
    alpha: Tensor

    def __call__(self, z: Tensor) -> Tensor:
        """``F(z) = J z + q`` for flat states ``z`` of shape ``(B, N)``."""
        return torch.baddbmm(self.q.unsqueeze(-1), self.J, z.unsqueeze(-1)).squeeze(-1)


class LearnedGame(nn.Module):
    """``d -> (A_theta(d), B_theta(d), q_theta(d))`` and the operator ``F_theta(.; d)`` (module docs)."""

    def __init__(self, n: int, m: int, context_dim: int, config: NFPNConfig) -> None:
        super().__init__()
        self.n, self.m, self.context_dim, self.config = n, m, context_dim, config
        extra = (n + m if config.linear_terms else 0) + (2 if config.temperature > 0 else 0)
        self.net = mlp(context_dim, 2 * n * m + extra, config.hidden, config.layers)
        self.scaler = ContextScaler(context_dim)
        if config.temperature > 0:  # both players start at mu (t = 0, where tanh is linear), not at a random tilt
            with torch.no_grad():
                self.net[-1].weight[-2:].zero_()
                self.net[-1].bias[-2:].zero_()

    def components(self, d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``A_theta, B_theta`` ``(B, n, m)``, linear terms ``q`` ``(B, n + m)`` and the players' regularisers
        ``(mu_x, mu_y)`` ``(B, 2)`` of contexts ``d``."""
        cfg = self.config
        out = self.net(self.scaler(d))
        k = self.n * self.m
        raw = out[:, : 2 * k].reshape(-1, 2, self.n, self.m)
        Z, G_raw = raw[:, 0], raw[:, 1]
        rest = out[:, 2 * k :]
        if cfg.temperature > 0:
            mus = cfg.mu * torch.exp(cfg.temperature * torch.tanh(rest[:, -2:]))
            rest = rest[:, :-2]
            bound = (cfg.gamma / cfg.mu) * torch.sqrt(mus[:, 0] * mus[:, 1]).view(-1, 1, 1)
        else:
            mus = out.new_full((out.shape[0], 2), cfg.mu)
            bound = out.new_full((out.shape[0], 1, 1), cfg.gamma)
        scale = G_raw.flatten(1).norm(dim=1).clamp_min(1.0).view(-1, 1, 1)
        G = bound * G_raw / scale
        q = rest if cfg.linear_terms else out.new_zeros(out.shape[0], self.n + self.m)
        return Z + G, -Z + G, q, mus

    def payoffs(self, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Learned payoff matrices ``A_theta(d), B_theta(d)`` ``(B, n, m)`` and linear terms ``q`` ``(B, n + m)``."""
        return self.components(d)[:3]

    def operator(self, d: Tensor) -> GameOperator:
        """``F_theta(.; d)``: ``J(d) = [[mu_x I, -A], [-B^T, mu_y I]]``, ``q(d)`` and the step ``alpha(d)``."""
        A, B, q, mus = self.components(d)
        batch = A.shape[0]
        eye_n = torch.eye(self.n, dtype=A.dtype, device=A.device).expand(batch, -1, -1)
        eye_m = torch.eye(self.m, dtype=A.dtype, device=A.device).expand(batch, -1, -1)
        mu_x, mu_y = mus[:, 0].view(-1, 1, 1), mus[:, 1].view(-1, 1, 1)
        J = torch.cat([torch.cat([mu_x * eye_n, -A], dim=2), torch.cat([-B.transpose(1, 2), mu_y * eye_m], dim=2)], dim=1)
        return GameOperator(J, q, self.step_size(J))

    @staticmethod
    def moduli(J: Tensor) -> tuple[Tensor, Tensor]:
        """Strong-monotonicity modulus ``s = lambda_min(sym J)`` and Lipschitz constant ``L = ||J||_2`` (detached).

        Samples whose ``J`` is not finite (payoffs that overflowed) get ``s = L = NaN``, so their step and map
        are NaN and the solver reports them ``NONFINITE`` instead of the eigensolver failing for the batch.
        """
        with torch.no_grad():
            finite = torch.isfinite(J).flatten(1).all(dim=1)
            if not bool(finite.all()):
                eye = torch.eye(J.shape[1], dtype=J.dtype, device=J.device).expand_as(J)
                J = torch.where(finite.view(-1, 1, 1), J, eye)
            s = torch.linalg.eigvalsh(0.5 * (J + J.transpose(1, 2)))[:, 0]
            L = torch.linalg.matrix_norm(J, ord=2)
            nan = torch.full_like(s, float("nan"))
            s, L = torch.where(finite, s, nan), torch.where(finite, L, nan)
        return s, L

    @classmethod
    def step_size(cls, J: Tensor) -> Tensor:
        """Per-sample ``alpha = s / L^2`` (detached), shape ``(B, 1)``."""
        s, L = cls.moduli(J)
        alpha = s / L / L  # not s / L**2: L**2 overflows first
        # a step that is not a positive finite number (payoffs near the end of the float range) would make every z
        # a fixed point; NaN makes the solver report those samples NONFINITE instead of "converged"
        alpha = torch.where(torch.isfinite(alpha) & (alpha > 0), alpha, torch.full_like(alpha, float("nan")))
        return alpha.unsqueeze(1)


class BatchMap(nn.Module):
    """The layer of the N-FPN's equilibrium module: ``forward(z, T) = T(z)`` for the map ``T`` of the batch's
    learned game, built once per batch by :meth:`NashFPN.map` (its tensors carry the gradients to the payoff
    network)."""

    def forward(self, z: Tensor, T: Callable[[Tensor], Tensor]) -> Tensor:
        return T(z)


class NashFPN(nn.Module):
    """N-FPN: ``z*(d) = (x*, y*)``, the fixed point of ``T(z; d) = P_C(z - alpha(d) F_theta(z; d))``.

    ``forward(d, z0=None)`` returns ``(z*, info)`` with ``z*`` of shape ``(B, n + m)`` (first ``n`` entries
    player 1's strategy), solved and differentiated as ``config.solve`` says (:func:`fpntools.make_fixed_point`;
    JFB by default); ``predict(d)`` returns ``z*`` only.
    """

    def __init__(self, n: int, m: int, context_dim: int, config: NFPNConfig | None = None) -> None:
        super().__init__()
        self.config = config or NFPNConfig()
        self.n, self.m, self.context_dim = n, m, context_dim
        self.game = LearnedGame(n, m, context_dim, self.config)
        self.project = simplex_product(n, m)
        self.affine = block_sums(n, m)
        self.nonneg = Nonnegative()
        self.solver = make_fixed_point(BatchMap(), self.config.solve)

    def initial_state(self, d: Tensor) -> Tensor:
        """Uniform strategies for both players."""
        return torch.cat(
            [torch.full((d.shape[0], self.n), 1.0 / self.n), torch.full((d.shape[0], self.m), 1.0 / self.m)], dim=1
        ).to(d)

    def fit_contexts(self, d: Tensor) -> None:
        """Standardise contexts with the training contexts ``d`` (:class:`ContextScaler`)."""
        self.game.scaler.fit(d)

    def operator(self, d: Tensor) -> GameOperator:
        """The learned game gradient ``F_theta(.; d)`` of (validated) contexts ``d``."""
        return self.game.operator(check_context_tensor(d, self.context_dim))

    def step(self, z: Tensor, F: GameOperator) -> Tensor:
        """One projected-gradient step ``T(z) = P_C(z - alpha F(z))``."""
        return self.project(z - F.alpha * F(z))

    def map(self, F: GameOperator) -> Callable[[Tensor], Tensor]:
        """The fixed-point map of the batch: the projected-gradient step, or the Davis-Yin map (``splitting``)."""
        if self.config.splitting == "davis-yin":
            return self.davis_yin(F)
        return lambda z: self.step(z, F)

    def forward(self, d: Tensor, z0: Tensor | None = None) -> tuple[Tensor, FixedPointInfo]:
        d = check_context_tensor(d, self.context_dim)
        F = self.game.operator(d)
        z0 = self.initial_state(d) if z0 is None else z0
        T = self.map(F)
        w, info = self.solver(T, z0=z0)
        z = T.solution(w) if isinstance(T, DavisYin) else w
        if self.config.face_solve:
            z, info = self.face_polish(z, F, info)
        return z, info

    #: Active-set correction of :meth:`face_polish`: the first ``FACE_BLOCK_ROUNDS`` rounds change every
    #: violated index at once (fast from a good start, but may cycle), the rest change only the first violated
    #: index (Murty's least-index principal pivoting, which does not cycle for a positive definite ``J``).
    FACE_BLOCK_ROUNDS = 4
    FACE_ROUNDS = 40
    #: Relative tolerance of the KKT sign checks (entries ``>= -tol``, reduced costs ``>= -tol``), times
    #: ``1 + max |F(z)|``; float32 round-off of the face solve is far below it.
    FACE_TOL = 1e-5

    def face_solution(self, support: Tensor, F: GameOperator) -> tuple[Tensor, Tensor]:
        """Exact solution of the learned VI restricted to a face of ``C``, and its multipliers.

        On the face ``{z in aff C : z_i = 0 for i not in S}`` (``S = support``, a boolean ``(B, N)`` mask with
        at least one action of each player) the VI's KKT conditions are linear::

            (J z + q)_i = lambda_x  (i in S, player 1),   (J z + q)_j = lambda_y  (j in S, player 2),
            z_i = 0  (i not in S),    sum x = 1,   sum y = 1,

        a ``(N + 2) x (N + 2)`` system per sample, nonsingular because ``J`` is strongly monotone; it is solved
        by one batched ``torch.linalg.solve`` (differentiable). Returns ``z`` ``(B, N)`` and
        ``lambda = (lambda_x, lambda_y)`` ``(B, 2)``. The solution solves the VI on all of ``C`` exactly when
        ``z >= 0`` and every action off the support has reduced cost ``(J z + q)_i - lambda >= 0`` (then ``S``
        is the equilibrium's support); the derivative of the solve is then the implicit derivative of the
        equilibrium map (for strict complementarity, where the support is locally constant)."""
        J, q = F.J, F.q
        B, N = q.shape
        D = support.to(J.dtype)
        E = torch.zeros(N, 2, dtype=J.dtype, device=J.device)
        E[: self.n, 0], E[self.n :, 1] = 1.0, 1.0
        top = torch.cat([D.unsqueeze(2) * J + torch.diag_embed(1.0 - D), -D.unsqueeze(2) * E], dim=2)
        bottom = torch.cat([E.t() * D.unsqueeze(1), J.new_zeros(B, 2, 2)], dim=2)
        rhs = torch.cat([-D * q, J.new_ones(B, 2)], dim=1)
        M = torch.cat([top, bottom], dim=1)
        sol, status = torch.linalg.solve_ex(M, rhs.unsqueeze(-1))
        sol = sol.squeeze(-1)
        if bool((status != 0).any()):  # numerically singular (payoffs near the float range): NaN, never certified
            sol = torch.where((status != 0).unsqueeze(1), torch.full_like(sol, float("nan")), sol)
        return sol[:, :N], sol[:, N:]

    def _kkt_violations(self, support: Tensor, z: Tensor, lam: Tensor, F: GameOperator) -> tuple[Tensor, Tensor]:
        """Entries on the support below ``-tol`` and actions off it with reduced cost below ``-tol``."""
        Fz = F(z)
        lam_full = torch.cat([lam[:, :1].expand(-1, self.n), lam[:, 1:].expand(-1, self.m)], dim=1)
        tol = self.FACE_TOL * (1.0 + Fz.abs().amax(dim=1, keepdim=True))
        return support & (z < -tol), ~support & (Fz - lam_full < -tol)

    def face_polish(self, z: Tensor, F: GameOperator, info: FixedPointInfo) -> tuple[Tensor, FixedPointInfo]:
        """Exact equilibria of the learned game from the solver's fixed points (``NFPNConfig.face_solve``).

        Starting from the support of ``z``, an active-set correction (at most :data:`FACE_ROUNDS` rounds, no
        gradients) solves the face's KKT system (:meth:`face_solution`), drops support entries that came out
        negative and adds actions with negative reduced cost (all at once for :data:`FACE_BLOCK_ROUNDS` rounds,
        then the least violated index only), until the KKT conditions hold (a certificate that
        the face solution is *the* equilibrium). Certified samples get the face solution of their final
        support, recomputed with gradients (exact implicit gradient); the others keep ``z`` (and the gradient of
        the model's ``SolveConfig`` backward). The returned info has the residual of the returned points and
        counts certified samples as converged; the solver's ``steps`` are kept."""
        finite = torch.isfinite(F.J).flatten(1).all(1) & torch.isfinite(F.q).all(1) & torch.isfinite(z.detach()).all(1)
        eye = torch.eye(F.J.shape[1], dtype=F.J.dtype, device=F.J.device)
        Fs = GameOperator(torch.where(finite.view(-1, 1, 1), F.J, eye), torch.where(finite.view(-1, 1), F.q, 0.0), F.alpha)
        with torch.no_grad():
            support = z.detach() > 0
            certified = torch.zeros_like(finite)
            for round_ in range(self.FACE_ROUNDS):
                fix = finite & ~certified
                # a player must keep at least one action: an empty block falls back to all of its actions
                empty = torch.cat([(~support[:, : self.n].any(1, keepdim=True)).expand(-1, self.n),
                                   (~support[:, self.n :].any(1, keepdim=True)).expand(-1, self.m)], dim=1)
                support = support | empty
                zf, lam = self.face_solution(support, Fs)
                negative, entering = self._kkt_violations(support, zf, lam, Fs)
                done = ~(negative.any(1) | entering.any(1)) & torch.isfinite(zf).all(1)
                certified = certified | (fix & done)
                if bool((certified | ~finite).all()):
                    break
                violated = negative | entering
                if round_ >= self.FACE_BLOCK_ROUNDS:  # least-index rule: flip only the first violated index
                    first = torch.zeros_like(violated)
                    first.scatter_(1, violated.to(torch.uint8).argmax(dim=1, keepdim=True), True)
                    violated = violated & first
                change = (fix & ~done).unsqueeze(1)
                support = torch.where(change, support ^ violated, support)
        keep = certified.view(-1, 1, 1)
        zf, _ = self.face_solution(support, GameOperator(torch.where(keep, Fs.J, eye), torch.where(keep[:, 0], Fs.q, 0.0), F.alpha))
        zf = zf.clamp_min(0.0) * support  # exact zeros off the support
        out = torch.where(certified.unsqueeze(1), zf, z)
        with torch.no_grad():
            res = self.step(out, F) - out
            abs_res = res.norm(dim=1)
            rel_res = abs_res / self.step(out, F).norm(dim=1).clamp_min(torch.finfo(out.dtype).tiny)
            ok = certified | info.converged
            # a certified sample is an exact equilibrium whatever the warm start's own outcome was
            status = torch.where(certified, torch.full_like(info.sample_status, int(Status.CONVERGED)), info.sample_status)
        info = dataclasses.replace(
            info, abs_residual=torch.where(certified, abs_res, info.abs_residual),
            rel_residual=torch.where(certified, rel_res, info.rel_residual), converged=ok, sample_status=status,
            status=Status(int(status.max())) if status.numel() else info.status,
        )
        return out, info

    def davis_yin(self, F: GameOperator) -> DavisYin:
        """The Davis-Yin map for the learned VI (see :class:`NFPNConfig`), step ``min_batch alpha``."""
        return DavisYin(self.affine, self.nonneg, F, step=float(F.alpha.min()))

    def predict(self, d: Tensor) -> Tensor:
        """The predicted equilibrium ``z*(d)`` (no info)."""
        return self.forward(d)[0]

    # ---- certificates of the learned game ---------------------------------------------------------------
    def vi_residual(self, z: Tensor, d: Tensor, alpha: float = 1.0) -> Tensor:
        """Projected-gradient (natural) residual ``||z - P_C(z - alpha F_theta(z; d))||`` per sample.

        Zero exactly at the learned game's equilibrium, for every ``alpha > 0`` (not only the solver's step).
        """
        F = self.operator(d)
        return (z - self.project(z - alpha * F(z))).norm(dim=1)

    def vi_gap(self, z: Tensor, d: Tensor) -> Tensor:
        """VI gap ``max_{w in C} <F_theta(z; d), z - w> = <F, z> - min_i F_x,i - min_j F_y,j`` per sample.

        Nonnegative on ``C`` and zero exactly when ``z`` solves the learned game's VI (its Nash equilibrium).
        """
        F = self.operator(d)(z)
        Fx, Fy = F[:, : self.n], F[:, self.n :]
        return (F * z).sum(dim=1) - Fx.min(dim=1).values - Fy.min(dim=1).values

    def contraction_factor(self, d: Tensor) -> Tensor:
        """Bound ``sqrt(1 - s^2 / L^2)`` on the Lipschitz constant of ``T(.; d)`` per sample."""
        s, L = LearnedGame.moduli(self.operator(d).J)
        return torch.sqrt((1 - s**2 / L**2).clamp_min(0.0))

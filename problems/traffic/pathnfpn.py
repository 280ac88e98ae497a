"""Path N-FPN: a context-conditioned traffic equilibrium network on a fixed path set, with a general (neural)
monotone link cost and demand, whose forward pass is a batched torch solve (no path-solver warm start).

State and constraint
--------------------
Path flows ``h`` ``(B, P)`` on the candidate paths of :class:`problems.traffic.paths.PathSet`; the feasible set
``H(q(c)) = {h >= 0, sum_{p in P_k} h_p = q_k(c)}`` is a product of scaled simplices, so every prediction
``X = Delta h`` is nonnegative and routes the learned OD demand exactly (flow is conserved at every node).

Learned maps (context ``c`` in ``R^p``; ``phi(c)`` = standardised ``[c, c_i c_j (i <= j)]`` when ``p <= 64``)
---------------------------------------------------------------------------------------------------------
``family="neural"`` (default): a trunk ``g(c) = [A phi, tanh(W2 tanh(W1 phi))]`` (``A phi``: linear units)
and linear output layers (initialised to zero, so training starts at the nominal network):

    t_e(X; c) = s_e exp(u_e(c)) + s_e sum_k softplus(a_ek(c) + a0_ek) (X_e / cap_e)^{p_k} + k_e,
    q_k(c)    = D0_k exp(alpha_{o(k)}(c) + beta_{d(k)}(c)),

with ``p_k`` in ``(p_e, 1, 2)`` (the link's nominal BPR power and two more), ``s_e`` the nominal free-flow
time (floored), ``softplus(a0_e0) = b_e`` (nominal BPR) and small starts for the other powers.  Every term is
nondecreasing in ``X_e`` and the coefficients are positive, so ``t(.; c)`` is the gradient of a strictly convex
separable potential: the VI below is monotone for every parameter value, its link flows are unique.

``family="grey"``: the generator-law family of :class:`problems.traffic.nfpn.TrafficNFPN` (BPR with capacity
``cap (1 + theta^c_e w)``, free-flow ``t0 exp(theta^t_e w)``, demand ``D0 (e^alpha_o + e^beta_o s^{e^kappa_o})
(1 + softplus(eta) e [q = z])``), for contexts laid out as the generator's ``(w, s, e, onehot(zone))``.

Fixed point
-----------
The equilibrium solves ``find h in H(q): <Delta^T t(Delta h), h' - h> >= 0`` for all ``h' in H(q)``; it is
the fixed point of the projected-gradient map in the metric ``W = diag(w)`` (``w_p = sum_{e in p} t'_e``, the
Newton diagonal, at the solution, detached):

    T(h) = P^W_{H(q)}(h - gamma W^{-1} Delta^T t(Delta h)),   gamma = 1 / max_p (sum_{e in p} t'_e n_e / w_p),

(``n_e`` the number of paths using link ``e``; Gershgorin: ``gamma`` is below ``1 / lambda_max(W^{-1} H)``, so
``T`` is averaged).  ``P^W`` is the exact weighted projection onto each scaled simplex (sort + thresholds).
Forward: :func:`problems.traffic.paths.equilibrate` (batched block projected-Newton sweeps with exact line
searches, all pairs at once, at most ``sweeps`` sweeps or until the restricted relative gap is below
``solver_tol``), then the model's :class:`fpntools.FixedPoint` (from ``config.solve``) polishes and attaches
the gradient (default JFB through ``T``: the diagonal-Newton approximation of the implicit gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as Fnn
from torch import Tensor, nn

from fpntools import SolveConfig, make_fixed_point
from fpntools.config_dict import checked_fields
from fpntools.errors import UserInputError
from problems.traffic.paths import PathSet, TorchPaths, equilibrate
from problems.traffic.tntp import Network

__all__ = ["PathNFPNConfig", "PathNFPN", "PathSolveInfo", "weighted_simplex_projection", "FAMILIES"]

FAMILIES = ("neural", "grey")


def default_path_solve() -> SolveConfig:
    """Polish of the forward solve: Anderson on ``T`` to ``1e-7`` in at most 3 steps; JFB gradients."""
    return SolveConfig(solver="anderson", anderson_m=5, tol=1e-7, max_iter=3, backward="jfb",
                       divergence_factor=None)


@dataclass
class PathNFPNConfig:
    """Settings of the path N-FPN.

    Attributes:
        family: ``"neural"`` (general monotone cost and demand) or ``"grey"`` (the generator's law, learned
            strengths; contexts ``(w, s, e, onehot(zone))``).
        hidden: trunk width (linear and tanh units each); ``0``: ``max(64, context_dim)``.
        quadratic: add pairwise products of the context to the features (when ``context_dim <= 64``).
        sweeps: forward solver budget (block projected-Newton sweeps).
        solver_tol: forward solver stops when every sample's restricted relative gap is below this.
        solve: the polish and the gradient (:class:`fpntools.SolveConfig`).
    """

    family: str = "neural"
    hidden: int = 32
    quadratic: bool = False
    sweeps: int = 200
    solver_tol: float = 1e-6
    solve: SolveConfig = field(default_factory=default_path_solve)

    def __post_init__(self) -> None:
        if isinstance(self.solve, dict):
            self.solve = SolveConfig.from_dict(self.solve)
        if self.family not in FAMILIES:
            raise UserInputError(f"--family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if not (isinstance(self.hidden, int) and self.hidden >= 0):
            raise UserInputError(f"hidden must be an integer >= 0, got {self.hidden!r}")
        if not (isinstance(self.sweeps, int) and self.sweeps >= 1):
            raise UserInputError(f"sweeps must be an integer >= 1, got {self.sweeps!r}")
        if not (math.isfinite(self.solver_tol) and self.solver_tol > 0):
            raise UserInputError(f"solver_tol must be a positive number, got {self.solver_tol!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "solve"}
        out["solve"] = self.solve.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PathNFPNConfig":
        d = dict(d)
        solve = d.pop("solve", None)
        kw = checked_fields(cls, d, "path N-FPN config")
        return cls(**kw, solve=SolveConfig.from_dict(solve) if solve is not None else default_path_solve())


def weighted_simplex_projection(v: Tensor, w: Tensor, q: Tensor, slots: Tensor) -> Tensor:
    """Per pair ``k``: ``argmin_h sum_p w_p (h_p - v_p)^2`` over ``{h >= 0, sum_{p in P_k} h_p = q_k}``.

    ``v``, ``w`` ``(B, P)`` (``w > 0``), ``q`` ``(B, K)``, ``slots`` ``(K, m)`` path indices (``-1``: padding).
    The solution is ``h_p = max(0, v_p - lam_k / w_p)`` with ``lam_k`` from the sorted breakpoints
    ``w_p v_p`` (exact; differentiable almost everywhere)."""
    B = v.shape[0]
    valid = slots >= 0
    pad = torch.where(valid, slots, 0)
    V = v[:, pad].masked_fill(~valid, -1e300)
    Wt = w[:, pad].masked_fill(~valid, 1.0)
    key = (V * Wt).masked_fill(~valid, -math.inf)
    srt, idx = torch.sort(key, dim=2, descending=True)
    Vs = torch.gather(V.masked_fill(~valid, 0.0), 2, idx)
    inv = torch.gather((1.0 / Wt).masked_fill(~valid, 0.0), 2, idx)
    lam = (torch.cumsum(Vs, 2) - q[:, :, None]) / torch.cumsum(inv, 2).clamp(min=1e-300)
    ok = (srt > lam) & torch.gather(valid.expand(B, -1, -1), 2, idx)
    j = (ok.sum(dim=2, keepdim=True) - 1).clamp(min=0)
    lam_k = torch.gather(lam, 2, j)  # (B, K, 1)
    H = torch.clamp(V - lam_k / Wt, min=0.0).masked_fill(~valid, 0.0)
    out = torch.zeros_like(v)
    return out.scatter_add(1, pad[valid].expand(B, -1), H[:, valid])


def _soft(x: Tensor, bound: float = 4.0) -> Tensor:
    """``bound tanh(x / bound)``: log-multipliers stay in ``(-bound, bound)`` (factors ``e^{+-4}``)."""
    return bound * torch.tanh(x / bound)


@dataclass
class PathSolveInfo:
    """What a forward pass reports: the polish's :class:`fpntools.FixedPointInfo`, the forward solver's
    restricted relative gap per sample ``(B,)`` and its sweeps."""

    fixed_point: Any
    gap: Tensor
    sweeps: int

    @property
    def rel_residual(self) -> Tensor:
        """Relative fixed-point residual per sample (of the polish's best iterate)."""
        return self.fixed_point.rel_residual


class _Trunk(nn.Module):
    """``phi -> [A phi, tanh(W2 tanh(W1 phi))]`` then zero-initialised linear outputs."""

    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        dt = torch.float64
        self.lin = nn.Linear(n_in, hidden, bias=False, dtype=dt)
        self.l1 = nn.Linear(n_in, hidden, dtype=dt)
        self.l2 = nn.Linear(hidden, hidden, dtype=dt)
        self.out = nn.Linear(2 * hidden, n_out, dtype=dt)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, phi: Tensor) -> Tensor:
        return self.out(torch.cat([self.lin(phi), torch.tanh(self.l2(torch.tanh(self.l1(phi))))], dim=1))


class _FBStep(nn.Module):
    """The layer of the model's fixed point: ``T(h)`` for a batch (see the module docstring)."""

    def forward(self, h: Tensor, T) -> Tensor:
        return T(h)


class PathNFPN(nn.Module):
    """The path N-FPN (module docstring).  ``forward(contexts) -> (link_flows (B, L), info)``."""

    def __init__(self, network: Network, base_demand: np.ndarray, paths: PathSet, context_mean: np.ndarray,
                 context_std: np.ndarray, config: PathNFPNConfig | None = None) -> None:
        super().__init__()
        self.config = config or PathNFPNConfig()
        self.network = network
        dt = torch.float64
        L, Z = network.num_links, network.num_zones
        self.num_links, self.num_zones = L, Z
        paths.check(L, Z)
        self.pathset = paths
        self.paths = TorchPaths(paths, L)
        D0 = np.asarray(base_demand, dtype=np.float64)
        q0 = D0[paths.od_origin, paths.od_dest]
        if not (q0 > 0).all():
            raise UserInputError("the path set has OD pairs without nominal demand")
        self.flow_unit = float(np.mean(network.capacity[network.capacity > 0]))
        t0 = network.free_flow_time
        self.cost_unit = float(np.mean(t0[t0 > 0])) if (t0 > 0).any() else 1.0
        self.register_buffer("q0", torch.as_tensor(q0 / self.flow_unit, dtype=dt))
        self.register_buffer("t0", torch.as_tensor(t0 / self.cost_unit, dtype=dt))
        self.register_buffer("scale", torch.as_tensor(np.maximum(t0, 1e-3 * self.cost_unit) / self.cost_unit,
                                                      dtype=dt))
        self.register_buffer("cap", torch.as_tensor(np.where(network.capacity > 0, network.capacity, 1.0)
                                                    / self.flow_unit, dtype=dt))
        self.register_buffer("bpr_b", torch.as_tensor(network.b, dtype=dt))
        self.register_buffer("power", torch.as_tensor(network.power, dtype=dt))
        self.register_buffer("fixed", torch.as_tensor(network.fixed_cost / self.cost_unit, dtype=dt))
        self.register_buffer("ctx_mean", torch.as_tensor(np.asarray(context_mean, dtype=np.float64)))
        std = np.asarray(context_std, dtype=np.float64)
        # a column constant over the training contexts keeps unit scale (an unseen value must not blow up)
        self.register_buffer("ctx_std", torch.as_tensor(np.where(std > 1e-6, std, 1.0)))
        self.context_dim = int(self.ctx_mean.numel())
        n_pairs_per_link = torch.bincount(torch.as_tensor(paths.links), minlength=L).to(dt)
        self.register_buffer("link_path_count", n_pairs_per_link)
        counts = np.bincount(paths.path_od, minlength=paths.num_pairs)
        self.register_buffer("share0", torch.as_tensor(1.0 / counts[paths.path_od], dtype=dt))
        self.register_buffer("od_o", torch.as_tensor(paths.od_origin))
        self.register_buffer("od_d", torch.as_tensor(paths.od_dest))
        if self.config.family == "neural":
            p = self.context_dim
            self.quad = bool(self.config.quadratic and p <= 64)
            n_feat = p + (p * (p + 1) // 2 if self.quad else 0)
            iu = torch.triu_indices(p, p)
            self.register_buffer("iu", iu)
            hidden = self.config.hidden or max(64, p)
            self.cost_net = _Trunk(n_feat, hidden, 4 * L)  # u_e, a_e0 (nominal power), a_e1 (p=1), a_e2 (p=2)
            self.demand_net = _Trunk(n_feat, hidden, 2 * Z)  # alpha_o, beta_q
            b = np.where(network.b > 0, network.b, 1e-3)
            a0 = np.stack([np.log(np.expm1(b)), np.full(L, math.log(math.expm1(1e-3))),
                           np.full(L, math.log(math.expm1(1e-3)))])
            self.register_buffer("a0", torch.as_tensor(a0, dtype=dt))  # (3, L)
            self.register_buffer("feat_mean", torch.zeros(n_feat, dtype=dt))
            self.register_buffer("feat_std", torch.ones(n_feat, dtype=dt))
        else:
            if self.context_dim != 3 + Z:
                raise UserInputError(f"--family grey needs contexts laid out as (w, s, e, onehot(zone)) of length "
                                     f"3 + {Z} = {3 + Z}, got {self.context_dim}")
            self.theta_c = nn.Parameter(torch.zeros(L, dtype=dt))
            self.theta_t = nn.Parameter(torch.zeros(L, dtype=dt))
            self.alpha = nn.Parameter(torch.full((Z,), math.log(0.5), dtype=dt))
            self.beta = nn.Parameter(torch.full((Z,), math.log(0.5), dtype=dt))
            self.kappa = nn.Parameter(torch.zeros(Z, dtype=dt))
            self.eta = nn.Parameter(torch.full((1,), math.log(math.expm1(1.0)), dtype=dt))
        self.set_solve(self.config.solve)

    # ------------------------------------------------------------------ learned maps
    def set_solve(self, solve: SolveConfig) -> None:
        """Use ``solve`` for the polish / gradient from now on."""
        self.config.solve = solve
        self.fixed_point = make_fixed_point(_FBStep(), solve)

    def features(self, c: Tensor) -> Tensor:
        """``phi(c)``: standardised context, plus standardised pairwise products (``quadratic``)."""
        z = (c - self.ctx_mean) / self.ctx_std
        if not self.quad:
            return z
        prod = (z[:, :, None] * z[:, None, :])[:, self.iu[0], self.iu[1]]
        return torch.cat([z, (prod - self.feat_mean[z.shape[1]:]) / self.feat_std[z.shape[1]:]], dim=1)

    @torch.no_grad()
    def fit_feature_scaling(self, contexts: np.ndarray) -> None:
        """Standardise the pairwise-product features over the training contexts (neural family)."""
        if self.config.family != "neural" or not self.quad:
            return
        c = torch.as_tensor(contexts, dtype=torch.float64)
        z = (c - self.ctx_mean) / self.ctx_std
        prod = (z[:, :, None] * z[:, None, :])[:, self.iu[0], self.iu[1]]
        p = z.shape[1]
        self.feat_mean[p:] = prod.mean(0)
        self.feat_std[p:] = prod.std(0).clamp(min=1e-6) if len(c) > 1 else 1.0

    def cost_params(self, c: Tensor) -> dict[str, Tensor]:
        """Per-sample link cost parameters (cost units / flow units)."""
        if self.config.family == "neural":
            out = self.cost_net(self.features(c)).view(-1, 4, self.num_links)
            return {"free": self.scale * torch.exp(_soft(out[:, 0])) - self.scale + self.t0,
                    "coef": self.scale * Fnn.softplus(out[:, 1:] + self.a0)}
        w = c[:, :1]
        return {"cap": self.cap * torch.clamp(1.0 + w * self.theta_c, min=0.05),
                "t0": self.t0 * torch.exp(w * self.theta_t)}

    def demand(self, c: Tensor) -> Tensor:
        """OD demands ``q(c)`` ``(B, K)`` in flow units."""
        if self.config.family == "neural":
            out = self.demand_net(self.features(c))
            Z = self.num_zones
            v = out[:, :Z][:, self.od_o] + out[:, Z:][:, self.od_d]
            return self.q0 * torch.exp(_soft(v))
        s = c[:, 1:2].clamp(min=0.0)
        spow = torch.where(s > 0, torch.exp(torch.exp(self.kappa) * torch.log(s.clamp(min=1e-300))),
                           torch.zeros_like(s * self.kappa))
        u = torch.exp(self.alpha) + torch.exp(self.beta) * spow  # (B, Z)
        v = 1.0 + Fnn.softplus(self.eta) * c[:, 2:3] * c[:, 3:]  # (B, Z)
        return self.q0 * u[:, self.od_o] * v[:, self.od_d]

    def link_cost(self, X: Tensor, prm: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(t(X), t'(X))`` in cost units for link flows ``X`` ``(B, L)`` (flow units)."""
        X = X.clamp(min=0.0)
        if self.config.family == "neural":
            r = X / self.cap
            pw = self.power
            coef = prm["coef"]
            rp = torch.where(pw > 0, r.clamp(min=1e-300) ** pw, torch.ones_like(r))
            t = prm["free"] + self.fixed + coef[:, 0] * rp + coef[:, 1] * r + coef[:, 2] * r * r
            d0 = torch.where(pw > 0, pw * r.clamp(min=1e-300) ** (pw - 1.0), torch.zeros_like(r))
            tp = (coef[:, 0] * d0 + coef[:, 1] + 2.0 * coef[:, 2] * r) / self.cap
            return t, tp
        from problems.traffic.costs import bpr, bpr_derivative

        return (bpr(X, prm["t0"], self.bpr_b, prm["cap"], self.power, self.fixed),
                bpr_derivative(X, prm["t0"], self.bpr_b, prm["cap"], self.power))

    # ------------------------------------------------------------------ the fixed point
    def operator(self, c: Tensor, h_ref: Tensor):
        """The map ``T`` for a batch (metric and step from the reference flows ``h_ref``, detached)."""
        prm = self.cost_params(c)
        q = self.demand(c)
        with torch.no_grad():
            _, tp = self.link_cost(self.paths.link_flows(h_ref), {k: v.detach() for k, v in prm.items()})
            w = self.paths.path_costs(tp)
            w = torch.maximum(w, 1e-8 * w.amax(dim=1, keepdim=True).clamp(min=1e-300))
            rows = self.paths.path_costs(tp * self.link_path_count)
            gamma = 1.0 / (rows / w).amax(dim=1, keepdim=True).clamp(min=1e-300)
        slots = self.paths.slots

        def T(h: Tensor) -> Tensor:
            t, _ = self.link_cost(self.paths.link_flows(h), prm)
            C = self.paths.path_costs(t)
            return weighted_simplex_projection(h - gamma * C / w, w, q, slots)

        return T, prm, q

    def solve_paths(self, c: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
        """Forward solver (no gradient): path flows, restricted gap per sample, sweeps."""
        with torch.no_grad():
            prm = {k: v.detach() for k, v in self.cost_params(c).items()}
            q = self.demand(c).detach()
            return equilibrate(self.paths, lambda X: self.link_cost(X, prm), q, h0, tol=self.config.solver_tol,
                               max_sweeps=self.config.sweeps, jacobi=True)

    def forward(self, contexts: Tensor, h0: Tensor | None = None, return_paths: bool = False):
        """Predicted link flows ``(B, L)`` in vehicles and a :class:`PathSolveInfo`.  ``h0``: a feasible start in
        flow units (e.g. the previous epoch's solution; default ``q(c) * share0``)."""
        c = torch.as_tensor(contexts, dtype=torch.float64, device=self.q0.device)
        if c.ndim != 2 or c.shape[1] != self.context_dim:
            raise UserInputError(f"contexts must have shape (n, {self.context_dim}), got {tuple(c.shape)}")
        with torch.no_grad():
            q = self.demand(c)
            if h0 is None:
                h0 = self.share0 * q[:, self.paths.path_od]
            else:
                tot = torch.zeros_like(q).index_add_(1, self.paths.path_od, h0)
                h0 = h0 * (q / tot.clamp(min=1e-300))[:, self.paths.path_od]
        hstar, gap, sweeps = self.solve_paths(c, h0)
        T, _, _ = self.operator(c, hstar)
        h, fp = self.fixed_point(T, z0=hstar)
        info = PathSolveInfo(fixed_point=fp, gap=gap, sweeps=sweeps)
        X = self.paths.link_flows(h) * self.flow_unit
        return (X, info, h) if return_paths else (X, info)

    @torch.no_grad()
    def set_start_shares(self, h: Tensor) -> None:
        """Start the forward solver from the mean path shares of the path flows ``h`` ``(n, P)`` (e.g. the
        training solutions): ``h0 = q(c) * share0``.  Shares of a pair sum to 1."""
        q = torch.zeros(h.shape[0], self.paths.num_pairs, dtype=h.dtype).index_add_(1, self.paths.path_od, h)
        share = (h / q.clamp(min=1e-300)[:, self.paths.path_od]).mean(dim=0)
        tot = torch.zeros(self.paths.num_pairs, dtype=h.dtype).index_add_(0, self.paths.path_od, share)
        ok = tot[self.paths.path_od] > 0
        self.share0.copy_(torch.where(ok, share / tot.clamp(min=1e-300)[self.paths.path_od], self.share0))

    # ------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def link_costs_at(self, contexts: Tensor, flows: Tensor) -> Tensor:
        """Learned link costs (minutes, the network's cost unit) at link flows ``flows`` (vehicles)."""
        c = torch.as_tensor(contexts, dtype=torch.float64)
        t, _ = self.link_cost(torch.as_tensor(flows, dtype=torch.float64) / self.flow_unit, self.cost_params(c))
        return t * self.cost_unit

    @torch.no_grad()
    def demand_matrix(self, contexts: Tensor) -> np.ndarray:
        """Learned OD tables ``(B, Z, Z)`` in vehicles."""
        q = self.demand(torch.as_tensor(contexts, dtype=torch.float64)).numpy() * self.flow_unit
        out = np.zeros((q.shape[0], self.num_zones, self.num_zones))
        out[:, self.pathset.od_origin, self.pathset.od_dest] = q
        return out

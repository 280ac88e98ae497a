"""N-FPN for traffic equilibria: a Davis-Yin fixed-point network whose fixed point is the Wardrop equilibrium of
a learned, context-dependent BPR cost (Heaton, McKenzie, Li, Wu Fung, Osher, Yin, "Learn to predict equilibria
via fixed point networks").

Flow representation
-------------------
Per-origin link flows ``x[o, a]`` (state ``(B, R, L)``, ``R`` origins, ``L`` links); the total link flow is
``X_a = sum_o x[o, a]``.  The feasible set is ``C = C_+ ∩ C_E`` with

* ``C_+ = {x : 0 <= x[o, a] <= u[o, a]}`` where ``u = +inf`` except ``u = 0`` on out-links of zones that origin
  ``o`` may not pass through (``first_thru_node``): a box, projected by :class:`fpntools.operators.Box`;
* ``C_E = {x : E x_o = b_o(d) for every origin o}`` with ``E`` the ``(N, L)`` node-link incidence
  (``+1`` at the tail, ``-1`` at the head) and ``b_o[o] = sum_q D[o, q]``, ``b_o[q] = -D[o, q]`` (``q != o``):
  flow conservation.  Projected by :class:`fpntools.operators.AffineSet` (``method="svd"``: one thin SVD of
  ``E`` precomputed once, then ``P(x_o) = x_o - V V^T x_o + E^+ b_o``, exact and autograd-native in ``x`` and
  ``b``).  All origins share ``E``: the state is reshaped to ``(B R, L)`` with right-hand sides ``(B R, N)``.

Learned cost and demand (context ``d = (w, s, e, onehot(z))``)
--------------------------------------------------------------
``F_theta(x; d)[o, a] = t_a(X_a; d)`` for every origin, with the BPR form

    t_a(X; d) = t0_a exp(theta^t_a w) (1 + b_a (X / c_a(d))^{p_a}) + k_a,
    c_a(d)    = c_a max(0.05, 1 + theta^c_a w)

(``t0, b, c, p`` the network's nominal values).  ``t_a`` is increasing in ``X_a``, so ``F_theta`` is the
gradient of the convex Beckmann potential ``sum_a int_0^{X_a} t_a`` composed with the linear map ``x -> X``: it
is monotone for every ``theta`` and the VI below is well posed, with a unique equilibrium in link flows.

The demand of the constraint is learned as well, ``D_theta(d)[o, q] = D0[o, q] u_o(d) v_q(d)`` with

    u_o(d) = exp(alpha_o) + exp(beta_o) s^{exp(kappa_o)},
    v_q(d) = 1 + softplus(eta) e onehot_q(d),

``D0`` the network's nominal OD table.  Parameters: ``2 L + 3 R + 1`` (305 for Sioux Falls).  The family
contains the data generator of :mod:`problems.traffic.context` (``theta^c_a = -w_max sigma_a``, ``theta^t = 0``,
``alpha = log 0.6``, ``beta = log 0.8``, ``kappa_o = log gamma_o``, ``softplus(eta) = e_max``;
:meth:`TrafficNFPN.set_to_generator`), so the model *can* represent the true cost map; it knows which context
entry acts on what (weather on links, time of day on origins, the event on its zone) but not how strongly;
training starts from a neutral point (``theta = 0``, ``u = 0.5 + 0.5 s``, ``softplus(eta) = 1``).  A richer
first version (modifiers linear in ``(w, s, e)``, per-zone event weights) trained more slowly on 200 samples
(confounded parameters, per-zone weights seen in ~4 samples each).

Fixed-point map (Davis-Yin three-operator splitting, :class:`fpntools.operators.DavisYin`)
----------------------------------------------------------------------------------------
The equilibrium is the VI ``find x in C with <F_theta(x; d), y - x> >= 0 for all y in C``, i.e.
``0 in F_theta(x) + N_{C_+}(x) + N_{C_E}(x)``.  With step ``gamma``:

    x_g = P_{C_+}(z),   x_f = P_{C_E}(2 x_g - z - gamma F_theta(x_g; d)),   T(z) = z + x_f - x_g,

and the prediction is ``x = P_{C_+}(z*)`` (nonnegative; conservation holds up to the fixed-point residual).
``F`` is ``L``-Lipschitz and ``1/L``-cocoercive on bounded sets with ``L = R max_a t'_a(X_a)`` (``||x -> X||^2 =
R``); DY converges for ``gamma < 2/L``.  We take ``gamma = step_scale / L_ref`` with ``L_ref`` evaluated at
``1.25 X_ref`` (``X_ref``: the largest training link flows, a buffer), using the current ``theta`` (detached).
Flows are in units of ``flow_unit`` (mean capacity) and costs in units of ``cost_unit`` (mean free-flow time), in
float64.

Metric: the map above runs in scaled variables ``y = M^{1/2} x`` with a fixed diagonal ``M = diag(m)``,
``m_a = max(t'_a(Xbar_a), metric_floor max_b t'_b(Xbar_b))`` (nominal BPR derivative at the mean training flow):
``F_y(y) = M^{-1/2} F(M^{-1/2} y)``, ``C_E`` becomes ``{E M^{-1/2} y_o = b_o}`` (still one SVD, at construction),
the box is unchanged, and ``L = R max_a t'_a / m_a``.  The VI in ``y`` has the same solutions; the prediction is
``x = M^{-1/2} P_{C_+}(z*)``.

Forward solve: from ``z0`` given by :meth:`TrafficNFPN.warm_state` (the path solver on the *learned* cost and
demand, turned into the DY fixed point through reduced costs), polished by the model's
:class:`fpntools.FixedPoint` (built by :func:`fpntools.make_fixed_point` from ``NFPNConfig.solve``, a
:class:`fpntools.SolveConfig`: Anderson, ``tol = 1e-9``); from ``z0 = 0`` plain DY needs many thousands of
iterations on these problems.

Gradients: ``NFPNConfig.solve.backward``: ``"implicit"`` (adjoint fixed point, ``backward_tol``,
``backward_max_iter``) or ``"jfb"`` (one application of ``T`` at the fixed point); see
:mod:`problems.traffic.train`.  The link costs are :func:`problems.traffic.costs.bpr` (the formula the
equilibrium solver uses), evaluated on torch tensors.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as Fnn
from torch import Tensor, nn

from fpntools.config_dict import checked_fields
from fpntools import SolveConfig, make_fixed_point
from fpntools.errors import UserInputError
from fpntools.operators import AffineSet, Box, DavisYin
from problems.traffic.costs import bpr, bpr_derivative
from problems.traffic.tntp import Network

__all__ = ["NFPNConfig", "TrafficNFPN", "network_fingerprint", "incidence_matrix"]


def default_solve() -> SolveConfig:
    """The N-FPN's solver settings: Anderson (memory 6) to relative residual ``1e-9`` in at most 50 steps from
    the warm start, implicit gradients with the adjoint solved to ``1e-6`` in at most 100 steps. No divergence
    test: from the warm start the first residual is tiny, and a relative growth test would stop samples
    spuriously."""
    return SolveConfig(solver="anderson", anderson_m=6, tol=1e-9, max_iter=50, backward="implicit",
                       backward_tol=1e-6, backward_max_iter=100, divergence_factor=None)


#: keys of the first model files, which held the forward solver's settings at the top level
_OLD_SOLVE_KEYS = ("solver", "anderson_m", "tol", "max_iter")


@dataclass
class NFPNConfig:
    """Settings of the N-FPN (architecture, warm start and the fixed-point solve).

    Attributes:
        network: network name (for :func:`problems.traffic.tntp.load_known`).
        step_scale: ``gamma L_ref`` (DY needs ``gamma L < 2``).
        cap_floor: lower bound of the capacity modifier ``1 + theta^c . phi``.
        warm: ``"equilibrium"`` (warm start from the path solver on the learned cost) or ``"zero"``.
        warm_gap: relative gap of that warm start.
        metric_floor: floor of the diagonal metric, relative to its largest entry.
        solve: how the fixed point is solved and differentiated (:class:`fpntools.SolveConfig`,
            :func:`default_solve`).
    """

    network: str = "SiouxFalls"
    step_scale: float = 1.0
    cap_floor: float = 0.05
    warm: str = "equilibrium"
    warm_gap: float = 1e-9
    metric_floor: float = 1e-2
    solve: SolveConfig = field(default_factory=default_solve)

    def __post_init__(self) -> None:
        if isinstance(self.solve, dict):
            self.solve = SolveConfig.from_dict(self.solve)
        if self.warm not in ("equilibrium", "zero"):
            raise UserInputError(f"warm must be 'equilibrium' or 'zero', got {self.warm!r}")
        for name in ("step_scale", "cap_floor", "warm_gap", "metric_floor"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise UserInputError(f"N-FPN config {name} must be a positive number, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (``solve`` nested); :meth:`from_dict` inverts it."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "solve"}
        out["solve"] = self.solve.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NFPNConfig":
        """Inverse of :meth:`to_dict`.  Also reads the first model files, whose top level held ``solver``,
        ``anderson_m``, ``tol`` and ``max_iter`` (mapped into ``solve``, the rest of it at its defaults).
        Unknown keys or bad values: :class:`fpntools.errors.UserInputError`."""
        d = dict(d)
        solve = d.pop("solve", None)
        old = {k: d.pop(k) for k in _OLD_SOLVE_KEYS if k in d}
        if solve is None:
            solve = default_solve().with_(**old).to_dict()
        elif old:
            raise UserInputError(f"N-FPN config has both 'solve' and the old keys {sorted(old)}")
        return cls(**checked_fields(cls, d, "N-FPN config"), solve=SolveConfig.from_dict(solve))


class _DYStep(nn.Module):
    """The layer of the model's :class:`fpntools.FixedPoint`: one application of the batch's DY map ``T``."""

    def forward(self, z: Tensor, T: DavisYin) -> Tensor:
        return T(z)


def incidence_matrix(network: Network) -> np.ndarray:
    """Dense node-link incidence ``E`` (``(N, L)``): ``E[init_a, a] = 1``, ``E[term_a, a] = -1``."""
    E = np.zeros((network.num_nodes, network.num_links))
    idx = np.arange(network.num_links)
    E[network.init, idx] += 1.0
    E[network.term, idx] -= 1.0
    return E


def network_fingerprint(network: Network, demand=None) -> str:
    """A short hash of the topology, BPR data and base demand (checks that weights match the files on disk)."""
    h = hashlib.sha256()
    arrays = [network.init, network.term, network.capacity, network.free_flow_time, network.b, network.power]
    if demand is not None:
        dem = demand.toarray() if hasattr(demand, "toarray") else np.asarray(demand, dtype=np.float64).copy()
        np.fill_diagonal(dem, 0.0)
        arrays.append(dem)
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    h.update(repr((network.num_nodes, network.num_zones, network.first_thru_node)).encode())
    return h.hexdigest()[:16]


def _inv_softplus(y: float) -> float:
    return float(math.log(math.expm1(y)))


class TrafficNFPN(nn.Module):
    """Davis-Yin N-FPN predicting equilibrium link flows from a context (see the module docstring).

    Build with :meth:`build`; ``forward(contexts) -> (link_flows, info)`` with ``contexts`` ``(B, 3 + Z)`` and
    link flows ``(B, L)`` in vehicles.
    """

    def __init__(self, network: Network, base_demand: np.ndarray, flow_ref: np.ndarray,
                 config: NFPNConfig | None = None, flow_mean: np.ndarray | None = None) -> None:
        super().__init__()
        self.config = config or NFPNConfig()
        self.network = network
        self.set_solve(self.config.solve)
        dt = torch.float64
        L, N, Z = network.num_links, network.num_nodes, network.num_zones
        D0 = np.asarray(base_demand, dtype=np.float64).copy()
        np.fill_diagonal(D0, 0.0)
        self.fingerprint = network_fingerprint(network, D0)
        origins = np.flatnonzero(D0.sum(axis=1) > 0)
        R = origins.size
        self.num_links, self.num_nodes, self.num_zones, self.num_origins = L, N, Z, R
        self.flow_unit = float(np.mean(network.capacity[network.capacity > 0]))
        self.cost_unit = float(np.mean(network.free_flow_time[network.free_flow_time > 0]))
        self.register_buffer("origins", torch.as_tensor(origins, dtype=torch.long))
        self.register_buffer("D0", torch.as_tensor(D0[origins] / self.flow_unit, dtype=dt))  # (R, Z)
        self.register_buffer("t0", torch.as_tensor(network.free_flow_time / self.cost_unit, dtype=dt))
        self.register_buffer("bpr_b", torch.as_tensor(network.b, dtype=dt))
        self.register_buffer("cap", torch.as_tensor(np.where(network.capacity > 0, network.capacity, 1.0)
                                                    / self.flow_unit, dtype=dt))
        self.register_buffer("power", torch.as_tensor(network.power, dtype=dt))
        self.register_buffer("fixed", torch.as_tensor(network.fixed_cost / self.cost_unit, dtype=dt))
        self.register_buffer("flow_ref", torch.as_tensor(np.asarray(flow_ref, dtype=np.float64) / self.flow_unit))
        if flow_mean is None:
            flow_mean = flow_ref
        self.register_buffer("flow_mean", torch.as_tensor(np.asarray(flow_mean, dtype=np.float64) / self.flow_unit))
        # upper bounds of the box: origin o may not leave a zone n != o numbered below first_thru_node
        upper = np.full((R, L), np.inf)
        no_thru = ~network.through_allowed
        for r, o in enumerate(origins):
            blocked = no_thru[network.init] & (network.init != o)
            upper[r, blocked] = 0.0
        self.box = Box(0.0, torch.as_tensor(upper, dtype=dt))
        # diagonal metric M = diag(m): DY runs in the scaled variables y = M^{1/2} x (see module docstring)
        m = self.link_cost_derivative(self.flow_mean, self.cap, self.t0)
        m = torch.clamp(m, min=self.config.metric_floor * float(m.max()))
        self.register_buffer("metric_sqrt", torch.sqrt(m))
        E = torch.as_tensor(incidence_matrix(network), dtype=dt) / self.metric_sqrt
        self.affine = AffineSet(E, method="svd")
        # learned parameters (neutral start)
        self.theta_c = nn.Parameter(torch.zeros(L, 1, dtype=dt))
        self.theta_t = nn.Parameter(torch.zeros(L, 1, dtype=dt))
        self.alpha = nn.Parameter(torch.full((R,), math.log(0.5), dtype=dt))
        self.beta = nn.Parameter(torch.full((R,), math.log(0.5), dtype=dt))
        self.kappa = nn.Parameter(torch.zeros(R, dtype=dt))
        self.eta = nn.Parameter(torch.full((1,), _inv_softplus(1.0), dtype=dt))

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def build(cls, network: Network, base_demand, train_flows: np.ndarray,
              config: NFPNConfig | None = None) -> "TrafficNFPN":
        """A neutral model; ``X_ref`` = the largest training flow of each link."""
        dem = base_demand.toarray() if hasattr(base_demand, "toarray") else np.asarray(base_demand)
        tf = np.asarray(train_flows)
        return cls(network, dem, tf.max(axis=0), config, flow_mean=tf.mean(axis=0))

    @torch.no_grad()
    def set_to_generator(self, context_map) -> "TrafficNFPN":
        """Set ``theta`` to the data generator's map (:class:`problems.traffic.context.ContextMap`): then the
        model's fixed point is the generator's equilibrium (used by tests)."""
        self.theta_c.zero_()
        self.theta_c[:, 0] = torch.as_tensor(-context_map.w_max * context_map.sigma)
        self.theta_t.zero_()
        self.alpha.fill_(math.log(0.6))
        self.beta.fill_(math.log(0.8))
        self.kappa.copy_(torch.as_tensor(np.log(context_map.gamma[self.origins.numpy()])))
        self.eta.fill_(_inv_softplus(context_map.e_max))
        return self

    @property
    def context_dim(self) -> int:
        return 3 + self.num_zones

    # ------------------------------------------------------------------ the learned maps
    def capacities(self, d: Tensor) -> Tensor:
        """``c_a(d)`` in flow units, ``(B, L)``."""
        return self.cap * torch.clamp(1.0 + d[:, :1] @ self.theta_c.T, min=self.config.cap_floor)

    def free_flow(self, d: Tensor) -> Tensor:
        """``t0_a exp(theta^t_a . phi)`` in cost units, ``(B, L)``."""
        return self.t0 * torch.exp(d[:, :1] @ self.theta_t.T)

    def demand(self, d: Tensor) -> Tensor:
        """``D_theta(d)`` restricted to origin rows, ``(B, R, Z)``, in flow units."""
        s = d[:, 1:2].clamp(min=0.0)
        gam = torch.exp(self.kappa)
        spow = torch.where(s > 0, torch.exp(gam * torch.log(s.clamp(min=1e-300))), torch.zeros_like(s * gam))
        u = torch.exp(self.alpha) + torch.exp(self.beta) * spow  # (B, R)
        v = 1.0 + Fnn.softplus(self.eta) * d[:, 2:3] * d[:, 3:]  # (B, Z)
        return self.D0 * u[:, :, None] * v[:, None, :]

    def rhs(self, d: Tensor) -> Tensor:
        """Right-hand sides ``b_o`` of ``E x_o = b_o``, ``(B, R, N)``."""
        Dm = self.demand(d)
        B, R, Z = Dm.shape
        b = torch.zeros(B, R, self.num_nodes, dtype=Dm.dtype, device=Dm.device)
        b[:, :, :Z] = -Dm
        out_tot = Dm.sum(dim=2)
        b[:, torch.arange(R, device=Dm.device), self.origins] += out_tot
        return b

    def link_cost(self, X: Tensor, cap: Tensor, t0: Tensor) -> Tensor:
        """``t_a(X) = t0 (1 + b (X / c)^p) + k`` (cost units; :func:`problems.traffic.costs.bpr`)."""
        return bpr(X, t0, self.bpr_b, cap, self.power, self.fixed)

    def link_cost_derivative(self, X: Tensor, cap: Tensor, t0: Tensor) -> Tensor:
        """``t'_a(X) = t0 b p (X / c)^{p-1} / c`` (:func:`problems.traffic.costs.bpr_derivative`)."""
        return bpr_derivative(X, t0, self.bpr_b, cap, self.power)

    def set_solve(self, solve: SolveConfig) -> None:
        """Use ``solve`` (a :class:`fpntools.SolveConfig`) for the fixed point from now on (``config.solve`` is
        updated; e.g. ``model.set_solve(model.config.solve.with_(backward="jfb"))``)."""
        self.config.solve = solve
        self.fixed_point = make_fixed_point(_DYStep(), solve)

    def operator(self, d: Tensor) -> tuple[DavisYin, Tensor]:
        """The DY map ``T`` for a batch of contexts and its step ``gamma`` (a 0-dim tensor)."""
        cap, t0, b = self.capacities(d), self.free_flow(d), self.rhs(d)
        B, R, L = d.shape[0], self.num_origins, self.num_links
        ms = self.metric_sqrt
        with torch.no_grad():
            lip = R * (self.link_cost_derivative(1.25 * self.flow_ref, cap, t0) / ms**2).amax()
            gamma = float(self.config.step_scale / max(float(lip), 1e-12))
        bflat = b.reshape(B * R, -1)

        def cost(y: Tensor, tau=None) -> Tensor:
            X = (y / ms).sum(dim=1)
            return (self.link_cost(X, cap, t0) / ms)[:, None, :].expand(B, R, L)

        def prox_aff(v: Tensor, tau=None) -> Tensor:
            return self.affine.project(v.reshape(B * R, L), b=bflat).reshape(B, R, L)

        def prox_box(v: Tensor, tau=None) -> Tensor:
            return self.box(v)

        return DavisYin(prox_aff, prox_box, cost, step=gamma), torch.tensor(gamma)

    def forward(self, contexts: Tensor, z0: Tensor | None = None, return_state: bool = False,
                warm_cache: dict | None = None, keys: list[int] | None = None):
        """Predicted equilibrium link flows ``(B, L)`` (vehicles) and the solver info (plus the DY state
        ``z*`` with ``return_state``).  ``warm_cache`` (a dict, with one hashable key per sample in ``keys``)
        keeps each sample's path-solver result between calls (training epochs) to warm-start it.  Solved and
        differentiated as ``config.solve`` says."""
        d = torch.as_tensor(contexts, dtype=torch.float64, device=self.t0.device)
        T, gamma = self.operator(d)
        if z0 is None:
            if self.config.warm == "equilibrium":
                z0 = self.warm_state(d, float(gamma), warm_cache, keys)
            else:
                z0 = torch.zeros(d.shape[0], self.num_origins, self.num_links, dtype=torch.float64, device=d.device)
        z, info = self.fixed_point(T, z0=z0)
        x = T.solution(z) / self.metric_sqrt
        flows = x.sum(dim=1) * self.flow_unit
        return (flows, info, z) if return_state else (flows, info)

    @torch.no_grad()
    def warm_state(self, d: Tensor, gamma: float, cache: dict | None = None, keys: list | None = None) -> Tensor:
        """A DY state near the fixed point, built from the equilibrium of the *learned* cost and demand.

        For each context the path-based solver (:func:`problems.traffic.equilibrium.solve_equilibrium`)
        computes per-origin flows ``x`` of the learned model (to relative gap ``warm_gap``); with the
        shortest-path distances ``pi_o`` at those flows the reduced costs ``r[o, a] = t_a + pi_o(i_a) - pi_o(j_a)``
        are ``>= 0`` and vanish on used links, and ``z = y - gamma M^{-1/2} r`` (``y = M^{1/2} x``) is the exact
        DY fixed point when ``x`` is an exact equilibrium (``P_+(z) = y`` and ``P_E(2y - z - gamma F) = y``).
        """
        from problems.traffic.equilibrium import ShortestPaths, solve_equilibrium

        net = self.network
        cap = (self.capacities(d) * self.flow_unit).cpu().numpy()
        t0 = (self.free_flow(d) * self.cost_unit).cpu().numpy()
        dem_rows = (self.demand(d) * self.flow_unit).cpu().numpy()
        origins = self.origins.cpu().numpy()
        B, R, L = d.shape[0], self.num_origins, self.num_links
        xs = np.zeros((B, R, L))
        prev = None
        for i in range(B):
            D = np.zeros((self.num_zones, self.num_zones))
            D[origins] = dem_rows[i]
            res = solve_equilibrium(net.replace(free_flow_time=t0[i]), D, gap=self.config.warm_gap,
                                    capacity=cap[i], return_origin_flows=True, progress=False, max_iter=2000,
                                    warm_start=cache.get(keys[i], prev) if cache is not None else prev)
            prev = res
            if cache is not None:
                cache[keys[i]] = res
            rows = np.searchsorted(origins, res.origins)
            xs[i, rows] = res.origin_flows
        x = torch.as_tensor(xs / self.flow_unit, device=d.device)
        X = x.sum(dim=1)
        t = self.link_cost(X, self.capacities(d), self.free_flow(d)).cpu().numpy()  # (B, L), cost units
        sp_ = ShortestPaths(net, origins)
        red = np.empty((B, R, L))
        for i in range(B):
            dist, _ = sp_.trees(t[i])
            pi = np.nan_to_num(dist[:, : self.num_nodes], posinf=0.0)
            pi[np.arange(R), origins] = 0.0
            red[i] = t[i][None, :] + pi[:, net.init] - pi[:, net.term]
        ms = self.metric_sqrt
        return x * ms - gamma * torch.as_tensor(red, device=d.device) / ms

    # ------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def vi_residual(self, contexts: Tensor, x: Tensor) -> Tensor:
        """Projected-gradient residual of the VI for per-origin flows ``x`` ``(B, R, L)`` (vehicles):
        ``||y - P_C(y - gamma F_y(y))|| / ||y||`` in the scaled variables ``y = M^{1/2} x / flow_unit`` (the VI
        in the metric ``M``, which has the same solutions), ``P_C`` exact (:meth:`project_feasible`).
        Zero exactly at solutions of the VI ``<F_theta(x; d), x' - x> >= 0`` for all feasible ``x'``."""
        d = torch.as_tensor(contexts, dtype=torch.float64)
        T, gamma = self.operator(d)
        y = torch.as_tensor(x, dtype=torch.float64) / self.flow_unit * self.metric_sqrt
        p = self.project_feasible(d, y - gamma * T.grad_h(y))
        return (y - p).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1).clamp(min=1e-300)

    @torch.no_grad()
    def origin_flows(self, contexts: Tensor) -> Tensor:
        """Per-origin flows ``x = M^{-1/2} P_+(z*)`` ``(B, R, L)`` in vehicles at the fixed point."""
        d = torch.as_tensor(contexts, dtype=torch.float64)
        _, _, z = self.forward(d, return_state=True)
        T, _ = self.operator(d)
        return T.solution(z) / self.metric_sqrt * self.flow_unit

    @torch.no_grad()
    def project_feasible(self, contexts: Tensor, y: Tensor) -> Tensor:
        """Exact projection of scaled flows ``y`` ``(B, R, L)`` onto ``C = C_+ ∩ C_E`` (scaled variables): one
        quadratic program per sample solved by ``cvxpy`` (diagnostics and tests; small networks)."""
        import cvxpy as cp

        d = torch.as_tensor(contexts, dtype=torch.float64)
        B, R, L = y.shape
        b = self.rhs(d).numpy()
        Ey = self.affine.B.numpy()
        hi = torch.broadcast_to(self.box.hi, (R, L)).numpy()
        blocked = (hi == 0).astype(np.float64)
        out = np.zeros((B, R, L))
        for i in range(B):
            x = cp.Variable((R, L))
            cons = [x >= 0, x @ Ey.T == b[i]]
            if blocked.any():
                cons.append(cp.multiply(blocked, x) == 0)
            cp.Problem(cp.Minimize(cp.sum_squares(x - y[i].numpy())), cons).solve(solver=cp.CLARABEL)
            out[i] = np.maximum(x.value, 0.0) * (1.0 - blocked)
        return torch.as_tensor(out)

    def parameter_tensors(self) -> dict[str, Tensor]:
        """The learned parameters (detached copies)."""
        return {k: v.detach().clone().contiguous() for k, v in self.named_parameters()}

    def load_parameters(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of :meth:`parameter_tensors` (keys, shapes and finiteness checked)."""
        own = dict(self.named_parameters())
        if set(tensors) != set(own):
            raise ValueError(f"weights have keys {sorted(tensors)}, expected {sorted(own)}")
        with torch.no_grad():
            for k, v in tensors.items():
                if tuple(v.shape) != tuple(own[k].shape):
                    raise ValueError(f"weight {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
                if not torch.isfinite(v).all():
                    raise ValueError(f"weight {k!r} has non-finite entries")
                own[k].copy_(v.to(own[k].dtype))

    def base_demand_full(self) -> np.ndarray:
        """The nominal ``(Z, Z)`` OD table in vehicles."""
        D = np.zeros((self.num_zones, self.num_zones))
        D[self.origins.numpy()] = self.D0.numpy() * self.flow_unit
        return D

    def config_dict(self) -> dict:
        """Config plus the network fingerprint (for :func:`problems.traffic.train.save_model`)."""
        return dict(self.config.to_dict(), fingerprint=self.fingerprint)

"""Accuracy metrics for predicted traffic flows.

* relative L2 error ``||x_hat - x|| / ||x||`` (per sample for batches);
* TRAFIX score: share of links whose flow is within a relative tolerance (0.5% by default) of the truth,
  ``mean_a [ |x_hat_a - x_a| <= rtol |x_a| + atol ]``;
* Wardrop relative gap ``(TSTT - SPTT) / TSTT`` of a flow under the true costs (0 exactly at equilibrium;
  meaningful for feasible flows, i.e. flows that route the demand — see :func:`conservation_error`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from problems.traffic.costs import BPRCost
from problems.traffic.equilibrium import relative_gap
from problems.traffic.tntp import Network

__all__ = ["relative_l2_error", "trafix_score", "wardrop_gap", "conservation_error"]


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def relative_l2_error(pred, true, eps: float = 1e-12) -> np.ndarray | float:
    """``||pred - true||_2 / ||true||_2`` over the last axis (a float for 1-D input, an array per sample
    otherwise).  Accepts numpy arrays or torch tensors."""
    p, t = _np(pred), _np(true)
    err = np.linalg.norm(p - t, axis=-1) / np.maximum(np.linalg.norm(t, axis=-1), eps)
    return float(err) if err.ndim == 0 else err


def trafix_score(pred, true, rtol: float = 0.005, atol: float = 1e-6) -> np.ndarray | float:
    """TRAFIX: fraction of links with ``|pred_a - true_a| <= rtol |true_a| + atol`` (over the last axis).

    ``atol`` only decides links whose true flow is (numerically) zero.
    """
    p, t = _np(pred), _np(true)
    ok = np.abs(p - t) <= rtol * np.abs(t) + atol
    score = ok.mean(axis=-1)
    return float(score) if np.ndim(score) == 0 else score


def wardrop_gap(network: Network, demand, flows, capacity: np.ndarray | None = None) -> float:
    """Relative gap ``(TSTT - SPTT) / TSTT`` of link flows under the network's true BPR costs (optionally
    with replaced capacities)."""
    cost = BPRCost.from_network(network, capacity)
    return relative_gap(network, demand, _np(flows), cost)


def conservation_error(network: Network, demand, flows) -> float:
    """Node-balance violation ``||A x - b||_1 / sum(D)`` where ``(A x)_n`` is inflow minus outflow at
    node ``n`` and ``b_n = sum_o D[o, n] - sum_d D[n, d]`` (zones only)."""
    dem = demand.toarray() if sp.issparse(demand) else np.asarray(demand, dtype=np.float64)
    dem = dem - np.diag(np.diag(dem))
    x = _np(flows)
    n = network.num_nodes
    bal = np.bincount(network.term, weights=x, minlength=n) - np.bincount(network.init, weights=x, minlength=n)
    b = np.zeros(n)
    z = network.num_zones
    b[:z] = dem.sum(axis=0) - dem.sum(axis=1)
    return float(np.abs(bal - b).sum() / max(float(dem.sum()), 1e-12))

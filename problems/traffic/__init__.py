"""Traffic equilibria: TNTP networks, a fast user-equilibrium solver and contextual (N-FPN) data.

* :mod:`problems.traffic.tntp` — TNTP readers / writers, :class:`Network`, :class:`TNTPError`;
* :mod:`problems.traffic.costs` — BPR costs, derivatives and the Beckmann potential;
* :mod:`problems.traffic.equilibrium` — path-based user-equilibrium solver (plus FW / conjugate FW);
* :mod:`problems.traffic.context` — seeded contextual datasets of certified equilibria;
* :mod:`problems.traffic.metrics` — relative L2, TRAFIX, Wardrop gap;
* :mod:`problems.traffic.cli` — ``fpntools traffic ...``.
"""

from problems.traffic.costs import BPRCost
from problems.traffic.equilibrium import EquilibriumResult, relative_gap, solve_equilibrium
from problems.traffic.tntp import Network, TNTPError, load_known, load_network, read_flow, read_net, read_trips

__all__ = [
    "BPRCost",
    "EquilibriumResult",
    "Network",
    "TNTPError",
    "load_known",
    "load_network",
    "read_flow",
    "read_net",
    "read_trips",
    "relative_gap",
    "solve_equilibrium",
]

"""Traffic equilibria: TNTP networks, a fast user-equilibrium solver and contextual (N-FPN) data.

* :mod:`problems.traffic.tntp` — TNTP readers / writers, :class:`Network`, :class:`TNTPError`, networks
  recognised by content and their published generalised-cost weights;
* :mod:`problems.traffic.costs` — BPR costs, derivatives and the Beckmann potential (numpy and torch);
* :mod:`problems.traffic.equilibrium` — path-based user-equilibrium solver (plus FW / conjugate FW);
* :mod:`problems.traffic.context` — seeded contextual datasets of certified equilibria;
* :mod:`problems.traffic.metrics` — relative L2, TRAFIX, Wardrop gap;
* :mod:`problems.traffic.nfpn`, :mod:`problems.traffic.train` — the N-FPN and its training;
* :mod:`problems.traffic.commands` / :mod:`problems.traffic.cli` — ``fpntools traffic ...``.

Import from the modules (``from problems.traffic.equilibrium import solve_equilibrium``): the package itself
imports nothing, so ``fpntools traffic ... --help`` does not load scipy, and nothing here loads torch.
"""

"""User-equilibrium solver: BPR calculus, agreement with a cvxpy Beckmann solution, through-node rule,
per-origin flows, Sioux Falls / Chicago references, and the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from problems.traffic.costs import BPRCost, bpr, bpr_derivative, bpr_integral
from problems.traffic.equilibrium import ShortestPaths, all_or_nothing, relative_gap, solve_equilibrium
from problems.traffic.synthetic import random_demand, random_network
from problems.traffic.tntp import Network, load_known, read_flow, tntp_files, write_net, write_trips

SIOUX_FALLS_OBJECTIVE = 4231335.287  # best-known Beckmann objective (TNTP README: 42.31335287 x 1e5)
CHICAGO_OBJECTIVE = 17313018.7387477  # TNTP README, generalised cost with toll 0.02 / distance 0.04


# ------------------------------------------------------------------------------------------------ costs


def test_bpr_calculus():
    rng = np.random.default_rng(0)
    x = rng.uniform(10, 3000, 50)
    t0, b, c, p = rng.uniform(1, 5, 50), np.full(50, 0.15), rng.uniform(500, 2000, 50), rng.uniform(1, 5, 50)
    np.testing.assert_allclose(bpr(x, t0, b, c, p), t0 * (1 + b * (x / c) ** p))
    h = 1e-4 * x
    fd = (bpr(x + h, t0, b, c, p) - bpr(x - h, t0, b, c, p)) / (2 * h)
    np.testing.assert_allclose(bpr_derivative(x, t0, b, c, p), fd, rtol=1e-6)
    fd_int = (bpr_integral(x + h, t0, b, c, p) - bpr_integral(x - h, t0, b, c, p)) / (2 * h)
    np.testing.assert_allclose(fd_int, bpr(x, t0, b, c, p), rtol=1e-7)
    assert np.all(bpr_integral(np.zeros(50), t0, b, c, p) == 0)
    # the BPRCost class agrees with the functions, with mixed and uniform powers
    for power in (p, np.full(50, 4.0)):
        net = Network(init=np.zeros(50, int), term=np.ones(50, int), capacity=c, length=np.ones(50),
                      free_flow_time=t0, b=b, power=power, speed=np.zeros(50), toll=np.zeros(50),
                      link_type=np.ones(50, int), num_nodes=2, num_zones=2, toll_factor=0.5, distance_factor=0.25)
        cost = BPRCost.from_network(net)
        k = 0.25
        np.testing.assert_allclose(cost(x), bpr(x, t0, b, c, power) + k)
        np.testing.assert_allclose(cost.derivative(x), bpr_derivative(x, t0, b, c, power))
        np.testing.assert_allclose(cost.integral(x), bpr_integral(x, t0, b, c, power, k))
        d = rng.normal(size=50) * 100
        g, h = cost.directional(x, d, 0.3)
        y = np.maximum(x + 0.3 * d, 0)
        assert g == pytest.approx(float((bpr(y, t0, b, c, power) + k) @ d), rel=1e-12)
        assert h == pytest.approx(float((bpr_derivative(y, t0, b, c, power) * d) @ d), rel=1e-12)


def test_bpr_one_definition_numpy_and_torch():
    """The same functions evaluate numpy arrays and torch tensors (the N-FPN's cost); torch gradients in the
    flow, the free-flow time and the capacity match float64 central differences, and ``bpr_derivative`` is
    the autograd derivative of ``bpr``."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    n = 40
    x, t0, c = rng.uniform(10, 3000, n), rng.uniform(1, 5, n), rng.uniform(500, 2000, n)
    b, p, k = np.where(np.arange(n) % 5 == 0, 0.0, 0.15), rng.uniform(1, 5, n), rng.uniform(0, 2, n)
    T = {name: torch.tensor(v, dtype=torch.float64, requires_grad=True) for name, v in
         dict(x=x, t0=t0, c=c).items()}
    bt, pt, kt = (torch.tensor(v) for v in (b, p, k))
    out = bpr(T["x"], T["t0"], bt, T["c"], pt, kt)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.detach().numpy(), bpr(x, t0, b, c, p, k), rtol=1e-15)
    np.testing.assert_allclose(bpr_derivative(T["x"], T["t0"], bt, T["c"], pt).detach().numpy(),
                               bpr_derivative(x, t0, b, c, p), rtol=1e-15)
    np.testing.assert_allclose(bpr_integral(T["x"], T["t0"], bt, T["c"], pt, kt).detach().numpy(),
                               bpr_integral(x, t0, b, c, p, k), rtol=1e-15)
    out.sum().backward()
    args = dict(x=x, t0=t0, c=c)
    for name in ("x", "t0", "c"):
        h = 1e-6 * args[name]
        up, dn = dict(args), dict(args)
        up[name], dn[name] = args[name] + h, args[name] - h
        fd = (bpr(up["x"], up["t0"], b, up["c"], p, k) - bpr(dn["x"], dn["t0"], b, dn["c"], p, k)) / (2 * h)
        np.testing.assert_allclose(T[name].grad.numpy(), fd, rtol=1e-6, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(T["x"].grad.numpy(), bpr_derivative(x, t0, b, c, p), rtol=1e-12)
    # b = 0 links have the constant cost t0 + k (capacity irrelevant, zero gradient in c)
    assert np.all(T["c"].grad.numpy()[b == 0] == 0)


def test_cost_range_check_names_the_link():
    from problems.traffic.costs import CostRangeError

    L = 4
    one = np.ones(L)
    cost = BPRCost(t0=one, b=0.15 * one, capacity=np.array([100.0, 100.0, 1e-300, 100.0]), power=4 * one,
                   fixed=0 * one)
    with pytest.raises(CostRangeError, match=r"link 3 \(a->b\): BPR cost overflows") as e:
        cost.check_range(1e4, lambda a: f"link {a + 1} (a->b)")
    assert e.value.link == 2
    cost.subset(np.array([0, 1, 3])).check_range(1e4)  # the other links are fine at any flow <= 1e4
    neg = BPRCost(t0=one, b=0.15 * one, capacity=100 * one, power=4 * one, fixed=np.array([0, -2.0, 0, 0]))
    with pytest.raises(CostRangeError, match="link 2: generalised cost at zero flow is -1"):
        neg.check_range(10.0)
    big = BPRCost(t0=one, b=0.15 * one, capacity=100 * one, power=np.array([4, 4, 100.0, 4]), fixed=0 * one)
    big.check_range(1e4)  # (1e4 / 100)^101 = 1e202: representable, like its products with the flow
    with pytest.raises(CostRangeError, match="link 3"):
        big.check_range(1e6)  # (1e4)^101 overflows


# ------------------------------------------------------------------------------------------------ cvxpy


def _cvxpy_beckmann(net: Network, dem: np.ndarray):
    """Beckmann program with per-origin commodities (flow conservation), solved by CLARABEL."""
    cp = pytest.importorskip("cvxpy")
    n, L, z = net.num_nodes, net.num_links, net.num_zones
    A = np.zeros((n, L))
    A[net.term, np.arange(L)] += 1.0
    A[net.init, np.arange(L)] -= 1.0
    origins = np.flatnonzero(dem.sum(axis=1) > 0)
    X = cp.Variable((origins.size, L), nonneg=True)
    cons = []
    through = net.through_allowed
    for r, o in enumerate(origins):
        rhs = np.zeros(n)
        rhs[:z] = dem[o]
        rhs[o] -= dem[o].sum()
        cons.append(A @ X[r] == rhs)
        blocked = np.flatnonzero(~through[net.init] & (net.init != o))
        if blocked.size:
            cons.append(X[r, blocked] == 0)
    x = cp.sum(X, axis=0)
    scale = 1.0 / dem.sum()
    obj = cp.sum(cp.multiply(net.free_flow_time, x)) + cp.sum(
        cp.multiply(net.free_flow_time * net.b * net.capacity / (net.power + 1), cp.power(x / net.capacity, 5)))
    prob = cp.Problem(cp.Minimize(scale * obj), cons)
    prob.solve(solver="CLARABEL")
    assert prob.status == "optimal"
    return np.asarray(x.value).ravel(), prob.value / scale


@pytest.mark.parametrize("seed,first_thru", [(0, 1), (1, 1), (5, 3)])
def test_matches_cvxpy_beckmann(seed, first_thru):
    net = random_network(9, 5, extra_links=7, first_thru_node=first_thru, seed=seed)
    dem = random_demand(5, seed=seed)
    x_ref, obj_ref = _cvxpy_beckmann(net, dem)
    res = solve_equilibrium(net, dem, gap=1e-10, progress=False, return_origin_flows=True)
    assert res.converged and res.gap <= 1e-10
    assert res.objective == pytest.approx(obj_ref, rel=1e-6)
    assert np.linalg.norm(res.flows - x_ref) / np.linalg.norm(x_ref) < 1e-4
    # per-origin flows add up to the link flows and route each origin's demand
    np.testing.assert_allclose(res.origin_flows.sum(axis=0), res.flows, rtol=1e-10, atol=1e-8)
    n = net.num_nodes
    for r, o in enumerate(res.origins):
        bal = np.bincount(net.term, res.origin_flows[r], n) - np.bincount(net.init, res.origin_flows[r], n)
        rhs = np.zeros(n)
        rhs[: net.num_zones] = dem[o]
        rhs[o] -= dem[o].sum()
        np.testing.assert_allclose(bal, rhs, atol=1e-7 * dem.sum())
    assert relative_gap(net, dem, res.flows) == pytest.approx(res.gap, rel=1e-6, abs=1e-14)


@pytest.mark.parametrize("method,target", [("cfw", 1e-4), ("fw", 1e-3)])
def test_frank_wolfe_variants(method, target):
    net = random_network(9, 5, extra_links=7, seed=4)
    dem = random_demand(5, seed=4)
    ref = solve_equilibrium(net, dem, gap=1e-10, progress=False)
    res = solve_equilibrium(net, dem, gap=target, method=method, max_iter=5000, progress=False,
                            return_origin_flows=True)
    assert res.converged and res.gap <= target
    assert res.objective >= ref.objective * (1 - 1e-12)
    assert (res.objective - ref.objective) / ref.objective <= target
    np.testing.assert_allclose(res.origin_flows.sum(axis=0), res.flows, rtol=1e-9, atol=1e-8)


def test_first_thru_node_forbids_passing_through_zones():
    # zones 1, 2, 3; node 4 is a through node. 1->2->3 is cheap but zone 2 may not be passed through.
    links = [(0, 1, 1.0), (1, 2, 1.0), (0, 3, 5.0), (3, 2, 5.0), (2, 0, 1.0), (1, 0, 1.0), (2, 1, 1.0)]
    init, term, t0 = (np.array(v) for v in zip(*links))
    m = init.size

    def make(ftn):
        return Network(init=init, term=term, capacity=np.full(m, 100.0), length=t0, free_flow_time=t0,
                       b=np.full(m, 0.15), power=np.full(m, 4.0), speed=np.zeros(m), toll=np.zeros(m),
                       link_type=np.ones(m, int), num_nodes=4, num_zones=3, first_thru_node=ftn)

    dem = np.zeros((3, 3))
    dem[0, 2] = 10.0
    dem[1, 2] = 5.0  # zone 2 may still be an origin: its own out-links are usable
    free = solve_equilibrium(make(1), dem, gap=1e-12, progress=False)
    np.testing.assert_allclose(free.flows[:2], [10.0, 15.0])
    res = solve_equilibrium(make(4), dem, gap=1e-12, progress=False, return_origin_flows=True)
    np.testing.assert_allclose(res.flows, [0.0, 5.0, 10.0, 10.0, 0, 0, 0], atol=1e-9)
    sp_ = ShortestPaths(make(4), np.array([0, 1]))
    dist, _ = sp_.trees(t0.astype(float))
    assert dist[0, 2] == 10.0 and dist[1, 2] == 1.0
    y, per = all_or_nothing(make(4), dem, t0.astype(float))
    np.testing.assert_allclose(y, res.flows, atol=1e-9)


def test_parallel_links_and_unreachable():
    init, term = np.array([0, 0, 1]), np.array([1, 1, 0])
    net = Network(init=init, term=term, capacity=np.array([100.0, 50.0, 10.0]), length=np.ones(3),
                  free_flow_time=np.array([1.0, 1.0, 1.0]), b=np.full(3, 0.15), power=np.full(3, 4.0),
                  speed=np.zeros(3), toll=np.zeros(3), link_type=np.ones(3, int), num_nodes=2, num_zones=2)
    dem = np.array([[0.0, 300.0], [0.0, 0.0]])
    res = solve_equilibrium(net, dem, gap=1e-12, progress=False)
    t = res.costs
    assert t[0] == pytest.approx(t[1], rel=1e-9)  # both parallel links used at equal cost
    assert res.flows[0] + res.flows[1] == pytest.approx(300.0)
    one_way = Network(**{**net.__dict__, "init": init[:2], "term": term[:2], "capacity": net.capacity[:2],
                         "length": net.length[:2], "free_flow_time": net.free_flow_time[:2], "b": net.b[:2],
                         "power": net.power[:2], "speed": net.speed[:2], "toll": net.toll[:2],
                         "link_type": net.link_type[:2]})
    with pytest.raises(ValueError, match="unreachable"):
        solve_equilibrium(one_way, dem.T, progress=False)


# ------------------------------------------------------------------------------------------------ real data


def _require(name: str):
    try:
        return tntp_files(name)
    except FileNotFoundError:
        pytest.skip(f"{name} TNTP data not available (set FPNTOOLS_TNTP_DIR)")


def test_sioux_falls_reference():
    files = _require("SiouxFalls")
    net, dem = load_known("SiouxFalls")
    ref, _ = read_flow(files["flow"], net.num_nodes).align(net)
    assert BPRCost.from_network(net).beckmann(ref) == pytest.approx(SIOUX_FALLS_OBJECTIVE, rel=1e-9)
    res = solve_equilibrium(net, dem, gap=1e-6, progress=False, return_origin_flows=True)
    assert res.converged and res.gap <= 1e-6
    assert abs(res.objective - SIOUX_FALLS_OBJECTIVE) / SIOUX_FALLS_OBJECTIVE < 1e-6  # brief: 1e-4
    assert np.linalg.norm(res.flows - ref) / np.linalg.norm(ref) < 1e-3
    np.testing.assert_allclose(res.origin_flows.sum(axis=0), res.flows, rtol=1e-10)
    assert res.time < 30


@pytest.mark.slow
def test_chicago_sketch_scales():
    files = _require("Chicago-Sketch")
    net, dem = load_known("Chicago-Sketch")
    ref, _ = read_flow(files["flow"], net.num_nodes).align(net)
    res = solve_equilibrium(net, dem, gap=1e-6, progress=False, return_origin_flows=True)
    print(f"Chicago-Sketch: gap {res.gap:.2e} in {res.time:.1f} s, {res.iterations} sweeps, "
          f"objective rel. error {abs(res.objective - CHICAGO_OBJECTIVE) / CHICAGO_OBJECTIVE:.1e}")
    assert res.converged
    assert abs(res.objective - CHICAGO_OBJECTIVE) / CHICAGO_OBJECTIVE < 1e-6
    assert np.linalg.norm(res.flows - ref) / np.linalg.norm(ref) < 1e-2
    np.testing.assert_allclose(res.origin_flows.sum(axis=0), res.flows, rtol=1e-8, atol=1e-6)


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def toy_files(tmp_path):
    net = random_network(9, 5, extra_links=7, first_thru_node=3, seed=5)
    dem = random_demand(5, seed=5)
    return net, dem, write_net(net, tmp_path / "toy_net.tntp"), write_trips(dem, tmp_path / "toy_trips.tntp")


def test_cli_round_trip(tmp_path, toy_files):
    from typer.testing import CliRunner

    from fpntools.cli import app

    net, dem, net_path, trips_path = toy_files
    (tmp_path / "sub").mkdir()
    out = tmp_path / "sub" / "flows.csv"
    r = CliRunner().invoke(app, ["traffic", "equilibrium", "--net", str(net_path), "--trips", str(trips_path), "--gap",
                                 "1e-9", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["from", "to", "flow", "cost"] and len(rows) == net.num_links
    assert [(int(w["from"]), int(w["to"])) for w in rows] == list(zip(net.init + 1, net.term + 1))
    flows = np.array([float(w["flow"]) for w in rows])
    costs = np.array([float(w["cost"]) for w in rows])
    ref = solve_equilibrium(net, dem, gap=1e-9, progress=False)
    np.testing.assert_allclose(flows, ref.flows, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(costs, BPRCost.from_network(net)(flows), rtol=1e-12)
    assert relative_gap(net, dem, flows) <= 1e-9


def test_cli_bad_file_no_traceback_no_output(tmp_path, toy_files):
    from typer.testing import CliRunner

    from fpntools.cli import app

    _, _, net_path, trips_path = toy_files
    lines = net_path.read_text().split("\n")
    lines[8] = lines[8].replace("\t;", "\tx\t;", 1).replace("\t", "\tfoo\t", 1)
    bad = tmp_path / "bad_net.tntp"
    bad.write_text("\n".join(lines))
    out = tmp_path / "flows.csv"
    runner = CliRunner()
    r = runner.invoke(app, ["traffic", "equilibrium", "--net", str(bad), "--trips", str(trips_path), "--out", str(out)])
    assert r.exit_code == 2
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    assert "line 9" in r.output and "bad_net.tntp" in r.output
    assert not out.exists()
    r = runner.invoke(app, ["traffic", "equilibrium", "--net", str(tmp_path / "missing.tntp"), "--trips",
                            str(trips_path), "--out", str(out)])
    assert r.exit_code == 2 and "file not found" in r.output and not out.exists()
    # unconverged: non-zero exit, no output
    r = runner.invoke(app, ["traffic", "equilibrium", "--net", str(net_path), "--trips", str(trips_path),
                            "--out", str(out), "--max-iter", "0", "--quiet"])
    assert r.exit_code == 3 and "above the target" in r.output and "not usable" in r.output and not out.exists()
    assert list(tmp_path.glob("*.tmp")) == [] and list(tmp_path.glob(".flows*")) == []


# ------------------------------------------------------------------------------------------------ properties


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), nodes=st.integers(4, 10), zones=st.integers(2, 4),
       ftn=st.integers(1, 3), scale=st.floats(10.0, 1500.0))
def test_random_networks_reach_certified_equilibrium(seed, nodes, zones, ftn, scale):
    zones = min(zones, nodes)
    net = random_network(nodes, zones, extra_links=nodes // 2, first_thru_node=min(ftn, zones), seed=seed)
    dem = random_demand(zones, scale=scale, seed=seed)
    res = solve_equilibrium(net, dem, gap=1e-9, progress=False, return_origin_flows=True)
    assert res.converged and res.gap <= 1e-9
    assert np.all(res.flows >= 0)
    # independent certificate (fresh shortest paths at the returned flows)
    assert relative_gap(net, dem, res.flows) <= 1e-9
    np.testing.assert_allclose(res.origin_flows.sum(axis=0), res.flows, rtol=1e-9, atol=1e-9 * scale)
    # warm start from this solution on a scaled demand converges too and agrees with a cold start
    warm = solve_equilibrium(net, 1.3 * dem, gap=1e-10, progress=False, warm_start=res)
    cold = solve_equilibrium(net, 1.3 * dem, gap=1e-10, progress=False)
    assert warm.converged and cold.converged
    assert warm.objective == pytest.approx(cold.objective, rel=1e-8)

"""Contextual data generator (certified equilibria, .npz caching) and flow metrics."""

from __future__ import annotations

import numpy as np
import pytest

from problems.traffic.context import ContextMap, TrafficDataset, generate_dataset
from problems.traffic.equilibrium import solve_equilibrium
from problems.traffic.metrics import conservation_error, relative_l2_error, trafix_score, wardrop_gap
from problems.traffic.synthetic import random_demand, random_network


@pytest.fixture(scope="module")
def toy():
    return random_network(10, 5, extra_links=8, first_thru_node=2, seed=7), random_demand(5, seed=7)


def test_context_map_is_documented_map(toy):
    net, dem = toy
    cmap = ContextMap(net, dem, seed=3)
    assert cmap.dim == 3 + net.num_zones
    d = np.zeros(cmap.dim)
    d[0], d[1], d[2], d[3 + 2] = 1.0, 1.0, 0.5, 1.0
    np.testing.assert_allclose(cmap.capacity(d), net.capacity * (1 - 0.35 * cmap.sigma))
    expected = dem * 1.4
    expected[:, 2] *= 2.0
    np.testing.assert_allclose(cmap.demand(d), expected)
    np.testing.assert_allclose(cmap.demand(np.zeros(cmap.dim)), dem * 0.6)
    assert np.all((cmap.sigma >= 0.5) & (cmap.sigma <= 1.0))
    # same seed, same map; different seed, different map
    np.testing.assert_array_equal(ContextMap(net, dem, seed=3).sigma, cmap.sigma)
    assert not np.allclose(ContextMap(net, dem, seed=4).sigma, cmap.sigma)
    ctx = cmap.sample(200, np.random.default_rng(0))
    assert ctx.shape == (200, cmap.dim) and ctx.min() >= 0 and ctx.max() <= 1
    onehot = ctx[:, 3:].sum(axis=1)
    assert set(np.unique(onehot)) <= {0.0, 1.0}
    assert np.all((ctx[:, 2] > 0) == (onehot == 1))


def test_dataset_certified_and_cached(tmp_path, toy):
    net, dem = toy
    ds = generate_dataset(net, dem, 5, seed=1, gap=1e-8, origin_flows=True, cache=tmp_path, progress=False)
    assert len(ds) == 5 and ds.flows.shape == (5, net.num_links)
    assert np.all(ds.gaps <= 1e-8) and ds.target_gap == 1e-8
    cmap = ContextMap(net, dem, seed=0)
    for i in range(len(ds)):
        # independent certificate: the stored flows are an equilibrium of the sample's capacities / demand
        d_i = cmap.demand(ds.contexts[i])
        assert wardrop_gap(net, d_i, ds.flows[i], capacity=ds.capacities[i]) <= 1e-8
        assert conservation_error(net, d_i, ds.flows[i]) < 1e-10
        np.testing.assert_allclose(ds.origin_flows[i].sum(axis=0), ds.flows[i], rtol=1e-5, atol=1e-3)
        assert ds.demand_totals[i] == pytest.approx(d_i.sum())
    files = list(tmp_path.glob("traffic_*.npz"))
    assert len(files) == 1
    again = generate_dataset(net, dem, 5, seed=1, gap=1e-8, origin_flows=True, cache=tmp_path, progress=False)
    np.testing.assert_array_equal(again.flows, ds.flows)
    np.testing.assert_array_equal(again.contexts, ds.contexts)
    assert again.meta["network"] == net.name
    other = generate_dataset(net, dem, 2, seed=2, gap=1e-8, cache=tmp_path, progress=False)
    assert len(list(tmp_path.glob("traffic_*.npz"))) == 2 and other.origin_flows is None
    assert not np.allclose(other.contexts, ds.contexts[:2])


def test_dataset_save_load_round_trip(tmp_path, toy):
    net, dem = toy
    ds = generate_dataset(net, dem, 3, seed=0, gap=1e-7, progress=False)
    path = ds.save(tmp_path / "d" / "set.npz")
    back = TrafficDataset.load(path)
    for f in ("contexts", "flows", "costs", "capacities", "gaps", "iterations", "demand_totals"):
        np.testing.assert_array_equal(getattr(back, f), getattr(ds, f), err_msg=f)
    assert back.origin_flows is None and back.meta["seed"] == "0"


def test_metrics(toy):
    true = np.array([100.0, 200.0, 0.0, 50.0])
    pred = np.array([100.2, 205.0, 0.0, 50.0])
    assert relative_l2_error(pred, true) == pytest.approx(np.linalg.norm(pred - true) / np.linalg.norm(true))
    assert trafix_score(pred, true) == pytest.approx(0.75)  # 205 is 2.5% off
    batch = relative_l2_error(np.stack([pred, true]), np.stack([true, true]))
    assert batch.shape == (2,) and batch[1] == 0
    np.testing.assert_allclose(trafix_score(np.stack([pred, true]), np.stack([true, true])), [0.75, 1.0])
    torch = pytest.importorskip("torch")
    assert relative_l2_error(torch.tensor(pred), torch.tensor(true)) == pytest.approx(
        relative_l2_error(pred, true))

    net, dem = toy
    res = solve_equilibrium(net, dem, gap=1e-9, progress=False)
    assert wardrop_gap(net, dem, res.flows) == pytest.approx(res.gap, rel=1e-6, abs=1e-14)
    assert conservation_error(net, dem, res.flows) < 1e-12
    # a perturbed but feasible flow (mix with all-or-nothing at free flow) has a clearly positive gap
    from problems.traffic.equilibrium import all_or_nothing
    from problems.traffic.costs import BPRCost

    y, _ = all_or_nothing(net, dem, BPRCost.from_network(net)(np.zeros(net.num_links)))
    mixed = 0.5 * res.flows + 0.5 * y
    assert conservation_error(net, dem, mixed) < 1e-12
    assert wardrop_gap(net, dem, mixed) > 1e-3


def test_cli_dataset(tmp_path, toy):
    from typer.testing import CliRunner

    from fpntools.cli import app
    from problems.traffic.tntp import write_net, write_trips

    net, dem = toy
    net_path, trips_path = write_net(net, tmp_path / "t_net.tntp"), write_trips(dem, tmp_path / "t_trips.tntp")
    out = tmp_path / "ds.npz"
    r = CliRunner().invoke(app, ["traffic", "dataset", "--net", str(net_path), "--trips", str(trips_path), "--n", "2",
                                 "--gap", "1e-7", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    ds = TrafficDataset.load(out)
    assert len(ds) == 2 and ds.gaps.max() <= 1e-7
    trips_path.write_text(trips_path.read_text().replace("Origin \t2", "Origin \t99"))
    out2 = tmp_path / "ds2.npz"
    r = CliRunner().invoke(app, ["traffic", "dataset", "--net", str(net_path), "--trips", str(trips_path),
                                 "--out", str(out2)])
    assert r.exit_code == 2 and "out of range" in r.output and not out2.exists()
    assert "Traceback" not in r.output

"""The user's own traffic data (``train --net --trips --data``, ``predict --model DIR``, ``make-data``) and the
path N-FPN: file round trips and bad files, conservation / nonnegativity of predictions, the fixed point solves
the learned VI, the weighted simplex projection, monotone costs, model files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fpntools.cli import app
from fpntools.errors import UserInputError
from problems.traffic.byod import (PathTrainConfig, build_model, evaluate_flows, fit, load_path_model,
                                   predict_flows, save_path_model)
from problems.traffic.datafile import load_data_file, make_data, save_data_file
from problems.traffic.metrics import conservation_error
from problems.traffic.pathnfpn import PathNFPNConfig, weighted_simplex_projection
from problems.traffic.synthetic import random_demand, random_network
from problems.traffic.tntp import write_net, write_trips

runner = CliRunner()


@pytest.fixture(scope="module")
def small():
    """A random 8-node network, its demand and 14 certified observations of the generator."""
    net = random_network(8, 4, seed=1)
    net.length[:] = 0.0  # no distance weight warning in the CLI runs
    dem = random_demand(4, seed=1)
    data = make_data(net, dem, 14, seed=0, gap=1e-10, od=True)
    return net, dem, data


@pytest.fixture(scope="module")
def files(small, tmp_path_factory):
    net, dem, data = small
    d = tmp_path_factory.mktemp("byod")
    write_net(net, d / "net.tntp")
    write_trips(dem, d / "trips.tntp")
    save_data_file(d / "data.npz", data)
    return d


@pytest.fixture(scope="module")
def trained(small):
    net, dem, data = small
    train = data.subset(slice(0, 10))
    torch.manual_seed(0)
    model = build_model(net, dem, train, PathNFPNConfig(sweeps=400, solver_tol=1e-11))
    fit(model, train, PathTrainConfig(epochs=2, lr=3e-3, model=model.config), None, progress=False)
    return model


def test_data_file_round_trip(small, tmp_path):
    net, _, data = small
    p = save_data_file(tmp_path / "d.npz", data)
    back = load_data_file(p, net.num_links, net.num_zones)
    np.testing.assert_array_equal(back.contexts, data.contexts)
    np.testing.assert_array_equal(back.flows, data.flows)
    np.testing.assert_array_equal(back.od, data.od)
    np.testing.assert_array_equal(back.demand_scale, data.demand_scale)
    np.testing.assert_array_equal(back.extra["gap"], data.extra["gap"])
    assert (data.extra["gap"] <= 1e-10).all()
    # the generator's demand_scale is the total demand over the nominal total
    assert np.allclose(data.demand_scale, data.od.sum(axis=(1, 2)) / random_demand(4, seed=1).sum())


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("flow"), "missing array 'flow'"),
    (lambda a: a.update(flow=a["flow"][:, :-1]), "columns but the network has"),
    (lambda a: a.update(flow=a["flow"][:-1]), "rows but 'flow' has"),
    (lambda a: a["flow"].__setitem__((2, 3), np.nan), "NaN or infinite entry at index (2, 3)"),
    (lambda a: a["context"].__setitem__((1, 0), np.inf), "'context' has a NaN or infinite entry"),
    (lambda a: a["flow"].__setitem__((0, 5), -1.0), "negative entry (-1) at row 0, link 6"),
    (lambda a: a.update(context=a["context"][:, 0]), "'context' must have shape (n, p)"),
    (lambda a: a.update(od=a["od"][:, :2]), "'od' must have shape"),
    (lambda a: a.update(demand_scale=-a["demand_scale"]), "'demand_scale' must be positive"),
])
def test_bad_data_files(small, tmp_path, change, message):
    net, _, data = small
    arrays = dict(context=data.contexts.copy(), flow=data.flows.copy(), od=data.od.copy(),
                  demand_scale=data.demand_scale.copy())
    change(arrays)
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(UserInputError, match=None) as e:
        load_data_file(p, net.num_links, net.num_zones)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_not_an_npz(small, tmp_path):
    p = tmp_path / "x.npz"
    p.write_text("not a zip")
    with pytest.raises(UserInputError, match="cannot read"):
        load_data_file(p, small[0].num_links)


def test_weighted_simplex_projection_kkt():
    """Against the KKT conditions: h >= 0, sums equal q, and w_p (h_p - v_p) = -lam_k on the support,
    >= -lam_k off it."""
    g = torch.Generator().manual_seed(0)
    slots = torch.tensor([[0, 1, 2], [3, 4, -1], [5, -1, -1]])
    v = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    w = torch.rand(4, 6, generator=g, dtype=torch.float64) + 0.1
    q = torch.rand(4, 3, generator=g, dtype=torch.float64) * 2
    h = weighted_simplex_projection(v, w, q, slots)
    pod = torch.tensor([0, 0, 0, 1, 1, 2])
    assert (h >= 0).all()
    sums = torch.zeros(4, 3, dtype=torch.float64).index_add_(1, pod, h)
    torch.testing.assert_close(sums, q, rtol=0, atol=1e-12)
    g_ = w * (h - v)  # = -lam on the support
    for b in range(4):
        for k in range(3):
            idx = (pod == k).nonzero().flatten()
            sup = idx[h[b, idx] > 1e-12]
            lam = -g_[b, sup]
            assert float(lam.max() - lam.min()) < 1e-9
            off = idx[h[b, idx] <= 1e-12]
            assert (g_[b, off] >= -lam.max() - 1e-9).all()


def test_neural_cost_is_monotone_and_derivative_exact(trained, small):
    model = trained
    c = torch.as_tensor(small[2].contexts[:3])
    prm = model.cost_params(c)
    X = torch.linspace(0, 3, 50, dtype=torch.float64)[:, None].expand(50, model.num_links).contiguous()
    for i in range(3):
        t, tp = model.link_cost(X, {k: v[i: i + 1].expand(50, *v.shape[1:]) for k, v in prm.items()})
        assert (t.diff(dim=0) > 0).all() and (tp > 0).all()
    Xr = (torch.rand(3, model.num_links, dtype=torch.float64) + 0.1).requires_grad_()
    t, tp = model.link_cost(Xr, {k: v.detach() for k, v in prm.items()})
    (grad,) = torch.autograd.grad(t.sum(), Xr)
    torch.testing.assert_close(grad, tp, rtol=1e-10, atol=1e-12)


def test_predictions_conserve_flow_and_solve_the_learned_vi(trained, small):
    """Nonnegative, node balance of the learned demand exactly, Wardrop on the path set (every used path
    of a pair is a cheapest one), and <C(h*), h' - h*> >= 0 for random feasible h'."""
    model = trained
    net, _, data = small
    c = torch.as_tensor(data.contexts[10:])
    with torch.no_grad():
        X, info, h = model(c, return_paths=True)
    assert float(info.gap.max()) <= 1e-11
    assert (X >= 0).all() and (h >= 0).all()
    dem = model.demand_matrix(c)
    for i in range(len(c)):
        assert conservation_error(net, dem[i], X[i].numpy()) < 1e-12
    prm = model.cost_params(c)
    with torch.no_grad():
        t, _ = model.link_cost(X / model.flow_unit, prm)
        C = model.paths.path_costs(t)
        cmin, _ = model.paths.pair_min(C)
        used = h > 1e-9 * h.max()
        excess = (C - cmin[:, model.paths.path_od])[used]
        assert float(excess.max()) <= 1e-6 * float(cmin.max())
        q = model.demand(c)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            r = torch.rand(h.shape, generator=g, dtype=torch.float64)
            tot = torch.zeros_like(q).index_add_(1, model.paths.path_od, r)
            hp = r / tot[:, model.paths.path_od] * q[:, model.paths.path_od]
            assert ((C * (hp - h / model.flow_unit)).sum(1) >= -1e-9 * (C * hp).sum(1)).all()
    # the fixed point of the projected-gradient map T: residual tiny
    assert float(info.rel_residual.max()) < 1e-8


def test_grey_family_matches_the_certified_solver(small):
    """With the generator's law as its cost and demand (grey family, parameters of the generator), the path
    N-FPN's fixed point is the certified equilibrium (the path set covers the used paths)."""
    from problems.traffic.context import ContextMap

    from problems.traffic.paths import collect_paths

    net, dem, data = small
    paths = collect_paths(net, dem, data.flows, perturb_draws=10, perturb=1.0)  # covers every used path here
    model = build_model(net, dem, data, PathNFPNConfig(family="grey", sweeps=2000, solver_tol=1e-12), paths)
    cm = ContextMap(net, dem)
    with torch.no_grad():
        model.theta_c.copy_(torch.as_tensor(-cm.w_max * cm.sigma))
        model.alpha.fill_(np.log(0.6))
        model.beta.fill_(np.log(0.8))
        model.kappa.copy_(torch.as_tensor(np.log(cm.gamma)))
        model.eta.fill_(float(np.log(np.expm1(cm.e_max))))
    pred, diag = predict_flows(model, data.contexts)
    rel = np.linalg.norm(pred - data.flows, axis=1) / np.linalg.norm(data.flows, axis=1)
    assert rel.max() < 1e-5, rel


def test_training_lowers_the_error(small):
    net, dem, data = small
    train = data.subset(slice(0, 10))
    model = build_model(net, dem, train, PathNFPNConfig(sweeps=200))
    before = evaluate_flows(model, train)["rel_l2"]
    fit(model, train, PathTrainConfig(epochs=3, lr=3e-3, model=model.config), None, progress=False)
    after = evaluate_flows(model, train)["rel_l2"]
    assert after < 0.8 * before, (before, after)


def test_model_folder_round_trip_and_fingerprint(trained, small, tmp_path):
    net, dem, data = small
    save_path_model(trained, tmp_path / "m", dem, extra={"note": 1})
    back = load_path_model(tmp_path / "m")
    a, _ = predict_flows(trained, data.contexts[:3])
    b, _ = predict_flows(back, data.contexts[:3])
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)
    other = random_demand(4, seed=5)
    write_trips(other, tmp_path / "other_trips.tntp")
    with pytest.raises(UserInputError, match="does not match the model"):
        load_path_model(tmp_path / "m", tmp_path / "m" / "net.tntp", tmp_path / "other_trips.tntp")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["config"]["family"] = "quantum"
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserInputError, match="does not fit the path N-FPN"):
        load_path_model(tmp_path / "m")


def _run(args):
    r = runner.invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def test_cli_train_predict_round_trip(files, tmp_path):
    d = files
    out = tmp_path / "model"
    out.mkdir()
    code, text = _run(["traffic", "train", "--net", d / "net.tntp", "--trips", d / "trips.tntp", "--data",
                       d / "data.npz", "--out", out, "--epochs", "1", "--device", "cpu", "-q"])
    assert code == 0, text
    for name in ("model.json", "model.safetensors", "net.tntp", "trips.tntp", "checkpoint.pt", "history.json"):
        assert (out / name).is_file()
    code, text = _run(["traffic", "train", "--net", d / "net.tntp", "--trips", d / "trips.tntp", "--data",
                       d / "data.npz", "--out", out, "--epochs", "1", "--device", "cpu", "-q"])
    assert code == 2 and "already holds a checkpoint" in text
    ctx = np.load(d / "data.npz")["context"][:3]
    np.save(tmp_path / "ctx.npy", ctx)
    code, text = _run(["traffic", "predict", "--model", out, "--context-file", tmp_path / "ctx.npy", "--out",
                       tmp_path / "p.npy"])
    assert code == 0, text
    flows = np.load(tmp_path / "p.npy")
    assert flows.shape == (3, 26) and (flows >= 0).all()
    code, text = _run(["traffic", "predict", "--model", out, "--context-file", tmp_path / "ctx.npy", "--out",
                       tmp_path / "p.csv"])
    assert code == 0, text
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "sample,from,to,flow,cost" and len(rows) == 1 + 3 * 26
    last = rows[-1].split(",")
    assert last[0] == "2" and float(last[3]) == pytest.approx(flows[2, -1], rel=1e-12)


@pytest.mark.parametrize("case", ["columns", "nan", "suffix", "missing"])
def test_cli_predict_bad_input(files, tmp_path, case, trained, small):
    save_path_model(trained, tmp_path / "m", small[1])
    ctx = small[2].contexts[:2].copy()
    out = tmp_path / "p.npy"
    if case == "columns":
        ctx = ctx[:, :-1]
    if case == "nan":
        ctx[1, 0] = np.nan
    if case == "suffix":
        out = tmp_path / "p.txt"
    np.save(tmp_path / "c.npy", ctx)
    cf = tmp_path / ("nothere.npy" if case == "missing" else "c.npy")
    code, text = _run(["traffic", "predict", "--model", tmp_path / "m", "--context-file", cf, "--out", out])
    assert code == 2, text
    assert text.strip().startswith("error:") and len(text.strip().splitlines()) == 1, text
    assert not out.exists()


def test_cli_train_bad_data_is_one_line(files, tmp_path):
    d = files
    bad = tmp_path / "bad.npz"
    z = dict(np.load(d / "data.npz"))
    z["flow"] = z["flow"][:, :5]
    np.savez(bad, **z)
    out = tmp_path / "m"
    out.mkdir()
    code, text = _run(["traffic", "train", "--net", d / "net.tntp", "--trips", d / "trips.tntp", "--data", bad,
                       "--out", out, "--device", "cpu", "-q"])
    assert code == 2 and "'flow' has 5 columns but the network has 26 links" in text
    assert not (out / "checkpoint.pt").exists()
    code, text = _run(["traffic", "train", "--net", d / "net.tntp", "--data", d / "data.npz", "--out", out])
    assert code == 2 and "needs all of --net, --trips and --data" in text


def test_cli_make_data(files, tmp_path):
    d = files
    out = tmp_path / "gen.npz"
    code, text = _run(["traffic", "make-data", "--net", d / "net.tntp", "--trips", d / "trips.tntp", "--n", "4",
                       "--out", out, "--od", "-q"])
    assert code == 0, text
    back = load_data_file(out, 26, 4)
    assert back.contexts.shape == (4, 7) and back.od.shape == (4, 4, 4) and (back.extra["gap"] <= 1e-8).all()
    code, text = _run(["traffic", "make-data", "--net", d / "net.tntp", "--trips", d / "trips.tntp", "--n", "4",
                       "--out", tmp_path / "gen.txt", "-q"])
    assert code == 2

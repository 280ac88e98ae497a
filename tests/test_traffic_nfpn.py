"""Traffic N-FPN: VI conditions at the fixed point, feasibility of the projections, JFB training, model files,
and the ``fpntools traffic predict`` round trip with the shipped Sioux Falls model."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from fpntools import SolveConfig
from problems.traffic.context import ContextMap, generate_dataset
from problems.traffic.nfpn import NFPNConfig, TrafficNFPN, default_solve
from problems.traffic.synthetic import random_demand, random_network
from problems.traffic.tntp import tntp_dir


@pytest.fixture(scope="module")
def small():
    """A small synthetic network (certified data) and a neutral model on it."""
    net = random_network(8, 4, seed=3, first_thru_node=3)  # zones 1, 2 may not be passed through
    dem = random_demand(4, seed=3)
    ds = generate_dataset(net, dem, 12, seed=0, gap=1e-10, progress=False)
    return net, dem, ds


def _model(net, dem, ds, solve: SolveConfig | None = None, **kw) -> TrafficNFPN:
    return TrafficNFPN.build(net, dem, ds.flows, NFPNConfig(network="synthetic", solve=solve or default_solve(), **kw))


def test_projections_feasible(small):
    net, dem, ds = small
    m = _model(net, dem, ds)
    d = torch.as_tensor(ds.contexts[:3])
    B, R, L = 3, m.num_origins, m.num_links
    v = torch.randn(B, R, L, dtype=torch.float64) * 3
    b = m.rhs(d).reshape(B * R, -1)
    with torch.no_grad():
        b = b.detach()
        p = m.affine.project(v.reshape(B * R, L), b=b)
    assert float((p @ m.affine.B.T - b).abs().max()) < 1e-10  # E_y y = b (scaled incidence)
    q = m.box(v)
    assert float(q.min()) >= 0.0
    x = m.project_feasible(d, v)
    assert float(x.min()) >= 0.0
    res = (x.reshape(B * R, L) @ m.affine.B.T - b).norm() / b.norm()
    assert float(res) < 1e-7


def test_fixed_point_solves_learned_vi(small):
    """At the DY fixed point, x solves the VI of the model's own learned cost: feasible, and the projected
    gradient residual ||y - P_C(y - a F(y))|| vanishes (random, non-neutral parameters)."""
    net, dem, ds = small
    m = _model(net, dem, ds, warm_gap=1e-11, solve=default_solve().with_(max_iter=200, tol=1e-11))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    d = torch.as_tensor(ds.contexts[:4])
    x = m.origin_flows(d)  # vehicles, (B, R, L)
    assert float(x.min()) >= 0.0
    # flow conservation E x_o = b_o (vehicles)
    from problems.traffic.nfpn import incidence_matrix

    E = torch.as_tensor(incidence_matrix(net))
    b = m.rhs(d) * m.flow_unit
    cons = (torch.einsum("nl,brl->brn", E, x) - b).norm() / b.norm()
    assert float(cons.detach()) < 1e-6
    assert float(m.vi_residual(d, x).max()) < 1e-6
    # a perturbed feasible point is not a solution
    xp = m.project_feasible(d, (x / m.flow_unit * m.metric_sqrt) * 1.3 + 0.05)
    assert float(m.vi_residual(d, xp / m.metric_sqrt * m.flow_unit).min()) > 1e-4


def test_generator_parameters_reproduce_equilibria(small):
    """The model family contains the data generator: with its parameters the N-FPN returns the certified
    equilibria."""
    net, dem, ds = small
    m = _model(net, dem, ds, warm_gap=1e-11)
    m.set_to_generator(ContextMap(net, dem))
    with torch.no_grad():
        pred, info = m(torch.as_tensor(ds.contexts))
    err = np.linalg.norm(pred.numpy() - ds.flows, axis=1) / np.linalg.norm(ds.flows, axis=1)
    assert err.max() < 1e-5


def _train_steps(m, params, C, X, solve: SolveConfig, n=6, lr=0.03) -> list[float]:
    from problems.traffic.train import flow_loss

    m.set_solve(solve)
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(n):
        opt.zero_grad()
        pred, _ = m(C)
        loss = flow_loss(pred, X)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    return losses


@pytest.fixture(scope="module")
def congested():
    """A congested synthetic network (route choice matters) with certified data."""
    net = random_network(9, 4, seed=5, extra_links=8, cap_lo=60.0, cap_hi=200.0)
    dem = random_demand(4, seed=5)
    return net, dem, generate_dataset(net, dem, 6, seed=1, gap=1e-10, progress=False)


def test_jfb_steps_lower_loss_cost_parameters(congested):
    """JFB through the DY map lowers the loss on the learned cost (demand at its generator value)."""
    net, dem, ds = congested
    m = _model(net, dem, ds, warm_gap=1e-8)
    ref = _model(net, dem, ds).set_to_generator(ContextMap(net, dem))
    with torch.no_grad():
        for name in ("alpha", "beta", "kappa", "eta"):
            getattr(m, name).copy_(getattr(ref, name))
    losses = _train_steps(m, [m.theta_c, m.theta_t], torch.as_tensor(ds.contexts), torch.as_tensor(ds.flows),
                          m.config.solve.with_(backward="jfb"), n=4, lr=0.05)
    assert losses[0] > 1e-6
    assert losses[-1] < 0.5 * losses[0]


def test_implicit_steps_lower_loss_all_parameters(small):
    net, dem, ds = small
    m = _model(net, dem, ds, warm_gap=1e-10)
    losses = _train_steps(m, list(m.parameters()), torch.as_tensor(ds.contexts), torch.as_tensor(ds.flows),
                          m.config.solve.with_(backward="implicit", backward_tol=1e-6, backward_max_iter=50), n=4)
    assert losses[-1] < 0.5 * losses[0]


def test_save_load_roundtrip_and_bad_files(small, tmp_path):
    from fpntools.errors import UserInputError
    from problems.traffic.train import load_model, save_model

    net, dem, ds = small
    m = _model(net, dem, ds)
    with torch.no_grad():
        m.theta_c.add_(0.01)
    st, js = save_model(m, tmp_path / "m")
    m2 = load_model(tmp_path / "m", network=net, base_demand=dem)
    assert torch.equal(m2.theta_c, m.theta_c)
    assert torch.allclose(m2.metric_sqrt, m.metric_sqrt)
    # corrupt weights
    bad = tmp_path / "bad"
    shutil.copy(js, bad.with_suffix(".json"))
    bad.with_suffix(".safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserInputError, match="corrupt"):
        load_model(bad, network=net, base_demand=dem)
    with pytest.raises(UserInputError, match="not found"):
        load_model(tmp_path / "missing", network=net, base_demand=dem)
    # a different network
    other = net.replace(capacity=net.capacity * 2)
    with pytest.raises(UserInputError, match="does not match"):
        load_model(tmp_path / "m", network=other, base_demand=dem)


# ------------------------------------------------------------------------------ CLI with the shipped model

needs_sf = pytest.mark.skipif(tntp_dir() is None or not (tntp_dir() / "SiouxFalls").is_dir(),
                              reason="Sioux Falls TNTP files absent")


def _invoke(args):
    from typer.testing import CliRunner

    from fpntools.cli import app

    return CliRunner().invoke(app, ["traffic", *args])


@needs_sf
def test_predict_cli_roundtrip(tmp_path):
    from problems.traffic.train import DEFAULT_MODEL

    if not DEFAULT_MODEL.with_suffix(".safetensors").is_file():
        pytest.skip("shipped model absent")
    out = tmp_path / "flows.csv"
    r = _invoke(["predict", "--context", "0.3,0.6,0.5,10", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = out.read_text().strip().splitlines()
    assert rows[0] == "from,to,flow" and len(rows) == 77
    flows = np.array([float(x.split(",")[2]) for x in rows[1:]])
    assert np.isfinite(flows).all() and flows.min() >= 0 and flows.max() > 1000
    # the same context as a full vector in a file gives the same flows
    full = np.zeros((1, 27))
    full[0, :3] = 0.3, 0.6, 0.5
    full[0, 3 + 9] = 1
    f = tmp_path / "ctx.json"
    f.write_text(json.dumps(full.tolist()))
    out2 = tmp_path / "flows2.csv"
    r = _invoke(["predict", "--context-file", str(f), "--out", str(out2)])
    assert r.exit_code == 0, r.output
    assert out2.read_text() == out.read_text()


@needs_sf
@pytest.mark.parametrize("ctx,msg", [("0.1,0.2", "needs 3 or 4"), ("nan,0.2,0.3", "NaN"),
                                     ("0.1,0.2,0.3,99", "event zone"), ("1.5,0.2,0.3", r"\[0, 1\]")])
def test_predict_cli_bad_context(tmp_path, ctx, msg):
    from problems.traffic.train import DEFAULT_MODEL

    if not DEFAULT_MODEL.with_suffix(".safetensors").is_file():
        pytest.skip("shipped model absent")
    out = tmp_path / "flows.csv"
    r = _invoke(["predict", "--context", ctx, "--out", str(out)])
    assert r.exit_code == 2
    import re

    assert re.search(msg, r.output)
    assert not out.exists()


@needs_sf
def test_predict_cli_corrupt_model(tmp_path):
    from problems.traffic.train import DEFAULT_MODEL

    if not DEFAULT_MODEL.with_suffix(".safetensors").is_file():
        pytest.skip("shipped model absent")
    shutil.copy(DEFAULT_MODEL.with_suffix(".json"), tmp_path / "m.json")
    (tmp_path / "m.safetensors").write_bytes(b"\x00" * 10)
    out = tmp_path / "flows.csv"
    r = _invoke(["predict", "--model", str(tmp_path / "m"), "--context", "0.1,0.2,0.3", "--out", str(out)])
    assert r.exit_code == 2 and "corrupt" in r.output
    assert not out.exists()
    r = _invoke(["predict", "--model", str(tmp_path / "nothere"), "--context", "0.1,0.2,0.3", "--out", str(out)])
    assert r.exit_code == 2 and "not found" in r.output

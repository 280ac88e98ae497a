"""The Nash fixed point network: its fixed point is the equilibrium of its own learned game; training works."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import fpntools
from fpntools.errors import UserInputError
from problems.games.baselines import ConstantPredictor, MLPRegressor
from problems.games.data import GameDataConfig, make_dataset, nash_gap_torch
from problems.games.model import NashFPN, NFPNConfig, default_solve
from problems.games.train import evaluate, recipe, train_model


@pytest.fixture(scope="module")
def rps_data():
    return make_dataset(GameDataConfig(family="rps", n_train=96, n_test=48))


def _model(n: int = 3, m: int = 4, p: int = 5, **kw) -> NashFPN:
    torch.manual_seed(0)
    model = NashFPN(n, m, p, NFPNConfig(hidden=16, **kw))
    with torch.no_grad():  # larger payoffs than at initialisation: boundary equilibria, a harder solve
        model.game.net[-1].weight.mul_(8.0)
    return model


@pytest.mark.parametrize("splitting", ["pg", "davis-yin"])
def test_fixed_point_solves_its_own_learned_game(splitting):
    model = _model(splitting=splitting, solve=default_solve().with_(tol=1e-11, max_iter=500)).double()
    d = torch.rand(16, 5, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        z, info = model(d)
    assert info.status == fpntools.Status.CONVERGED
    x, y = z[:, :3], z[:, 3:]
    torch.testing.assert_close(x.sum(1), torch.ones(16, dtype=torch.float64))
    torch.testing.assert_close(y.sum(1), torch.ones(16, dtype=torch.float64))
    assert z.min() >= 0
    assert (z < 1e-12).any(), "expected some boundary (partial-support) equilibria"
    with torch.no_grad():
        # natural residual of the VI for step sizes other than the solver's: zero only at the solution
        for alpha in (1.0, 0.1, 10.0):
            assert model.vi_residual(z, d, alpha).max() < 1e-8 * max(alpha, 1.0)
        # VI gap max_w <F(z), z - w> over the simplex product (Nash gap of the regularised learned game)
        assert model.vi_gap(z, d).abs().max() < 1e-8
        # ... while a non-solution has a clearly positive gap
        assert model.vi_gap(model.initial_state(d), d).min() > 1e-3
        assert model.contraction_factor(d).max() < 1.0


def test_face_solve_is_the_exact_equilibrium_and_its_gradient():
    """``face_solve``: the KKT solve on the fixed point's face is the learned game's equilibrium to round-off, and
    its autograd gradient is the derivative of the equilibrium map (float64 central differences of the fixed
    point solved without the face solve)."""
    exact = _model(face_solve=True, solve=default_solve().with_(tol=1e-12, max_iter=2000)).double()
    plain = _model(face_solve=False, solve=default_solve().with_(tol=1e-13, max_iter=4000)).double()
    plain.load_state_dict(exact.state_dict())
    d = torch.rand(12, 5, dtype=torch.float64) * 2 - 1
    z, info = exact(d)
    assert info.status == fpntools.Status.CONVERGED
    with torch.no_grad():
        z_plain, _ = plain(d)
        assert (z == 0).any() and (z > 0).any()  # boundary equilibria
        torch.testing.assert_close(z, z_plain, atol=1e-9, rtol=0)
        assert exact.vi_gap(z, d).abs().max() < 1e-13 < plain.vi_gap(z_plain, d).abs().max() + 1e-13
        for alpha in (0.1, 1.0, 10.0):
            assert exact.vi_residual(z, d, alpha).max() < 1e-12 * max(alpha, 1.0)
    w = torch.randn(12, 7, dtype=torch.float64)
    bias = exact.game.net[-1].bias
    (grad,) = torch.autograd.grad((w * z).sum(), bias)
    fd = torch.zeros_like(bias)
    eps = 1e-6
    pbias = plain.game.net[-1].bias
    entries = list(range(0, bias.numel(), 3))  # payoff entries of both matrices and linear terms
    with torch.no_grad():
        for k in entries:
            vals = []
            for sign in (1.0, -1.0):
                pbias[k] += sign * eps
                vals.append(float((w * plain(d)[0]).sum()))
                pbias[k] -= sign * eps
            fd[k] = (vals[0] - vals[1]) / (2 * eps)
    torch.testing.assert_close(grad[entries], fd[entries], atol=1e-6, rtol=1e-5)
    assert grad[entries].abs().max() > 1e-2


def test_face_solve_certifies_stiff_games_from_a_rough_start():
    """The active-set correction reaches the exact equilibrium of stiff learned games (payoffs 100x those at
    initialisation, a hundred Anderson steps and more to converge) from one solver step; certified samples count as
    converged, with the residual of the returned point."""
    torch.manual_seed(1)
    rough = NashFPN(5, 4, 5, NFPNConfig(hidden=16, temperature=0.0, face_solve=True,
                                        solve=default_solve().with_(max_iter=1, eval_max_iter=1))).double()
    with torch.no_grad():
        rough.game.net[-1].weight.mul_(100.0)
    long = NashFPN(5, 4, 5, NFPNConfig(hidden=16, temperature=0.0, face_solve=False,
                                       solve=default_solve().with_(tol=1e-10, max_iter=20000, eval_max_iter=20000))).double()
    long.load_state_dict(rough.state_dict())
    d = torch.rand(16, 5, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        z, info = rough(d)
        z_long, info_long = long(d)
        assert bool(info.converged.all()) and info.status == fpntools.Status.CONVERGED
        assert bool((info.steps == 1).all()) and info_long.steps.float().mean() > 100
        assert info.rel_residual.max() < 1e-12
        torch.testing.assert_close(z, z_long, atol=1e-7, rtol=0)
        assert rough.vi_gap(z, d).abs().max() < 1e-12
        # a certified sample is converged whatever its warm start reported (here: every sample "diverged")
        diverged = dataclasses.replace(info, sample_status=torch.full_like(info.sample_status, int(fpntools.Status.DIVERGED)),
                                       status=fpntools.Status.DIVERGED, converged=torch.zeros_like(info.converged))
        z2, info2 = rough.face_polish(rough.initial_state(d), rough.operator(d), diverged)
        assert info2.status == fpntools.Status.CONVERGED and bool(info2.converged.all())
        torch.testing.assert_close(z2, z, atol=1e-9, rtol=0)


def test_player_temperatures_keep_the_game_strongly_monotone():
    cfg = NFPNConfig(hidden=16, temperature=2.0, gamma=0.9)
    torch.manual_seed(0)
    model = NashFPN(3, 4, 5, cfg)
    last = model.game.net[-1]
    assert not last.weight[-2:].any() and not last.bias[-2:].any()  # both players start at mu
    with torch.no_grad():
        last.weight[-2:].normal_()  # trained temperatures: tilted per player and per context
        last.weight.mul_(5.0)
        d = torch.rand(64, 5) * 4 - 2
        A, B, q, mus = model.game.components(d)
        J = model.operator(d).J
        s = torch.linalg.eigvalsh(0.5 * (J + J.transpose(1, 2)))[:, 0]
    assert mus.min() >= np.exp(-2.0) - 1e-6 and mus.max() <= np.exp(2.0) + 1e-5
    assert (mus[:, 0] - mus[:, 1]).abs().max() > 0.1  # the players' temperatures differ
    assert (s >= (1 - 0.9) * mus.min(dim=1).values - 1e-5).all()
    G = (A + B) / 2
    assert (torch.linalg.matrix_norm(G, ord=2) <= 0.9 * mus.prod(1).sqrt() + 1e-5).all()
    torch.testing.assert_close(J[:, 0, 0], mus[:, 0])
    torch.testing.assert_close(J[:, 3, 3], mus[:, 1])
    # a configuration written before temperature / face_solve existed means a model without them
    old = {k: v for k, v in NFPNConfig(face_solve=True, temperature=1.0).to_dict().items()
           if k not in ("face_solve", "temperature")}
    assert NFPNConfig.from_dict(old).face_solve is False and NFPNConfig.from_dict(old).temperature == 0.0
    with pytest.raises(UserInputError, match="temperature"):
        NFPNConfig(temperature=-1.0)


def test_projected_gradient_and_davis_yin_agree():
    pg, dy = _model(), _model(splitting="davis-yin")
    dy.load_state_dict(pg.state_dict())
    d = torch.rand(16, 5) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(pg(d)[0], dy(d)[0], atol=1e-4, rtol=0)


def test_fixed_point_matches_an_independent_solve():
    """Anderson + default tolerance agrees with long plain projected-gradient iterations (Picard)."""
    model = _model(gamma=0.8)
    d = torch.rand(8, 5) * 2 - 1
    with torch.no_grad():
        z, _ = model(d)
        F = model.operator(d)
        w = model.initial_state(d)
        for _ in range(3000):
            w = model.step(w, F)
    torch.testing.assert_close(z, w, atol=1e-5, rtol=0)


def test_learned_game_is_strongly_monotone():
    model = _model(mu=1.0, gamma=0.6, temperature=0.0)  # fixed regularisers (temperatures: the test below)
    d = torch.rand(32, 5) * 2 - 1
    with torch.no_grad():
        J = model.operator(d).J
        s = torch.linalg.eigvalsh(0.5 * (J + J.transpose(1, 2)))[:, 0]
        A, B, _ = model.game.payoffs(d)
    assert s.min() >= 1.0 - 0.6 - 1e-5
    # general-sum part bounded, zero-sum part free
    assert ((A + B) / 2).flatten(1).norm(dim=1).max() <= 0.6 + 1e-5


def test_jfb_training_lowers_the_loss(rps_data):
    train, test = rps_data
    torch.manual_seed(0)
    model = NashFPN(3, 3, 4, NFPNConfig(hidden=32))
    d, z_star = train.tensors()
    with torch.no_grad():
        before = ((model(d)[0] - z_star) ** 2).sum(1).mean().item()
    # gradients reach the payoff network through the JFB surrogate
    z, _ = model(d[:8])
    ((z - z_star[:8]) ** 2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0
    model.zero_grad()
    result = train_model(model, train, recipe(epochs=4, batch_size=24, device="cpu", progress=False), log=None)
    with torch.no_grad():
        after = ((model(d)[0] - z_star) ** 2).sum(1).mean().item()
    assert after < 0.5 * before
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # the recipe's per-step cosine from 1e-2 to lr / 20 over S = 16 steps; the record holds the last step's lr
    S = 4 * 4
    assert result.history[-1]["lr"] == pytest.approx(5e-4 + 9.5e-3 * (1 + np.cos(np.pi * (S - 1) / S)) / 2)
    metrics = evaluate(model, test)
    constant = evaluate(ConstantPredictor(3, 3, 4).fit(z_star), test)
    assert metrics["err"] < constant["err"] and metrics["gap"] < constant["gap"]
    assert metrics["fp_converged"] == 1.0 and metrics["fp_failed"] == 0.0


def test_model_holds_one_solve_config():
    """The N-FPN declares no solver settings of its own: its FixedPoint module is built from ``config.solve``."""
    names = {f.name for f in dataclasses.fields(NFPNConfig)}
    assert not names & {"solver", "backward", "tol", "max_iter", "anderson_m", "eval_tol", "eval_max_iter"}
    model = _model()
    assert isinstance(model.config.solve, fpntools.SolveConfig)
    assert model.config.face_solve and model.config.solve == default_solve(face_solve=True)
    assert isinstance(model.solver, fpntools.FixedPoint)
    assert (model.solver.tol, model.solver.max_iter) == (1e-6, 20)  # the face solve's starting point
    assert _model(face_solve=False).config.solve == default_solve() and default_solve().max_iter == 200
    assert isinstance(model.solver.backward_mode, fpntools.JFB)
    # an unrolled N-FPN is the same model with another SolveConfig: exactly K differentiable steps
    unrolled = _model(solve=fpntools.SolveConfig.unrolled(3), face_solve=False)
    unrolled.load_state_dict(model.state_dict())
    d = torch.rand(4, 5) * 2 - 1
    z, info = unrolled(d)
    assert bool((info.steps == 3).all()) and z.requires_grad
    with torch.no_grad():
        F, w = model.operator(d), model.initial_state(d)
        for _ in range(3):
            w = model.step(w, F)
    torch.testing.assert_close(z.detach(), w)
    # the configuration round-trips through JSON (weights files), unknown keys are refused
    cfg = NFPNConfig(hidden=8, solve=default_solve().with_(max_iter=50))
    assert NFPNConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(UserInputError, match="unknown N-FPN configuration keys: tol"):
        NFPNConfig.from_dict({**cfg.to_dict(), "tol": 1e-3})
    with pytest.raises(UserInputError, match="solver must be one of"):
        NFPNConfig.from_dict({**cfg.to_dict(), "solve": {**cfg.solve.to_dict(), "solver": "newton"}})


def test_absurd_sizes_fail_before_allocating():
    import tracemalloc

    from problems.games.data import MAX_GAMES
    from problems.games.model import MAX_PARAMS, mlp, mlp_param_count

    assert mlp_param_count(4, 27, 64, 2) == sum(p.numel() for p in mlp(4, 27, 64, 2).parameters())
    tracemalloc.start()
    try:
        with pytest.raises(UserInputError, match=r"hidden width 1000000000 .* above the limit"):
            NashFPN(3, 3, 4, NFPNConfig(hidden=10**9))
        with pytest.raises(UserInputError, match="above the limit"):
            MLPRegressor(3, 3, 4, hidden=10**5, layers=8)
        with pytest.raises(UserInputError, match="limited to 8 actions"):
            make_dataset(GameDataConfig(family="general", n_actions=10**6, n_train=4, n_test=0))
        with pytest.raises(UserInputError, match="limited to 64 actions"):
            GameDataConfig(family="zero-sum", n_actions=10**6).make_family()
        with pytest.raises(UserInputError, match="context dimension must be between 1 and"):
            GameDataConfig(context_dim=10**9).make_family()
        with pytest.raises(UserInputError, match="n_train \\+ n_test must be at most"):
            GameDataConfig(n_train=MAX_GAMES, n_test=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB allocated before the size errors"
    assert MAX_PARAMS >= mlp_param_count(4, 2 * 64 * 64 + 128, 1024, 4)  # the limit leaves room for real models


def test_overflowing_payoffs_are_reported_nonfinite():
    """Finite but huge weights overflow the learned payoffs: those samples are NONFINITE, the others solve."""
    model = _model()
    with torch.no_grad():
        model.game.net[-1].bias[0] = 3e38
        model.game.net[-1].weight[0].fill_(3e38)
        d = torch.rand(6, 5) * 2 - 1
        z, info = model(d)
        assert not bool(torch.isfinite(model.operator(d).J).all())
    assert info.status == fpntools.Status.NONFINITE
    assert bool(torch.isfinite(z).all())  # the solver keeps the last finite iterate


def test_nash_gap_torch_matches_numpy():
    train, _ = make_dataset(GameDataConfig(family="general", n_train=16, n_test=0))
    z = torch.as_tensor(np.random.default_rng(0).dirichlet(np.ones(3), size=(16, 2)).reshape(16, 6))
    got = nash_gap_torch(torch.as_tensor(train.A), torch.as_tensor(train.B), z).numpy()
    np.testing.assert_allclose(got, train.nash_gap(z), atol=1e-12)


def test_bad_inputs_give_clear_errors():
    model = _model()
    with pytest.raises(UserInputError, match=r"shape \(batch, 5\).*got \(2, 4\)"):
        model(torch.zeros(2, 4))
    with pytest.raises(UserInputError, match="non-finite"):
        model(torch.tensor([[0.0, 0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(UserInputError, match="non-finite"):
        MLPRegressor(3, 4, 5)(torch.full((1, 5), float("inf")))
    with pytest.raises(UserInputError, match="gamma < mu"):
        NFPNConfig(mu=0.5, gamma=0.5)
    # a single context is promoted to a batch of one
    with torch.no_grad():
        assert model(torch.zeros(5))[0].shape == (1, 7)


@pytest.mark.slow
def test_bench_rps_nfpn_is_accurate():
    """A short version of ``fpntools games bench`` (about a minute): N-FPN far better than the constant
    predictor and at least on par with the MLP regressor, all on certified targets."""
    from problems.games.bench import run_bench

    rows, summary = run_bench(GameDataConfig(family="rps", n_train=500, n_test=200), epochs=40, log=None)
    r = {row["model"]: row for row in rows}
    assert summary["max_target_gap"] < 1e-12
    assert r["nfpn"]["err"] < 0.1 * r["constant"]["err"]
    assert r["nfpn"]["gap"] < 0.1 * r["constant"]["gap"]
    assert r["nfpn"]["err"] < 1.5 * r["mlp"]["err"]
    assert r["nfpn"]["fp_converged"] == 1.0

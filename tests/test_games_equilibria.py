"""Ground-truth equilibria of contextual games: exact, independently checked and certified."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from fpntools.errors import UserInputError
from problems.games.data import GameDataConfig, make_dataset
from problems.games.equilibria import nash_gap, solve_games, solve_zero_sum, support_enumeration
from problems.games.families import RandomGameFamily, RPSFamily, make_family


def _linprog_zero_sum(A: np.ndarray) -> tuple[np.ndarray, float]:
    """Player 1's maximin strategy and the value with scipy's HiGHS (independent of cvxpy)."""
    n, m = A.shape
    # variables (x, v): minimise -v  s.t.  v - (A^T x)_j <= 0, sum x = 1, x >= 0
    c = np.r_[np.zeros(n), -1.0]
    A_ub = np.c_[-A.T, np.ones(m)]
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(m), A_eq=np.r_[np.ones(n), 0.0][None], b_eq=[1.0],
                  bounds=[(0, None)] * n + [(None, None)], method="highs")
    assert res.status == 0
    return res.x[:n], -res.fun


def test_zero_sum_lp_matches_scipy_linprog_and_support_enumeration():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((12, 4, 5))
    x, y, value = solve_zero_sum(A)
    eqs = support_enumeration(A, -A)
    for g in range(A.shape[0]):
        x_ref, v_ref = _linprog_zero_sum(A[g])
        y_ref, w_ref = _linprog_zero_sum(-A[g].T)  # player 2's maximin in the transposed game
        assert value[g] == pytest.approx(v_ref, abs=1e-8)
        assert -w_ref == pytest.approx(v_ref, abs=1e-8)  # minimax theorem
        np.testing.assert_allclose(x[g], x_ref, atol=1e-6)
        np.testing.assert_allclose(y[g], y_ref, atol=1e-6)
        assert len(eqs[g]) == 1  # generic zero-sum games: one equilibrium, the same one
        np.testing.assert_allclose(eqs[g][0][0], x[g], atol=1e-9)
        np.testing.assert_allclose(eqs[g][0][1], y[g], atol=1e-9)
    assert nash_gap(A, -A, x, y).max() < 1e-12


def test_known_games():
    # matching pennies: unique mixed equilibrium (1/2, 1/2)
    mp = np.array([[1.0, -1.0], [-1.0, 1.0]])
    x, y, v = solve_zero_sum(mp)
    np.testing.assert_allclose(x[0], [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(y[0], [0.5, 0.5], atol=1e-12)
    assert v[0] == pytest.approx(0.0, abs=1e-12)
    # rock-paper-scissors: uniform
    rps = np.array([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]])
    x, y, _ = solve_zero_sum(rps)
    np.testing.assert_allclose(x[0], np.full(3, 1 / 3), atol=1e-12)
    # battle of the sexes: two pure equilibria and the mixed one (2/3, 1/3), (1/3, 2/3)
    A = np.array([[2.0, 0.0], [0.0, 1.0]])
    B = np.array([[1.0, 0.0], [0.0, 2.0]])
    eqs = support_enumeration(A, B)[0]
    got = sorted((tuple(np.round(x, 12)), tuple(np.round(y, 12))) for x, y in eqs)
    want = sorted([((1.0, 0.0), (1.0, 0.0)), ((0.0, 1.0), (0.0, 1.0)),
                   (tuple(np.round([2 / 3, 1 / 3], 12)), tuple(np.round([1 / 3, 2 / 3], 12)))])
    assert got == want
    # prisoner's dilemma: unique equilibrium (defect, defect); uniform play is exploitable
    A = np.array([[3.0, 0.0], [5.0, 1.0]])
    eq = solve_games(A[None], A.T[None], zero_sum=False)
    assert eq.count[0] == 1
    np.testing.assert_allclose(eq.x[0], [0, 1])
    np.testing.assert_allclose(eq.y[0], [0, 1])
    assert nash_gap(A, A.T, [0.5, 0.5], [0.5, 0.5])[0] == pytest.approx(2 * 0.75)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 4), m=st.integers(2, 4))
def test_support_enumeration_is_certified_and_odd(seed, n, m):
    """Nondegenerate games have an odd number of equilibria, and each one listed has Nash gap ~0."""
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((1, n, m)), rng.standard_normal((1, n, m))
    eqs = support_enumeration(A, B)[0]
    assert len(eqs) % 2 == 1
    for x, y in eqs:
        assert abs(x.sum() - 1) < 1e-12 and abs(y.sum() - 1) < 1e-12 and x.min() >= 0 and y.min() >= 0
        assert nash_gap(A, B, x, y)[0] < 1e-10
    # a random strategy pair is (almost surely) not an equilibrium
    xr, yr = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    assert nash_gap(A, B, xr, yr)[0] > 1e-6


def test_rps_family_closed_form_without_perturbation():
    fam = RPSFamily(context_dim=3, perturbation=0.0, seed=5)
    d = fam.sample_contexts(20, seed=1)
    A, B = fam.payoffs(d)
    eq = solve_games(A, B, zero_sum=True)
    w = np.exp(d @ fam.U.T)
    expected = np.stack([w[:, 2], w[:, 0], w[:, 1]], 1) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(eq.x, expected, atol=1e-10)
    np.testing.assert_allclose(eq.y, expected, atol=1e-10)


@pytest.mark.parametrize("family,n", [("rps", 3), ("zero-sum", 4), ("general", 3)])
def test_datasets_are_certified(family, n):
    train, test = make_dataset(GameDataConfig(family=family, n_actions=n, n_train=40, n_test=10))
    assert len(train) == 40 and len(test) == 10
    for part in (train, test):
        assert part.gap.max() < 1e-12
        # the stored certificate is the gap recomputed from scratch under the true game
        np.testing.assert_allclose(part.nash_gap(np.c_[part.x, part.y]), part.gap, atol=1e-15)
        np.testing.assert_allclose(part.x.sum(1), 1, atol=1e-12)
        np.testing.assert_allclose(part.y.sum(1), 1, atol=1e-12)
    if family == "general":
        assert 0 < train.acceptance < 1  # only games with a unique equilibrium are kept
        eqs = support_enumeration(train.A, train.B)
        assert all(len(e) == 1 for e in eqs)


def test_families_are_seeded_and_deterministic():
    f1, f2 = make_family("general", 3, 4, seed=7), make_family("general", 3, 4, seed=7)
    d = f1.sample_contexts(5, seed=0)
    np.testing.assert_array_equal(f1.payoffs(d)[1], f2.payoffs(d)[1])
    assert not np.allclose(make_family("general", 3, 4, seed=8).payoffs(d)[0], f1.payoffs(d)[0])
    zs = RandomGameFamily(n_actions=3, m_actions=2, context_dim=2, zero_sum=True)
    A, B = zs.payoffs(np.zeros((2, 2)))
    assert A.shape == (2, 3, 2) and np.array_equal(B, -A)


def test_bad_inputs_give_clear_errors():
    fam = make_family("rps", context_dim=4)
    with pytest.raises(UserInputError, match=r"shape \(batch, 4\).*got \(2, 3\)"):
        fam.payoffs(np.zeros((2, 3)))
    with pytest.raises(UserInputError, match="non-finite"):
        fam.payoffs(np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(UserInputError, match="unknown game family"):
        make_family("poker")
    with pytest.raises(UserInputError, match="non-finite"):
        nash_gap(np.array([[np.inf, 0.0], [0.0, 1.0]]), None, [0.5, 0.5], [0.5, 0.5])
    with pytest.raises(UserInputError, match="same shape|both have shape"):
        support_enumeration(np.zeros((1, 2, 3)), np.zeros((1, 3, 2)))

"""Contextual matrix games: certified Nash equilibria and Nash fixed point networks (N-FPN).

* :mod:`problems.games.families`  -- seeded context -> payoff maps (``rps``, ``zero-sum``, ``general``);
* :mod:`problems.games.equilibria` -- exact equilibria (minimax LP via cvxpy, support enumeration) and the
  Nash gap certificate;
* :mod:`problems.games.data`      -- certified (context, equilibrium) data sets;
* :mod:`problems.games.model`     -- the N-FPN ``z*(d) = P_C(z* - alpha F_theta(z*; d))``;
* :mod:`problems.games.baselines` -- MLP regressor (projected onto the simplices) and constant predictor;
* :mod:`problems.games.train`     -- JFB training loop with checkpoints, evaluation metrics;
* :mod:`problems.games.cli`       -- ``fpntools games solve | bench | train``.

See ``docs/games.md``.
"""

from problems.games.baselines import ConstantPredictor, MLPRegressor
from problems.games.data import GameDataConfig, GameDataset, make_dataset
from problems.games.equilibria import EquilibriumBatch, nash_gap, solve_games, solve_zero_sum, support_enumeration
from problems.games.families import RandomGameFamily, RPSFamily, make_family
from problems.games.model import LearnedGame, NashFPN, NFPNConfig
from problems.games.train import TrainConfig, evaluate, train_model

__all__ = [
    "ConstantPredictor",
    "EquilibriumBatch",
    "GameDataConfig",
    "GameDataset",
    "LearnedGame",
    "MLPRegressor",
    "NFPNConfig",
    "NashFPN",
    "RPSFamily",
    "RandomGameFamily",
    "TrainConfig",
    "evaluate",
    "make_dataset",
    "make_family",
    "nash_gap",
    "solve_games",
    "solve_zero_sum",
    "support_enumeration",
    "train_model",
]

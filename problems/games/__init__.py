"""Contextual matrix games: certified Nash equilibria and Nash fixed point networks (N-FPN).

* :mod:`problems.games.families`  -- seeded context -> payoff maps (``rps``, ``zero-sum``, ``general``);
* :mod:`problems.games.equilibria` -- exact equilibria (minimax LP via cvxpy, support enumeration) and the
  Nash gap certificate;
* :mod:`problems.games.data`      -- certified (context, equilibrium) data sets;
* :mod:`problems.games.datafile`  -- the user's own data files (context, x, y [, A, B]) and their checks;
* :mod:`problems.games.model`     -- the N-FPN ``z*(d) = P_C(z* - alpha F_theta(z*; d))``;
* :mod:`problems.games.baselines` -- MLP regressor (projected onto the simplices) and constant predictor;
* :mod:`problems.games.train`     -- training through :class:`fpntools.training.Trainer`, runs, evaluation metrics;
* :mod:`problems.games.bench`     -- the N-FPN / MLP / constant benchmark and its table;
* :mod:`problems.games.solve`     -- the equilibria of one game as text;
* :mod:`problems.games.commands`  -- what ``make-data``, ``predict`` and ``evaluate`` do;
* :mod:`problems.games.cli`       -- ``fpntools games solve | bench | train | make-data | predict | evaluate``
  (argument parsing only).

See ``docs/games.md``.
"""

from problems.games.baselines import ConstantPredictor, MLPRegressor
from problems.games.data import GameDataConfig, GameDataset, make_dataset
from problems.games.datafile import FileDataConfig, load_contexts, load_game_data, save_game_data
from problems.games.equilibria import EquilibriumBatch, nash_gap, solve_games, solve_zero_sum, support_enumeration
from problems.games.families import RandomGameFamily, RPSFamily, make_family
from problems.games.model import LearnedGame, NashFPN, NFPNConfig, default_solve
from problems.games.train import ModelSpec, evaluate, load_trained, recipe, train_model, train_run

__all__ = [
    "ConstantPredictor",
    "EquilibriumBatch",
    "FileDataConfig",
    "GameDataConfig",
    "GameDataset",
    "LearnedGame",
    "MLPRegressor",
    "ModelSpec",
    "NFPNConfig",
    "NashFPN",
    "RPSFamily",
    "RandomGameFamily",
    "default_solve",
    "evaluate",
    "load_contexts",
    "load_game_data",
    "load_trained",
    "make_dataset",
    "make_family",
    "nash_gap",
    "save_game_data",
    "recipe",
    "solve_games",
    "solve_zero_sum",
    "support_enumeration",
    "train_model",
    "train_run",
]

"""Traffic N-FPN: its SolveConfig (and the old model files), the shipped weights' numbers, and training through
:class:`fpntools.training.Trainer` (run folder, refusal, resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fpntools import SolveConfig
from fpntools.errors import UserInputError
from problems.traffic.context import generate_dataset
from problems.traffic.nfpn import NFPNConfig, default_solve
from problems.traffic.synthetic import random_demand, random_network
from problems.traffic.tntp import tntp_dir
from problems.traffic.train import TrainConfig, _subset, load_model, save_model, train

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_JSON = ROOT / "data" / "traffic" / "siouxfalls_nfpn.json"


def test_nfpn_config_holds_a_solve_config_and_reads_old_files():
    old = json.loads(SHIPPED_JSON.read_text())
    assert "solve" not in old and old["tol"] == 1e-9  # the shipped file has the first layout
    cfg = NFPNConfig.from_dict({k: v for k, v in old.items() if k not in ("fingerprint", "extra")})
    assert isinstance(cfg.solve, SolveConfig)
    assert (cfg.solve.solver, cfg.solve.anderson_m, cfg.solve.tol, cfg.solve.max_iter) == ("anderson", 6, 1e-9, 50)
    assert cfg.solve == default_solve()
    assert not {"solver", "anderson_m", "tol", "max_iter", "backward"} & {f for f in NFPNConfig.__dataclass_fields__}
    # the new layout round-trips through JSON
    again = NFPNConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(UserInputError, match="unknown N-FPN config keys: width"):
        NFPNConfig.from_dict(dict(cfg.to_dict(), width=3))
    with pytest.raises(UserInputError, match="both 'solve' and the old keys"):
        NFPNConfig.from_dict(dict(cfg.to_dict(), tol=1e-3))
    with pytest.raises(UserInputError, match="unknown solve configuration keys"):
        NFPNConfig.from_dict(dict(cfg.to_dict(), solve=dict(cfg.solve.to_dict(), depth=2)))


needs_sf = pytest.mark.skipif(tntp_dir() is None or not (tntp_dir() / "SiouxFalls").is_dir(),
                              reason="Sioux Falls TNTP files absent")


@needs_sf
def test_shipped_model_gives_the_same_numbers(tmp_path):
    """Flows of the shipped model for one context, as computed before the model held a SolveConfig and the BPR
    cost had one definition (commit 990f988), and after a save / load in the new layout."""
    before = [7847.7358564703, 13751.5389333818, 9142.8012519314, 7755.9356444908, 11580.4409888358]
    m = load_model(SHIPPED_JSON.with_suffix(""))
    ctx = torch.zeros(1, 27, dtype=torch.float64)
    ctx[0, :3] = torch.tensor([0.3, 0.6, 0.5])
    ctx[0, 3 + 9] = 1.0
    with torch.no_grad():
        flows, info = m(ctx)
    # the warm start (gap 1e-9) and the fixed point (residual 1e-9) fix the flows to about 1e-8; rounding in
    # the solver's path (costs now evaluated as t0 + k + t0 b r^p) moves them within that
    np.testing.assert_allclose(flows[0, :5].numpy(), before, rtol=1e-7)
    assert float(info.rel_residual.max()) <= 1e-9
    save_model(m, tmp_path / "m", extra=m.meta.get("extra"))
    assert "solve" in json.loads((tmp_path / "m.json").read_text())
    m2 = load_model(tmp_path / "m")
    with torch.no_grad():
        flows2, _ = m2(ctx)
    np.testing.assert_allclose(flows2.numpy(), flows.numpy(), rtol=1e-12)


@pytest.fixture(scope="module")
def small_data():
    net = random_network(8, 4, seed=3, first_thru_node=3)
    dem = random_demand(4, seed=3)
    ds = generate_dataset(net, dem, 12, seed=0, gap=1e-10, progress=False)
    return net, dem, _subset(ds, slice(0, 8)), _subset(ds, slice(8, None))


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(network="synthetic", n_train=8, n_test=4, epochs=2, batch_size=4, lr=0.05,
                       model=NFPNConfig(network="synthetic"), **kw)


def test_train_through_the_trainer(small_data, tmp_path):
    """Run folder with config / history JSON, the recipe (Adam, cosine to lr / 10 per step), the loss going down,
    the implicit backward in the model's SolveConfig, refusal without --resume, and the final model files."""
    run = tmp_path / "run"
    cfg = _cfg(adjoint_iters=30)
    model, summary = train(cfg, run, progress=False, data=small_data)
    assert cfg.model.solve == default_solve()  # the caller's config is not changed
    assert {p.name for p in run.iterdir()} >= {"config.json", "history.json", "checkpoint.pt", "model.json",
                                               "model.safetensors"}
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and all(h["steps"] == 2 for h in hist)
    assert hist[1]["train_loss"] < hist[0]["train_loss"]
    for h in hist:
        assert h["train_rel_err"] == pytest.approx(math.sqrt(h["train_loss"]))
        assert h["cpu_s"] > 0
    # lr of each epoch's last step: 0.05 (0.1 + 0.9 (1 + cos(pi k / 4)) / 2) for steps k = 1, 3
    for h, k in zip(hist, (1, 3)):
        assert h["lr"] == pytest.approx(0.05 * (0.1 + 0.45 * (1 + math.cos(math.pi * k / 4))), rel=1e-12)
    config = json.loads((run / "config.json").read_text())
    assert config["trainer"]["optimizer"] == "adam" and config["trainer"]["schedule"] == "cosine"
    assert config["trainer"]["lr_min_ratio"] == 0.1 and config["traffic"]["backward"] == "implicit"
    assert config["traffic"]["adjoint_iters"] == 30
    assert cfg.solve() == default_solve().with_(backward="implicit", backward_tol=1e-6, backward_max_iter=30)
    assert summary["completed"] and math.isfinite(summary["test"]["rel_l2"])
    # the saved model holds the inference settings and predicts like the trained one
    loaded = load_model(run / "model", network=small_data[0], base_demand=small_data[1])
    assert loaded.config.solve == default_solve()
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), dict(loaded.named_parameters())[name].detach())
    with pytest.raises(UserInputError, match="already holds a checkpoint"):
        train(cfg, run, progress=False, data=small_data)
    # a resumed run with other data / model settings is refused, naming the setting
    with pytest.raises(UserInputError, match="traffic"):
        train(_cfg(adjoint_iters=7), run, resume=True, progress=False, data=small_data)


def test_resume_continues_the_run(small_data, tmp_path):
    """Stopped after 3 of 4 steps and resumed, the run ends where an uninterrupted one does (up to the solver
    tolerance: the warm-start path sets are not checkpointed, so the resumed step re-solves them)."""
    full, _ = train(_cfg(), tmp_path / "full", progress=False, data=small_data)
    part, s = train(_cfg(), tmp_path / "part", progress=False, data=small_data, max_steps=3)
    assert not s["completed"] and not (tmp_path / "part" / "model.json").exists()
    resumed, s = train(_cfg(), tmp_path / "part", resume=True, progress=False, data=small_data)
    assert s["completed"]
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-6, atol=1e-8, err_msg=name)
    hist_full = json.loads((tmp_path / "full" / "history.json").read_text())
    hist_res = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [h["train_loss"] for h in hist_res] == pytest.approx([h["train_loss"] for h in hist_full], rel=1e-6)

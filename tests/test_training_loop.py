"""The zoo training loop: metrics, atomic checkpoints and exact resume after an interruption."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from fpntools.models import DEQMLP, JacobianRegConfig, SIMClassifier, SolveConfig
from fpntools.training.loop import TrainConfig, Trainer


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    cfg = SolveConfig(max_iter=10, backward_max_iter=10, jacobian=JacobianRegConfig(weight=0.5, prob=0.5))
    return DEQMLP(6, 3, width=8, groups=2, cfg=cfg)


def _params(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def _cfg(tmp_path, **kw):
    base = dict(epochs=2, batch_size=16, lr=1e-2, progress=False, checkpoint_path=str(tmp_path / "ck.pt"))
    base.update(kw)
    return TrainConfig(**base)


def test_interrupted_run_resumes_exactly(tmp_path):
    data, ev = _data(), _data(12, 1)
    ref_model = _model()
    ref = Trainer(ref_model, _cfg(tmp_path / "ref"), data, ev).fit()
    assert ref.completed and len(ref.history) == 2 and ref.steps == 6

    def interrupt(trainer, step, metrics):
        if step == 4:  # in the middle of epoch 2
            raise KeyboardInterrupt

    model = _model()
    with pytest.raises(KeyboardInterrupt):
        Trainer(model, _cfg(tmp_path / "run"), data, ev, on_step=interrupt).fit()
    resumed_model = _model()  # a fresh process: new model object, same config
    res = Trainer(resumed_model, _cfg(tmp_path / "run"), data, ev).fit()
    assert res.steps == 6
    assert torch.equal(_params(resumed_model), _params(ref_model))
    for a, b in zip(res.history, ref.history):
        for k in ("train_loss", "train_acc", "eval_loss", "eval_acc", "jacobian_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-12), k


def test_max_steps_then_resume_and_crash_with_periodic_checkpoints(tmp_path):
    data = _data()
    ref_model = _model()
    Trainer(ref_model, _cfg(tmp_path / "ref", epochs=1), data).fit()
    model = _model()
    part = Trainer(model, _cfg(tmp_path / "a", epochs=1, max_steps=2), data).fit()
    assert not part.completed and part.steps == 2
    model2 = _model()
    Trainer(model2, _cfg(tmp_path / "a", epochs=1), data).fit()
    assert torch.equal(_params(model2), _params(ref_model))

    def crash(trainer, step, metrics):  # a hard failure (not an interrupt): only periodic checkpoints survive
        if step == 2:
            raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):
        Trainer(_model(), _cfg(tmp_path / "b", epochs=1, checkpoint_every=1), data, on_step=crash).fit()
    model3 = _model()
    Trainer(model3, _cfg(tmp_path / "b", epochs=1), data).fit()
    assert torch.equal(_params(model3), _params(ref_model))


def test_resume_refuses_a_different_run(tmp_path):
    data = _data()
    Trainer(_model(), _cfg(tmp_path, epochs=1, max_steps=1), data).fit()
    with pytest.raises(ValueError, match="batch_size=16"):
        Trainer(_model(), _cfg(tmp_path, epochs=1, batch_size=8), data).fit()


def test_metrics_and_tasks():
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    reg = TensorDataset(x, x[:, :2] * 2)
    r = Trainer(SIMClassifier(6, 2, width=8, tier_dim=6), TrainConfig(epochs=3, task="regression", progress=False,
                                                                         lr=1e-2, batch_size=8), reg, reg).fit()
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert "eval_loss" in r.final and "time_per_step_ms" in r.final
    with pytest.raises(ValueError, match="task"):
        TrainConfig(task="ranking")
    with pytest.raises(ValueError, match="empty"):
        Trainer(SIMClassifier(6, 2), TrainConfig(), TensorDataset(torch.zeros(0, 6), torch.zeros(0)))

"""fpntools.training.Trainer: exact resume, run folder, refusal, best-epoch selection, budgets, validation."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from fpntools.errors import UserInputError
from fpntools.models import DEQMLP, JacobianRegConfig, SIMClassifier, SolveConfig
from fpntools.training import (Trainer, TrainerConfig, dataset_evaluator, load_checkpoint, resolve_device,
                               task_loss)


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    # the Jacobian penalty draws from the global RNG and counts steps in a buffer: both must resume exactly
    cfg = SolveConfig(max_iter=10, backward_max_iter=10, jacobian=JacobianRegConfig(weight=0.5, prob=0.5))
    return DEQMLP(6, 3, width=8, groups=2, cfg=cfg)


class NoisySource:
    """A BatchSource: the samples of ``data`` plus Gaussian noise drawn from the trainer's generator."""

    def __init__(self, data: TensorDataset):
        self.x, self.y = data.tensors

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx, generator):
        x = self.x[idx]
        return x + 0.3 * torch.randn(x.shape, generator=generator), self.y[idx]


class Counter:
    """A hook with state: counts steps and sums the step losses (checkpointed through state_dict)."""

    def __init__(self):
        self.steps, self.loss_sum, self.epochs = 0, 0.0, []

    def on_step(self, trainer, metrics):
        self.steps += 1
        self.loss_sum += metrics["loss"]

    def on_epoch_end(self, trainer, record):
        record["hook_steps"] = self.steps
        self.epochs.append(record["epoch"])

    def state_dict(self):
        return {"steps": self.steps, "loss_sum": self.loss_sum}

    def load_state_dict(self, s):
        self.steps, self.loss_sum = s["steps"], s["loss_sum"]


class Interrupt:
    def __init__(self, at):
        self.at = at

    def on_step(self, trainer, metrics):
        if trainer.step == self.at:
            raise KeyboardInterrupt


def _params(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def _cfg(run_dir=None, **kw):
    base = dict(epochs=2, batch_size=16, lr=1e-2, progress=False, device="cpu",
                run_dir=str(run_dir) if run_dir is not None else None)
    base.update(kw)
    return TrainerConfig(**base)


def _fit(run_dir, data, hooks=(), evaluate=None, **kw):
    model = _model()  # a fresh model object each time, as in a new process
    trainer = Trainer(model, task_loss("classification"), data, _cfg(run_dir, **kw), evaluate=evaluate,
                      hooks=hooks, log=None, run_config={"model": "deq", "width": 8})
    return model, trainer.fit()


@pytest.mark.parametrize("kind", ["dataset", "source"])
def test_interrupted_runs_resume_exactly(tmp_path, kind):
    data = _data() if kind == "dataset" else NoisySource(_data())
    ev = dataset_evaluator(_data(12, 1), "classification", batch_size=5)
    ref_hook = Counter()
    ref_model, ref = _fit(tmp_path / "ref", data, [ref_hook], ev)
    assert ref.completed and ref.stop_reason == "done" and len(ref.history) == 2 and ref.steps == 6
    # 1) stopped by max_steps in the middle of epoch 2, then resumed
    model, part = _fit(tmp_path / "a", data, [Counter()], ev, max_steps=4)
    assert not part.completed and part.stop_reason == "max_steps" and part.steps == 4 and len(part.history) == 1
    hook = Counter()
    model, res = _fit(tmp_path / "a", data, [hook], ev, resume=True)
    assert res.completed and res.steps == 6
    assert torch.equal(_params(model), _params(ref_model))
    assert (hook.steps, hook.loss_sum) == (ref_hook.steps, ref_hook.loss_sum)
    for a, b in zip(res.history, ref.history):
        for k in ("train_loss", "train_acc", "train_jacobian_loss", "val_loss", "val_acc", "hook_steps", "lr"):
            assert a[k] == b[k], k
    # 2) a KeyboardInterrupt raised by a hook in epoch 1 (checkpoint written on the way out), then resumed
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "b", data, [Counter(), Interrupt(2)], ev)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 2
    model, res = _fit(tmp_path / "b", data, [Counter()], ev, resume=True)
    assert torch.equal(_params(model), _params(ref_model))
    hist = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in ref.history]


def test_crash_resumes_from_periodic_checkpoint(tmp_path):
    data = _data()
    ref_model, _ = _fit(tmp_path / "ref", data, epochs=1)

    class Crash:
        def on_step(self, trainer, metrics):
            if trainer.step == 2:
                raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):  # a hard failure: only periodic checkpoints survive
        _fit(tmp_path / "c", data, [Crash()], epochs=1, checkpoint_every=1)
    model, _ = _fit(tmp_path / "c", data, epochs=1, resume=True)
    assert torch.equal(_params(model), _params(ref_model))


def test_existing_checkpoint_is_refused_unless_resume_or_force(tmp_path):
    data = _data()
    run = tmp_path / "run"
    _fit(run, data, max_steps=1)
    with pytest.raises(UserInputError) as e:
        _fit(run, data)
    msg = str(e.value)
    assert str(run) in msg and "--resume" in msg and "--force" in msg and "epoch 0 of 2" in msg
    assert "\n" not in msg
    # --force starts over: a full fresh run equal to one in an empty folder
    model, res = _fit(run, data, force=True)
    ref_model, _ = _fit(tmp_path / "ref", data)
    assert res.completed and res.steps == 6 and torch.equal(_params(model), _params(ref_model))
    # resume with a different run_config or batch_size: refused, naming the key
    with pytest.raises(UserInputError, match="batch_size=16 .* batch_size=8"):
        _fit(run, data, resume=True, batch_size=8)
    trainer = Trainer(_model(), task_loss("classification"), data, _cfg(run, resume=True), log=None,
                      run_config={"model": "deq", "width": 16})
    with pytest.raises(UserInputError, match="width=8 .* width=16"):
        trainer.fit()
    with pytest.raises(UserInputError, match="contradict"):
        _cfg(run, resume=True, force=True)


def test_run_folder_files(tmp_path):
    model, res = _fit(tmp_path, _data(), evaluate=dataset_evaluator(_data(12, 1), "classification"))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["trainer"]["batch_size"] == 16 and cfg["trainer"]["epochs"] == 2 and cfg["model"] == "deq"
    assert cfg["width"] == 8
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and hist == res.history
    for key in ("train_loss", "train_acc", "train_forward_steps", "lr", "seconds", "steps", "val_loss", "val_acc"):
        assert key in hist[0], key
    assert hist[0]["steps"] == 3 and hist[0]["lr"] == 1e-2
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["epoch"] == 2 and ck["step"] == 6 and ck["run_config"] == {"model": "deq", "width": 8}
    assert torch.equal(ck["model"]["deq.penalty_step"], model.deq.penalty_step)


def test_best_epoch_is_loaded(tmp_path):
    values = iter([0.2, 0.7, 0.4])
    snapshots = {}

    class Snap:
        def on_epoch_end(self, trainer, record):
            snapshots[record["epoch"]] = _params(trainer.model).clone()

    model = _model()
    trainer = Trainer(model, task_loss("classification"), _data(), _cfg(epochs=3, select_metric="val_score"),
                      evaluate=lambda m: {"val_score": next(values)}, hooks=[Snap()], log=None)
    res = trainer.fit()
    assert (res.best_epoch, res.best_value) == (2, 0.7)
    assert torch.equal(_params(model), snapshots[2]) and not torch.equal(snapshots[2], snapshots[3])
    values = iter([0.2, 0.7, 0.4])
    res = Trainer(_model(), task_loss("classification"), _data(), _cfg(epochs=3, select_metric="val_score",
                                                                        select_mode="min"),
                  evaluate=lambda m: {"val_score": next(values)}, log=None).fit()
    assert res.best_epoch == 1
    with pytest.raises(UserInputError, match="val_nope"):
        Trainer(_model(), task_loss("classification"), _data(), _cfg(select_metric="val_nope"), log=None).fit()


def test_time_budget_stops_with_a_checkpoint(tmp_path):
    import time

    class Slow:
        def on_step(self, trainer, metrics):
            time.sleep(0.15)  # longer than the whole budget: the check after step 2 always sees it spent

    lines = []
    trainer = Trainer(_model(), task_loss("classification"), _data(), _cfg(tmp_path, max_minutes=0.1 / 60),
                      hooks=[Slow()], log=lines.append)
    res = trainer.fit()  # the budget (0.1 s) runs out after the first or second of the epoch's 3 steps
    assert not res.completed and res.stop_reason == "time" and res.steps in (1, 2) and not res.history
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == res.steps
    assert "time budget" in lines[-1] and "--resume" in lines[-1]
    assert trainer.running_record()["steps"] == res.steps


def test_schedules_and_options():
    data = _data()
    res = Trainer(_model(), task_loss("classification"), data,
                  _cfg(epochs=3, schedule="exponential", lr_decay=0.5, optimizer="sgd", grad_clip=1.0),
                  log=None).fit()
    assert [h["lr"] for h in res.history] == [1e-2, 5e-3, 2.5e-3]
    res = Trainer(_model(), task_loss("classification"), data, _cfg(epochs=2, schedule="cosine", lr_min_ratio=0.1),
                  log=None).fit()
    assert res.history[-1]["lr"] == pytest.approx(1e-3 + 9e-3 * (1 + torch.cos(torch.tensor(5 / 6 * torch.pi)).item()) / 2)
    # a parameter subset: the others stay put
    model = _model()
    head, inject = model.head.weight.detach().clone(), model.inject.weight.detach().clone()
    sub = [p for n, p in model.named_parameters() if not n.startswith("head")]
    Trainer(model, task_loss("classification"), data, _cfg(epochs=1), params=sub, log=None).fit()
    assert torch.equal(model.head.weight, head) and not torch.equal(model.inject.weight, inject)


def test_regression_task_learns_and_loss_fn_forms():
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    reg = TensorDataset(x, x[:, :2] * 2)
    r = Trainer(SIMClassifier(6, 2, width=8, tier_dim=6), task_loss("regression"), reg,
                _cfg(epochs=3, batch_size=8), evaluate=dataset_evaluator(reg, "regression", prefix="test"),
                log=None).fit()
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert "test_loss" in r.final and "test_acc" not in r.final
    # a plain loss (no metrics) and a dict batch
    lin = torch.nn.Linear(6, 2)
    src = {"x": x, "y": x[:, :2]}

    class DictData(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            return {"x": src["x"][i], "y": src["y"][i]}

    res = Trainer(lin, lambda m, b: ((m(b["x"]) - b["y"]) ** 2).mean(), DictData(), _cfg(epochs=2, batch_size=8),
                  log=None).fit()
    assert set(res.final) == {"epoch", "train_loss", "lr", "seconds", "steps"}


@pytest.mark.parametrize("kw, field", [
    (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"), (dict(lr=float("nan")), "lr"),
    (dict(lr=-1.0), "lr"), (dict(optimizer="lbfgs"), "optimizer"), (dict(schedule="step"), "schedule"),
    (dict(lr_decay=0.0), "lr_decay"), (dict(grad_clip=float("inf")), "grad_clip"),
    (dict(max_minutes=-1.0), "max_minutes"), (dict(max_steps=-2), "max_steps"),
    (dict(select_mode="best"), "select_mode"), (dict(device="tpu"), "device"), (dict(seed=-1), "seed"),
    (dict(checkpoint_every=-1), "checkpoint_every"), (dict(resume=True), "run folder"),
])
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(UserInputError, match=field):
        TrainerConfig(**kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error():
    with pytest.raises(UserInputError) as e:
        resolve_device("cuda")
    assert str(e.value) == "--device cuda requested but CUDA is not available"
    assert resolve_device("auto") == torch.device("cpu")


def test_empty_data_and_nonfinite_loss():
    with pytest.raises(UserInputError, match="empty"):
        Trainer(SIMClassifier(6, 2), task_loss("classification"), TensorDataset(torch.zeros(0, 6), torch.zeros(0)),
                _cfg())
    from fpntools.cli_support import NotUsableError

    lin = torch.nn.Linear(6, 2)
    with pytest.raises(NotUsableError, match="not finite"):
        Trainer(lin, lambda m, b: m(b[0]).sum() * float("nan"), _data(), _cfg(), log=None).fit()


def test_resume_with_weights_of_another_model_is_a_one_line_error(tmp_path):
    _fit(tmp_path, _data(), max_steps=1)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    trainer = Trainer(other, task_loss("classification"), _data(), _cfg(tmp_path, resume=True), log=None,
                      run_config={"model": "deq", "width": 8})
    with pytest.raises(UserInputError) as e:
        trainer.fit()
    assert "do not fit the model" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # conftest's CPU interpreter mode cannot run kernels on CUDA tensors
    data = NoisySource(_data())
    ev = dataset_evaluator(_data(12, 1), "classification", batch_size=5)
    ref_model, ref = _fit(tmp_path / "ref", data, evaluate=ev, device="cuda")
    assert next(ref_model.parameters()).is_cuda and ref.completed
    _fit(tmp_path / "a", data, evaluate=ev, device="cuda", max_steps=4)
    model, res = _fit(tmp_path / "a", data, evaluate=ev, device="cuda", resume=True)
    assert torch.equal(_params(model), _params(ref_model))
    assert [h["val_acc"] for h in res.history] == [h["val_acc"] for h in ref.history]


def test_run_config_with_paths_and_tuples_resumes(tmp_path):
    from pathlib import Path

    rc = {"data": Path("/some/where"), "sizes": (3, 4)}
    Trainer(_model(), task_loss("classification"), _data(), _cfg(tmp_path, max_steps=1), log=None,
            run_config=rc).fit()
    res = Trainer(_model(), task_loss("classification"), _data(), _cfg(tmp_path, resume=True), log=None,
                  run_config=rc).fit()
    assert res.completed
    assert json.loads((tmp_path / "config.json").read_text())["sizes"] == [3, 4]

"""Two CPU processes (gloo) train exactly like one process on the combined batch."""

from __future__ import annotations

import json

import torch
from torch.utils.data import TensorDataset

from fpntools.models import DEQMLP, SolveConfig
from fpntools.training import Trainer, TrainerConfig, dataset_evaluator, task_loss
from fpntools.training.distributed import DistContext, shard_bounds, spawn

CFG = dict(epochs=1, batch_size=6, lr=1e-2, progress=False, shuffle=True, seed=3, device="cpu")


def _setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    torch.manual_seed(0)
    cfg = SolveConfig(tol=1e-10, max_iter=100, backward_tol=1e-11, backward_max_iter=100)
    model = DEQMLP(5, 3, width=8, groups=1, cfg=cfg, init_scale=0.3).double()
    return model, TensorDataset(x, y)


def _trainer(model, data, ctx=None, run_dir=None):
    return Trainer(model, task_loss("classification"), data, TrainerConfig(**CFG, run_dir=run_dir),
                   evaluate=dataset_evaluator(data, "classification", batch_size=7), dist_ctx=ctx, log=None)


def _worker(ctx: DistContext, out_path: str, run_dir: str) -> None:
    model, data = _setup()
    if ctx.rank == 1:  # a different start on purpose: rank 0's parameters must be broadcast
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    res = _trainer(model, data, ctx, run_dir).fit()
    torch.save({"rank": ctx.rank, "params": [p.detach().clone() for p in model.parameters()],
                "final": res.final}, f"{out_path}.{ctx.rank}")


def test_shard_bounds_cover_the_batch():
    for n in (1, 5, 6, 7):
        for w in (1, 2, 3):
            parts = [shard_bounds(n, DistContext(rank=r, world_size=w)) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))


def test_two_processes_match_single_process(tmp_path):
    out = str(tmp_path / "params")
    spawn(_worker, 2, (out, str(tmp_path / "run")), backend="gloo")
    model, data = _setup()
    res = _trainer(model, data).fit()  # 4 steps, last global batch of 2 split 1 + 1
    ref = [p.detach() for p in model.parameters()]
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        for a, b in zip(got["params"], ref):
            assert torch.allclose(a, b, atol=1e-6, rtol=0), float((a - b).abs().max())
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "val_forward_steps"):  # reduced over ranks
            assert abs(got["final"][k] - res.final[k]) < 1e-6, k
    hist = json.loads((tmp_path / "run" / "history.json").read_text())  # written once, by rank 0
    assert len(hist) == 1 and hist[0]["steps"] == 4

"""Two CPU processes (gloo) train exactly like one process on the combined batch."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from fpntools.models import DEQMLP, SolveConfig
from fpntools.training.distributed import DistContext, shard_bounds, spawn
from fpntools.training.loop import TrainConfig, Trainer

CFG = dict(epochs=1, batch_size=6, lr=1e-2, progress=False, shuffle=True, seed=3)


def _setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    torch.manual_seed(0)
    cfg = SolveConfig(tol=1e-10, max_iter=100, backward_tol=1e-11, backward_max_iter=100)
    model = DEQMLP(5, 3, width=8, groups=1, cfg=cfg, init_scale=0.3).double()
    return model, TensorDataset(x, y)


def _worker(ctx: DistContext, out_path: str) -> None:
    model, data = _setup()
    if ctx.rank == 1:  # a different start on purpose: rank 0's parameters must be broadcast
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    Trainer(model, TrainConfig(**CFG), data, dist_ctx=ctx).fit()
    torch.save({"rank": ctx.rank, "params": [p.detach().clone() for p in model.parameters()]}, f"{out_path}.{ctx.rank}")


def test_shard_bounds_cover_the_batch():
    for n in (1, 5, 6, 7):
        for w in (1, 2, 3):
            parts = [shard_bounds(n, DistContext(rank=r, world_size=w)) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))


def test_two_processes_match_single_process(tmp_path):
    out = str(tmp_path / "params")
    spawn(_worker, 2, (out,), backend="gloo")
    model, data = _setup()
    Trainer(model, TrainConfig(**CFG), data).fit()  # 4 steps, last global batch of 2 split 1 + 1
    ref = [p.detach() for p in model.parameters()]
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}", weights_only=True)["params"]
        for a, b in zip(got, ref):
            assert torch.allclose(a, b, atol=1e-6, rtol=0), float((a - b).abs().max())

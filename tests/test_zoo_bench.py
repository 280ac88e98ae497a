"""Pieces of the zoo benchmark: the Jacobian penalty on the DEQ-Transformer, step timing, tuning split."""

import pytest
import torch

from fpntools.models import DEQLanguageModel, FPNClassifier, JacobianRegConfig, SolveConfig
from problems.zoo.tasks import time_forward_backward, tune_split


def test_deq_transformer_trains_with_jacobian_penalty():
    # the penalty differentiates a vector-Jacobian product: the attention must support double backward
    torch.manual_seed(0)
    cfg = SolveConfig(tol=1e-3, max_iter=10, jacobian=JacobianRegConfig(weight=1.0))
    model = DEQLanguageModel(11, d_model=16, n_heads=2, max_len=8, cfg=cfg)
    out = model(torch.randint(0, 11, (2, 8)))
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    (out.logits.mean() + out.aux_loss).backward()
    assert model.layer.qkv.weight.grad is not None and torch.isfinite(model.layer.qkv.weight.grad).all()


@pytest.mark.parametrize("backward", ["implicit", "implicit_cg"])
def test_time_forward_backward_leaves_model_unchanged(backward):
    torch.manual_seed(0)
    model = FPNClassifier(6, 3, width=8, cfg=SolveConfig(backward=backward))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    fwd, bwd = time_forward_backward(model, x, y, batch=8, n_steps=2)
    assert fwd > 0 and bwd > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_tune_split_is_a_seeded_partition():
    ds = torch.utils.data.TensorDataset(torch.arange(50.0))
    tr, va = tune_split(ds, 0.2)
    assert len(va) == 10 and len(tr) == 40
    assert sorted(tr.indices + va.indices) == list(range(50))
    assert tune_split(ds, 0.2)[1].indices == va.indices


def test_jfb_vs_implicit_conv_rows():
    """A 1-epoch convolutional run of the ``jfb`` bench section: one row per backward, ratios on implicit rows."""
    from problems.zoo.tasks import jfb_vs_implicit

    rows = jfb_vs_implicit(epochs=1, width=4, tols=(1e-3,), arch="conv")
    assert [r.name for r in rows] == ["conv FPN jfb", "conv FPN implicit", "conv FPN implicit_cg"]
    assert rows[0].values["adjoint steps"] == 0 and "step ratio" not in rows[0].values
    for r in rows[1:]:
        assert r.values["adjoint steps"] > 0 and r.values["bwd ratio"] > 1
    with pytest.raises(ValueError, match="arch"):
        jfb_vs_implicit(epochs=1, arch="resnet")

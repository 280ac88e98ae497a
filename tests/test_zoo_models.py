"""Model zoo: fixed points reached, gradients equal finite differences (float64), shapes, input errors."""

from __future__ import annotations

import pytest
import torch

from fpntools.errors import UserInputError
from fpntools.info import Status
from fpntools.models import (
    ConvFPNClassifier,
    DEQLanguageModel,
    DEQMLP,
    FPNClassifier,
    JacobianRegConfig,
    MDEQClassifier,
    MDEQSegmenter,
    SIMClassifier,
    SolveConfig,
    count_parameters,
)

TIGHT = SolveConfig(tol=1e-11, max_iter=200, backward_tol=1e-12, backward_max_iter=200, anderson_m=6)


def _models(cfg: SolveConfig = TIGHT):
    TIGHT = cfg  # noqa: N806 (tight float64 solves for gradient checks, cheap ones for shape checks)
    return {
        "deq_mlp": (lambda: DEQMLP(5, 3, width=8, groups=1, cfg=TIGHT, init_scale=0.3), lambda: torch.randn(3, 5)),
        "fpn_implicit": (lambda: FPNClassifier(5, 3, width=8, cfg=TIGHT), lambda: torch.randn(3, 5)),
        "conv_fpn_implicit": (
            lambda: ConvFPNClassifier(1, (4, 4), 3, channels=4, cfg=TIGHT), lambda: torch.randn(2, 1, 4, 4)
        ),
        "mdeq": (lambda: MDEQClassifier(1, 3, channels=(4, 8), groups=1, cfg=TIGHT, init_scale=0.1), lambda: torch.randn(2, 1, 4, 4)),
        "mdeq_seg": (lambda: MDEQSegmenter(1, 3, channels=(4, 8), groups=1, cfg=TIGHT, init_scale=0.1), lambda: torch.randn(2, 1, 4, 4)),
        "deq_transformer": (lambda: DEQLanguageModel(7, 8, "transformer", max_len=8, cfg=TIGHT, n_heads=2),
                            lambda: torch.randint(0, 7, (2, 5))),
        "deq_trellis": (lambda: DEQLanguageModel(7, 8, "trellis", max_len=8, cfg=TIGHT, kernel_size=2),
                        lambda: torch.randint(0, 7, (2, 5))),
        "sim_single": (lambda: SIMClassifier(5, 3, "single", width=8, tier_dim=6), lambda: torch.randn(3, 5)),
        "sim_two": (lambda: SIMClassifier(5, 3, "two", width=8, tier_dim=6, rff_dim=8), lambda: torch.randn(3, 5)),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_fixed_point_and_gradient_match_finite_differences(name):
    make_model, make_input = _models()[name]
    torch.manual_seed(0)
    model = make_model().double()
    x = make_input()
    x = x.double() if x.is_floating_point() else x
    out = model(x)
    for info in out.infos:
        assert info.status == Status.CONVERGED, info.summary()
        assert float(info.rel_residual.max()) <= 1e-11
    w = torch.randn_like(out.logits)

    def loss() -> torch.Tensor:
        return (model(x).logits * w).sum()

    model.zero_grad()
    (out.logits * w).sum().backward()
    # directional derivative along a random direction in the space of all parameters (two extra solves)
    gen = torch.Generator().manual_seed(1)
    params = [p for p in model.parameters() if p.requires_grad]
    dirs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, dirs))
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, dirs):
            p.add_(eps * d)
        lp = loss().item()
        for p, d in zip(params, dirs):
            p.sub_(2 * eps * d)
        lm = loss().item()
        for p, d in zip(params, dirs):
            p.add_(eps * d)
    fd = (lp - lm) / (2 * eps)
    assert abs(fd - analytic) <= 1e-6 + 1e-5 * abs(fd), (fd, analytic)


def test_jfb_gradient_is_a_descent_direction():
    torch.manual_seed(0)
    x, w = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    grads = {}
    for mode in ("implicit", "jfb"):
        torch.manual_seed(0)
        model = FPNClassifier(5, 3, width=8, cfg=TIGHT.with_(backward=mode)).double()
        (model(x).logits * w).sum().backward()
        grads[mode] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert float(grads["implicit"] @ grads["jfb"]) > 0
    assert not torch.allclose(grads["implicit"], grads["jfb"])


def test_conv_fpn_latent_map_is_a_gamma_contraction():
    """The FFT-normalised kernel makes ``u -> relu(K * u + q)`` a gamma-contraction: the circular convolution's
    operator norm, measured independently by power iteration on ``conv2d`` and its autograd adjoint, is
    ``gamma`` (the bound is active at this init), and random pairs of states contract by at least ``gamma``."""
    torch.manual_seed(0)
    model = ConvFPNClassifier(1, (6, 6), 3, channels=5, gamma=0.8).double()
    kernel = model.latent.weight.detach()

    def conv(u: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(torch.nn.functional.pad(u, (1, 1, 1, 1), mode="circular"), kernel)

    v = torch.randn(1, 5, 6, 6, dtype=torch.float64)
    for _ in range(300):
        u = v.clone().requires_grad_()
        (g,) = torch.autograd.grad(conv(u), u, conv(v))  # K^T K v
        v = g / g.norm()
    assert abs(float(conv(v).norm()) - 0.8) < 1e-6
    q = torch.randn(4, 5, 6, 6, dtype=torch.float64)
    a, b = torch.randn_like(q), torch.randn_like(q)
    ta, tb = model.layer(a, q, kernel), model.layer(b, q, kernel)
    ratios = (ta - tb).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(ratios.max()) <= 0.8 + 1e-12


@pytest.mark.parametrize("name", list(_models()))
def test_output_shapes_and_backward(name):
    make_model, make_input = _models(SolveConfig(max_iter=6, backward_max_iter=6))[name]
    model = make_model()
    x = make_input()
    out = model(x)
    if name.startswith("deq_t"):
        assert out.logits.shape == (*x.shape, 7)
    elif name == "mdeq_seg":
        assert out.logits.shape == (2, 3, 4, 4)
    else:
        assert out.logits.shape == (x.shape[0], 3)
    out.logits.sum().backward()
    assert count_parameters(model) > 0


def test_jacobian_penalty_is_added_in_training_only():
    cfg = SolveConfig(jacobian=JacobianRegConfig(weight=2.0, prob=1.0))
    model = DEQMLP(5, 3, width=8, groups=2, cfg=cfg)
    out = model(torch.randn(4, 5))
    assert out.aux_loss is not None and float(out.aux_loss.detach()) > 0
    out.aux_loss.backward()
    assert model.block.lin1.weight.grad is not None and float(model.block.lin1.weight.grad.abs().sum()) > 0
    model.eval()
    assert model(torch.randn(4, 5)).aux_loss is None
    with pytest.raises(ValueError, match="probability"):
        JacobianRegConfig(weight=1.0, prob=0.0)


def test_bad_inputs_have_clear_errors():
    with pytest.raises(UserInputError, match=r"x must have 2 dimensions"):
        DEQMLP(5, 3, width=8, groups=2)(torch.randn(3, 5, 1))
    with pytest.raises(UserInputError, match=r"size 4 in dimension 1, expected 5"):
        FPNClassifier(5, 3, width=8)(torch.randn(3, 4))
    with pytest.raises(UserInputError, match="floating point"):
        SIMClassifier(5, 3)(torch.ones(3, 5, dtype=torch.long))
    lm = DEQLanguageModel(7, 8, "trellis", max_len=6)
    with pytest.raises(UserInputError, match=r"token ids must lie in \[0, 7\)"):
        lm(torch.tensor([[1, 2, 9]]))
    with pytest.raises(UserInputError, match="exceeds max_len 6"):
        lm(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(UserInputError, match="integer ids"):
        lm(torch.zeros(1, 3))
    with pytest.raises(UserInputError, match="divisible by 2"):
        MDEQClassifier(1, 3, channels=(4, 8), groups=2)(torch.randn(1, 1, 5, 5))
    with pytest.raises(UserInputError, match=r"size 3 in dimension 1, expected 1"):
        MDEQClassifier(1, 3, channels=(4, 8), groups=2)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="variant"):
        SIMClassifier(5, 3, variant="three")
    with pytest.raises(ValueError, match="unknown sequence layer"):
        DEQLanguageModel(7, 8, "lstm")
    with pytest.raises(ValueError, match="gamma"):
        FPNClassifier(5, 3, gamma=1.0)
    with pytest.raises(UserInputError, match="NaN"):
        FPNClassifier(5, 3, width=8)(torch.tensor([[0.0, 1.0, float("nan"), 0.0, 0.0]]))
    conv = ConvFPNClassifier(1, (4, 4), 3, channels=4)
    with pytest.raises(UserInputError, match=r"size 6 in dimension 2, expected 4.*images \(batch, 1, 4, 4\)"):
        conv(torch.randn(2, 1, 6, 4))
    with pytest.raises(UserInputError, match="4 dimensions"):
        conv(torch.randn(2, 16))
    with pytest.raises(ValueError, match="image_size must be even"):
        ConvFPNClassifier(1, (5, 4), 3)
    with pytest.raises(ValueError, match="gamma"):
        ConvFPNClassifier(1, (4, 4), 3, gamma=1.5)


def test_explicit_language_model_has_the_same_parameters():
    deq = DEQLanguageModel(11, 8, "transformer", max_len=8, n_heads=2)
    explicit = DEQLanguageModel(11, 8, "transformer", max_len=8, depth=4, n_heads=2)
    assert count_parameters(deq) == count_parameters(explicit)
    out = explicit(torch.randint(0, 11, (2, 6)))
    assert out.infos == [] and out.logits.shape == (2, 6, 11)


def test_language_models_are_causal():
    torch.manual_seed(0)
    for kind in ("transformer", "trellis"):
        lm = DEQLanguageModel(7, 8, kind, max_len=8, cfg=TIGHT).double().eval()
        a = torch.randint(0, 7, (1, 6))
        b = a.clone()
        b[0, 4:] = (a[0, 4:] + 1) % 7
        la, lb = lm(a).logits, lm(b).logits
        assert torch.allclose(la[:, :4], lb[:, :4], atol=1e-8), kind
        assert not torch.allclose(la[:, 4:], lb[:, 4:])


def test_sim_limit_operator_and_invariance_error():
    sim = SIMClassifier(5, 3, "two", width=8, tier_dim=6, rff_dim=8, rank=3)
    assert sim.limit_operator().shape == (8, 8)
    assert torch.linalg.matrix_rank(sim.limit_operator()) <= 3
    assert sim.invariance_error() >= 0
    assert not any(p.requires_grad for p in sim.rff.buffers())

"""Spectral / weight normalisation, Lipschitz estimates and estimate-and-rescale."""

import pytest
import torch
from torch import nn

from fpntools.contraction import (
    RescaleResult,
    SpectralNormConv2d,
    SpectralNormLinear,
    estimate_lipschitz,
    rescale_to_contraction,
    spectral_normalize,
    weight_normalize,
)

D = torch.float64


def _op_norm(fn, in_shape: tuple[int, ...], dtype: torch.dtype = D) -> float:
    """Exact operator norm of a linear map on (1, *in_shape) inputs via its dense matrix."""
    n = int(torch.tensor(in_shape).prod())
    cols = fn(torch.eye(n, dtype=dtype).reshape(n, *in_shape)).reshape(n, -1)  # rows: images of basis vectors
    return float(torch.linalg.matrix_norm(cols.T.double(), ord=2))


def _ratios(f, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (f(x) - f(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)


# ------------------------------------------------------------------------------------------- spectral norm


def test_spectral_norm_linear_bound() -> None:
    lin = SpectralNormLinear(30, 20, coeff=0.7, dtype=D)
    with torch.no_grad():
        lin.parametrizations.weight.original.mul_(3.0)
    assert float(torch.linalg.matrix_norm(lin.parametrizations.weight.original.detach(), ord=2)) > 2.0
    for _ in range(3):  # stays bounded while training updates the raw weight
        lin.train()
        sigma = float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2))
        assert sigma <= 0.7 * (1 + 1e-6)
        assert sigma >= 0.7 * (1 - 1e-3)  # and is not needlessly smaller
        loss = lin(torch.randn(8, 30, dtype=D)).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            lin.parametrizations.weight.original.sub_(0.5 * lin.parametrizations.weight.original.grad)
            lin.parametrizations.weight.original.grad = None
            lin(torch.randn(1, 30, dtype=D))  # one more power-iteration step
    lin.eval()
    x, y = torch.randn(50, 30, dtype=D), torch.randn(50, 30, dtype=D)
    assert (_ratios(lin, x, y) <= 0.7 * (1 + 1e-6)).all()


def test_spectral_normalize_leaves_small_weights_alone() -> None:
    lin = nn.Linear(5, 5, dtype=D)
    with torch.no_grad():
        lin.weight.mul_(0.1 / torch.linalg.matrix_norm(lin.weight, ord=2))
    w0 = lin.weight.detach().clone()
    spectral_normalize(lin, coeff=0.9)
    torch.testing.assert_close(lin.weight, w0)


CONV_CASES = [
    dict(padding=1),
    dict(padding=1, stride=2),
    dict(padding=1, padding_mode="circular"),
    dict(padding=2, dilation=2, groups=3, out=6),
    dict(padding="same", bias=False),
]


def _conv_norms(conv: nn.Conv2d, shape: tuple[int, ...]) -> tuple[float, float]:
    with torch.no_grad():
        raw = conv.parametrizations.weight.original
        before = _op_norm(lambda x: conv._conv_forward(x, raw, None), shape, raw.dtype)
        after = _op_norm(lambda x: conv._conv_forward(x, conv.weight, None), shape, raw.dtype)
    return before, after


@pytest.mark.parametrize("kw", CONV_CASES)
@pytest.mark.parametrize("method", ["power", "fft"])
def test_spectral_norm_conv_operator_bound(kw: dict, method: str) -> None:
    # float32: float64 convolutions take CPU slow paths; float32 round-off (~1e-6) is far below the margins
    kw = dict(kw)
    shape = (3, 5, 5)
    conv = SpectralNormConv2d(3, kw.pop("out", 4), 3, input_shape=shape, coeff=0.8, method=method, **kw)
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(4.0)
    before, after = _conv_norms(conv, shape)
    assert before > 1.0  # the bound is active
    if method == "fft":  # certified: never above coeff; exact for the stride-1 circular convolution
        assert after <= 0.8 * (1 + 1e-5)
        if kw.get("padding_mode") == "circular":
            assert after >= 0.8 * (1 - 1e-5)
        else:
            assert after >= 0.5  # and not a loose bound
    else:  # power iteration approaches sigma from below (stalls within ~1 % on near-degenerate spectra)
        assert 0.8 * 0.97 <= after <= 0.8 * 1.01


def test_spectral_norm_conv_contractive_on_pairs() -> None:
    conv = SpectralNormConv2d(3, 3, 3, input_shape=(3, 6, 6), coeff=0.9, padding=1, method="fft", dtype=D)
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(4.0)
        x, y = torch.randn(20, 3, 6, 6, dtype=D), torch.randn(20, 3, 6, 6, dtype=D)
        r = _ratios(conv, x, y)
    assert (r <= 0.9 * (1 + 1e-9)).all() and r.max() > 0.3


def test_spectral_norm_conv_fft_is_differentiable_and_validates() -> None:
    conv = SpectralNormConv2d(2, 2, 3, input_shape=(2, 5, 5), coeff=0.5, padding=1, method="fft", dtype=D)
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(5.0)
    conv(torch.randn(3, 2, 5, 5, dtype=D)).pow(2).sum().backward()
    g = conv.parametrizations.weight.original.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    with pytest.raises(ValueError, match="padding_mode"):
        SpectralNormConv2d(2, 2, 3, input_shape=(2, 5, 5), padding=1, padding_mode="reflect", method="fft")
    with pytest.raises(ValueError, match="only available for convolutions"):
        spectral_normalize(nn.Linear(2, 2), method="fft")


@pytest.mark.parametrize("method", ["power", "fft"])
def test_spectral_normalized_modules_move_between_dtypes(method: str) -> None:
    """``Module.to`` reaches the parametrization's buffers (it once shadowed ``nn.Module._apply``)."""
    conv = spectral_normalize(nn.Conv2d(2, 2, 3, padding=1), input_shape=(2, 5, 5), method=method).to(D)
    lin = spectral_normalize(nn.Linear(3, 2)).to(D)
    assert conv.weight.dtype == D and lin.weight.dtype == D
    assert all(b.dtype == D for b in conv.buffers()) and all(b.dtype == D for b in lin.buffers())
    conv(torch.randn(1, 2, 5, 5, dtype=D)).sum().backward()


def test_spectral_normalize_conv_needs_input_shape_and_checks_it() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        spectral_normalize(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"input_shape \(5, 8, 8\) does not fit Conv2d with 3 input channels"):
        spectral_normalize(nn.Conv2d(3, 4, 3), input_shape=(5, 8, 8))
    conv = spectral_normalize(nn.Conv1d(2, 2, 3, padding=1).double(), coeff=0.5, input_shape=(7,))  # spatial only
    with torch.no_grad():
        assert _op_norm(lambda x: conv._conv_forward(x, conv.weight, None), (2, 7)) <= 0.5 * (1 + 1e-6)
    with pytest.raises(ValueError, match="already parametrized"):
        spectral_normalize(conv, input_shape=(7,))
    with pytest.raises(ValueError, match="no tensor attribute 'kernel'"):
        spectral_normalize(nn.Linear(2, 2), name="kernel")


def test_weight_normalize() -> None:
    lin = weight_normalize(nn.Linear(4, 3))
    g = lin.parametrizations.weight.original0
    assert g.shape == (3, 1)
    torch.testing.assert_close(lin.weight.norm(dim=1, keepdim=True), g)


# ------------------------------------------------------------------------------------------- Lipschitz


def test_estimate_lipschitz_linear_is_exact() -> None:
    W = torch.randn(6, 9, dtype=D)
    f = lambda z: z @ W.T  # noqa: E731  (maps R^9 -> R^6: non-square is fine)
    z = torch.randn(4, 9, dtype=D)
    exact = torch.linalg.matrix_norm(W, ord=2)
    torch.testing.assert_close(estimate_lipschitz(f, z, n_iter=200), exact, rtol=1e-8, atol=0)
    per = estimate_lipschitz(f, z, n_iter=200, reduction="none")
    assert per.shape == (4,)
    pairs = estimate_lipschitz(f, z, n_iter=50, method="pairs", generator=torch.Generator().manual_seed(0))
    assert 0.2 * exact < pairs <= exact * (1 + 1e-9)  # random pairs: a lower bound


def test_estimate_lipschitz_tuple_state() -> None:
    M = torch.randn(5, 5, dtype=D)

    def f(s):
        v = torch.cat(s, dim=1) @ M.T
        return v[:, :2], v[:, 2:]

    z = (torch.randn(3, 2, dtype=D), torch.randn(3, 3, dtype=D))
    exact = torch.linalg.matrix_norm(M, ord=2)
    torch.testing.assert_close(estimate_lipschitz(f, z, n_iter=300), exact, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------- rescale


class _TanhLayer(nn.Module):
    def __init__(self, n: int = 12) -> None:
        super().__init__()
        self.lin = nn.Linear(n, n, dtype=D)
        with torch.no_grad():
            self.lin.weight.mul_(3.0 / torch.linalg.matrix_norm(self.lin.weight, ord=2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(z) + x)


def test_rescale_makes_tanh_layer_contractive() -> None:
    layer = _TanhLayer()
    x = torch.zeros(8, 12, dtype=D)
    z = 1e-3 * torch.randn(8, 12, dtype=D)  # near 0 the tanh slope is 1: the local estimate is ~||W||
    res = rescale_to_contraction(lambda s: layer(s, x), z, target=0.9, param=layer.lin.weight)
    assert isinstance(res, RescaleResult) and res.before > 2.9 and res.after <= 0.9 * (1 + 1e-6)
    assert res.rounds >= 1 and res.scale < 0.35
    # contractive on random pairs anywhere (tanh is 1-Lipschitz, so L <= ||W||_2 ~ 0.9)
    xs = torch.randn(64, 12, dtype=D)
    u, w = 3 * torch.randn(64, 12, dtype=D), 3 * torch.randn(64, 12, dtype=D)
    with torch.no_grad():
        assert (_ratios(lambda s: layer(s, xs), u, w) <= 0.9 * (1 + 1e-3)).all()
    # already contractive: untouched
    again = rescale_to_contraction(lambda s: layer(s, x), z, target=0.95, param=layer.lin.weight)
    assert again.rounds == 0 and again.scale == 1.0


def test_rescale_module_default_weight_conv_and_pairs_method() -> None:
    conv = nn.Conv2d(2, 2, 3, padding=1, bias=False, dtype=D)
    with torch.no_grad():
        conv.weight.mul_(5.0)
    z = torch.randn(4, 2, 5, 5, dtype=D)
    res = rescale_to_contraction(conv, z, target=0.5)  # module: rescales conv.weight
    assert res.after <= 0.5 * (1 + 1e-6)
    with torch.no_grad():
        assert _op_norm(lambda v: conv(v), (2, 5, 5)) <= 0.5 * (1 + 1e-4)  # linear: local = global
    lin = nn.Sequential(nn.Linear(6, 6, dtype=D), nn.ReLU())
    with torch.no_grad():
        lin[0].weight.mul_(4.0)
    res = rescale_to_contraction(lin, torch.randn(16, 6, dtype=D), 0.9, param="0.weight", method="pairs", n_iter=30)
    assert res.after <= 0.9 * (1 + 1e-6) and res.scale < 1


def test_rescale_spectrally_normalised_and_errors() -> None:
    lin = spectral_normalize(nn.Linear(5, 5, dtype=D), coeff=2.0)
    res = rescale_to_contraction(lin, torch.randn(3, 5, dtype=D), target=0.5)  # scales the raw weight
    assert res.after <= 0.5 * (1 + 1e-6)
    with pytest.raises(ValueError, match="pass param="):
        rescale_to_contraction(lambda s: 2 * s, torch.randn(2, 3))
    bias_only = nn.Linear(3, 3)
    with torch.no_grad():
        bias_only.weight.copy_(2 * torch.eye(3))
    with pytest.raises(RuntimeError, match="did not lower"):
        rescale_to_contraction(bias_only, torch.randn(2, 3), param="bias")
    with pytest.raises(ValueError, match="no tensor 'gain'"):
        rescale_to_contraction(bias_only, torch.randn(2, 3), param="gain")

"""Triton kernels vs torch fallbacks. On CPU the Triton path runs in the interpreter (TRITON_INTERPRET=1)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any triton import

import subprocess
import sys
import textwrap

import pytest
import torch

from fpntools.kernels import (anderson_combine, anderson_gram, anderson_mix, residual_norms, triton_available,
                              triton_status)
from fpntools.kernels.anderson import _combine
from fpntools.kernels.anderson import _interpret_mode
from fpntools.kernels.bench import bench_anderson_mix

_CAN_RUN_TRITON = triton_available() and (torch.cuda.is_available() or _interpret_mode())
needs_triton = pytest.mark.skipif(
    not _CAN_RUN_TRITON, reason="triton not installed, or no CUDA and TRITON_INTERPRET is not 1"
)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
RAGGED = [1, 37, 130, 1029]  # none a multiple of the block size except by accident


def _tol(dtype: torch.dtype) -> dict:
    return {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=1e-5, rtol=1e-5)}.get(
        dtype, dict(atol=3e-2, rtol=3e-2)
    )


# ------------------------------------------------------------------------------------------- anderson_mix


def test_mix_torch_matches_definition() -> None:
    X, F = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(2, 3, 7, dtype=torch.float64)
    a = torch.randn(2, 3, dtype=torch.float64)
    beta = 0.7
    ref = beta * torch.einsum("bm,bmn->bn", a, F) + (1 - beta) * torch.einsum("bm,bmn->bn", a, X)
    torch.testing.assert_close(anderson_mix(X, F, a, beta, backend="torch"), ref)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mix_triton_matches_torch(dtype: torch.dtype) -> None:
    k = 0
    for m in range(1, 7):
        for b in range(1, 4):
            n = RAGGED[k % len(RAGGED)]
            k += 1
            X = torch.randn(b, m, n, dtype=dtype, device=DEV)
            F = torch.randn(b, m, n, dtype=dtype, device=DEV)
            a = torch.softmax(torch.randn(b, m, dtype=dtype, device=DEV), 1)
            for beta in (1.0, 0.45):
                got = anderson_mix(X, F, a, beta, backend="triton")
                assert got.shape == (b, n) and got.dtype == dtype
                torch.testing.assert_close(got, anderson_mix(X, F, a, beta, backend="torch"), **_tol(dtype))


@needs_triton
def test_mix_triton_strided_ring_buffer_slice() -> None:
    hx, hf = torch.randn(3, 6, 301, device=DEV), torch.randn(3, 6, 301, device=DEV)
    a = torch.randn(3, 4, device=DEV)
    X, F = hx[:, :4], hf[:, :4]  # non-contiguous, as the Anderson solver passes them
    assert not X.is_contiguous()
    torch.testing.assert_close(
        anderson_mix(X, F, a, 0.5, backend="triton"), anderson_mix(X, F, a, 0.5, backend="torch"), **_tol(X.dtype)
    )
    Xt = torch.randn(3, 301, 4, device=DEV).transpose(1, 2)  # inner stride != 1
    torch.testing.assert_close(
        anderson_mix(Xt, F, a, 0.5, backend="triton"), anderson_mix(Xt, F, a, 0.5, backend="torch"), **_tol(X.dtype)
    )


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mix_triton_half_accumulates_in_fp32(dtype: torch.dtype) -> None:
    X, F = torch.randn(2, 5, 777, device=DEV).to(dtype), torch.randn(2, 5, 777, device=DEV).to(dtype)
    a = torch.softmax(torch.randn(2, 5, device=DEV), 1)
    got = anderson_mix(X, F, a, 0.8, backend="triton")
    assert got.dtype == dtype
    exact = 0.8 * torch.einsum("bm,bmn->bn", a.double(), F.double()) + 0.2 * torch.einsum(
        "bm,bmn->bn", a.double(), X.double()
    )
    # only the final rounding to the half type: error within one ulp of the output
    ulp = torch.finfo(dtype).eps * exact.abs().clamp_min(1.0)
    assert ((got.double() - exact).abs() <= ulp).all()
    torch.testing.assert_close(got, anderson_mix(X, F, a, 0.8, backend="torch"), **_tol(dtype))


@needs_triton
def test_mix_triton_gradients_match_torch() -> None:
    def inputs() -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(3)
        shapes = [(2, 3, 19), (2, 3, 19), (2, 3)]
        return [torch.randn(s, generator=g, dtype=torch.float64).to(DEV).requires_grad_() for s in shapes]

    w = torch.randn(2, 19, dtype=torch.float64, device=DEV)
    grads = {}
    for backend in ("torch", "triton"):
        X, F, a = inputs()
        out = anderson_mix(X, F, a, 0.6, backend=backend)
        g1 = torch.autograd.grad((out * w).sum(), [X, F, a], create_graph=True)
        g2 = torch.autograd.grad((g1[2] ** 2).sum() + (g1[1] * g1[0]).sum(), [X, F, a], allow_unused=True)
        grads[backend] = list(g1) + [g if g is not None else torch.zeros_like(t) for g, t in zip(g2, [X, F, a])]
    for gt, gg in zip(grads["torch"], grads["triton"]):
        torch.testing.assert_close(gg, gt)


@needs_triton
def test_mix_triton_gradcheck() -> None:
    X, F = (torch.randn(1, 2, 5, dtype=torch.float64, device=DEV, requires_grad=True) for _ in range(2))
    a = torch.randn(1, 2, dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, f, al: anderson_mix(x, f, al, 0.3, backend="triton"), (X, F, a))


def test_mix_auto_uses_torch_on_cpu_tensors() -> None:
    X = torch.randn(1, 2, 3)
    out = anderson_mix(X, X, torch.ones(1, 2, requires_grad=True), 1.0)
    assert out.grad_fn is not None and "MixTriton" not in type(out.grad_fn).__name__


def test_mix_rejects_bad_input() -> None:
    X = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        anderson_mix(X, torch.randn(2, 3, 4), torch.randn(2, 3), 1.0)
    with pytest.raises(ValueError, match=r"alpha must have shape \(B, m\) = \(2, 3\), got \(2, 4\)"):
        anderson_mix(X, X, torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match="shape"):
        anderson_mix(X[0], X[0], torch.randn(3), 1.0)
    with pytest.raises(TypeError, match="dtype"):
        anderson_mix(X, X.double(), torch.randn(2, 3), 1.0)
    with pytest.raises(TypeError, match="dtype"):
        anderson_mix(X.long(), X.long(), torch.randn(2, 3), 1.0)
    with pytest.raises(ValueError, match="backend"):
        anderson_mix(X, X, torch.randn(2, 3), 1.0, backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="m = 0"):
        anderson_mix(X[:, :0], X[:, :0], torch.randn(2, 0), 1.0)


def test_forced_triton_on_cpu_without_interpreter_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    if not triton_available():
        pytest.skip("triton not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA tensors.*TRITON_INTERPRET=1"):
        anderson_mix(torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.randn(1, 2), 1.0, backend="triton")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_combine_matches_definition_and_gradients(backend: str) -> None:
    g = torch.Generator().manual_seed(5)
    F, G = (torch.randn(3, 4, 37, dtype=torch.float64, generator=g).to(DEV).requires_grad_() for _ in range(2))
    cf, cg = (torch.randn(3, 4, dtype=torch.float64, generator=g).to(DEV).requires_grad_() for _ in range(2))
    out = anderson_combine(F, cf, G, cg, backend=backend)
    ref = torch.einsum("bm,bmn->bn", cf, F) + torch.einsum("bm,bmn->bn", cg, G)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(out)
    got = torch.autograd.grad((out * w).sum(), [F, cf, G, cg])
    exp = torch.autograd.grad((ref * w).sum(), [F, cf, G, cg])
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(anderson_combine(F, cf, backend=backend), torch.einsum("bm,bmn->bn", cf, F))
    with pytest.raises(ValueError, match="G and cg go together"):
        anderson_combine(F, cf, G, None)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_combine_into_one_of_its_own_rows(backend: str, dtype: torch.dtype) -> None:
    """The solver writes the mixed iterate into the ring slot of the oldest pair, which is still being mixed."""
    ring = torch.randn(2, 3, 2, 1029, dtype=dtype, device=DEV)  # (B, m, 2, N): iterates and residuals
    rows = ring.view(2, 6, 1029)
    coef = torch.softmax(torch.randn(2, 6, dtype=dtype, device=DEV), 1)
    expected = torch.einsum("bm,bmn->bn", coef, rows)
    with torch.no_grad():
        got = _combine(rows, coef, None, None, backend, out=ring[:, 0, 0])
    assert got.data_ptr() == ring[:, 0, 0].data_ptr()
    torch.testing.assert_close(ring[:, 0, 0], expected, **_tol(dtype))


# ------------------------------------------------------------------------------------------- gram, norms


def test_gram() -> None:
    G = torch.randn(3, 4, 50, dtype=torch.float64)
    H = anderson_gram(G)
    torch.testing.assert_close(H, torch.einsum("bin,bjn->bij", G, G))
    torch.testing.assert_close(H, H.transpose(1, 2))
    assert anderson_gram(G.half()).dtype == torch.float32  # no fp16 overflow in inner products
    with pytest.raises(ValueError, match=r"\(B, m, N\), got \(4, 50\)"):
        anderson_gram(G[0])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_residual_norms_triton_matches_torch(dtype: torch.dtype) -> None:
    for b, n in [(1, 1), (2, 37), (3, 1029), (2, 20_001)]:  # the last one spans several chunks
        fz, z = torch.randn(b, n, dtype=dtype, device=DEV), torch.randn(b, n, dtype=dtype, device=DEV)
        ra, fa = residual_norms(fz, z, backend="triton")
        torch.testing.assert_close(ra, torch.linalg.vector_norm(fz - z, dim=1), **_tol(dtype))
        torch.testing.assert_close(fa, torch.linalg.vector_norm(fz, dim=1), **_tol(dtype))
        rt, ft = residual_norms(fz, z, backend="torch")
        torch.testing.assert_close(ra, rt, **_tol(dtype))
        torch.testing.assert_close(fa, ft, **_tol(dtype))
    zt = torch.randn(40, 3, dtype=dtype, device=DEV).t()  # strided
    torch.testing.assert_close(
        residual_norms(zt, zt * 2, backend="triton")[0], torch.linalg.vector_norm(zt, dim=1), **_tol(dtype)
    )


@needs_triton
def test_residual_norms_half_no_overflow_and_grad() -> None:
    fz = torch.full((2, 3000), 200.0, device=DEV).half()  # sum of squares 1.2e8 overflows float16
    r, f = residual_norms(fz, torch.zeros_like(fz), backend="triton")
    assert torch.isfinite(f).all() and r.dtype == torch.float16
    torch.testing.assert_close(f.float(), torch.full((2,), 200.0 * 3000**0.5, device=DEV), rtol=1e-3, atol=0)

    fz = torch.randn(2, 9, dtype=torch.float64, device=DEV, requires_grad=True)
    z = torch.randn(2, 9, dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: residual_norms(a, b, backend="triton"), (fz, z))
    r, _ = residual_norms(z, z, backend="triton")  # zero residual: finite (zero) gradient, no NaN
    (g,) = torch.autograd.grad(r.sum(), z)
    assert torch.isfinite(g).all()


def test_residual_norms_rejects_mismatch() -> None:
    with pytest.raises(ValueError, match=r"z has shape \(2, 4\) but fz has shape \(2, 5\)"):
        residual_norms(torch.randn(2, 5), torch.randn(2, 4))


# ------------------------------------------------------------------------------------------- misc


def test_status_and_bench_on_cpu() -> None:
    s = triton_status()
    assert isinstance(s, str) and s
    rows = bench_anderson_mix("cpu", [(2, 3, 100)], repeats=2, warmup=1)
    assert [r["backend"] for r in rows] == ["torch"] and rows[0]["ms"] > 0


def _run(code: str, env: dict[str, str]) -> None:
    full = {**os.environ, **env}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_fresh_process_without_then_with_triton() -> None:
    """In a clean process (one torch import for both checks):

    1. with triton hidden the module imports, reports it and falls back to torch;
    2. with triton imported *before* fpntools and TRITON_INTERPRET=1 forced (robust to import order and to
       an outer TRITON_INTERPRET=0), the interpreted kernels match torch.
    """
    _run(
        """
        import sys
        sys.modules["triton"] = None  # simulate a machine without triton
        import torch
        import fpntools.kernels.anderson as K
        assert not K.triton_available() and K.triton_status() == "not installed"
        X, F = torch.randn(2, 4, 203, dtype=torch.float64), torch.randn(2, 4, 203, dtype=torch.float64)
        a = torch.randn(2, 4, dtype=torch.float64)
        ref = K.anderson_mix(X, F, a, 0.5)
        try:
            K.anderson_mix(X, F, a, 0.5, backend="triton")
        except RuntimeError as e:
            assert "not installed" in str(e)
        else:
            raise AssertionError("forced triton without triton must raise")
        del sys.modules["triton"]
        K._import_triton.cache_clear()
        try:
            import triton  # noqa: F401
        except ImportError:
            sys.exit(0)
        torch.testing.assert_close(K.anderson_mix(X, F, a, 0.5, backend="triton"), ref)
        r = K.residual_norms(F[:, 0], X[:, 0], backend="triton")[0]
        torch.testing.assert_close(r, torch.linalg.vector_norm(F[:, 0] - X[:, 0], dim=1))
        """,
        {"TRITON_INTERPRET": "1"},
    )

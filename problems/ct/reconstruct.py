"""Reconstruct sinograms with one method and decide whether the result can be used.

* :func:`load_sinograms`: read a ``.npy`` file, check its shape, values and float32 range.
* :func:`sinogram_range` / :func:`check_sinogram_range`: the CT methods here reconstruct images with values in
  ``[0, 1]`` (FBP is clipped to it, TV and the networks constrain it). Such an image gives ``0 <= A x <= A 1``
  entrywise (the projection matrix has nonnegative entries, ``A 1`` is the line integral through the whole
  image box), so sinogram entries outside ``[-k sigma, A 1 + k sigma]`` (``sigma = noise * RMS(y)``, ``k = 5``)
  are impossible for the trained range. More than :data:`RANGE_ERROR_FRACTION` of them above the range is
  refused (a scaled sinogram would otherwise give an all-white image); fewer, or negative entries, are a
  warning (measured data can be noisier than the 1.5% the networks were trained with).
* :func:`load_network`: the F-FPN or unrolled weights for a method (one set of weights serves every geometry).
* :func:`reconstruct`: run a method on the sinograms of one :class:`~problems.ct.acquisition.Acquisition`, with
  the noise level given or estimated from the sinograms and, for TV, the weight tuned for the geometry and the
  noise level (:func:`~problems.ct.baselines.tv_weight`) unless given; returns a :class:`Reconstruction` with the
  solver's information.
* :meth:`Reconstruction.verdict`: usable or not (non-finite values, a non-finite or diverged solve), warnings
  (a solve that stopped at its budget, pixels saturated at the upper bound), and a one-line summary.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fpntools.errors import UserInputError
from fpntools.info import FixedPointInfo, Status
from problems.ct.acquisition import Acquisition
from problems.ct.baselines import FBP, tv_reconstruct, tv_weight
from problems.ct.geometry import DEFAULT_NOISE, CTGeometry

__all__ = [
    "METHODS",
    "RANGE_ERROR_FRACTION",
    "SinogramRange",
    "sinogram_range",
    "check_sinogram_range",
    "load_array",
    "load_sinograms",
    "load_network",
    "save_array",
    "save_images",
    "Reconstruction",
    "Verdict",
    "reconstruct",
]

METHODS = ("fbp", "tv", "ffpn", "unrolled")
#: sinograms with more than this fraction of entries above the range of images in [0, 1] are refused.
RANGE_ERROR_FRACTION = 0.05
#: noise margin of the range test, in noise standard deviations.
RANGE_NOISE_SIGMAS = 5.0
#: a reconstruction with more than this fraction of pixels at the upper bound 1 gets a warning.
SATURATION_WARN_FRACTION = 0.25
_F32_MAX = float(np.finfo(np.float32).max)


# ============================================================================================ input checks
def load_array(path: str | os.PathLike, what: str) -> np.ndarray:
    """``np.load`` of a ``.npy`` file (no pickles) with a one-line :class:`UserInputError` when it fails."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{what} file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise UserInputError(f"cannot read {what} file {path} as .npy: {str(exc).splitlines()[0]}") from None


def load_sinograms(path: str | os.PathLike, geometry: CTGeometry) -> tuple[Tensor, bool]:
    """Sinograms of ``path`` as a float32 batch ``(N, n_angles, n_detectors)`` and whether the file held a batch.

    Shape, dtype and finiteness are checked by :meth:`CTGeometry.check_sinogram`; values beyond the float32
    range are refused (they would become ``inf``).
    """
    y_np, batched = geometry.check_sinogram(load_array(path, "sinogram"), f"sinogram {path}")
    big = float(np.abs(y_np).max(initial=0.0))
    if big > _F32_MAX:
        raise UserInputError(f"sinogram {path} has values up to {big:.3g}, beyond the float32 range")
    return torch.from_numpy(np.ascontiguousarray(y_np, dtype=np.float32)), batched


@dataclass(frozen=True)
class SinogramRange:
    """Where sinogram entries lie relative to the range of images with values in ``[0, 1]``.

    Attributes:
        fraction_above: entries above ``A 1 + k sigma`` (brighter than an all-ones image can be).
        fraction_below: entries below ``-k sigma`` (negative attenuation).
        max_value: the largest entry.
        max_line_integral: the largest entry of ``A 1`` (an all-ones image).
    """

    fraction_above: float
    fraction_below: float
    max_value: float
    max_line_integral: float

    def describe(self) -> str:
        parts = []
        if self.fraction_above:
            parts.append(f"{100 * self.fraction_above:.3g}% of its entries exceed the largest line integral of an "
                         f"image with values in [0, 1] (entries up to {self.max_value:.4g}, while such an image "
                         f"gives at most {self.max_line_integral:.4g})")
        if self.fraction_below:
            parts.append(f"{100 * self.fraction_below:.3g}% of its entries are negative beyond the noise")
        return "; ".join(parts) if parts else "all entries lie in the range of images with values in [0, 1]"


@torch.no_grad()
def sinogram_range(y: Tensor, op: Any, noise: float = DEFAULT_NOISE, sigmas: float = RANGE_NOISE_SIGMAS
                   ) -> SinogramRange:
    """Compare ``y`` ``(N, *op.out_shape)`` with the range ``[0, A 1]`` of images in ``[0, 1]`` (module docstring),
    with a margin of ``sigmas`` noise deviations ``sigma = noise * RMS(y)`` per sinogram (float64)."""
    ones = torch.ones((1, *op.in_shape), dtype=y.dtype, device=y.device)
    top = op(ones).double()  # (1, *out_shape), A 1 >= 0
    yd = y.double()
    sigma = noise * yd.flatten(1).pow(2).mean(dim=1).sqrt().view(-1, *([1] * (yd.ndim - 1)))
    n = yd.numel()
    return SinogramRange(float((yd > top + sigmas * sigma).sum()) / n, float((yd < -sigmas * sigma).sum()) / n,
                         float(yd.max()), float(top.max()))


def check_sinogram_range(y: Tensor, op: Any, name: str = "sinogram") -> SinogramRange:
    """:func:`sinogram_range`, refusing (one-line :class:`UserInputError`) a sinogram with more than
    :data:`RANGE_ERROR_FRACTION` of its entries above the range (a scaled sinogram); the caller warns when some
    entries lie outside it (negative entries are common in measured data, so they only warn)."""
    rng = sinogram_range(y, op)
    if rng.fraction_above > RANGE_ERROR_FRACTION:
        raise UserInputError(
            f"{name}: {rng.describe()}; the reconstructions here are images with values in [0, 1] (the networks "
            "were trained on such data): rescale the sinogram"
        )
    return rng


def save_array(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write ``arr`` to the ``.npy`` file ``path`` atomically (no partial file on failure)."""
    from fpntools.atomic_io import atomic_write

    atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=False))


def save_images(path: str | os.PathLike, images: np.ndarray) -> None:
    """Images ``(n, n)`` or ``(N, n, n)``: a ``.png`` path gets a picture (:func:`problems.ct.figures.save_png`),
    any other an ``.npy`` array."""
    if Path(path).suffix.lower() == ".png":
        from problems.ct.figures import save_png

        save_png(path, images)
    else:
        save_array(path, images)


# ============================================================================================ networks
def load_network(method: str, weights: str | os.PathLike | None = None) -> Any:
    """The :class:`~problems.ct.ffpn.FFPN` of ``method`` (``"ffpn"`` or ``"unrolled"``) from ``weights`` (default:
    the shipped ones), in eval mode. One-line :class:`UserInputError` when the file is missing or malformed or
    holds the other kind of network."""
    from fpntools.training.checkpoint import CheckpointError
    from problems.ct.weights import load_model, shipped_weights

    try:
        path = Path(weights) if weights is not None else shipped_weights(method)
        model, _ = load_model(path, kind=method)
    except CheckpointError as exc:
        raise UserInputError(str(exc)) from None
    return model


# ============================================================================================ results
@dataclass
class Verdict:
    """Whether a reconstruction can be used: ``problems`` (not usable), ``warnings`` (usable), ``summary``."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def usable(self) -> bool:
        return not self.problems


@dataclass
class Reconstruction:
    """The images ``(N, n, n)`` of ``method`` and how they were computed.

    Attributes:
        images: the reconstructions (batched).
        method: ``fbp`` | ``tv`` | ``ffpn`` | ``unrolled``.
        seconds: wall time of the reconstruction.
        info: the solver's information (TV, F-FPN, unrolled; ``None`` for FBP).
        fixed_steps: the solve runs a fixed number of steps by design (unrolled): its budget is not a warning.
        label: what ran, in words.
        budget_option: the command-line option that raises the solver's budget, if any (named in the warning).
    """

    images: Tensor
    method: str
    seconds: float
    info: FixedPointInfo | None = None
    fixed_steps: bool = False
    label: str = ""
    budget_option: str = ""

    @property
    def steps(self) -> float | None:
        return None if self.info is None else float(self.info.steps.double().mean())

    def saturated_fraction(self) -> float:
        """Fraction of pixels at (or above) the upper bound 1 of the image range."""
        return float((self.images >= 1.0).double().mean())

    def verdict(self) -> Verdict:
        """See the module docstring."""
        v = Verdict()
        n = self.images.shape[0]
        bad = (~torch.isfinite(self.images)).flatten(1).any(dim=1)
        if bool(bad.any()):
            v.problems.append(f"{int(bad.sum())} of {n} reconstructions contain NaN or infinite values")
        info = self.info
        if info is not None:
            st = info.sample_status
            for status, what in ((Status.NONFINITE, "produced NaN or infinite values"),
                                 (Status.DIVERGED, "diverged")):
                k = int((st == int(status)).sum())
                if k:
                    v.problems.append(f"the {self.method} solve {what} on {k} of {n} sinograms")
            k = int((st == int(Status.MAX_ITER)).sum())
            if k and not self.fixed_steps:
                res = float(info.residual[st == int(Status.MAX_ITER)].max())
                v.warnings.append(
                    f"the {self.method} solve stopped at its budget of {int(info.steps.max())} steps on {k} of {n} "
                    f"sinograms (relative residual up to {res:.2g}, tolerance {info.tol:g}); the output is the best "
                    "iterate" + (f"; raise {self.budget_option} for a tighter solve" if self.budget_option else "")
                )
        sat = self.saturated_fraction() if v.usable else 0.0
        if sat > SATURATION_WARN_FRACTION:
            v.warnings.append(f"{100 * sat:.3g}% of the pixels sit at the upper bound 1 (clamped): the data may lie "
                              "outside the range the method was made for")
        if info is not None:
            if self.fixed_steps:
                how = f"{int(info.steps.max())} steps (a fixed-step network)"
            else:
                conv = int((info.sample_status == int(Status.CONVERGED)).sum())
                how = f"{self.steps:.1f} steps on average, {conv}/{n} converged to tolerance {info.tol:g}"
            v.summary = f"{self.label or self.method}: {how}"
        else:
            v.summary = self.label or self.method
        v.summary += "; output usable" if v.usable else "; output NOT usable"
        if v.usable and v.warnings:
            v.summary += " (see the warnings)"
        return v


def reconstruct(
    method: str,
    y: Tensor,
    acq: Acquisition,
    *,
    noise: float | Tensor | None = None,
    lam: float | None = None,
    iters: int = 500,
    filter: str = "hann",
    model: Any = None,
    weights: str | os.PathLike | None = None,
) -> Reconstruction:
    """Reconstruct the batch ``y`` ``(N, n_angles, n_detectors)`` of the acquisition ``acq`` with ``method``.

    ``fbp``: ASTRA's FBP with ``filter`` for parallel beam, the operator's filtered backprojection
    (:meth:`~problems.ct.acquisition.Acquisition.filtered_backprojection`, Hann) for fan beam; ``tv``: weight
    ``lam`` (default: :func:`~problems.ct.baselines.tv_weight` of the geometry and the noise level), at most
    ``iters`` PDHG iterations; a network (``model``, or loaded from ``weights`` / the shipped weights with
    :func:`load_network`). ``noise``: relative noise level(s); ``None`` estimates it from each sinogram
    (:func:`~problems.ct.acquisition.estimate_noise`).
    """
    from problems.ct.ffpn import noise_levels

    if method not in METHODS:
        raise UserInputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method in ("ffpn", "unrolled") and model is None:
        model = load_network(method, weights)
    geometry = acq.geometry
    t0 = time.perf_counter()
    if method == "fbp":
        if geometry.beam == "parallel":
            try:
                images = FBP(geometry, filter=filter)(y)
            except ValueError as exc:
                raise UserInputError(str(exc)) from None
            label = f"FBP ({filter} filter)"
        else:
            with torch.no_grad():
                images = acq.filtered_backprojection(y)
            label = "filtered backprojection (Hann ramp, least-squares scale; fan beam)"
        return Reconstruction(images, method, time.perf_counter() - t0, label=label)
    nz = noise_levels(y, noise)
    if method == "tv":
        weight = tv_weight(geometry, nz) if lam is None else lam
        if iters < 1 or (lam is not None and not lam >= 0):
            raise UserInputError(f"TV needs --iters >= 1 and --lam >= 0, got {iters} and {lam}")
        with torch.no_grad():
            x0 = acq.filtered_backprojection(y)
        res = tv_reconstruct(y, acq.op, lam=weight, n_iter=iters, x0=x0, return_result=True, op_norm=acq.op_norm)
        what = f"lam {lam:g}" if lam is not None else f"tuned lam {float(torch.as_tensor(weight).mean()):.3g}"
        return Reconstruction(res.x, method, time.perf_counter() - t0, res.info,
                              label=f"TV ({what}, PDHG)", budget_option="--iters")
    with torch.no_grad():
        images, info = model(y, acq, noise=nz)
    return Reconstruction(images, method, time.perf_counter() - t0, info, fixed_steps=model.kind == "unrolled",
                          label=model.describe())

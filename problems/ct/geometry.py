"""Acquisition geometry of the 2D CT problem and shape checks for images and sinograms.

Default contract (every option can be changed, these are the defaults):

* image: ``128 x 128`` pixels on a unit pixel grid (pixel width 1, the image centred on the rotation axis),
  attenuation values in ``[0, 1]``;
* parallel beam, ``30`` angles equally spaced in ``[0, pi)`` (endpoint excluded),
  ``theta_k = k * pi / 30``;
* ``183`` detector pixels of width ``1`` (``183 >= 128 * sqrt(2)``: every ray through the image is measured);
* ASTRA ``linear`` projector (``line_fanflat`` for fan beam);
* sinogram shape ``(n_angles, n_detectors) = (30, 183)`` as ASTRA returns it, ``(N, 30, 183)`` batched;
* noise: additive Gaussian, per sinogram ``sigma = 0.015 * RMS(clean sinogram)`` (:data:`DEFAULT_NOISE`).

Fan beam: ``beam="fan"`` with ``source_origin`` (source to rotation axis) and ``origin_detector``
(rotation axis to detector) distances. The flat detector then has magnification
``M = (source_origin + origin_detector) / source_origin`` and its pixels cover ``detector_width / M``
at the rotation axis; :attr:`CTGeometry.field_of_view_radius` tells whether the image is covered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fpntools.errors import UserInputError

__all__ = ["CTGeometry", "DEFAULT_NOISE", "ShapeError"]

#: relative noise level: ``sigma = DEFAULT_NOISE * RMS(clean sinogram)`` per sinogram.
DEFAULT_NOISE: float = 0.015

_PARALLEL_PROJECTORS = ("linear", "line", "strip")
_FAN_PROJECTORS = ("line_fanflat", "strip_fanflat")


class ShapeError(UserInputError):
    """An image or sinogram does not have the shape the geometry expects."""


@dataclass(frozen=True)
class CTGeometry:
    """2D tomographic acquisition geometry (parallel or flat-detector fan beam).

    Attributes:
        image_size: the image is ``image_size x image_size`` pixels of width 1.
        n_angles: number of projection angles, ``theta_k = angle_start + k * angle_range / n_angles``,
            ``k = 0 .. n_angles - 1`` (endpoint excluded).
        n_detectors: detector pixels per projection.
        detector_width: width of one detector pixel (in pixel units).
        angle_range: total angular range in radians (``pi`` for parallel beam; a fan beam needs
            ``pi`` plus the fan angle for a complete data set, ``2 pi`` is common).
        angle_start: first angle in radians.
        beam: ``"parallel"`` or ``"fan"`` (flat detector).
        source_origin: fan beam only, distance source to rotation axis (pixel units).
        origin_detector: fan beam only, distance rotation axis to detector (pixel units).
        projector: ASTRA CPU projector type; ``None`` gives ``"linear"`` (parallel) or
            ``"line_fanflat"`` (fan).
    """

    image_size: int = 128
    n_angles: int = 30
    n_detectors: int = 183
    detector_width: float = 1.0
    angle_range: float = math.pi
    angle_start: float = 0.0
    beam: Literal["parallel", "fan"] = "parallel"
    source_origin: float | None = None
    origin_detector: float | None = None
    projector: str | None = None

    def __post_init__(self) -> None:
        if int(self.image_size) != self.image_size or self.image_size < 2:
            raise ValueError(f"image_size must be an integer >= 2, got {self.image_size!r}")
        if int(self.n_angles) != self.n_angles or self.n_angles < 1:
            raise ValueError(f"n_angles must be a positive integer, got {self.n_angles!r}")
        if int(self.n_detectors) != self.n_detectors or self.n_detectors < 1:
            raise ValueError(f"n_detectors must be a positive integer, got {self.n_detectors!r}")
        if not self.detector_width > 0:
            raise ValueError(f"detector_width must be positive, got {self.detector_width!r}")
        if not self.angle_range > 0:
            raise ValueError(f"angle_range must be positive, got {self.angle_range!r}")
        if self.beam not in ("parallel", "fan"):
            raise ValueError(f"beam must be 'parallel' or 'fan', got {self.beam!r}")
        if self.beam == "fan":
            if self.source_origin is None or self.origin_detector is None:
                raise ValueError("a fan-beam geometry needs source_origin and origin_detector distances")
            if not self.source_origin > self.image_size / math.sqrt(2):
                raise ValueError(
                    f"source_origin={self.source_origin} puts the source inside the image "
                    f"(needs > {self.image_size / math.sqrt(2):.1f})"
                )
            if not self.origin_detector >= 0:
                raise ValueError(f"origin_detector must be >= 0, got {self.origin_detector!r}")
            allowed = _FAN_PROJECTORS
        else:
            if self.source_origin is not None or self.origin_detector is not None:
                raise ValueError("source_origin / origin_detector are fan-beam options; set beam='fan'")
            allowed = _PARALLEL_PROJECTORS
        if self.projector is not None and self.projector not in allowed:
            raise ValueError(f"projector {self.projector!r} does not fit a {self.beam} beam; use one of {allowed}")
        if self.field_of_view_radius < self.image_size / math.sqrt(2) - 1e-9:
            warnings.warn(
                f"the detector covers a disc of radius {self.field_of_view_radius:.1f} but the image corners "
                f"reach {self.image_size / math.sqrt(2):.1f}: rays through the image corners are not measured",
                stacklevel=3,
            )

    # ---------------------------------------------------------------- derived quantities
    @classmethod
    def fan(
        cls, source_origin: float = 256.0, origin_detector: float = 256.0, angle_range: float = 2 * math.pi, **kw: Any
    ) -> "CTGeometry":
        """Fan-beam geometry (flat detector). Unless given, ``detector_width`` is the smallest width for which
        the ``n_detectors`` pixels see the whole image (field-of-view radius ``image_size / sqrt 2 + 0.5``)."""
        if "detector_width" not in kw:
            size = kw.get("image_size", cls.image_size)
            n_det = kw.get("n_detectors", cls.n_detectors)
            radius = size / math.sqrt(2) + 0.5
            if radius >= source_origin:
                raise ValueError(f"source_origin={source_origin} puts the source inside the image")
            half = (source_origin + origin_detector) * math.tan(math.asin(radius / source_origin))
            kw["detector_width"] = 2 * half / n_det
        return cls(beam="fan", source_origin=source_origin, origin_detector=origin_detector, angle_range=angle_range, **kw)

    @property
    def projector_type(self) -> str:
        """ASTRA CPU projector type used for this geometry."""
        if self.projector is not None:
            return self.projector
        return "linear" if self.beam == "parallel" else "line_fanflat"

    @property
    def magnification(self) -> float:
        """Detector magnification ``(d_so + d_od) / d_so`` (1 for parallel beam)."""
        if self.beam == "parallel":
            return 1.0
        return (self.source_origin + self.origin_detector) / self.source_origin  # type: ignore[operator]

    @property
    def field_of_view_radius(self) -> float:
        """Radius of the disc (centred on the rotation axis) that every projection sees entirely."""
        half = 0.5 * self.n_detectors * self.detector_width
        if self.beam == "parallel":
            return half
        sdd = self.source_origin + self.origin_detector  # type: ignore[operator]
        return self.source_origin * math.sin(math.atan2(half, sdd))  # type: ignore[operator]

    @property
    def angles(self) -> np.ndarray:
        """Projection angles ``angle_start + k * angle_range / n_angles``, ``k < n_angles`` (float64)."""
        return self.angle_start + np.arange(self.n_angles, dtype=np.float64) * (self.angle_range / self.n_angles)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @property
    def sino_shape(self) -> tuple[int, int]:
        """Sinogram shape ``(n_angles, n_detectors)`` (ASTRA's layout)."""
        return (self.n_angles, self.n_detectors)

    # ---------------------------------------------------------------- ASTRA geometry dicts
    def astra_vol_geom(self) -> dict:
        import astra

        return astra.create_vol_geom(self.image_size, self.image_size)

    def astra_proj_geom(self) -> dict:
        import astra

        if self.beam == "parallel":
            return astra.create_proj_geom("parallel", float(self.detector_width), int(self.n_detectors), self.angles)
        return astra.create_proj_geom(
            "fanflat",
            float(self.detector_width),
            int(self.n_detectors),
            self.angles,
            float(self.source_origin),  # type: ignore[arg-type]
            float(self.origin_detector),  # type: ignore[arg-type]
        )

    # ---------------------------------------------------------------- identity / serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CTGeometry":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown CTGeometry fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)

    def key(self) -> str:
        """Short stable hash of the geometry (cache file names)."""
        d = self.to_dict()
        d["projector"] = self.projector_type
        blob = json.dumps(d, sort_keys=True, default=repr).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        s = (
            f"{self.beam} beam, {self.image_size}x{self.image_size} image, {self.n_angles} angles in "
            f"[{self.angle_start:.4g}, {self.angle_start + self.angle_range:.4g}), {self.n_detectors} detectors "
            f"of width {self.detector_width:g}, projector {self.projector_type}"
        )
        if self.beam == "fan":
            s += f", source-origin {self.source_origin:g}, origin-detector {self.origin_detector:g}"
        return s

    # ---------------------------------------------------------------- shape validation
    def check_sinogram(self, y: Any, name: str = "sinogram") -> tuple[Any, bool]:
        """Validate a sinogram ``(n_angles, n_detectors)`` or batch ``(N, n_angles, n_detectors)``.

        Returns ``(batched, was_batched)`` where ``batched`` has a leading batch dimension (a view).
        Raises :class:`ShapeError` naming the expected and the received shape.
        """
        return _check(y, self.sino_shape, name, "(n_angles, n_detectors)", self.describe())

    def check_image(self, x: Any, name: str = "image") -> tuple[Any, bool]:
        """Validate an image ``(size, size)`` or batch ``(N, size, size)``; see :meth:`check_sinogram`."""
        return _check(x, self.image_shape, name, "(size, size)", self.describe())


def _check(a: Any, shape: tuple[int, int], name: str, layout: str, desc: str) -> tuple[Any, bool]:
    if not isinstance(a, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(a).__name__}")
    real = (a.dtype.kind in "fiu") if isinstance(a, np.ndarray) else not (a.is_complex() or a.dtype == torch.bool)
    if not real:
        raise UserInputError(f"{name} has dtype {a.dtype}; expected real numbers (float or integer)")
    got = tuple(a.shape)
    if got == shape:
        _check_finite(a, name)
        return a[None], False
    if len(got) == 3 and got[1:] == shape:
        if got[0] == 0:
            raise ShapeError(f"{name} is an empty batch, shape {got}")
        _check_finite(a, name)
        return a, True
    if len(got) == 4 and got[1] == 1 and got[2:] == shape:
        raise ShapeError(
            f"{name} has shape {got}; expected {shape} or (N, {shape[0]}, {shape[1]}) {layout} without a "
            f"channel dimension (squeeze dim 1) for geometry: {desc}"
        )
    hint = ""
    if len(got) >= 2 and got[-2:] == shape[::-1] and shape[0] != shape[1]:
        hint = " (the last two axes look transposed: ASTRA sinograms are (angles, detectors))"
    raise ShapeError(
        f"{name} has shape {got}; expected {shape} or (N, {shape[0]}, {shape[1]}) {layout} for geometry: {desc}{hint}"
    )


def _check_finite(a: Any, name: str) -> None:
    bad = int((~np.isfinite(a)).sum()) if isinstance(a, np.ndarray) else int((~torch.isfinite(a)).sum())
    if bad:
        raise UserInputError(f"{name} contains {bad} NaN or infinite value(s)")

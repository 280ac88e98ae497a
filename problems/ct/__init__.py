"""CT reconstruction from sparse-view sinograms: ASTRA operators, phantoms, FBP / TV baselines, and
feasibility-based fixed point networks (F-FPN) with their unrolled counterpart.

Default problem (:class:`~problems.ct.geometry.CTGeometry`): 128 x 128 images in ``[0, 1]``, parallel beam,
30 angles in ``[0, pi)``, 183 detectors of width 1, ASTRA ``linear`` projector, sinograms ``(30, 183)``,
Gaussian noise with ``sigma = 0.015 * RMS(sinogram)``.

Modules: :mod:`~problems.ct.geometry`, :mod:`~problems.ct.projector` (``ct_operator``),
:mod:`~problems.ct.phantoms` (``random_ellipses``, ``shepp_logan``, ``simulate``, ``make_dataset``),
:mod:`~problems.ct.lodopab`, :mod:`~problems.ct.baselines` (``fbp``, ``tv_reconstruct``),
:mod:`~problems.ct.ffpn` (``FFPN``, ``UnrolledCT``), :mod:`~problems.ct.train`, :mod:`~problems.ct.cli`
(``fpntools ct ...``). See ``problems/ct/README.md``.
"""

from problems.ct.geometry import DEFAULT_NOISE, CTGeometry, ShapeError

__all__ = ["CTGeometry", "DEFAULT_NOISE", "ShapeError"]

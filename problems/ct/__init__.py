"""CT reconstruction from sparse-view sinograms: ASTRA operators, phantoms, FBP / TV baselines, and
feasibility-based fixed point networks (F-FPN) with their unrolled counterpart.

Default problem (:class:`~problems.ct.geometry.CTGeometry`): 128 x 128 images in ``[0, 1]``, parallel beam,
30 angles in ``[0, pi)``, 183 detectors of width 1, ASTRA ``linear`` projector, sinograms ``(30, 183)``,
Gaussian noise with ``sigma = 0.015 * RMS(sinogram)``.

Modules: :mod:`~problems.ct.geometry`, :mod:`~problems.ct.projector` (``ct_operator``),
:mod:`~problems.ct.phantoms` (``random_ellipses``, ``shepp_logan``, ``simulate``, ``make_dataset``),
:mod:`~problems.ct.lodopab`, :mod:`~problems.ct.baselines` (``fbp``, ``tv_reconstruct``),
:mod:`~problems.ct.ffpn` (``FFPN``: the F-FPN, and the unrolled network as the same model with
``SolveConfig.unrolled(K)``), :mod:`~problems.ct.weights` (weights I/O), :mod:`~problems.ct.reconstruct`
(one method on sinograms, with input-range and usability checks), :mod:`~problems.ct.bench`,
:mod:`~problems.ct.figures`, :mod:`~problems.ct.train` (training through ``fpntools.training.Trainer``),
:mod:`~problems.ct.cache`, :mod:`~problems.ct.cli` (``fpntools ct ...``, argument parsing only). See
``docs/ct.md``.
"""

from problems.ct.geometry import DEFAULT_NOISE, CTGeometry, ShapeError

__all__ = ["CTGeometry", "DEFAULT_NOISE", "ShapeError"]

"""``fpntools ct bench``: FBP, tuned TV, the unrolled network and the F-FPN on held-out test sets at several
geometries, with the targets of issue 15.

Test sets (never used in training or validation, see :mod:`problems.ct.images`):

* ``phantoms``: held-out CT-like phantoms ``rich_phantoms(n, 128, rng=default_rng(20_000 + seed))``;
* ``bsd68``: crops of the BSD68 test half, ``bsd68_crops("test", n, 128, seed=seed)`` (skipped with a note when
  the natural images are absent);
* ``shepp-logan``: the standard Shepp-Logan phantom (one image);
* ``ct-like``: CT-like slices of :func:`~problems.ct.images.ct_like_validation` (a generator the networks were never
  trained on, built from Hounsfield-unit templates and clinical display windows) with test seeds
  ``30_000 + seed`` (validation uses seed 1): the offline stand-in for real CT slices.

Geometries: :data:`problems.ct.train.VALIDATION_GEOMETRIES` by default (``par20, par30, par60, fan60``; any
``parN`` / ``fanN`` of :func:`problems.ct.train.geometry_by_name` is accepted). Sinograms
``y = A x + noise RMS(A x) e`` (:func:`problems.ct.train.simulate_batch`), ``e`` standard normal drawn from a
seed fixed per (test set, geometry), so every method sees the same data. Each method runs through
:func:`problems.ct.reconstruct.reconstruct` in batches of ``batch_size`` with ``noise=None`` (estimated from the
sinograms, as a user who does not know it) unless ``known_noise``; TV uses its tuned weight. Time per image: the
wall time of a method over all batches of a (test set, geometry) divided by the number of images (the networks'
TV reference included).

Targets (issue 15) per (geometry, test set), :func:`targets`: F-FPN PSNR at least TV + 1 dB at parallel beam
with 30 angles, TV + 0.5 dB elsewhere; F-FPN at or above the unrolled network; F-FPN faster per image than TV.

:func:`run_bench` computes the results (progress on ``log``), :func:`bench_table` / :func:`targets_table` render
them, :func:`bench_document` is the JSON of ``--json``; the figure is
:func:`problems.ct.figures.save_bench_figure`.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fpntools.errors import UserInputError
from fpntools.info import Status
from fpntools.metrics import psnr, ssim
from problems.ct.geometry import CTGeometry
from problems.ct.reconstruct import METHODS, load_network, reconstruct

__all__ = [
    "TEST_SETS",
    "BENCH_METHODS",
    "BenchConfig",
    "BenchResult",
    "FigurePanel",
    "geometry_name",
    "parse_geometries",
    "parse_methods",
    "parse_sets",
    "held_out_images",
    "required_margin",
    "run_bench",
    "targets",
    "bench_table",
    "targets_table",
    "bench_document",
]

#: test sets of the bench, in table order.
TEST_SETS = ("phantoms", "bsd68", "shepp-logan", "ct-like")
#: methods in table order.
BENCH_METHODS = ("fbp", "tv", "unrolled", "ffpn")
#: seed offset of the held-out phantoms (training and validation use other seeds).
PHANTOM_SEED_OFFSET = 20_000
#: seed offset of the held-out CT-like slices.
CT_LIKE_SEED_OFFSET = 30_000


# ============================================================================================ options
def _split(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split(","):
        p = part.strip().lower()
        if p and p not in out:
            out.append(p)
    return out


def _choose(text: str | Sequence[str], allowed: Sequence[str], order: Sequence[str], what: str, option: str
            ) -> list[str]:
    """The names of ``text`` (comma-separated or a sequence) in ``order``; unknown names or none: one line."""
    chosen = _split(text) if isinstance(text, str) else [t.strip().lower() for t in text]
    bad = [t for t in chosen if t not in allowed]
    if bad or not chosen:
        raise UserInputError(f"unknown {what}(s) {', '.join(bad) or repr(text)} in {option}; "
                             f"choose from {','.join(order)}")
    return [t for t in order if t in chosen]


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """``"fbp,tv"`` -> ``["fbp", "tv"]`` (table order); unknown names are a one-line :class:`UserInputError`."""
    return _choose(methods, METHODS, BENCH_METHODS, "method", "--methods")


def parse_sets(sets: str | Sequence[str]) -> list[str]:
    """``"phantoms,shepp-logan"`` -> the test sets (table order); unknown names: one-line error."""
    return _choose(sets, TEST_SETS, TEST_SETS, "test set", "--sets")


def geometry_name(g: CTGeometry) -> str:
    """``par30`` / ``fan60``: the beam and the number of angles (the names of ``--geometries``)."""
    return f"{'par' if g.beam == 'parallel' else 'fan'}{g.n_angles}"


def parse_geometries(text: str | Sequence[str], size: int = 128) -> dict[str, CTGeometry]:
    """``"par20,fan60"`` -> ``{name: geometry}`` (:func:`problems.ct.train.geometry_by_name`; the default
    names are those of :data:`problems.ct.train.VALIDATION_GEOMETRIES`); one-line error otherwise."""
    from problems.ct.train import geometry_by_name

    names = _split(text) if isinstance(text, str) else [n.strip().lower() for n in text]
    if not names:
        raise UserInputError("--geometries is empty; give e.g. par20,par30,par60,fan60")
    out: dict[str, CTGeometry] = {}
    for name in names:
        try:
            out[name] = geometry_by_name(name, size)
        except ValueError as exc:
            raise UserInputError(f"--geometries: {str(exc).splitlines()[0]}") from None
    return out


def default_geometries() -> str:
    """The names of :data:`problems.ct.train.VALIDATION_GEOMETRIES`, comma-separated."""
    from problems.ct.train import VALIDATION_GEOMETRIES

    return ",".join(geometry_name(g) for g in VALIDATION_GEOMETRIES)


def required_margin(g: CTGeometry) -> float:
    """PSNR margin (dB) of the F-FPN over TV that issue 15 asks for: 1 at parallel beam with 30 angles, else 0.5."""
    return 1.0 if g.beam == "parallel" and g.n_angles == 30 else 0.5


# ============================================================================================ config / data
@dataclass
class BenchConfig:
    """What :func:`run_bench` measures.

    Attributes:
        methods: a subset of :data:`BENCH_METHODS`.
        geometries: names ``parN`` / ``fanN`` (default: those of ``VALIDATION_GEOMETRIES``).
        sets: a subset of :data:`TEST_SETS`.
        n_test: images per test set (Shepp-Logan: always one).
        seed: seed of the test images and of the noise.
        noise: relative noise level of the simulated sinograms.
        known_noise: pass the true level to the methods (default: they estimate it from the sinograms).
        iters: TV's PDHG budget. filter: FBP filter (parallel beam).
        batch_size: images per reconstruction call.
        ffpn_weights, unrolled_weights: network weights (``None``: shipped).
        figure_geometry: geometry of the figure's reconstructions (used when it is among ``geometries``, else the
            first one).
        image_size: side of the test images and of the geometries (128 for the issue's bench; smaller for tests).
    """

    methods: list[str] = field(default_factory=lambda: list(BENCH_METHODS))
    geometries: list[str] = field(default_factory=lambda: default_geometries().split(","))
    sets: list[str] = field(default_factory=lambda: list(TEST_SETS))
    n_test: int = 16
    seed: int = 0
    noise: float = 0.015
    known_noise: bool = False
    iters: int = 500
    filter: str = "hann"
    batch_size: int = 16
    ffpn_weights: str | os.PathLike | None = None
    unrolled_weights: str | os.PathLike | None = None
    figure_geometry: str = "par30"
    image_size: int = 128

    def __post_init__(self) -> None:
        self.methods = parse_methods(self.methods)
        self.sets = parse_sets(self.sets)
        if int(self.image_size) != self.image_size or self.image_size < 8:
            raise UserInputError(f"--size must be an integer >= 8, got {self.image_size}")
        self.geometries = list(parse_geometries(self.geometries, self.image_size))
        if int(self.n_test) != self.n_test or self.n_test < 1:
            raise UserInputError(f"--n-test must be an integer >= 1, got {self.n_test}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise UserInputError(f"--batch-size must be an integer >= 1, got {self.batch_size}")
        if int(self.iters) != self.iters or self.iters < 1:
            raise UserInputError(f"--iters must be an integer >= 1, got {self.iters}")
        from problems.ct.baselines import FBP_FILTERS

        if self.filter not in FBP_FILTERS:
            raise UserInputError(f"unknown FBP filter {self.filter!r}; use one of {', '.join(FBP_FILTERS)}")
        if not (np.isfinite(self.noise) and 0 <= self.noise < 1):
            raise UserInputError(f"--noise must be a finite number in [0, 1), got {self.noise}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("ffpn_weights", "unrolled_weights"):
            d[k] = None if d[k] is None else str(d[k])
        return d


def held_out_images(sets: Sequence[str], n: int, seed: int = 0, size: int = 128,
                log: Callable[[str], None] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """The test images ``{set: (k, size, size) float32}`` of ``sets`` (module docstring) and the notes on sets
    that were skipped (BSD68 without the natural images)."""
    from problems.ct.images import bsd68_crops, ct_like_validation, natural_images_root, rich_phantoms
    from problems.ct.phantoms import shepp_logan

    out: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for name in sets:
        if name == "phantoms":
            out[name] = rich_phantoms(n, size, rng=np.random.default_rng(PHANTOM_SEED_OFFSET + seed))
        elif name == "bsd68":
            root = natural_images_root()
            if root is None or not (root / "BSD68").is_dir():
                notes.append("bsd68 skipped: the natural images (BSD68/) are absent; set FPNTOOLS_NATURAL_IMAGES")
                continue
            out[name] = bsd68_crops("test", n, size, seed=seed, root=root)
        elif name == "shepp-logan":
            out[name] = shepp_logan(size)[None]
        elif name == "ct-like":
            out[name] = ct_like_validation(n, size, seed=CT_LIKE_SEED_OFFSET + seed)
        else:  # pragma: no cover - parse_sets guards this
            raise UserInputError(f"unknown test set {name!r}")
        out[name] = np.ascontiguousarray(out[name], dtype=np.float32)
    for note in notes:
        (log or (lambda _m: None))(note)
    return out, notes


def _noise_seed(seed: int, set_name: str, geometry: str) -> int:
    """A fixed seed per (seed, test set, geometry)."""
    return zlib.crc32(f"ct-bench/{seed}/{set_name}/{geometry}".encode())


# ============================================================================================ results
@dataclass
class FigurePanel:
    """One row pair of the figure: a ground truth and each method's reconstruction."""

    label: str
    truth: np.ndarray
    recs: dict[str, np.ndarray]


@dataclass
class BenchResult:
    """``rows``: one dict per (geometry, test set, method) with ``psnr`` / ``psnr_std`` / ``ssim`` (means),
    ``psnr_per_image`` / ``ssim_per_image``, ``seconds_per_image``, ``steps`` (mean solver steps, ``None`` for
    FBP), ``fixed_steps``, ``converged`` (images whose solve met its tolerance), ``usable`` and ``warnings``.
    ``panels``: the figure's images; ``notes``: skipped test sets."""

    config: BenchConfig
    geometries: dict[str, CTGeometry]
    sets: dict[str, int]
    rows: list[dict[str, Any]]
    panels: list[FigurePanel]
    notes: list[str]
    figure_geometry: str

    def row(self, geometry: str, set_name: str, method: str) -> dict[str, Any] | None:
        for r in self.rows:
            if (r["geometry"], r["set"], r["method"]) == (geometry, set_name, method):
                return r
        return None


def _run_method(method: str, y: torch.Tensor, acq: Any, config: BenchConfig, noise: float | None,
                model: Any) -> tuple[torch.Tensor, float, list[float], int, bool, list[str]]:
    """Reconstruct ``y`` in batches: images, total seconds, per-image steps, converged count, usable, warnings."""
    images: list[torch.Tensor] = []
    steps: list[float] = []
    warnings: list[str] = []
    seconds, converged, usable = 0.0, 0, True
    for i in range(0, y.shape[0], config.batch_size):
        rec = reconstruct(method, y[i:i + config.batch_size], acq, noise=noise, iters=config.iters,
                          filter=config.filter, model=model)
        seconds += rec.seconds
        images.append(rec.images.detach())
        v = rec.verdict()
        usable = usable and v.usable
        warnings += v.problems + v.warnings
        if rec.info is not None:
            steps += rec.info.steps.double().flatten().tolist()
            converged += int((rec.info.sample_status == int(Status.CONVERGED)).sum())
    return torch.cat(images), seconds, steps, converged, usable, warnings


def run_bench(config: BenchConfig, cache_dir: str | os.PathLike | None = None,
              log: Callable[[str], None] | None = None) -> BenchResult:
    """Reconstruct every test set at every geometry with every method of ``config`` (module docstring);
    ``log`` gets one progress line per (geometry, test set, method).

    The networks are loaded (one-line error when the weights are missing or malformed) and the test images
    made before anything is reconstructed.
    """
    from problems.ct.acquisition import acquisition
    from problems.ct.train import simulate_batch

    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    geoms = parse_geometries(config.geometries, config.image_size)
    models = {m: load_network(m, config.ffpn_weights if m == "ffpn" else config.unrolled_weights)
              for m in config.methods if m in ("ffpn", "unrolled")}
    images, notes = held_out_images(config.sets, config.n_test, config.seed, config.image_size, log=say)
    if not images:
        raise UserInputError("no test set left to run (" + "; ".join(notes) + ")")
    fig_geom = config.figure_geometry if config.figure_geometry in geoms else next(iter(geoms))
    fig_sets = [s for s in ("bsd68", "shepp-logan") if s in images] or [next(iter(images))]
    say(f"ct bench: {', '.join(f'{k} ({v.shape[0]})' for k, v in images.items())} at {', '.join(geoms)}, noise "
        f"{config.noise:g} ({'known' if config.known_noise else 'estimated by each method'}); weights ready "
        f"({time.perf_counter() - t0:.1f} s)")
    total = len(geoms) * len(images) * len(config.methods)
    k = 0
    rows: list[dict[str, Any]] = []
    panels: list[FigurePanel] = []
    for gname, g in geoms.items():
        acq = acquisition(g, cache_dir=cache_dir)
        for sname, x_np in images.items():
            x = torch.from_numpy(x_np)
            gen = torch.Generator().manual_seed(_noise_seed(config.seed, sname, gname))
            e = torch.randn((x.shape[0], *g.sino_shape), generator=gen)
            y = simulate_batch(x, e, torch.full((x.shape[0],), float(config.noise)), acq)
            noise = float(config.noise) if config.known_noise else None
            in_figure = gname == fig_geom and sname in fig_sets
            panel = FigurePanel(f"{sname} test image 0, {gname}", x_np[0], {}) if in_figure else None
            for m in config.methods:
                k += 1
                rec, seconds, steps, converged, usable, warnings = _run_method(m, y, acq, config, noise,
                                                                               models.get(m))
                p, s = psnr(rec, x), ssim(rec, x)
                n = x.shape[0]
                row: dict[str, Any] = {
                    "geometry": gname, "set": sname, "method": m, "n": n,
                    "psnr": float(p.mean()), "psnr_std": float(p.std()) if n > 1 else 0.0, "ssim": float(s.mean()),
                    "psnr_per_image": [float(v) for v in p], "ssim_per_image": [float(v) for v in s],
                    "seconds": seconds, "seconds_per_image": seconds / n,
                    "steps": float(np.mean(steps)) if steps else None,
                    "fixed_steps": m == "unrolled",
                    "converged": converged if steps else None,
                    "usable": usable, "warnings": sorted(set(warnings)),
                }
                rows.append(row)
                if panel is not None:
                    panel.recs[m] = rec[0].cpu().numpy()
                say(f"[{k}/{total}] {gname} {sname} {m}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}, "
                    f"{row['seconds_per_image']:.3f} s/image"
                    + (f", {row['steps']:.1f} steps" if row["steps"] is not None else "")
                    + ("" if usable else " (NOT usable)"))
            if panel is not None:
                panels.append(panel)
    return BenchResult(config, geoms, {k_: v.shape[0] for k_, v in images.items()}, rows, panels, notes, fig_geom)


# ============================================================================================ targets
def targets(result: BenchResult) -> list[dict[str, Any]]:
    """Issue 15's targets per (geometry, test set): ``ffpn_minus_tv`` / ``ffpn_minus_unrolled`` (mean PSNR, dB),
    ``tv_over_ffpn_time`` (TV seconds per image / F-FPN seconds per image), ``required_margin``
    (:func:`required_margin`) and the booleans ``beats_tv``, ``beats_unrolled``, ``faster_than_tv`` and ``met``
    (all that could be checked hold); ``None`` where a method needed for a check was not run."""
    out: list[dict[str, Any]] = []
    for gname, g in result.geometries.items():
        for sname in result.sets:
            f = result.row(gname, sname, "ffpn")
            if f is None:
                continue
            tv, un = result.row(gname, sname, "tv"), result.row(gname, sname, "unrolled")
            margin = required_margin(g)
            t: dict[str, Any] = {"geometry": gname, "set": sname, "required_margin": margin,
                                 "ffpn_minus_tv": None, "ffpn_minus_unrolled": None, "tv_over_ffpn_time": None,
                                 "beats_tv": None, "beats_unrolled": None, "faster_than_tv": None}
            if tv is not None:
                t["ffpn_minus_tv"] = f["psnr"] - tv["psnr"]
                t["beats_tv"] = bool(t["ffpn_minus_tv"] >= margin)
                t["tv_over_ffpn_time"] = tv["seconds_per_image"] / max(f["seconds_per_image"], 1e-12)
                t["faster_than_tv"] = bool(f["seconds_per_image"] < tv["seconds_per_image"])
            if un is not None:
                t["ffpn_minus_unrolled"] = f["psnr"] - un["psnr"]
                t["beats_unrolled"] = bool(t["ffpn_minus_unrolled"] >= 0.0)
            checks = [t[k] for k in ("beats_tv", "beats_unrolled", "faster_than_tv") if t[k] is not None]
            t["met"] = bool(all(checks) and f["usable"]) if checks else None
            out.append(t)
    return out


def all_targets_met(result: BenchResult) -> bool | None:
    """Whether every target of :func:`targets` holds (``None`` when nothing could be checked)."""
    met = [t["met"] for t in targets(result) if t["met"] is not None]
    return all(met) if met else None


# ============================================================================================ output
def _yes_no(v: bool | None) -> str:
    return "-" if v is None else "[green]yes[/green]" if v else "[red]NO[/red]"


def _steps(r: dict[str, Any]) -> str:
    if r["steps"] is None:
        return "-"
    if r["fixed_steps"]:
        return f"{r['steps']:.0f} (fixed)"
    return f"{r['steps']:.1f} ({r['converged']}/{r['n']} conv.)"


def bench_table(result: BenchResult) -> Any:
    """A :class:`rich.table.Table`: geometry, test set, method, PSNR mean ± std, SSIM, s / image, fp steps."""
    from rich.table import Table

    c = result.config
    table = Table(title=f"CT bench: noise {c.noise:g} ({'known' if c.known_noise else 'estimated'}), "
                        f"batches of {c.batch_size}, TV {c.iters} iterations (tuned weight)")
    for col, just in (("geometry", "left"), ("test set", "left"), ("method", "left"), ("PSNR (dB)", "right"),
                      ("SSIM", "right"), ("s / image", "right"), ("fp steps", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    last = None
    for r in result.rows:
        key = (r["geometry"], r["set"])
        if last is not None and key != last:
            table.add_section()
        psnr_txt = f"{r['psnr']:.2f} ± {r['psnr_std']:.2f}" + ("" if r["usable"] else " (NOT usable)")
        table.add_row(r["geometry"] if key != last else "", f"{r['set']} ({r['n']})" if key != last else "",
                      r["method"], psnr_txt, f"{r['ssim']:.4f}", f"{r['seconds_per_image']:.3f}", _steps(r))
        last = key
    return table


def _failed(t: dict[str, Any]) -> str:
    """The targets of one :func:`targets` row that do not hold, in words."""
    out = []
    if t["beats_tv"] is False:
        out.append(f"TV +{t['required_margin']:g} dB")
    if t["beats_unrolled"] is False:
        out.append(">= unrolled")
    if t["faster_than_tv"] is False:
        out.append("faster than TV")
    return ", ".join(out)


def targets_table(result: BenchResult) -> Any:
    """A :class:`rich.table.Table` of :func:`targets` (``None`` when the F-FPN was not run)."""
    from rich.table import Table

    rows = targets(result)
    if not rows:
        return None
    table = Table(title="Targets of issue 15: F-FPN >= TV + 1 dB at par30 and + 0.5 dB elsewhere, >= unrolled, "
                        "faster than TV. All met: " + _yes_no(all_targets_met(result)))
    for col, just in (("geometry", "left"), ("test set", "left"), ("F-FPN − TV (dB)", "right"),
                      ("F-FPN − unrolled (dB)", "right"), ("F-FPN faster than TV", "right"), ("met", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for t in rows:
        d_tv = "-" if t["ffpn_minus_tv"] is None else f"{t['ffpn_minus_tv']:+.2f} (need {t['required_margin']:+.1f})"
        d_un = "-" if t["ffpn_minus_unrolled"] is None else f"{t['ffpn_minus_unrolled']:+.2f}"
        speed = "-" if t["tv_over_ffpn_time"] is None else f"{t['tv_over_ffpn_time']:.2f}x"
        met = _yes_no(t["met"]) + (f" (fails: {_failed(t)})" if t["met"] is False and _failed(t) else "")
        if t["met"] is False and not _failed(t):
            met += " (F-FPN output not usable)"
        table.add_row(t["geometry"], t["set"], d_tv, d_un, speed, met)
    return table


def bench_document(result: BenchResult) -> dict[str, Any]:
    """The JSON document of ``--json``: config, geometries, test sets (image counts), notes, rows (per-image
    PSNR / SSIM included), targets and whether all hold."""
    return {
        "config": result.config.to_dict(),
        "geometries": {k: v.to_dict() for k, v in result.geometries.items()},
        "sets": result.sets,
        "notes": result.notes,
        "figure_geometry": result.figure_geometry,
        "results": result.rows,
        "targets": targets(result),
        "all_targets_met": all_targets_met(result),
    }

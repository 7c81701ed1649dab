"""Quality of a detection: anatomical plausibility, review flags and the scan-level warning.

Qt-free and torch-free; ``Detector.detect`` calls :func:`review` after the fine passes, so the CLI,
the writers, the napari layer and the Slicer module all show the same thing. The review sees the
detector only through a :class:`Reviewer`: its landmark names, reference shape, a ``refine``
callable (the fine stage from given positions) and the bilateral pairs for ``fix_swapped_sides``.

Per landmark:

- **plausibility**: a robust similarity fit of the protocol's reference configuration
  (``model.shape``) to the *other* landmarks predicts where each one should be; the residual is
  in units of how far real people's landmarks lie from the fitted reference (``spread``).
  Implausible landmarks are re-localised (the fine stage again, from the predicted position) and
  the better-supported answer is kept (heatmap sharpness, weighted by plausibility).
- **agreement under test-time variation**: one more fine pass on a gamma-changed copy of the
  image, started a few mm away from the answer; a landmark the network really sees comes back
  to the same place.
- **confidence** in [0, 1] combines heatmap sharpness, that agreement and the plausibility
  residual; ``needs_review`` is True when the confidence is below :data:`REVIEW_BELOW`, the
  residual is large, or the image itself is not the kind the model was made for.

Per image (``image_warning``, ``""`` when fine): intensity statistics (CT Hounsfield values,
a windowed CT's bone shell, no dark background), field of view and voxel size (thick slices,
low resolution, a slab too thin for the head, a body-sized field), and the detection (a
configuration no brain has, a network that finds no landmark).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import DGLandmarkError
from ..io.landmarks import Landmarks
from ..io.volume import Volume
from .pipeline import Source, crop_source, fix_swapped_sides
from .preprocess import percentiles
from .resample import grid_around, resample_array
from .shape import ShapeModel, load_shape_model

# ----------------------------------------------------------------------------- per-landmark settings
RELOCALISE_ABOVE = 3.0  # plausibility residual (units of spread) above which a landmark is searched again
RELOCALISE_MIN_MM = 4.0  # ... and at least this far (mm) from its prediction
PLAUSIBILITY_SIGMA = 3.0  # spreads: the plausibility weight of an answer is exp(-0.5 (r / sigma)^2)
TTA_GAMMA = 0.7  # gamma of the test-time copy of the image
TTA_SHIFT_MM = 2.5  # the test-time fine pass starts this far from the answer
TTA_SIGMA_MM = 2.0  # agreement exp(-0.5 (d / sigma)^2)
PLAUSIBLE_MM = 3.0  # residuals up to this many mm cost nothing ...
PLAUSIBLE_SCALE_MM = 4.0  # ... beyond, exp(-0.5 (excess / max(this, spread))^2)
FIT_MEDIAN_OK = 1.0  # median residual (spreads) of a good detection: ~0.2-0.9 on real brain MRIs
FIT_MEDIAN_SCALE = 0.7
REVIEW_BELOW = 0.6  # needs_review below this confidence (train split: ~5 % of landmarks within 2 mm flagged)
REVIEW_RESIDUAL = 4.0  # ... or the plausibility residual is above this many spreads

# ----------------------------------------------------------------------------- image-level settings
CT_AIR_HU = -500.0  # CT air is about -1000 HU; MR intensities are never this negative
CT_AIR_FRACTION = 0.02
MAX_SLICE_MM = 6.0  # thicker slices cannot resolve the landmarks
# two or more axes at least this coarse: diffusion / functional-like resolution (EPI: 2.5-4 mm). Real
# structural scans at 2 mm (fast protocols, low field, downsampled archives; 1 x 1 x 3, 0.4 x 0.4 x 1.5 mm)
# are below it: they are judged by their detection (``detection_warning``), not by the voxel size.
LOW_RES_MM = 2.4
THIN_MARGIN_MM = 30.0  # the image must be at least the landmarks' smallest extent + this along every axis
BODY_FOV_MM = 350.0  # two axes longer than this: a body, not a head
MIN_BACKGROUND = 0.25  # dark voxels around the head: real head MRIs 0.47-0.91, uniform noise 0.10
MAX_CLIPPED = 0.03  # share of the head at exactly the maximum value: real MRIs < 0.001 (bone in a CT window)
HOLLOW_RADIUS_MM = 35.0  # ball around the head centre that holds brain in every head MRI
MAX_HOLLOW = 0.15  # real brain MRIs: <= 0.05 of that ball as dark as the background; a bone-window CT 0.26
SCALE_RANGE = (0.7, 1.4)  # similarity scale of the reference onto the landmarks (adult brains 0.79-1.01)
IMPLAUSIBLE_FRACTION = 0.3  # more than this fraction of landmarks implausible: not a brain's configuration
MIN_MEDIAN_SHARPNESS = 0.08  # median heatmap sharpness below this: the network finds no landmark


#: the fine stage from given positions: (source, positions, rotation, indices=None, iterations=None)
#: -> (positions, fine confidences); ``Detector.refine``
Refine = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass
class DetectionState:
    """What ``Detector.detect`` knows before the quality review (positions LPS mm)."""

    source: Source
    coarse_positions: np.ndarray
    coarse_confidence: np.ndarray
    positions: np.ndarray
    fine_confidence: np.ndarray
    rotation: np.ndarray  # head frame -> image (identity without a canonical frame)


@dataclass
class Assessment:
    """Everything the review computed (LPS mm; per landmark in the detector's order)."""

    positions: np.ndarray
    sharpness: np.ndarray  # sqrt(coarse * fine heatmap confidence): today's confidence
    tta_distance_mm: np.ndarray
    residual: np.ndarray  # plausibility residual in units of spread (0 without a shape model)
    residual_mm: np.ndarray
    relocalised: np.ndarray  # bool: the re-localised answer was kept
    confidence: np.ndarray
    needs_review: np.ndarray
    image_warning: str = ""
    scale: float = float("nan")  # similarity scale of the reference onto the landmarks
    details: dict = field(default_factory=dict)


def protocol_shape(names: Sequence[str], own: ShapeModel | None, protocol: str) -> ShapeModel | None:
    """The model's own reference configuration (``own``), else the protocol's shipped shape model,
    reordered to the model's landmarks ``names``; None when neither covers every landmark."""
    if own is not None:
        return own
    try:
        shape = load_shape_model(protocol) if protocol else None
    except DGLandmarkError:
        return None
    if shape is None:
        return None
    index = {n.casefold(): i for i, n in enumerate(shape.names)}
    try:
        order = [index[n.casefold()] for n in names]
    except KeyError:
        return None
    head = shape.head_center
    return ShapeModel(list(names), shape.reference[order], shape.spread[order], shape.source, head)


@dataclass
class Reviewer:
    """What the review needs from a detector (no detector object: no import cycle)."""

    names: list[str]
    model_name: str
    shape: ShapeModel | None  # ``protocol_shape``: the configuration plausibility is judged against
    refine: Refine
    side_pairs: list[tuple[int, int]]  # (right, left) rows for ``pipeline.fix_swapped_sides``
    reach_mm: float | None = None  # how far a fine patch reads (``pipeline.fine_reach_mm``): crops the TTA copy
    assessment: Assessment | None = None  # set by ``review``: the last detection's full assessment


def plausibility(shape: ShapeModel, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(predicted positions, residual in spreads, residual mm, scale) of a robust similarity fit."""
    fit, res_mm = shape.fit(positions)
    predicted = fit.apply(shape.reference)
    return predicted, res_mm / np.maximum(shape.spread, 0.5), res_mm, float(fit.scale)


def _support(sharpness: np.ndarray, residual: np.ndarray) -> np.ndarray:
    return sharpness * np.exp(-0.5 * (residual / PLAUSIBILITY_SIGMA) ** 2)


def relocalise(refine: Refine, state: DetectionState, shape: ShapeModel, pos: np.ndarray,
               fine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Search implausible landmarks again from their predicted positions; keep the better-supported
    answer. Returns (positions, fine confidences, kept-new mask)."""
    pos, fine = pos.copy(), fine.copy()
    kept = np.zeros(len(pos), bool)
    predicted, residual, res_mm, _ = plausibility(shape, pos)
    bad = np.flatnonzero((residual > RELOCALISE_ABOVE) & (res_mm > RELOCALISE_MIN_MM))
    if not len(bad):
        return pos, fine, kept
    new_pos, new_fine = refine(state.source, predicted[bad], state.rotation, indices=bad)
    coarse = state.coarse_confidence[bad]
    new_res = np.linalg.norm(new_pos - predicted[bad], axis=1) / np.maximum(shape.spread[bad], 0.5)
    old_support = _support(np.sqrt(coarse * fine[bad]), residual[bad])
    new_support = _support(np.sqrt(coarse * np.clip(new_fine, 0, 1)), new_res)
    better = new_support > old_support
    pos[bad[better]] = new_pos[better]
    fine[bad[better]] = np.clip(new_fine[better], 0, 1)
    kept[bad[better]] = True
    return pos, fine, kept


def _tta_offsets(n: int) -> np.ndarray:
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) / np.sqrt(3)
    return TTA_SHIFT_MM * corners[np.arange(n) % 8]


def test_time_distance(refine: Refine, state: DetectionState, pos: np.ndarray,
                       reach_mm: float | None = None) -> np.ndarray:
    """mm between each answer and one fine pass on a gamma-changed image started a few mm away
    (with ``reach_mm``, only the part of the image the patches read is gamma-changed: the same values)."""
    start = pos + _tta_offsets(len(pos)) @ state.rotation.T
    source = state.source if reach_mm is None else crop_source(state.source, start, reach_mm)
    image = np.power(np.clip(source.image, 0, 1), np.float32(TTA_GAMMA), dtype=np.float32)
    source = replace(source, image=image)
    again, _ = refine(source, start, state.rotation, iterations=1)
    return np.linalg.norm(again - pos, axis=1)


def calibrated_confidence(sharpness: np.ndarray, tta_mm: np.ndarray, residual: np.ndarray,
                          residual_mm: np.ndarray | None = None, spread: np.ndarray | None = None) -> np.ndarray:
    """Confidence in [0, 1]: heatmap sharpness x agreement under test-time variation x plausibility.

    Plausibility has three parts: the residual in units of real people's spread, the residual in
    mm (beyond :data:`PLAUSIBLE_MM`, on the scale of the larger of :data:`PLAUSIBLE_SCALE_MM` and the
    spread), and how well the configuration as a whole fits (the median residual: when many
    landmarks are off, none of them can be trusted much).
    """
    residual = np.asarray(residual, float)
    agreement = np.exp(-0.5 * (np.asarray(tta_mm, float) / TTA_SIGMA_MM) ** 2)
    plausible = np.exp(-0.5 * (np.maximum(residual - 1.0, 0) / PLAUSIBILITY_SIGMA) ** 2)
    if residual_mm is not None:
        scale = np.maximum(PLAUSIBLE_SCALE_MM, np.ones_like(residual) if spread is None else spread)
        plausible = plausible * np.exp(-0.5 * (np.maximum(np.asarray(residual_mm) - PLAUSIBLE_MM, 0) / scale) ** 2)
    fit = float(np.median(residual)) if residual.size else 0.0
    whole = np.exp(-0.5 * (max(0.0, fit - FIT_MEDIAN_OK) / FIT_MEDIAN_SCALE) ** 2)
    return np.clip(np.sqrt(np.clip(sharpness, 0, 1)) * agreement * plausible * whole, 0, 1)


# ----------------------------------------------------------------------------- the image

def hollow_fraction(source: Source, radius_mm: float = HOLLOW_RADIUS_MM) -> float:
    """Share of a ball around the head centre that is as dark as the background (normalised < 0.05).

    Inside a head MRI is brain (any contrast, skull-stripped or not); a CT in a bone window shows
    the brain as dark as air.
    """
    n = int(np.ceil(2 * radius_mm / 2.0)) + 2
    grid = grid_around(source.center, 2.0, (n, n, n))
    values = resample_array(source.image, source.geometry, grid)[0, 0]
    offsets = (np.indices(values.shape) - (n - 1) / 2) * 2.0
    ball = np.sqrt((offsets ** 2).sum(0)) < radius_mm
    return float(np.mean(values[ball] < 0.05))


def image_statistics_warning(volume: Volume, source: Source | None = None, shape: ShapeModel | None = None) -> str:
    """Why the image (by its voxels and geometry alone) is not a head MRI; ``""`` when it may be."""
    arr = volume.array
    flat = arr.reshape(-1)
    sample = flat[:: max(1, flat.size // 2_000_000)].astype(np.float32)
    sample = sample[np.isfinite(sample)]
    spacing = np.asarray(volume.spacing, float)
    fov = np.asarray(volume.geometry.size, float) * spacing
    mm = " x ".join(f"{v:.0f}" for v in fov)
    vox = " x ".join(f"{v:.3g}" for v in spacing)
    air = float(np.mean(sample < CT_AIR_HU)) if sample.size else 0.0
    if air > CT_AIR_FRACTION and float(sample.max()) > 300:
        return (f"CT-like intensities ({100 * air:.0f} % of voxels below {CT_AIR_HU:g}, Hounsfield air): "
                "the model is for MRI")
    if spacing.max() > MAX_SLICE_MM:
        return f"voxels {vox} mm: slices too thick to resolve the landmarks"
    if np.sum(spacing >= LOW_RES_MM) >= 2:
        return f"voxels {vox} mm: lower resolution than structural MRI (diffusion or functional image?)"
    if np.sum(fov > BODY_FOV_MM) >= 2:
        return f"field of view {mm} mm is larger than a head (body scan?)"
    if shape is not None:
        extent = np.ptp(shape.reference, axis=0)
        need = float(extent.min()) + THIN_MARGIN_MM
        if fov.min() < need:
            return f"field of view {mm} mm: a slab too thin to hold the head's landmarks (needs >= {need:.0f} mm)"
    if sample.size:
        lo, hi = percentiles(sample, [0.5, 99.5])
        dark = float(np.mean(sample <= lo + 0.1 * (hi - lo))) if hi > lo else 1.0
        if dark < MIN_BACKGROUND:
            return (f"no dark background around a head (only {100 * dark:.0f} % dark voxels): "
                    "noise, or not a head image")
        bright = sample[sample > lo + 0.1 * (hi - lo)]
        clipped = float(np.mean(bright == sample.max())) if bright.size else 0.0
        if clipped > MAX_CLIPPED:
            return (f"{100 * clipped:.0f} % of the head is clipped at the brightest value "
                    "(a windowed CT's bone?): the model is for MRI")
    if source is not None:
        hollow = hollow_fraction(source)
        if hollow > MAX_HOLLOW:
            return (f"the inside of the head is as dark as the background ({100 * hollow:.0f} % of the central "
                    f"{2 * HOLLOW_RADIUS_MM:g} mm): a CT in a bone window, or not a head MRI")
    return ""


def detection_warning(sharpness: np.ndarray, residual: np.ndarray, scale: float, has_shape: bool) -> str:
    """Why the detection itself says the image is not a head MRI; ``""`` when it looks like one."""
    med = float(np.median(sharpness))
    if med < MIN_MEDIAN_SHARPNESS:
        return f"the model finds no clear landmark (median heatmap confidence {med:.2f})"
    if has_shape:
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            return f"the landmarks form a configuration {scale:.2f} x the size of an adult brain's"
        bad = int(np.sum(residual > REVIEW_RESIDUAL))
        if bad > IMPLAUSIBLE_FRACTION * len(residual):
            return f"the landmarks do not form a brain's configuration ({bad} of {len(residual)} implausible)"
    return ""


# ----------------------------------------------------------------------------- the whole review

def assess(reviewer: Reviewer, volume: Volume, state: DetectionState) -> Assessment:
    """Plausibility, re-localisation, test-time agreement, confidence, flags and the image warning."""
    shape = reviewer.shape
    pos, fine = state.positions.copy(), state.fine_confidence.copy()
    n = len(pos)
    kept = np.zeros(n, bool)
    residual, res_mm, scale = np.zeros(n), np.zeros(n), float("nan")
    if shape is not None:
        pos, fine, kept = relocalise(reviewer.refine, state, shape, pos, fine)
        if kept.any():
            pos, fine = fix_swapped_sides(pos, fine, state.rotation, reviewer.side_pairs)
        _, residual, res_mm, scale = plausibility(shape, pos)
    sharpness = np.sqrt(state.coarse_confidence * fine)
    tta = test_time_distance(reviewer.refine, state, pos, reviewer.reach_mm)
    confidence = calibrated_confidence(sharpness, tta, residual, res_mm, None if shape is None else shape.spread)
    warning = image_statistics_warning(volume, state.source, shape) or detection_warning(sharpness, residual, scale,
                                                                           shape is not None)
    flags = (confidence < REVIEW_BELOW) | (residual > REVIEW_RESIDUAL)
    if warning:
        flags[:] = True
    details = {"coarse_confidence": state.coarse_confidence, "fine_confidence": fine,
               "coarse_to_fine_mm": np.linalg.norm(pos - state.coarse_positions, axis=1)}
    return Assessment(pos, sharpness, tta, residual, res_mm, kept, confidence, flags, warning, scale, details)


def review(reviewer: Reviewer, volume: Volume, state: DetectionState) -> Landmarks:
    """The detection as ``Landmarks`` with calibrated confidences, ``needs_review`` and ``image_warning``
    (the full :class:`Assessment` stays on ``reviewer.assessment`` for benchmarks)."""
    result = assess(reviewer, volume, state)
    reviewer.assessment = result
    n = len(result.positions)
    return Landmarks(list(reviewer.names), result.positions, confidence=result.confidence,
                     status=["predicted"] * n, image=volume.path, model=reviewer.model_name,
                     needs_review=result.needs_review, placed_by=["model"] * n,
                     image_warning=result.image_warning)

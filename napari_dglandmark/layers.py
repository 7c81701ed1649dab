"""Volume / Landmarks <-> napari layer data tuples; pure numpy, no napari or Qt import.

World-coordinate convention (the one used by every napari layer of this plugin):
    napari world axes are physical LPS millimetres in reversed order, i.e.
    ``world = (z_lps, y_lps, x_lps) = LPS[::-1]`` (superior, posterior, left).
- An image layer holds the volume's voxels ([k, j, i]) on a grid napari can slice: untouched
  when the scan's axes run along L, P, S (flips allowed), else transposed (sagittal / coronal
  storage) or resampled (oblique scans) onto an LPS-aligned grid in the same physical space
  (:mod:`.io.display`). Its ``affine`` is that grid's index->LPS matrix with the three spatial
  rows and columns reversed (data axes (k, j, i) -> world (z, y, x)): scale, translation and
  flips, never a rotation. The original voxels and geometry stay in the metadata for detection.
- A points layer holds ``LPS[:, ::-1]`` with an identity transform, so it overlays any
  image layer made here, whatever the image's grid.
In napari's default 2D view the last two world axes are shown: rows = posterior (down),
columns = patient left (right), i.e. an axial slice in radiological orientation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import DGLandmarkError
from .io.display import display_volume
from .io.landmarks import REVIEWED, Landmarks, normalise_name
from .io.landmarks import placed_by as placed_by  # noqa: F401 - the table widget's per-row "placed by"
from .io.volume import Geometry, Volume, lps_to_ras
from .protocols import Protocol, available_protocols, load_protocol

#: ``metadata["dglandmark_kind"]`` of the layers made here
KIND_KEY = "dglandmark_kind"
#: fallback colours (no protocol), assigned by a landmark's position in the name list
PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
           "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
           "#808000", "#ffd8b1", "#000075", "#808080")
BORDER_NORMAL = "#000000"
#: "check this" is a shape, never a colour: any protocol colour (red included) stays readable under it
SYMBOL_NORMAL = "disc"
SYMBOL_REVIEW = "star"
BORDER_REVIEW = "#ffffff"
BORDER_WIDTH_NORMAL = 0.1  # relative to the point size
#: thin: a thick white outline ate the star's colour, and over a bright 3D rendering the outline vanishes
BORDER_WIDTH_LOW_CONFIDENCE = 0.06
#: a star covers about a third of the disc of the same size: flagged points are drawn this much larger
REVIEW_SIZE_SCALE = 1.5
POINT_SIZE = 4.0  # mm
#: the smallest a landmark marker is drawn in the small coronal/sagittal canvases (pixels; 3-4 px were specks).
#: Not on the main canvas: there a point beside the slice is drawn shrunk, and a floor would make it look on it
MIN_MARKER_PX = 9
LayerDataTuple = tuple[Any, dict[str, Any], str]
_REVERSE = np.array([2, 1, 0])


def lps_to_world(points: np.ndarray) -> np.ndarray:
    """LPS mm (..., 3) -> napari world coordinates (..., 3) = LPS reversed."""
    return np.asarray(points, dtype=float)[..., ::-1].copy()


def world_to_lps(points: np.ndarray) -> np.ndarray:
    """napari world coordinates (..., 3) -> LPS mm (..., 3)."""
    return np.asarray(points, dtype=float)[..., ::-1].copy()


def napari_affine(geometry: Geometry) -> np.ndarray:
    """4x4 affine from napari data axes (k, j, i) to world (z, y, x) mm."""
    m = geometry.index_to_physical_matrix()
    out = np.eye(4)
    out[:3, :3] = m[:3, :3][np.ix_(_REVERSE, _REVERSE)]
    out[:3, 3] = m[:3, 3][_REVERSE]
    return out


def geometry_from_napari_affine(shape: Sequence[int], affine: np.ndarray) -> Geometry:
    """The Geometry whose ``napari_affine`` is ``affine`` (for image layers not made here)."""
    a = np.asarray(affine, dtype=float)
    m = a[:3, :3][np.ix_(_REVERSE, _REVERSE)]  # columns: i, j, k axes in LPS
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        raise DGLandmarkError("image layer has a degenerate affine (zero spacing)")
    return Geometry(tuple(int(s) for s in shape[-3:]), tuple(float(s) for s in spacing),
                    tuple(float(o) for o in a[:3, 3][_REVERSE]), m / spacing)


def image_layer_data(volume: Volume, name: str | None = None) -> LayerDataTuple:
    """``(array, kwargs, "image")`` placing the volume in world mm (see module docstring).

    napari slices only along data axes, so a scan stored sagittally or obliquely is shown on an
    LPS-aligned grid in the same physical space (:func:`..io.display.display_volume`: transposed, or
    resampled when oblique); ``metadata["display"]`` says which. The original voxels and geometry stay
    in the metadata (``source_voxels``, ``spacing``, ``origin``, ``direction``): detection uses those.
    """
    g = volume.geometry
    arr = volume.array
    shown = display_volume(volume)
    finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
    lo, hi = (np.percentile(finite[:: max(1, finite.size // 2_000_000)], [0.5, 99.9])
              if finite.size else (0.0, 1.0))
    if hi <= lo:
        lo, hi = float(np.min(finite, initial=0)), float(np.max(finite, initial=1))
        hi = hi if hi > lo else lo + 1.0
    metadata = {
        KIND_KEY: "volume",
        "path": volume.path,
        "spacing": tuple(g.spacing),
        "origin": tuple(g.origin),
        "direction": g.direction.tolist(),
        "display": {"how": shown.how, "note": shown.describe(),
                    "obliquity_degrees": round(shown.rotation_degrees, 3),
                    "geometry": geometry_metadata(shown.geometry)},
    }
    if shown.array is not arr:
        metadata["source_voxels"] = arr  # the layer shows a reoriented/resampled copy; detection uses these
    kwargs = {
        "name": name or volume.name,
        "affine": napari_affine(shown.geometry),
        "colormap": "gray",
        # one slice, never a slab average: napari 0.9 returns an empty slab along flipped axes
        "projection_mode": "none",
        "contrast_limits": (float(lo), float(hi)),
        "metadata": metadata,
    }
    return shown.array, kwargs, "image"


def display_note(metadata: Mapping[str, Any] | None) -> str:
    """How an image layer made here shows its scan ("" for other layers)."""
    return str(((metadata or {}).get("display") or {}).get("note") or "")


def volume_from_image_layer(data: np.ndarray, metadata: Mapping[str, Any] | None = None,
                            affine: np.ndarray | None = None) -> Volume:
    """The Volume behind an image layer: the original voxels and geometry from our metadata (never the
    display copy of a reoriented or resampled scan), else the layer's data and affine."""
    meta = dict(metadata or {})
    arr = np.asarray(meta["source_voxels"] if meta.get(KIND_KEY) == "volume" and meta.get("source_voxels")
                     is not None else data)
    if arr.ndim != 3:
        raise DGLandmarkError(f"image layer is {arr.ndim}D; a 3D volume is needed")
    if meta.get(KIND_KEY) == "volume":
        geometry = Geometry(arr.shape, tuple(meta["spacing"]), tuple(meta["origin"]),
                            np.asarray(meta["direction"], dtype=float))
    else:
        geometry = geometry_from_napari_affine(arr.shape, np.eye(4) if affine is None else affine)
    return Volume(arr, geometry, meta.get("path"))


def guess_protocol(names: Sequence[str]) -> Protocol | None:
    """The bundled protocol that knows every name (most landmarks wins), or None."""
    best: tuple[int, Protocol] | None = None
    for pname in available_protocols():
        try:
            protocol = load_protocol(pname)
        except DGLandmarkError:
            continue  # not a protocol (a data file beside them), or a broken one: it cannot be the match
        try:
            for n in names:
                protocol.index_of(n)
        except KeyError:
            continue
        if best is None or len(protocol) > best[0]:
            best = (len(protocol), protocol)
    return best[1] if best else None


def landmark_colors(names: Sequence[str], protocol: Protocol | None = None) -> np.ndarray:
    """(N, 4) RGBA in [0, 1]: the protocol's colour per name, else a palette colour by position."""
    out = np.ones((len(names), 4))
    for n, name in enumerate(names):
        rgb = None
        if protocol is not None:
            try:
                rgb = protocol.color_rgb(name)
            except KeyError:
                rgb = None
        if rgb is None:
            code = PALETTE[n % len(PALETTE)].lstrip("#")
            rgb = tuple(int(code[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
        out[n, :3] = rgb
    return out


def _as_protocol(protocol: Protocol | str | None) -> Protocol | None:
    if protocol is None or isinstance(protocol, Protocol):
        return protocol
    return load_protocol(protocol)


def review_flags(landmarks: Landmarks, flags: Mapping[str, bool] | None = None) -> np.ndarray:
    """Per row: did the model flag this landmark for review?

    ``flags`` (name -> flag, e.g. kept in a layer's metadata) wins; then ``Landmarks.needs_review``
    when the core provides it; else a finite confidence below ``io.landmarks.LOW_CONFIDENCE`` (``Landmarks.review_flags``).
    """
    out = landmarks.review_flags()
    if flags:
        keyed = {normalise_name(k): bool(v) for k, v in flags.items()}
        out = np.array([keyed.get(normalise_name(n), bool(out[i])) for i, n in enumerate(landmarks.names)],
                       dtype=bool)
    return out.reshape(len(landmarks))


def pending_review(landmarks: Landmarks, flags: Mapping[str, bool] | None = None) -> np.ndarray:
    """Per row: flagged for review, has a position, and no person has verified, moved or placed it yet."""
    touched = np.array([s in REVIEWED for s in landmarks.status], dtype=bool)
    return review_flags(landmarks, flags) & landmarks.defined & ~touched


def implausible_detection_warning(landmarks: Landmarks) -> str:
    """A warning when the model flagged every landmark it placed (no plausible detection); "" otherwise."""
    flags = landmarks.review_flags() & landmarks.defined
    n = int(landmarks.defined.sum())
    if n < 3 or int(flags.sum()) < n:
        return ""
    conf = np.asarray(landmarks.confidence, dtype=float)[landmarks.defined]
    best = f", confidence at most {np.nanmax(conf):.2f}" if np.isfinite(conf).any() else ""
    return (f"the model flagged every landmark ({n} of {n}{best}): this detection is not plausible on this "
            "image (is it the kind of scan the model was made for?). Check each landmark before using any, "
            "or adapt the model to these scans.")


def review_counts(landmarks: Landmarks, flags: Mapping[str, bool] | None = None) -> tuple[int, int, int]:
    """(verified, total, still needing review) for the review counter."""
    verified = sum(s == "verified" for s in landmarks.status)
    return verified, len(landmarks), int(pending_review(landmarks, flags).sum())


def review_summary(landmarks: Landmarks, flags: Mapping[str, bool] | None = None) -> str:
    """``"7 of 32 verified, 3 need review"``."""
    verified, total, pending = review_counts(landmarks, flags)
    return f"{verified} of {total} verified, {pending} need{'s' if pending == 1 else ''} review"


def review_order(landmarks: Landmarks, flags: Mapping[str, bool] | None = None) -> list[int]:
    """Row indices worst first: still needing review, then missing, then the rest; lower confidence first."""
    pending = pending_review(landmarks, flags)
    conf = np.asarray(landmarks.confidence, dtype=float)
    conf = np.where(np.isfinite(conf), conf, np.inf)

    def key(i: int) -> tuple[int, float, int]:
        group = 0 if pending[i] else 1 if not landmarks.defined[i] else 2
        return group, float(conf[i]), i

    return sorted(range(len(landmarks)), key=key)


def next_for_review(landmarks: Landmarks, current: str | None, flags: Mapping[str, bool] | None = None,
                    order: Sequence[int] | None = None) -> str | None:
    """The next landmark (after ``current``, wrapping) that still needs review; None when none.

    ``order`` is the table's row order (e.g. :func:`review_order` for *Worst first*); default: landmark order.
    """
    pending = pending_review(landmarks, flags)
    rows = list(range(len(landmarks)) if order is None else order)
    if not pending.any():
        return None
    try:
        start = rows.index(landmarks.index_of(current)) + 1 if current else 0
    except (KeyError, ValueError):
        start = 0
    for step in range(len(rows)):
        i = rows[(start + step) % len(rows)]
        if pending[i]:
            return landmarks.names[i]
    return None


def marker_style(landmarks: Landmarks, rows: np.ndarray, flags: Mapping[str, bool] | None = None,
                 size: float = POINT_SIZE) -> dict[str, Any]:
    """Symbol, border colour and width, and size for the points of ``rows`` (a larger star while review is
    pending, so it shows as much colour as a disc)."""
    pending = pending_review(landmarks, flags)[rows]
    border = np.tile(np.array([0.0, 0.0, 0.0, 1.0]), (len(rows), 1))
    border[pending] = [1.0, 1.0, 1.0, 1.0]
    return {"symbol": np.where(pending, SYMBOL_REVIEW, SYMBOL_NORMAL),
            "border_color": border,
            "border_width": np.where(pending, BORDER_WIDTH_LOW_CONFIDENCE, BORDER_WIDTH_NORMAL),
            "size": np.where(pending, size * REVIEW_SIZE_SCALE, size)}


def points_layer_data(landmarks: Landmarks, protocol: Protocol | str | None = None, *,
                      name: str | None = None, image: str | None = None, model_sha256: str | None = None,
                      size: float = POINT_SIZE, needs_review: Mapping[str, bool] | None = None) -> LayerDataTuple:
    """``(data, kwargs, "points")``: one point per defined landmark, named by the ``landmark`` feature.

    Missing landmarks get no point; their names stay in ``metadata["landmark_names"]`` so they
    come back as ``missing`` from :func:`landmarks_from_points`. The model's review flags are kept
    by name in ``metadata["needs_review"]`` (edits never change what the model flagged).
    """
    protocol = _as_protocol(protocol)
    defined = landmarks.defined
    idx = np.flatnonzero(defined)
    names = [landmarks.names[i] for i in idx]
    conf = np.asarray(landmarks.confidence, dtype=float)[idx]
    flags = review_flags(landmarks, needs_review)
    status = [landmarks.status[i] if landmarks.status[i] != "missing" else "defined" for i in idx]
    style = marker_style(landmarks, idx, needs_review, size)
    kwargs = {
        "name": name or "landmarks",
        "features": {"landmark": names, "confidence": conf, "status": status},
        "feature_defaults": {"landmark": "", "confidence": np.nan, "status": "added"},
        "face_color": landmark_colors(names, protocol) if names else "white",
        "border_color": style["border_color"] if names else BORDER_NORMAL,
        "border_width": style["border_width"],
        "border_width_is_relative": True,
        "symbol": style["symbol"] if names else SYMBOL_NORMAL,
        "size": style["size"] if names else size,
        # text offsets are in world mm, not screen pixels: a diagonal shift clears the disc in every view
        "text": {"string": "{landmark}", "color": "white", "size": 9, "anchor": "upper_left",
                 "translation": [0.6 * size] * 3},
        "metadata": {
            KIND_KEY: "landmarks",
            "protocol": protocol.name if protocol else None,
            "image": image or landmarks.image,
            "model": landmarks.model,
            "model_sha256": model_sha256,
            "landmark_names": list(landmarks.names),
            "descriptions": dict(zip(landmarks.names, landmarks.descriptions, strict=True)),
            "needs_review": {n: bool(f) for n, f in zip(landmarks.names, flags, strict=True)},
            "image_warning": landmarks.image_warning,
        },
    }
    return lps_to_world(landmarks.positions[idx]).reshape(-1, 3), kwargs, "points"


def _column(features: Any, key: str, n: int, default: Any) -> list:
    if features is None:
        return [default] * n
    try:
        values = features[key]
    except (KeyError, IndexError, TypeError):
        return [default] * n
    values = list(values.tolist() if hasattr(values, "tolist") else values)
    if len(values) != n:
        raise ValueError(f"feature {key!r} has {len(values)} values for {n} points")
    return values


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip()


def landmarks_from_points(data: np.ndarray, features: Any = None,
                          metadata: Mapping[str, Any] | None = None) -> Landmarks:
    """Landmarks from a points layer: names from the ``landmark`` feature (never from order).

    Names listed in ``metadata["landmark_names"]`` without a point come back ``missing``;
    rows follow that list, then any new names in point order.
    """
    pts = np.asarray(data, dtype=float).reshape(-1, 3)
    meta = dict(metadata or {})
    n = len(pts)
    names = _column(features, "landmark", n, None)
    for k, value in enumerate(names):
        if _blank(value):
            raise DGLandmarkError(f"point {k + 1} has no landmark name (set its 'landmark' feature)")
    names = [str(v).strip() for v in names]
    conf = np.array([np.nan if _blank(c) else float(c) for c in _column(features, "confidence", n, np.nan)])
    status = ["defined" if _blank(s) or s == "missing" else str(s) for s in _column(features, "status", n, None)]
    lps = world_to_lps(pts)
    keys = [normalise_name(x) for x in names]
    dupes = sorted({x for x, k in zip(names, keys, strict=True) if keys.count(k) > 1})
    if dupes:
        raise DGLandmarkError(f"several points are named {', '.join(dupes)}; each landmark needs one point")
    by_key = {k: i for i, k in enumerate(keys)}
    descriptions = {normalise_name(k): v for k, v in (meta.get("descriptions") or {}).items()}
    order: list[str] = []
    seen: set[str] = set()
    for name in list(meta.get("landmark_names") or []) + names:
        key = normalise_name(name)
        if key not in seen:
            seen.add(key)
            order.append(names[by_key[key]] if key in by_key else str(name))
    out_pos, out_conf, out_status, out_desc = [], [], [], []
    for name in order:
        key = normalise_name(name)
        i = by_key.get(key)
        out_desc.append(str(descriptions.get(key, "")))
        if i is None:
            out_pos.append([np.nan] * 3)
            out_conf.append(np.nan)
            out_status.append("missing")
        else:
            out_pos.append(lps[i])
            out_conf.append(conf[i])
            out_status.append(status[i])
    return Landmarks(order, np.array(out_pos, dtype=float).reshape(-1, 3), out_desc, np.array(out_conf),
                     out_status, image=meta.get("image"), model=meta.get("model"))


def protocol_of(metadata: Mapping[str, Any] | None, names: Sequence[str] = ()) -> Protocol | None:
    """The protocol named in a layer's metadata, else the one that knows ``names``."""
    pname = (metadata or {}).get("protocol")
    if pname:
        try:
            return load_protocol(pname)
        except DGLandmarkError:
            pass
    return guess_protocol(names) if names else None


def landmark_table_rows(landmarks: Landmarks) -> list[tuple[str, str, float, float, float, float]]:
    """(name, status, confidence, R, A, S) per landmark, positions RAS mm (NaN when missing)."""
    ras = lps_to_ras(landmarks.positions)
    return [(name, landmarks.status[i], float(landmarks.confidence[i]), *map(float, ras[i]))
            for i, name in enumerate(landmarks.names)]


def measurement_rows(landmarks: Landmarks, protocol: Protocol | None) -> list[tuple[str, str, str, float]]:
    """(measurement, from, to, mm) for the protocol's measurements; NaN when an endpoint is missing."""
    if protocol is None:
        return []
    values = protocol.measure(landmarks)
    return [(m.name, m.a, m.b, values[m.name]) for m in protocol.measurements]


def format_mm(value: float, digits: int = 1) -> str:
    """A distance or coordinate for display; ``missing`` for NaN (never 0)."""
    return "missing" if not np.isfinite(value) else f"{value:.{digits}f}"


def geometry_metadata(geometry: Geometry) -> dict[str, Any]:
    """A JSON-able description of the image grid, kept in a points layer so exports can give i,j,k."""
    return {"shape": [int(s) for s in geometry.shape], "spacing": [float(s) for s in geometry.spacing],
            "origin": [float(o) for o in geometry.origin], "direction": np.asarray(geometry.direction).tolist()}


def geometry_from_metadata(metadata: Mapping[str, Any] | None) -> Geometry | None:
    """The image grid stored by :func:`geometry_metadata` in a layer's metadata, or None."""
    g = (metadata or {}).get("geometry")
    if not g:
        return None
    return Geometry(tuple(g["shape"]), tuple(g["spacing"]), tuple(g["origin"]), np.asarray(g["direction"], dtype=float))


# -- orientation ---------------------------------------------------------------------------
#: the low and high end letter of each world axis (world = LPS reversed: S, P, L increase)
AXIS_LETTERS = (("I", "S"), ("A", "P"), ("R", "L"))
#: plane -> (napari dims order, camera orientation2d): radiological, superior up, anterior left
PLANES: dict[str, tuple[tuple[int, int, int], tuple[str, str]]] = {
    "axial": ((0, 1, 2), ("down", "right")),
    "coronal": ((1, 0, 2), ("up", "right")),
    "sagittal": ((2, 0, 1), ("up", "right")),
}


def orientation_letters(displayed: Sequence[int], orientation2d: Sequence[str]) -> dict[str, str]:
    """``{"top": "A", "bottom": "P", "left": "R", "right": "L"}`` for two displayed world axes (rows, columns)."""
    rows, cols = (int(a) for a in displayed[-2:])
    vertical, horizontal = (str(getattr(o, "value", o)) for o in orientation2d)
    lo_r, hi_r = AXIS_LETTERS[rows]
    lo_c, hi_c = AXIS_LETTERS[cols]
    top, bottom = (lo_r, hi_r) if vertical == "down" else (hi_r, lo_r)
    left, right = (lo_c, hi_c) if horizontal == "right" else (hi_c, lo_c)
    return {"top": top, "bottom": bottom, "left": left, "right": right}


def orientation_label_points(displayed: Sequence[int], orientation2d: Sequence[str], lower: Sequence[float],
                             upper: Sequence[float], point: Sequence[float], margin: float = 6.0
                             ) -> tuple[np.ndarray, list[str]]:
    """World positions (4, 3) just outside the image edges, and their letters (top, bottom, left, right).

    ``lower``/``upper`` are the image's world extent; ``point`` the current slice position.
    """
    rows, cols = (int(a) for a in displayed[-2:])
    letters = orientation_letters(displayed, orientation2d)
    lo, hi, centre = np.asarray(lower, float), np.asarray(upper, float), np.asarray(point, float).copy()
    mid = (lo + hi) / 2
    vertical_down = str(getattr(orientation2d[0], "value", orientation2d[0])) == "down"
    horizontal_right = str(getattr(orientation2d[1], "value", orientation2d[1])) == "right"
    top_v = lo[rows] - margin if vertical_down else hi[rows] + margin
    bottom_v = hi[rows] + margin if vertical_down else lo[rows] - margin
    left_v = lo[cols] - margin if horizontal_right else hi[cols] + margin
    right_v = hi[cols] + margin if horizontal_right else lo[cols] - margin
    out = np.tile(centre, (4, 1))
    out[:, rows] = [top_v, bottom_v, mid[rows], mid[rows]]
    out[:, cols] = [mid[cols], mid[cols], left_v, right_v]
    return out, [letters["top"], letters["bottom"], letters["left"], letters["right"]]

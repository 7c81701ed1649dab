"""DICOM folders (and single multi-frame files) as 3D volumes, never stacking what is not one volume.

Every image slice (a classic file, or a frame of an enhanced multi-frame file) is put in a group by
series, echo, image/frame type, stack, orientation and matrix. A group is a 3D volume only when
its slices have one position each, evenly spaced along the slice normal (no gaps, no tilt). A
folder with exactly one such volume is read; with several, or with none, the error lists what
the folder holds and how to choose one (``series=`` / ``--series``).

Geometry is computed here from the DICOM tags (LPS, as DICOM): origin = ImagePositionPatient of
the first slice, axes = the row and column cosines of ImageOrientationPatient and their cross
product, spacing = PixelSpacing (column spacing along i) and the slice step.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DGLandmarkError
from .geometry import Geometry, Volume
from .rawfile import first_reason

_ENHANCED_MARKER = "PerFrameFunctionalGroupsSequence"
_POSITION_TOL = 0.01  # mm: two slices closer than this along the normal share a position
_SPACING_TOL = 0.02  # relative spread of slice steps still counted as uniform
_GEOMETRY_TOL = 1e-3  # direction cosines / mm: slices further apart in orientation or pixel size differ
_TILT_TOL = 0.02  # relative in-plane drift of slice positions (gantry tilt / shear) still accepted


@dataclass
class _Slice:
    """One 2D image: a classic file or one frame of an enhanced file."""

    file: Path
    frame: int | None
    series_uid: str
    series_number: str
    description: str
    echo: str
    echo_time: str
    image_type: str
    stack: str
    orientation: tuple[float, ...]
    position: np.ndarray
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    slope: float = 1.0
    intercept: float = 0.0


@dataclass
class _Group:
    """Slices that would make one volume if their positions allow it."""

    slices: list[_Slice]
    id: str = ""
    short_id: str = ""  # the same with the SeriesNumber in place of the UID
    problem: str | None = None  # why this is not a 3D volume; None when it is one
    ordered: list[_Slice] = field(default_factory=list)  # sorted along the normal
    step: float = 0.0

    @property
    def first(self) -> _Slice:
        return self.slices[0]

    def describe(self) -> str:
        s = self.first
        parts = [f"series {s.series_number or '?'}"]
        if s.description:
            parts.append(repr(s.description))
        if s.echo:
            parts.append(f"echo {s.echo}" + (f" (TE {s.echo_time} ms)" if s.echo_time and s.echo_time != s.echo else ""))
        if s.image_type:
            parts.append(s.image_type)
        size = f"{s.columns}x{s.rows}x{len(self.slices)}"
        what = f"{size} volume" if self.problem is None else \
            f"{len(self.slices)} image(s) of {s.columns}x{s.rows}: {self.problem}"
        alias = f" (or {self.short_id})" if self.short_id != self.id else ""
        return f"{self.id}{alias} = {' '.join(parts)}, {what}"


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "/".join(str(v) for v in value)
    return str(value).strip()


def _item(ds: object, per_frame: object | None, sequence: str) -> object | None:
    """The first item of a functional group sequence, per-frame first, then shared."""
    for holder in (per_frame, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if holder is not None and sequence in holder and len(holder[sequence].value):
            return holder[sequence].value[0]
    return None


def _float_list(value: object, n: int, what: str, path: Path) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n or not np.all(np.isfinite(out)):
        raise DGLandmarkError(f"DICOM {what} is missing or invalid ({value!r})", path)
    return out


def _slices_of(path: Path, ds: object) -> list[_Slice]:
    """The 2D images a dataset holds (several for an enhanced multi-frame file)."""
    common = {
        "file": path, "series_uid": _text(ds.get("SeriesInstanceUID")),
        "series_number": _text(ds.get("SeriesNumber")), "description": _text(ds.get("SeriesDescription")),
        "rows": int(ds.Rows), "columns": int(ds.Columns),
    }
    frames = int(ds.get("NumberOfFrames") or 1)
    if _ENHANCED_MARKER not in ds:
        if frames > 1:
            raise DGLandmarkError(f"multi-frame DICOM ({frames} frames) without per-frame positions; "
                                  "export the series as classic single-frame DICOM", path)
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise DGLandmarkError("DICOM image without ImagePositionPatient / ImageOrientationPatient "
                                  "(not a cross-sectional image)", path)
        return [_Slice(
            frame=None, echo=_text(ds.get("EchoNumbers") or ds.get("EchoTime")), echo_time=_text(ds.get("EchoTime")),
            image_type=_text(ds.get("ImageType")), stack="",
            orientation=_float_list(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path),
            position=np.array(_float_list(ds.ImagePositionPatient, 3, "ImagePositionPatient", path)),
            pixel_spacing=_float_list(ds.get("PixelSpacing"), 2, "PixelSpacing", path),
            slope=float(ds.get("RescaleSlope") or 1.0), intercept=float(ds.get("RescaleIntercept") or 0.0),
            **common)]
    per_frame = ds[_ENHANCED_MARKER].value
    if len(per_frame) != frames:
        raise DGLandmarkError(f"enhanced DICOM with {frames} frames but {len(per_frame)} per-frame groups", path)
    out = []
    for n, group in enumerate(per_frame):
        position = _item(ds, group, "PlanePositionSequence")
        orientation = _item(ds, group, "PlaneOrientationSequence")
        measures = _item(ds, group, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise DGLandmarkError(f"enhanced DICOM frame {n + 1} has no plane position / orientation / pixel "
                                  "spacing", path)
        content = _item(ds, group, "FrameContentSequence")
        echo = _item(ds, group, "MREchoSequence")
        frame_type = next((item for item in (_item(ds, group, s) for s in (
            "MRImageFrameTypeSequence", "CTImageFrameTypeSequence", "ImageFrameTypeSequence")) if item), None)
        scaling = _item(ds, group, "PixelValueTransformationSequence")
        out.append(_Slice(
            frame=n, echo=_text(echo.get("EffectiveEchoTime")) if echo is not None else "", echo_time="",
            image_type=_text(frame_type.get("FrameType")) if frame_type is not None else _text(ds.get("ImageType")),
            stack=_text(content.get("StackID")) if content is not None else "",
            orientation=_float_list(orientation.ImageOrientationPatient, 6, "ImageOrientationPatient", path),
            position=np.array(_float_list(position.ImagePositionPatient, 3, "ImagePositionPatient", path)),
            pixel_spacing=_float_list(measures.get("PixelSpacing"), 2, "PixelSpacing", path),
            slope=float(scaling.get("RescaleSlope") or 1.0) if scaling is not None else 1.0,
            intercept=float(scaling.get("RescaleIntercept") or 0.0) if scaling is not None else 0.0,
            **common))
    return out


def _dicom_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files.extend(Path(root) / n for n in sorted(names) if n.upper() != "DICOMDIR")
    return files


def _read_slices(path: Path) -> tuple[list[_Slice], list[str]]:
    """Every image slice below ``path``, and one note per kind of image file that cannot be a slice."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    slices: list[_Slice] = []
    unusable: dict[str, list[Path]] = defaultdict(list)
    for file in _dicom_files(path):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError):
            if path.is_file():
                raise DGLandmarkError("not a readable DICOM file", file) from None
            continue  # other files in a DICOM folder (notes, thumbnails) are not ours to judge
        if "Rows" not in ds or "Columns" not in ds:
            continue  # structured reports, presentation states, ...
        try:
            if int(ds.get("SamplesPerPixel") or 1) != 1:
                raise DGLandmarkError(f"pixel type is {ds.get('PhotometricInterpretation', 'colour')}, not a "
                                      "scalar intensity", file)
            slices.extend(_slices_of(file, ds))
        except DGLandmarkError as exc:
            if path.is_file():
                raise DGLandmarkError(f"{str(exc).removeprefix(str(file) + ': ')}; a grey-value 3D volume is needed",
                                      file) from None
            unusable[str(exc).removeprefix(str(file) + ": ")].append(file)
    notes = [f"{len(files)} file(s) like {files[0].name}: {reason}" for reason, files in unusable.items()]
    return slices, notes


def _group_slices(slices: list[_Slice]) -> list[_Group]:
    groups: dict[tuple, list[list[_Slice]]] = defaultdict(list)
    for s in slices:
        key = (s.series_uid, s.echo, s.image_type, s.stack, s.rows, s.columns)
        geometry = np.array(s.orientation + s.pixel_spacing)
        # orientation and pixel spacing are compared with a tolerance (scanners write float noise)
        for members in groups[key]:
            if np.abs(np.array(members[0].orientation + members[0].pixel_spacing) - geometry).max() < _GEOMETRY_TOL:
                members.append(s)
                break
        else:
            groups[key].append([s])
    out = [_Group(members) for subgroups in groups.values() for members in subgroups]
    by_series: dict[str, list[_Group]] = defaultdict(list)
    for g in out:
        by_series[g.first.series_uid].append(g)
    for uid, members in by_series.items():
        members.sort(key=lambda g: (g.first.echo, g.first.image_type, g.first.stack, g.first.orientation))
        for n, g in enumerate(members, 1):
            suffix = "" if len(members) == 1 else f"#{n}"
            g.id, g.short_id = uid + suffix, (g.first.series_number or uid) + suffix
    for g in out:
        _check_volume(g)
    return sorted(out, key=lambda g: (g.first.series_number.zfill(12), g.id))


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    return np.cross(row, col)


def _check_volume(group: _Group) -> None:
    """Set ``problem`` (None when the slices make a 3D volume) and the slice order and step."""
    n = len(group.slices)
    if n < 3:
        group.problem = "a single image" if n == 1 else f"only {n} images"
        return
    normal = _normal(group.first.orientation)
    if not 0.99 < np.linalg.norm(normal) < 1.01:
        group.problem = "invalid ImageOrientationPatient"
        return
    along = np.array([s.position @ normal for s in group.slices])
    order = np.argsort(along, kind="stable")
    along = along[order]
    distinct = np.concatenate([[True], np.diff(along) > _POSITION_TOL])
    positions = int(distinct.sum())
    if positions < n:
        if n % positions == 0:
            group.problem = f"{n // positions} images at each of {positions} positions (4D or repeated series)"
        else:
            group.problem = f"{n - positions} images share a position with another"
        return
    steps = np.diff(along)
    step = float((along[-1] - along[0]) / (n - 1))
    if np.max(np.abs(steps - step)) > _SPACING_TOL * step:
        group.problem = (f"non-uniform slice spacing ({steps.min():.3g} to {steps.max():.3g} mm: missing slices "
                         "or several volumes)")
        return
    positions3 = np.array([group.slices[i].position for i in order])
    drift = positions3 - positions3[0] - np.outer(along - along[0], normal)
    if np.max(np.linalg.norm(drift, axis=1)) > _TILT_TOL * step * (n - 1):
        group.problem = "slices are not stacked along their normal (gantry tilt or sheared stack)"
        return
    group.ordered = [group.slices[i] for i in order]
    group.step = step


def _choose(groups: list[_Group], notes: list[str], series: str | None, path: Path) -> _Group:
    volumes = [g for g in groups if g.problem is None]
    listing = "; ".join([g.describe() for g in groups] + notes)
    if series is not None:
        wanted = series.strip()
        match = [g for g in groups if wanted in (g.id, g.short_id, g.first.series_number, g.first.series_uid)]
        if len(match) > 1:
            match = [g for g in match if wanted in (g.id, g.short_id)]
        if len(match) != 1:
            raise DGLandmarkError(f"no single DICOM volume matches series {wanted!r}; the folder holds: {listing}",
                                  path)
        if match[0].problem is not None:
            raise DGLandmarkError(f"series {wanted!r} is not a 3D volume: {match[0].describe()}", path)
        return match[0]
    if len(volumes) == 1:
        return volumes[0]
    if not volumes:
        raise DGLandmarkError(f"no 3D volume in this DICOM data; it holds: {listing}", path)
    raise DGLandmarkError(f"the DICOM data holds {len(volumes)} 3D volumes; choose one with series= "
                          f"(CLI: --series ID): {listing}", path)


def _rescaled(array: np.ndarray, slopes: list[float], intercepts: list[float]) -> np.ndarray:
    if all(s == 1.0 for s in slopes) and all(i == 0.0 for i in intercepts):
        return array
    out = array.astype(np.float32)
    out *= np.asarray(slopes, np.float32)[:, None, None]
    out += np.asarray(intercepts, np.float32)[:, None, None]
    return out


def _pixels(group: _Group) -> np.ndarray:
    """The group's voxels (k, j, i), rescaled to real values; classic files through GDCM."""
    import SimpleITK as sitk

    ordered = group.ordered
    if ordered[0].frame is None:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(s.file) for s in ordered])
        try:
            array = sitk.GetArrayFromImage(reader.Execute())  # GDCM applies each file's rescale
        except RuntimeError as exc:
            raise DGLandmarkError(f"cannot read DICOM pixels: {first_reason(str(exc))}", ordered[0].file) from None
    else:
        import pydicom

        try:
            frames = pydicom.dcmread(ordered[0].file).pixel_array
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for undecodable pixel data
            raise DGLandmarkError(f"cannot decode DICOM pixel data ({exc.__class__.__name__}: {exc})",
                                  ordered[0].file) from None
        frames = frames.reshape(-1, ordered[0].rows, ordered[0].columns)
        array = _rescaled(frames[[s.frame for s in ordered]], [s.slope for s in ordered],
                          [s.intercept for s in ordered])
    expected = (len(ordered), ordered[0].rows, ordered[0].columns)
    if array.shape != expected:
        raise DGLandmarkError(f"DICOM pixels have shape {array.shape}, the headers say {expected}", ordered[0].file)
    return array


def read_dicom(path: Path, series: str | None = None) -> Volume:
    """The one 3D volume of a DICOM folder or multi-frame file (``series`` picks one of several)."""
    slices, notes = _read_slices(path)
    if not slices:
        if notes:
            raise DGLandmarkError(f"no DICOM image that can be part of a 3D volume: {'; '.join(notes)}", path)
        raise DGLandmarkError("folder holds no DICOM series", path)
    group = _choose(_group_slices(slices), notes, series, path)
    first = group.ordered[0]
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    direction = np.column_stack([row, col, _normal(first.orientation)])
    array = _pixels(group)
    # PixelSpacing is (between rows, between columns): the i axis (along a row) uses the second value
    spacing = (first.pixel_spacing[1], first.pixel_spacing[0], group.step)
    geometry = Geometry(array.shape, spacing, tuple(float(v) for v in first.position), direction)
    return Volume(array, geometry, str(path))

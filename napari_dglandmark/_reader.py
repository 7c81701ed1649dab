"""napari readers: volumes and landmark files, calling the core only."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import DGLandmarkError
from .io import LANDMARK_SUFFIXES, read_landmarks, read_volume
from .io.volume import is_volume_file
from .layers import LayerDataTuple, image_layer_data, points_layer_data, protocol_of

ReaderFunction = Callable[[str | Sequence[str]], list[LayerDataTuple]]


def _notify(exc: DGLandmarkError) -> None:
    """Show the one-line reason in napari (no-op without napari)."""
    try:
        from napari.utils.notifications import show_error
    except ImportError:
        return
    show_error(str(exc))


def _notify_and_raise(exc: DGLandmarkError) -> None:
    """napari wraps reader errors in a generic message; show the one-line reason as well."""
    try:
        _notify(exc)
    finally:
        raise exc


def _is_dicom_folder(path: Path) -> bool:
    """A folder with at least one DICOM file (by suffix or by the DICM preamble), in it or below it."""
    if not path.is_dir():
        return False
    children = (Path(root) / name for root, _dirs, names in os.walk(path) for name in names)
    for n, child in enumerate(children):
        if n > 200:
            break
        if child.is_file():
            if child.suffix.lower() in (".dcm", ".ima"):
                return True
            try:
                with open(child, "rb") as fh:
                    head = fh.read(132)
            except OSError:
                continue
            if head[128:132] == b"DICM":
                return True
    return False


def _is_landmark_csv(path: Path) -> bool:
    """A CSV whose header has landmark,x,y,z (other CSVs are left to other readers)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    cols = {h.strip().lower() for h in header}
    return {"landmark", "x", "y", "z"} <= cols


def _claims(path: str) -> str | None:
    """``"volume"``, ``"landmarks"`` or None for a path we do not read."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "volume" if _is_dicom_folder(p) else None
    if is_volume_file(name):
        return "volume"
    if name.endswith(".csv"):
        return "landmarks" if _is_landmark_csv(p) else None
    if any(name.endswith(s) for s in LANDMARK_SUFFIXES):
        return "landmarks"
    return None


def napari_get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Our reader for a volume, a DICOM folder or a landmark file; None for anything else."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or any(_claims(str(p)) is None for p in paths):
        return None
    return read_paths


def read_paths(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """Layer data for each path (image layers for volumes, points layers for landmark files).

    A file that cannot be read is reported on its own (one line naming it); the others still open.
    Only when none opens is the (first) error raised.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out: list[LayerDataTuple] = []
    failed: list[DGLandmarkError] = []
    for p in paths:
        try:
            out.append(read_volume_layer(str(p)) if _claims(str(p)) == "volume" else read_landmark_layer(str(p)))
        except DGLandmarkError as exc:
            failed.append(exc)
    if failed and not out:
        for exc in failed[1:]:
            _notify(exc)
        _notify_and_raise(failed[0])
    for exc in failed:
        _notify(exc)
    return out


def dicom_volume_choices(path: str) -> list[tuple[str, str]]:
    """(series id, description) of each 3D volume a DICOM folder holds (several: the user chooses)."""
    from .io.dicom import _group_slices, _read_slices  # the core's own grouping, so ids match read_volume's

    slices, _notes = _read_slices(Path(path))
    groups = [g for g in _group_slices(slices) if g.problem is None]
    return [(g.id, g.describe().split(" = ", 1)[-1]) for g in groups]


def ask_series(path: str, choices: list[tuple[str, str]]) -> str | None:
    """The volume the user picks (a dialog; module level, so tests can answer it); None = cancelled."""
    from ._widgets.series import choose_series

    return choose_series(path, choices)


def read_volume_layer(path: str, series: str | None = None) -> LayerDataTuple:
    """Image layer data of one volume file or DICOM folder; a folder holding several volumes asks which one."""
    try:
        volume = read_volume(path, series)
    except DGLandmarkError as exc:
        if series is not None or not Path(path).is_dir() or "choose one with series=" not in str(exc):
            raise
        choices = dicom_volume_choices(path)
        if len(choices) < 2:
            raise
        chosen = ask_series(path, choices)
        if chosen is None:
            raise DGLandmarkError(f"not opened: it holds {len(choices)} 3D volumes and none was chosen",
                                  path) from None
        volume = read_volume(path, chosen)
        label = dict(choices)[chosen]
        data, kwargs, kind = image_layer_data(volume, f"{Path(path).name} {label.split(',')[0]}")
        kwargs["metadata"]["series"] = chosen
        return data, kwargs, kind
    return image_layer_data(volume)


def read_landmark_layer(path: str) -> LayerDataTuple:
    """Points layer data of one landmark file (protocol guessed from the names)."""
    landmarks = read_landmarks(path)
    protocol = protocol_of(None, landmarks.names)
    if protocol is not None:
        landmarks = protocol.conform(landmarks, path)
    name = Path(path).name
    for suffix in LANDMARK_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    data, kwargs, kind = points_layer_data(landmarks, protocol, name=name)
    kwargs["metadata"]["source"] = str(path)
    return data, kwargs, kind

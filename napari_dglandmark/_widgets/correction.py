"""Live correction of a landmark points layer: names stay with their points, statuses follow edits.

One :class:`Corrector` per landmark layer (see :func:`corrector_for`). It listens to the layer's
``events.data`` (napari 0.9 actions ``added`` / ``changed`` / ``removed``), names newly placed points
after the landmark selected in the table, feeds every edit through the Qt-free
:class:`~napari_dglandmark.session.CorrectionSession` (statuses, undo) and autosaves the sidecar.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from ..errors import DGLandmarkError
from ..io.landmarks import Landmarks, normalise_name
from ..io.volume import strip_volume_suffix
from ..layers import (
    geometry_from_metadata,
    landmarks_from_points,
    marker_style,
    next_for_review,
    pending_review,
    points_layer_data,
    protocol_of,
    review_flags,
    review_order,
)
from ..session import CorrectionSession, export_all, export_paths, next_name, save_sidecar
from . import remember_folder, unwrap, working_folder

#: (key, what it does): bound on each landmark layer; none is a napari default for points layers
SHORTCUTS = (("N", "next landmark that needs review (else the next one)"), ("B", "previous landmark"),
             ("Y", "accept the current landmark (verified) and go to the next"), ("U", "undo the last change"))
AUTOSAVE_MS = 500
#: landmark labels: white over slices; in 3D (one label, over a bright rendering) a saturated magenta that
#: reads on white and on black
LABEL_COLOR_2D, LABEL_COLOR_3D = "white", "#ff00ff"
LABEL_SIZE_2D, LABEL_SIZE_3D = 9, 13
_CORRECTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ask(question: str, title: str = "napari-dglandmark") -> bool:
    """A Yes/No question (module level, so tests can answer it)."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(None, title, question, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes


def choose(question: str, options: tuple[str, ...], default: str, title: str = "napari-dglandmark") -> str:
    """One of ``options`` (button texts); ``default`` when the dialog is closed (module level: tests answer it)."""
    from qtpy.QtWidgets import QMessageBox

    box = QMessageBox(QMessageBox.Question, title, question)
    buttons = {box.addButton(option, QMessageBox.AcceptRole if option != default else QMessageBox.RejectRole): option
               for option in options}
    for button, option in buttons.items():
        if option == default:
            box.setDefaultButton(button)
            box.setEscapeButton(button)
    box.exec()
    return buttons.get(box.clickedButton(), default)


def ask_save_path(caption: str, start: str = "") -> str | None:
    """A file name for an export (module level, so tests can answer it)."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(
        None, caption, start, "Landmarks NAME.csv + NAME_measurements.csv + NAME.mrk.json (*.csv)")
    return path or None


def _show(kind: str, message: str) -> None:
    from napari.utils import notifications

    getattr(notifications, f"show_{kind}")(message)


def corrector_for(layer: Any, viewer: Any = None, session: CorrectionSession | None = None) -> Corrector:
    """The layer's Corrector (made on first use); ``session`` replaces its state when given."""
    layer, viewer = unwrap(layer), unwrap(viewer)
    corrector = _CORRECTORS.get(layer)
    if corrector is None:
        corrector = Corrector(layer, viewer, session)
        _CORRECTORS[layer] = corrector
    else:
        if viewer is not None and corrector.viewer is None:
            corrector.attach_viewer(viewer)
        if session is not None:
            corrector.replace(session)
    return corrector


def existing_corrector(layer: Any) -> Corrector | None:
    return _CORRECTORS.get(unwrap(layer))


#: viewers whose N/B/Y/U also work while another layer (the image) is selected
_KEYED_VIEWERS: weakref.WeakSet = weakref.WeakSet()
NO_LANDMARKS_HINT = "N, B, Y and U review a landmark layer: detect landmarks or open a landmark file first"


def bind_review_keys(viewer: Any) -> None:
    """N/B/Y/U on the viewer too: with the image layer selected they act on the current landmark layer
    (and select it), with no landmark layer they say why nothing happens."""
    viewer = unwrap(viewer)
    if viewer in _KEYED_VIEWERS:
        return
    _KEYED_VIEWERS.add(viewer)
    for key, method in zip("nbyu", ("next", "previous", "accept", "undo"), strict=True):
        viewer.bind_key(key, lambda v, _m=method: _review_key(v, _m), overwrite=True)
    # an image layer's own Y (napari: orient the 3D plane along y) would come first: Y accepts there too
    for layer in viewer.layers:
        _bind_image_accept(viewer, layer)
    viewer.layers.events.inserted.connect(lambda event: _bind_image_accept(viewer, event.value))


def _bind_image_accept(viewer: Any, layer: Any) -> None:
    from napari.layers import Image

    if isinstance(layer, Image):
        layer.bind_key("y", lambda _layer: _review_key(viewer, "accept"), overwrite=True)


def _review_key(viewer: Any, method: str) -> None:
    from . import current_landmark_layer

    viewer = unwrap(viewer)
    layer = current_landmark_layer(viewer)
    if layer is None:
        _show("info", NO_LANDMARKS_HINT)
        return
    viewer.layers.selection.active = layer
    try:
        corrector = corrector_for(layer, viewer)
    except DGLandmarkError as exc:  # a landmark layer the review cannot read (e.g. an unnamed point)
        _show("warning", str(exc))
        return
    getattr(corrector, method)()


class Corrector:
    """Keeps a landmark layer's names and statuses right while a person edits it."""

    def __init__(self, layer: Any, viewer: Any = None, session: CorrectionSession | None = None) -> None:
        self._layer = weakref.ref(layer)
        self.viewer = None
        landmarks = landmarks_from_points(layer.data, layer.features, layer.metadata)
        self.protocol = protocol_of(layer.metadata, landmarks.names)
        meta = layer.metadata
        self.session = session or CorrectionSession(
            landmarks, image=meta.get("image"), model=meta.get("model"), model_sha256=meta.get("model_sha256"),
            protocol=self.protocol.name if self.protocol else None)
        self.current: str | None = None
        #: what the model flagged, by name (kept in the layer metadata; edits never change it)
        self.flags: dict[str, bool] = dict(meta.get("needs_review") or {}) or {
            n: bool(f) for n, f in zip(landmarks.names, review_flags(landmarks), strict=True)}
        #: names (normalised) of landmarks the user has looked at (selected)
        self.visited: set[str] = set()
        #: N follows the table's *Worst first* order (set by the table) instead of the landmark order
        self.worst_first = False
        self._warned_unvisited = False
        #: called with the current landmark name whenever it changes or the landmarks change
        self.listeners: list[Callable[[str | None], None]] = []
        self.ask: Callable[[str], bool] | None = None
        self.ask_save_path: Callable[[str, str], str | None] | None = None
        self.autosaved: Path | None = None
        self._autosave_warned = False
        self._busy = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(self.save_now)
        layer.events.data.connect(self._on_data)
        layer.mouse_drag_callbacks.append(self._gesture)
        for key, action in zip("nbyu", (self.next, self.previous, self.accept, self.undo), strict=True):
            layer.bind_key(key, lambda _layer, _action=action: _action(), overwrite=True)
        if session is not None:
            self._write_layer(session.landmarks)
        if viewer is not None:
            self.attach_viewer(viewer)

    @property
    def layer(self) -> Any:
        return self._layer()

    @property
    def names(self) -> list[str]:
        return list(self.session.landmarks.names)

    def attach_viewer(self, viewer: Any) -> None:
        self.viewer = unwrap(viewer)
        # 'removed' carries the layer itself; an index looked up in 'removing' can name another layer
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.dims.events.ndisplay.connect(self._update_labels)
        bind_review_keys(self.viewer)
        self._update_labels()

    def _ask(self, question: str) -> bool:
        return (self.ask or ask)(question)

    # -- edits -------------------------------------------------------------------------------
    def _gesture(self, layer: Any, event: Any):
        """Mouse drag callback: every step of one drag is one undo entry."""
        self.session.begin_gesture()
        yield
        while event.type == "mouse_move":
            yield
        self.session.end_gesture()

    def _on_data(self, event: Any) -> None:
        action = str(getattr(event, "action", ""))
        if self._busy or action not in ("added", "changed", "removed") or self.layer is None:
            return
        self._busy = True
        try:
            if action == "added":
                self._name_new_points(getattr(event, "data_indices", ()) or ())
            layer = self.layer
            try:
                new = landmarks_from_points(layer.data, layer.features, layer.metadata)
            except DGLandmarkError as exc:
                _show("warning", str(exc))
                return
            result = self.session.edit(new)
            if action == "changed":
                self._write_statuses(result)
            else:
                self._write_layer(result)
        finally:
            self._busy = False
        self._changed()

    def _point_of(self, name: str, skip: int | None = None) -> int | None:
        key = normalise_name(name)
        for i, value in enumerate(self.layer.features["landmark"]):
            if i != skip and isinstance(value, str) and value.strip() and normalise_name(value) == key:
                return i
        return None

    def _first_missing(self) -> str | None:
        lms = self.session.landmarks
        for i, name in enumerate(lms.names):
            if not lms.defined[i] and self._point_of(name) is None:
                return name
        return None

    def _name_new_points(self, indices) -> None:
        """A placed point becomes the selected landmark (moving its point if it has one); never by order."""
        layer = self.layer
        n = len(layer.data)
        features = layer.features.copy()
        names = [v if isinstance(v, str) else "" for v in features["landmark"]]
        drop: list[int] = []
        for i in sorted({int(k) % n for k in indices if n}):
            # napari copies the selected point's features into a new point, so its name is not trusted
            # unless no landmark is selected and the name is new
            own = names[i].strip()
            if not self.current and own and self._point_of(own, skip=i) is None:
                continue
            target = self.current or self._first_missing()
            if target is None:
                drop.append(i)
                _show("info", "select a landmark in the table before placing a point")
                continue
            j = self._point_of(target, skip=i)
            if j is not None:
                layer.data[j] = layer.data[i]
                drop.append(i)
            else:
                names[i] = target
                features.loc[i, "status"] = "added"
        features["landmark"] = names
        layer.features = features
        if drop:
            layer.remove(drop)

    def _write_statuses(self, landmarks: Landmarks) -> None:
        """Only the status column (keeps a drag in progress undisturbed)."""
        layer = self.layer
        features = layer.features.copy()
        status = []
        for value, old in zip(features["landmark"], features["status"], strict=True):
            try:
                status.append(landmarks.status[landmarks.index_of(str(value))])
            except KeyError:
                status.append(old)
        if list(features["status"]) != status:
            features["status"] = status
            layer.features = features
        self._restyle(landmarks)

    def _restyle(self, landmarks: Landmarks) -> None:
        """Markers from the review state: a star while a flagged landmark waits for a person."""
        layer = self.layer
        if layer is None or not len(layer.data):
            return
        rows = []
        for value in layer.features["landmark"]:
            try:
                rows.append(landmarks.index_of(str(value)))
            except KeyError:
                return
        style = marker_style(landmarks, np.array(rows), self.flags)
        if list(layer.symbol) != list(style["symbol"]):
            layer.symbol = style["symbol"]
        layer.border_color = style["border_color"]
        layer.border_width = style["border_width"]
        if not np.array_equal(np.asarray(layer.size), style["size"]):
            layer.size = style["size"]

    def _write_layer(self, landmarks: Landmarks) -> None:
        """Points, names, statuses and colours of the whole layer from ``landmarks``."""
        layer = self.layer
        selected = {str(layer.features["landmark"][i]) for i in layer.selected_data
                    if i < len(layer.features)}
        data, kwargs, _ = points_layer_data(landmarks, self.protocol, name=layer.name, needs_review=self.flags)
        busy, self._busy = self._busy, True
        try:
            layer.data = data
            layer.features = kwargs["features"]
            if len(data):
                layer.face_color = kwargs["face_color"]
                layer.border_color = kwargs["border_color"]
                layer.border_width = kwargs["border_width"]
                layer.symbol = kwargs["symbol"]
                layer.size = kwargs["size"]
            layer.metadata["needs_review"] = dict(self.flags)
            layer.selected_data = {i for i, v in enumerate(kwargs["features"]["landmark"]) if v in selected}
        finally:
            self._busy = busy
        self._update_labels()

    def replace(self, session: CorrectionSession) -> None:
        """Take a new session (a new detection or a restored sidecar) and show it."""
        self.session = session
        lms = session.landmarks
        self.flags = {n: bool(f) for n, f in zip(lms.names, review_flags(lms), strict=True)}
        self.visited.clear()
        self._warned_unvisited = False
        self._write_layer(lms)
        self._changed()

    def _changed(self) -> None:
        # autosave only what a person did: a fresh detection is not work that could be lost
        if self.session.image and self.session.edited:
            self._timer.start()
        self._notify()

    def pending(self) -> list[str]:
        """Landmarks the model flagged that no person has verified, moved or placed yet."""
        lms = self.session.landmarks
        return [n for n, p in zip(lms.names, pending_review(lms, self.flags), strict=True) if p]

    def unvisited_pending(self) -> list[str]:
        """Flagged landmarks still pending that were never even looked at (selected)."""
        return [n for n in self.pending() if normalise_name(n) not in self.visited]

    def _update_labels(self, event: Any = None) -> None:
        """In 3D only the current landmark is labelled (32 labels over a rendering are unreadable)."""
        layer = self.layer
        if layer is None:
            return
        three_d = self.viewer is not None and self.viewer.dims.ndisplay == 3
        if not three_d:
            if getattr(layer.text.string, "format", None) != "{landmark}":
                layer.text.string = "{landmark}"
                layer.text.color = LABEL_COLOR_2D
                layer.text.size = LABEL_SIZE_2D
            return
        key = normalise_name(self.current or "")
        labels = [str(v) if key and normalise_name(str(v)) == key else "" for v in layer.features["landmark"]]
        layer.text.string = {"array": labels, "default": ""}
        layer.text.color = LABEL_COLOR_3D  # a 3D rendering of a head is bright: white text vanished on it
        layer.text.size = LABEL_SIZE_3D

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener(self.current)

    # -- actions -----------------------------------------------------------------------------
    def select(self, name: str | None, centre: bool = True) -> None:
        """Make ``name`` the current landmark; centre the view on its point and select the point."""
        self.current = name
        if name is not None:
            self.visited.add(normalise_name(name))
        if name is not None and self.layer is not None:
            i = self._point_of(name)
            if i is None:
                _show("info", f"{name} is missing: press Add points and click to place it")
            else:
                if centre:
                    self.centre_on(i)
                self.layer.selected_data = {i}
        self._update_labels()
        self._notify()

    def centre_on(self, i: int) -> None:
        """Move every slider to point ``i`` and centre the camera on it (2D and 3D)."""
        if self.viewer is None:
            return
        layer = self.layer
        world = np.asarray(layer.data_to_world(layer.data[i]), dtype=float)
        dims = self.viewer.dims
        ndim = dims.ndim
        if len(world) < ndim:
            world = np.concatenate([np.asarray(dims.point[: ndim - len(world)]), world])
        world = world[-ndim:]
        dims.set_point(range(ndim), tuple(float(v) for v in world))
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9; viewer.camera is deprecated there
        camera = scene.camera if scene is not None else self.viewer.camera
        camera.center = tuple(float(world[d]) for d in dims.displayed)

    def _order(self) -> list[int] | None:
        """The table's row order: worst first when the table shows it so, else the landmark order (None)."""
        return review_order(self.session.landmarks, self.flags) if self.worst_first else None

    def next(self, order: list[int] | None = None) -> None:
        """The next landmark that still needs review (in ``order``, default the table's); when none is left,
        the next one in landmark order."""
        order = self._order() if order is None else order
        name = next_for_review(self.session.landmarks, self.current, self.flags, order)
        self.select(name or next_name(self.names, self.current, 1))

    def next_in_order(self) -> None:
        self.select(next_name(self.names, self.current, 1))

    def previous(self) -> None:
        self.select(next_name(self.names, self.current, -1))

    def _target(self) -> str | None:
        if self.current:
            return self.current
        layer = self.layer
        if layer is not None and len(layer.selected_data) == 1:
            return str(layer.features["landmark"][next(iter(layer.selected_data))])
        return None

    def accept(self) -> None:
        """The current landmark is right: status ``verified``; then go to the next one needing review."""
        name = self._target()
        if name is None:
            _show("info", "select a landmark to accept")
            return
        order = self._order()  # the rows as the user saw them: accepting moves this row down the worst-first order
        try:
            result = self.session.accept(name)
        except (DGLandmarkError, KeyError) as exc:
            _show("warning", str(exc).strip("'"))
            return
        self._write_statuses(result)
        self._changed()
        self.current = name
        self.next(order)

    def undo(self) -> None:
        previous = self.session.undo()
        if previous is None:
            _show("info", "nothing to undo")
            return
        self._write_layer(previous)
        self._changed()

    # -- files -------------------------------------------------------------------------------
    def save_now(self) -> Path | None:
        """Write the autosave sidecar now (normally debounced after each edit); nothing before an edit."""
        self._timer.stop()
        if not self.session.image or not self.session.edited:
            return None
        lms = self.session.landmarks
        lms.needs_review = review_flags(lms, self.flags)  # the flags travel with the saved session
        try:
            self.autosaved = save_sidecar(self.session)
        except (DGLandmarkError, OSError) as exc:
            if not self._autosave_warned:  # once, not after every drag step
                self._autosave_warned = True
                _show("warning", f"autosave failed: {exc}")
            return None
        return self.autosaved

    def export(self, path: str | Path, coords: str = "RAS") -> list[Path]:
        """Landmark CSV, measurements CSV and .mrk.json next to ``path`` (atomic); marks the session exported."""
        meta = self.layer.metadata if self.layer is not None else {}
        lms = self.session.landmarks.copy()
        lms.needs_review = review_flags(lms, self.flags)  # what the model flagged travels with the file
        lms.image_warning = str((meta or {}).get("image_warning") or "")
        paths = export_all(path, lms, self.protocol, coords, geometry_from_metadata(meta), self.session.model_sha256)
        self.session.mark_exported()
        self.save_now()
        return paths

    def confirm_unreviewed(self) -> bool:
        """Once per layer: warn when landmarks flagged for review were never looked at; False = do not export."""
        unseen = self.unvisited_pending()
        if not unseen or self._warned_unvisited:
            return True
        self._warned_unvisited = True
        shown = ", ".join(unseen[:6]) + (f" and {len(unseen) - 6} more" if len(unseen) > 6 else "")
        return self._ask(f"{len(unseen)} landmark{'s' if len(unseen) > 1 else ''} flagged for review "
                         f"{'were' if len(unseen) > 1 else 'was'} never looked at: {shown}. Export anyway?")

    def export_dialog(self, coords: str = "RAS") -> list[Path]:
        """Ask for a file name and export the three files; errors become a notification."""
        if not self.confirm_unreviewed():
            return []
        stem = strip_volume_suffix(Path(self.session.image).name) if self.session.image else "landmarks"
        start = str(export_paths(working_folder() / f"{stem}_landmarks")["landmarks"])
        caption = "Export landmarks: NAME.csv, NAME_measurements.csv and NAME.mrk.json (Slicer)"
        path = (self.ask_save_path or ask_save_path)(caption, start)
        if not path:
            return []
        remember_folder(path)
        try:
            paths = self.export(path, coords)
        except (DGLandmarkError, OSError) as exc:
            _show("error", f"export failed: {exc}")
            return []
        _show("info", f"exported {', '.join(p.name for p in paths)} to {paths[0].parent}")
        return paths

    def _on_removed(self, event: Any) -> None:
        """napari cannot veto a removal: offer to export, and the autosave keeps the corrections anyway."""
        layer = self.layer
        if layer is None or unwrap(getattr(event, "value", None)) is not layer:
            return
        self.viewer.layers.events.removed.disconnect(self._on_removed)
        self.viewer.dims.events.ndisplay.disconnect(self._update_labels)
        if not (self.session.unexported and self.session.edited):
            return
        where = self.save_now()
        kept = f" (they stay in the autosave {where.name})" if where else ""
        if self._ask(f"{layer.name} has corrections that were not exported{kept}. Export them now?"):
            self.export_dialog()

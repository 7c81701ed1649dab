"""Orientation letters (R/L, A/P, S/I) on the canvas and a three-plane layout (axial, coronal, sagittal).

napari has one canvas per window. The three-plane layout keeps the main canvas axial and adds a dock
with two more canvases (coronal and sagittal) that show the same layers, follow the main viewer's
slice position and are centred on the selected landmark, as in 3D Slicer's conventional layout.
The geometry (which letter goes where, which axes each plane shows) lives in :mod:`..layers`.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ..layers import KIND_KEY, MIN_MARKER_PX, PLANES, orientation_label_points
from . import unwrap

ORIENTATION_NAME = "orientation"
LETTER_COLOR = "#ffd54a"
PLANES_DOCK = "Coronal and sagittal"


def _camera(viewer: Any) -> Any:
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera is deprecated there
    return scene.camera if scene is not None else viewer.camera


def _content_extent(viewer: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """World extent of every layer except the orientation letters (they sit outside it)."""
    boxes = [np.asarray(lay.extent.world, dtype=float) for lay in viewer.layers
             if (lay.metadata or {}).get(KIND_KEY) != ORIENTATION_NAME and lay.ndim == 3 and len(lay.data)]
    if not boxes:
        return None
    return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


class OrientationLabels:
    """Four letters just outside the image edges of a 2D view, kept right when the plane or slice changes."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = unwrap(viewer)
        self.layer: Any = None
        #: False once the letters were removed; :meth:`show` brings them back
        self.enabled = True
        dims = self.viewer.dims
        for emitter in (dims.events.point, dims.events.order, dims.events.ndisplay,
                        _camera(self.viewer).events.orientation2d, self.viewer.layers.events.inserted,
                        self.viewer.layers.events.removed):
            emitter.connect(self.update)
        self.update()

    def _raise(self) -> None:
        """On top: an opaque image opened later never hides the letters."""
        layers = self.viewer.layers
        if self.layer is not None and self.layer in layers and layers.index(self.layer) != len(layers) - 1:
            active = layers.selection.active
            layers.move(layers.index(self.layer), len(layers))
            if active is not None and active in layers:
                layers.selection.active = active

    def show(self) -> None:
        """Letters on again (after the user removed them)."""
        self.enabled = True
        if self.layer is not None and self.layer not in self.viewer.layers:
            self.layer = None
        self.update()

    def letters(self) -> list[str]:
        """The letters shown (top, bottom, left, right); empty when hidden."""
        if self.layer is None or self.layer not in self.viewer.layers or not self.layer.visible:
            return []
        return [str(t) for t in self.layer.features["letter"]]

    def update(self, event: Any = None) -> None:
        viewer = self.viewer
        if self.layer is not None and (getattr(event, "value", None) is self.layer
                                       or self.layer not in viewer.layers):
            # removed by the user or the viewer closing (napari may move the sliders before we hear of the
            # removal): do not put it back, or a closing viewer's layer list never empties
            self.enabled = False
            return
        if not self.enabled:
            return
        extent = _content_extent(viewer)
        if extent is None or viewer.dims.ndim != 3:
            return
        displayed = list(viewer.dims.displayed)
        # inside the content: letters left at an old slice would keep the sliders' range (and a black canvas)
        point = np.clip(np.asarray(viewer.dims.point, dtype=float), extent[0], extent[1])
        points, letters = orientation_label_points(displayed[-2:], _camera(viewer).orientation2d, extent[0],
                                                   extent[1], point,
                                                   margin=-0.06 * float(np.max(extent[1] - extent[0])))
        if self.layer is None:
            from napari.layers import Points

            self.layer = Points(points, name=ORIENTATION_NAME, features={"letter": letters}, size=0.1,
                                face_color="transparent", border_color="transparent", opacity=1.0,
                                text={"string": "{letter}", "color": LETTER_COLOR, "size": 16},
                                metadata={KIND_KEY: ORIENTATION_NAME})
            self.layer.locked = True
            active = viewer.layers.selection.active
            viewer.layers.events.inserted.disconnect(self.update)
            try:
                viewer.layers.append(self.layer)
            finally:
                viewer.layers.events.inserted.connect(self.update)
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active  # the letters never take the user's layer
            return
        self.layer.visible = viewer.dims.ndisplay == 2
        if viewer.layers.index(self.layer) != len(viewer.layers) - 1:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self._raise)  # not inside the insertion napari's layer list is handling
        if not np.allclose(self.layer.data, points) or list(self.layer.features["letter"]) != letters:
            self.layer.data = points
            self.layer.features = {"letter": letters}


_LABELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def orientation_labels_for(viewer: Any) -> OrientationLabels:
    """The viewer's orientation letters (one set per viewer, made on first use)."""
    viewer = unwrap(viewer)
    labels = _LABELS.get(viewer)
    if labels is None:
        labels = _LABELS[viewer] = OrientationLabels(viewer)
    return labels


def bring_into_view(viewer: Any, layer: Any) -> None:
    """A newly opened image is seen: its middle slice (the old slice may miss it) and the whole slice fitted."""
    viewer = unwrap(viewer)
    if layer not in viewer.layers or viewer.dims.ndim != 3:
        return
    lo, hi = (np.asarray(e, dtype=float) for e in layer.extent.world)
    viewer.dims.set_point(range(3), tuple(float(v) for v in (lo + hi) / 2))
    labels = _LABELS.get(viewer)
    if labels is not None:
        labels.update()
    viewer.reset_view()


def set_plane(viewer: Any, plane: str, centre: np.ndarray | None = None) -> None:
    """Show ``plane`` (axial, coronal or sagittal) in 2D, superior up, radiological; centre on ``centre`` (world)."""
    order, orientation = PLANES[plane]
    viewer = unwrap(viewer)
    viewer.dims.ndisplay = 2
    viewer.dims.order = order
    labels = _LABELS.get(viewer)
    if labels is not None and not labels.enabled:
        labels.show()
    camera = _camera(viewer)
    camera.orientation2d = orientation
    if centre is not None:
        viewer.dims.set_point(range(3), tuple(float(v) for v in centre))
        camera.center = tuple(float(centre[d]) for d in viewer.dims.displayed)


class PlaneView(QWidget):
    """A second canvas showing the main viewer's image and landmark layers in one plane, following its slice."""

    def __init__(self, main: Any, plane: str, parent: QWidget | None = None) -> None:
        from napari.components import ViewerModel
        from napari.qt import QtViewer

        super().__init__(parent)
        self.main = unwrap(main)
        self.plane = plane
        self.model = ViewerModel(title=plane)
        self.qt_viewer = QtViewer(self.model)
        self._copies: dict[int, Any] = {}
        #: (emitter, callback) connected to the main viewer's layers, undone by :meth:`close_view`
        self._links: list[tuple[Any, Any]] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        label = QLabel(plane.capitalize())
        label.setStyleSheet("font-weight: bold;")
        layout.addWidget(label)
        layout.addWidget(self.qt_viewer, 1)
        self.sync_layers()
        set_plane(self.model, plane)
        self.letters = OrientationLabels(self.model)
        self.main.layers.events.inserted.connect(self.sync_layers)
        self.main.layers.events.removed.connect(self.sync_layers)
        self.main.dims.events.point.connect(self.follow)
        self.follow()

    def sync_layers(self, event: Any = None) -> None:
        """Copies of the main viewer's 3D images and landmark layers (images share their voxels)."""
        from napari.layers import Image, Points

        wanted = [lay for lay in self.main.layers if lay.visible and lay.ndim == 3
                  and (isinstance(lay, Image) or (isinstance(lay, Points) and "landmark" in lay.features))]
        keep = {id(lay) for lay in wanted}
        for key in [k for k in self._copies if k not in keep]:
            copy = self._copies.pop(key)
            if copy in self.model.layers:
                self.model.layers.remove(copy)
        for lay in wanted:
            if id(lay) in self._copies:
                continue
            if isinstance(lay, Image):
                copy = Image(lay.data, affine=lay.affine.affine_matrix, colormap=lay.colormap.name,
                             contrast_limits=lay.contrast_limits, name=lay.name, projection_mode="none")
            else:
                copy = Points(lay.data, name=lay.name, size=lay.size if np.ndim(lay.size) == 0 else 4.0,
                              canvas_size_limits=(MIN_MARKER_PX, 10000))
                for name in ("data", "features", "face_color", "border_color", "symbol", "highlight"):
                    emitter = getattr(lay.events, name, None)
                    if emitter is not None:
                        link = (emitter, lambda _e=None, _src=lay, _dst=copy: self._sync_points(_src, _dst))
                        emitter.connect(link[1])
                        self._links.append(link)
                self._sync_points(lay, copy)
            self._copies[id(lay)] = copy
            self.model.layers.insert(len([c for c in self.model.layers if isinstance(c, Image)])
                                     if isinstance(copy, Image) else len(self.model.layers), copy)

    @staticmethod
    def _sync_points(src: Any, dst: Any) -> None:
        dst.data = src.data
        dst.features = src.features
        if len(src.data):
            dst.face_color = src.face_color
            dst.border_color = src.border_color
            dst.border_width = src.border_width
            dst.border_width_is_relative = src.border_width_is_relative
            dst.symbol = src.symbol
        dst.size = src.size
        # small canvases: only the selected landmark is labelled (midline names would pile up), centred above
        # its point (superior is up in coronal and sagittal): a long name beside a centred point was cut off
        labels = [str(v) if i in src.selected_data else "" for i, v in enumerate(src.features["landmark"])]
        above = 1.5 * float(np.max(src.size)) if len(src.data) else 6.0
        dst.text = {"string": {"array": labels, "default": ""}, "color": "white", "size": 9,
                    "anchor": "center", "translation": [above, 0.0, 0.0]}

    def follow(self, event: Any = None) -> None:
        """Same slice position as the main viewer, centred on it."""
        point = np.asarray(self.main.dims.point, dtype=float)
        if self.model.dims.ndim != len(point):
            return
        self.model.dims.set_point(range(len(point)), tuple(point))
        _camera(self.model).center = tuple(float(point[d]) for d in self.model.dims.displayed)

    def close_view(self) -> None:
        """Disconnect from the main viewer and close the canvas."""
        links = [(self.main.layers.events.inserted, self.sync_layers),
                 (self.main.layers.events.removed, self.sync_layers),
                 (self.main.dims.events.point, self.follow), *self._links]
        for emitter, slot in links:
            emitter.disconnect(slot)
        self._links.clear()
        self._copies.clear()
        self.model.layers.clear()
        self.qt_viewer.close()
        self.qt_viewer.deleteLater()


class ThreePlanes(QWidget):
    """Coronal and sagittal canvases side by side (the main canvas shows the axial plane)."""

    def __init__(self, main: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.views = {plane: PlaneView(main, plane) for plane in ("coronal", "sagittal")}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for view in self.views.values():
            layout.addWidget(view, 1)
        self.setMinimumHeight(220)
        self.closed = False

    def close_views(self) -> None:
        """Close both canvases (the dock is being removed or the viewer closes)."""
        if not self.closed:
            self.closed = True
            for view in self.views.values():
                view.close_view()


def show_three_planes(viewer: Any, centre: np.ndarray | None = None) -> ThreePlanes:
    """Axial in the main canvas, coronal and sagittal in a dock below it, all at ``centre`` (world)."""
    viewer = unwrap(viewer)
    set_plane(viewer, "axial")
    viewer.reset_view()  # the whole slice (and its letters) in view, then centred on the landmark
    set_plane(viewer, "axial", centre)
    window = viewer.window
    existing = window.dock_widgets.get(PLANES_DOCK) if hasattr(window, "dock_widgets") else None
    if isinstance(existing, ThreePlanes) and not existing.closed:
        widget = existing
    else:
        widget = ThreePlanes(viewer)
        dock = window.add_dock_widget(widget, area="bottom", name=PLANES_DOCK)
        main_window = widget.window()
        if main_window is not None and hasattr(main_window, "setCorner"):
            from qtpy.QtCore import Qt

            # the planes sit under the canvas only: the side docks (the landmark table) keep their height
            main_window.setCorner(Qt.BottomRightCorner, Qt.RightDockWidgetArea)
            main_window.setCorner(Qt.BottomLeftCorner, Qt.LeftDockWidgetArea)
            main_window.resizeDocks([dock], [int(main_window.height() * 0.4)], Qt.Vertical)
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()  # let the canvas take its new (shorter) size before fitting the slice
        viewer.reset_view()
        set_plane(viewer, "axial", centre)
    for view in widget.views.values():
        view.sync_layers()
        view.follow()
        view.model.reset_view()
        _camera(view.model).zoom *= 0.92
        _camera(view.model).center = tuple(float(viewer.dims.point[d]) for d in view.model.dims.displayed)
    return widget

"""'Landmark table' dock widget: the landmarks of the current points layer, live."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QAbstractItemView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from ..errors import DGLandmarkError
from ..io.landmarks import normalise_name
from ..layers import format_mm, landmark_table_rows, landmarks_from_points
from . import LayerFollower

if TYPE_CHECKING:
    import napari

COLUMNS = ("Landmark", "Status", "Confidence", "R (mm)", "A (mm)", "S (mm)")


class LandmarkTableWidget(QWidget, LayerFollower):
    """Name, status, confidence and RAS position per landmark; a row click centres the view on it."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.layer = None
        self.title = QLabel()
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.table)
        layout.addWidget(self.message)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self._follow()

    def refresh(self) -> None:
        """Rebuild the rows from the layer (keeps the selected landmark selected)."""
        selected = self.selected_name()
        self.table.blockSignals(True)
        try:
            self.table.setRowCount(0)
            self.message.setText("")
            if self.layer is None:
                self.title.setText("No landmark layer")
                return
            self.title.setText(self.layer.name)
            try:
                landmarks = landmarks_from_points(self.layer.data, self.layer.features, self.layer.metadata)
            except DGLandmarkError as exc:
                self.message.setText(str(exc))
                return
            rows = landmark_table_rows(landmarks)
            self.table.setRowCount(len(rows))
            for r, (name, status, conf, *ras) in enumerate(rows):
                cells = [name, status, "" if not np.isfinite(conf) else f"{conf:.2f}",
                         *(format_mm(v) for v in ras)]
                for c, text in enumerate(cells):
                    self.table.setItem(r, c, QTableWidgetItem(text))
                if selected is not None and normalise_name(name) == normalise_name(selected):
                    self.table.selectRow(r)
            self.table.resizeColumnsToContents()
        finally:
            self.table.blockSignals(False)

    def selected_name(self) -> str | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return item.text() if item is not None else None

    def point_index(self, name: str) -> int | None:
        """Index of the point named ``name`` in the layer, None when the landmark has no point."""
        if self.layer is None:
            return None
        key = normalise_name(name)
        for i, value in enumerate(self.layer.features["landmark"]):
            if isinstance(value, str) and normalise_name(value) == key:
                return i
        return None

    def select_landmark(self, name: str) -> bool:
        """Select the table row of ``name`` (which centres the view on it); False when absent."""
        for r in range(self.table.rowCount()):
            item = self.table.item(r, 0)
            if item is not None and normalise_name(item.text()) == normalise_name(name):
                self.table.selectRow(r)
                return True
        return False

    def _on_row_selected(self) -> None:
        name = self.selected_name()
        if name is None or self.layer is None:
            return
        i = self.point_index(name)
        if i is None:
            from napari.utils.notifications import show_info

            show_info(f"{name} is missing (no point to show)")
            return
        self.centre_on(i)

    def centre_on(self, i: int) -> None:
        """Move every slider to point ``i`` and centre the camera on it; select the point."""
        world = np.asarray(self.layer.data_to_world(self.layer.data[i]), dtype=float)
        ndim = self.viewer.dims.ndim
        world = world[-ndim:] if len(world) >= ndim else np.concatenate([self.viewer.dims.point[:ndim - len(world)], world])
        self.viewer.dims.set_point(range(ndim), tuple(float(v) for v in world))
        self.viewer.camera.center = tuple(float(world[d]) for d in self.viewer.dims.displayed)
        self.layer.selected_data = {i}

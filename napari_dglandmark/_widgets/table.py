"""'Landmark table' dock widget: the landmarks of the current points layer, live, with correction tools."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import DGLandmarkError
from ..io.landmarks import normalise_name
from ..layers import format_mm, landmark_table_rows, landmarks_from_points
from . import LayerFollower
from .correction import SHORTCUTS, Corrector, corrector_for

if TYPE_CHECKING:
    import napari

COLUMNS = ("Landmark", "Status", "Confidence", "R (mm)", "A (mm)", "S (mm)")


class LandmarkTableWidget(QWidget, LayerFollower):
    """Name, status, confidence and RAS position per landmark; a row click centres the view on it.

    The selected row is the landmark a newly placed point becomes; Accept / Undo / Export act on the layer.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._build_panel(napari_viewer, COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setMinimumHeight(240)  # a dock squeezes it to the header otherwise
        self.corrector: Corrector | None = None
        self.accept_button = QPushButton("Accept (Y)")
        self.undo_button = QPushButton("Undo (U)")
        self.export_button = QPushButton("Export...")
        self.coords_combo = QComboBox()
        self.coords_combo.addItems(["RAS", "LPS"])
        self.coords_combo.setToolTip("coordinate system of the exported CSV and .mrk.json")
        buttons = QHBoxLayout()
        for w in (self.accept_button, self.undo_button, self.export_button, self.coords_combo):
            buttons.addWidget(w)
        self.shortcuts = QLabel("Keys on the landmark layer: " + ", ".join(f"{k} {what}" for k, what in SHORTCUTS)
                                + ". Add points mode (P) places the selected landmark.")
        self.shortcuts.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addWidget(self.shortcuts)
        layout.addWidget(self.message)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.accept_button.clicked.connect(lambda: self.corrector and self.corrector.accept())
        self.undo_button.clicked.connect(lambda: self.corrector and self.corrector.undo())
        self.export_button.clicked.connect(self.export)
        self._follow()

    def _rebind(self, event=None) -> None:
        LayerFollower._rebind(self, event)
        corrector = None
        if self.layer is not None:
            try:
                corrector = corrector_for(self.layer, self.viewer)
            except DGLandmarkError as exc:
                self.message.setText(str(exc))
        if corrector is not self.corrector:
            if self.corrector is not None and self._on_current in self.corrector.listeners:
                self.corrector.listeners.remove(self._on_current)
            self.corrector = corrector
            if corrector is not None:
                corrector.listeners.append(self._on_current)
        for w in (self.accept_button, self.undo_button, self.export_button):
            w.setEnabled(self.corrector is not None)

    def _on_current(self, name: str | None) -> None:
        """The corrector's current landmark changed (keys N/B/Y) or its landmarks did: follow it."""
        if name is not None and normalise_name(name) != normalise_name(self.selected_name() or ""):
            self.table.blockSignals(True)
            try:
                self._select_row(name)
            finally:
                self.table.blockSignals(False)

    def export(self) -> list:
        """Export the layer's landmarks (CSV, measurements CSV, .mrk.json) to a file chosen by the user."""
        if self.corrector is None:
            from napari.utils.notifications import show_error

            show_error("no landmark layer to export")
            return []
        return self.corrector.export_dialog(self.coords_combo.currentText())

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

    def select_landmark(self, name: str) -> bool:
        """Select the table row of ``name`` (which centres the view on it); False when absent."""
        already = normalise_name(self.selected_name() or "") == normalise_name(name)
        found = self._select_row(name)
        if found and already:
            self._on_row_selected()  # no selection change, but the user asked again: centre again
        return found

    def _select_row(self, name: str) -> bool:
        for r in range(self.table.rowCount()):
            item = self.table.item(r, 0)
            if item is not None and normalise_name(item.text()) == normalise_name(name):
                self.table.selectRow(r)
                return True
        return False

    def _on_row_selected(self) -> None:
        name = self.selected_name()
        if name is None or self.layer is None or self.corrector is None:
            return
        self.corrector.select(name)

    def centre_on(self, i: int) -> None:
        """Move every slider to point ``i`` and centre the camera on it; select the point."""
        if self.corrector is not None:
            self.corrector.centre_on(i)
        self.layer.selected_data = {i}

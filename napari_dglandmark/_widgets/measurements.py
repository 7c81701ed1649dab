"""'Measurements' dock widget: the protocol's named distances, live while points move."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import QHeaderView, QSizePolicy, QTableWidgetItem, QVBoxLayout, QWidget

from ..errors import DGLandmarkError
from ..layers import format_mm, landmarks_from_points, measurement_rows, protocol_of
from . import LayerFollower

if TYPE_CHECKING:
    import napari

COLUMNS = ("Measurement", "From", "To", "Distance (mm)")


class MeasurementsWidget(QWidget, LayerFollower):
    """One row per protocol measurement; 'missing' when an endpoint has no point."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._build_panel(napari_viewer, COLUMNS)
        rows = self.table.verticalHeader()
        rows.setSectionResizeMode(QHeaderView.Fixed)
        rows.setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.table.setWordWrap(False)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # every measurement is shown
        self.table.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.title)
        layout.addWidget(self.table)
        layout.addWidget(self.message)
        self._follow()

    def refresh(self) -> None:
        """Recompute every measurement from the layer's current points."""
        self.table.setRowCount(0)
        self.message.setText("")
        if self.layer is None:
            self.title.setText("No landmark layer")
            self._fit()
            return
        try:
            landmarks = landmarks_from_points(self.layer.data, self.layer.features, self.layer.metadata)
        except DGLandmarkError as exc:
            self.message.setText(str(exc))
            return
        protocol = protocol_of(self.layer.metadata, landmarks.names)
        self.title.setText(self.layer.name if protocol is None or f"({protocol.name})" in self.layer.name
                           else f"{self.layer.name} ({protocol.name})")
        rows = measurement_rows(landmarks, protocol)
        if not rows:
            self.message.setText("No measurements defined for these landmarks.")
        self.table.setRowCount(len(rows))
        for r, (name, a, b, value) in enumerate(rows):
            for c, text in enumerate((name, a, b, format_mm(value))):
                item = QTableWidgetItem(text)
                if c == 3:
                    item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        self._fit()

    def _fit(self) -> None:
        """Exactly as tall as its rows and as wide as its columns: every measurement, nothing clipped."""
        t = self.table
        rows = t.verticalHeader()
        rows.setDefaultSectionSize(t.fontMetrics().height() + 6)  # the viewer's style sheet sets the font late
        header = max(t.horizontalHeader().sizeHint().height(), t.horizontalHeader().height())
        height = header + 2 * t.frameWidth() + rows.defaultSectionSize() * max(1, t.rowCount()) + 2
        width = sum(t.columnWidth(c) for c in range(t.columnCount())) + 2 * t.frameWidth()
        t.setFixedHeight(height)
        t.setMinimumWidth(width)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self._fit()

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().changeEvent(event)
        if event.type() in (QEvent.FontChange, QEvent.StyleChange):
            self._fit()

    def values(self) -> dict[str, str]:
        """Measurement name -> the text shown (for tests and copying)."""
        return {self.table.item(r, 0).text(): self.table.item(r, 3).text() for r in range(self.table.rowCount())}

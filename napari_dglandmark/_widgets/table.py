"""'Landmark table' dock widget: the landmarks of the current points layer, live, with the review queue.

A row per landmark with a colour swatch (the point's colour; a star while it waits for review), the
review state, the model's confidence and who placed it. "Worst first" sorts the rows by risk, N goes to
the next landmark that still needs review, and the counter says how far the review is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QBrush, QColor, QIcon, QPainter, QPen, QPixmap, QPolygonF
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import DGLandmarkError
from ..io.landmarks import Landmarks, normalise_name
from ..layers import (
    format_mm,
    landmark_colors,
    landmark_table_rows,
    landmarks_from_points,
    pending_review,
    placed_by,
    protocol_of,
    review_flags,
    review_order,
    review_summary,
)
from . import LayerFollower
from .correction import SHORTCUTS, Corrector, bind_review_keys, corrector_for
from .planes import orientation_labels_for, set_plane, show_three_planes

if TYPE_CHECKING:
    import napari

COLUMNS = ("Landmark", "Status", "Review", "Conf.", "By", "R (mm)", "A (mm)", "S (mm)")
HEADER_TIPS = ("Landmark name (hover a name for its description); the swatch is the point's colour, "
               "a star while it needs review",
               "predicted / corrected (moved) / added (placed by hand) / verified (accepted) / missing",
               "check = the model flagged it and nobody has looked yet; checked = flagged, then reviewed",
               "Model confidence 0-1; empty for a landmark placed by hand",
               "Who placed the current position: model or human",
               "Right (+) in mm", "Anterior (+) in mm", "Superior (+) in mm")
#: the widest text each column shows (a long AFIDs name, statuses, -100.0 mm): the table's width
WIDEST = ("superior interpeduncular fossa", "corrected", "checked", "0.00", "human", "-100.0", "-100.0", "-100.0")
#: the table must show at least this many rows in a 1600x1000 window (issue 12)
MIN_VISIBLE_ROWS = 12
BANNER_STYLE = "background-color: #8a5a00; color: white; padding: 4px; font-weight: bold;"


def swatch(rgba: np.ndarray, star: bool, size: int = 14) -> QIcon:
    """A small disc (or star, while review is pending) in the landmark's colour: ties row and point together."""
    pix = QPixmap(size, size)
    pix.fill(Qt.transparent)
    painter = QPainter(pix)
    painter.setRenderHint(QPainter.Antialiasing)
    painter.setBrush(QBrush(QColor.fromRgbF(*(float(v) for v in rgba[:3]), 1.0)))
    painter.setPen(QPen(QColor("white" if star else "black"), 1.2))
    c, r = size / 2, size / 2 - 1
    if star:
        pts = [QPointF(c + (r if k % 2 == 0 else r * 0.45) * np.sin(np.pi * k / 5),
                       c - (r if k % 2 == 0 else r * 0.45) * np.cos(np.pi * k / 5)) for k in range(10)]
        painter.drawPolygon(QPolygonF(pts))
    else:
        painter.drawEllipse(QPointF(c, c), r - 1, r - 1)
    painter.end()
    return QIcon(pix)


class LandmarkTableWidget(QWidget, LayerFollower):
    """Landmarks of the current layer; a row click centres the view on it. Accept / Undo / Next / Export.

    The selected row is the landmark a newly placed point becomes.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._build_panel(napari_viewer, COLUMNS)
        for c, tip in enumerate(HEADER_TIPS):
            self.table.horizontalHeaderItem(c).setToolTip(tip)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setWordWrap(False)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.Fixed)
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.setTextElideMode(Qt.ElideRight)
        rows = self.table.verticalHeader()
        rows.setSectionResizeMode(QHeaderView.Fixed)
        rows.setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.table.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.corrector: Corrector | None = None
        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet(BANNER_STYLE)
        self.banner.setVisible(False)
        self.counter = QLabel()
        self.counter.setToolTip("verified = accepted with Y; need review = flagged by the model, not yet "
                                "verified, moved or placed by a person")
        self.worst_first = QCheckBox("Worst first")
        self.worst_first.setToolTip("Sort: landmarks that need review first, lowest confidence first")
        self.accept_button = QPushButton("Accept (Y)")
        self.undo_button = QPushButton("Undo (U)")
        self.next_button = QPushButton("Next to review (N)")
        self.export_button = QPushButton("Export...")
        self.export_button.setToolTip("writes NAME.csv (landmarks), NAME_measurements.csv and NAME.mrk.json "
                                      "(3D Slicer markups)")
        self.coords_combo = QComboBox()
        self.coords_combo.addItems(["RAS", "LPS"])
        self.coords_combo.setToolTip("coordinate system of the exported CSV and .mrk.json")
        top = QHBoxLayout()
        top.addWidget(self.counter, 1)
        top.addWidget(self.worst_first)
        buttons = QHBoxLayout()
        for w in (self.accept_button, self.undo_button, self.next_button, self.export_button, self.coords_combo):
            buttons.addWidget(w)
        views = QHBoxLayout()
        views.addWidget(QLabel("View:"))
        self.plane_buttons: dict[str, QPushButton] = {}
        for plane in ("axial", "coronal", "sagittal"):
            button = QPushButton(plane.capitalize())
            button.setToolTip(f"{plane} slice through the selected landmark (superior up, patient right on the left)")
            button.clicked.connect(lambda _c=False, _p=plane: self.show_plane(_p))
            self.plane_buttons[plane] = button
            views.addWidget(button)
        self.three_planes_button = QPushButton("3 planes")
        self.three_planes_button.setToolTip("axial here, coronal and sagittal below, centred on the selected landmark")
        self.three_planes_button.clicked.connect(lambda: self.show_three_planes())
        views.addWidget(self.three_planes_button)
        self.shortcuts = QLabel("Keys: N next to review, B back, Y accept, U undo; add mode (P) places "
                                "the selected landmark.")
        self.shortcuts.setWordWrap(True)
        self.shortcuts.setToolTip("\n".join(f"{k}: {what}" for k, what in SHORTCUTS))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addWidget(self.title)
        layout.addWidget(self.banner)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        layout.addLayout(views)
        layout.addWidget(self.shortcuts)
        layout.addWidget(self.message)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.accept_button.clicked.connect(lambda: self.corrector and self.corrector.accept())
        self.undo_button.clicked.connect(lambda: self.corrector and self.corrector.undo())
        self.next_button.clicked.connect(lambda: self.corrector and self.corrector.next())
        self.export_button.clicked.connect(self.export)
        self.worst_first.toggled.connect(self._on_worst_first)
        self._follow()
        self._fit_height()
        self._fit_width()
        self.letters = orientation_labels_for(self.viewer)
        bind_review_keys(self.viewer)

    def _centre(self) -> np.ndarray | None:
        """World position of the selected landmark (None when none is selected or it is missing)."""
        name = self.selected_name()
        if name is None or self.layer is None:
            return None
        for i, value in enumerate(self.layer.features["landmark"]):
            if normalise_name(str(value)) == normalise_name(name):
                return np.asarray(self.layer.data_to_world(self.layer.data[i]), dtype=float)
        return None

    def show_plane(self, plane: str) -> None:
        """The main canvas shows ``plane`` through the selected landmark."""
        set_plane(self.viewer, plane, self._centre())

    def show_three_planes(self):
        """Axial in the main canvas, coronal and sagittal below it, centred on the selected landmark."""
        return show_three_planes(self.viewer, self._centre())

    def _fit_height(self) -> None:
        """Ask the dock for room for :data:`MIN_VISIBLE_ROWS` rows (a dock squeezes a table to its header)."""
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        header = max(self.table.horizontalHeader().sizeHint().height(), self.table.horizontalHeader().height())
        rows = self.table.verticalHeader().defaultSectionSize() * MIN_VISIBLE_ROWS
        self.table.setMinimumHeight(header + rows + 2 * self.table.frameWidth() + 4)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self._fit_height()  # the viewer's style sheet (fonts) applies once docked
        self._fit_width()

    def _fit_width(self) -> None:
        """Every column readable: the table asks for the widest content any landmark set can have.

        Sized once from templates (not from the current rows), so the dock has its final width at
        launch; the name column takes what is left and names longer than it show in full on hover.
        """
        fm = self.table.fontMetrics()
        header_fm = self.table.horizontalHeader().fontMetrics()
        pad = 16  # cell margins
        widths = [max(fm.horizontalAdvance(t), header_fm.horizontalAdvance(h)) + pad
                  for t, h in zip(WIDEST, COLUMNS, strict=True)]
        widths[0] += (self.table.iconSize().width() or 16) + 16  # swatch and its spacing
        for c, w in enumerate(widths[1:], start=1):
            self.table.horizontalHeader().resizeSection(c, w)
        scroll = self.table.verticalScrollBar().sizeHint().width()
        self.table.setMinimumWidth(sum(widths) + scroll + 2 * self.table.frameWidth() + 2)

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
                corrector.worst_first = self.worst_first.isChecked()
        for w in (self.accept_button, self.undo_button, self.next_button, self.export_button):
            w.setEnabled(self.corrector is not None)
        self.refresh()

    def _on_worst_first(self, checked: bool) -> None:
        """Rows worst first, and N goes down the rows as shown (from the top row)."""
        if self.corrector is not None:
            self.corrector.worst_first = checked
        self.refresh()

    def _on_current(self, name: str | None) -> None:
        """The corrector's current landmark changed (keys N/B/Y) or its landmarks did: follow it."""
        if name is not None and normalise_name(name) != normalise_name(self.selected_name() or ""):
            self.table.blockSignals(True)
            try:
                self._select_row(name)
            finally:
                self.table.blockSignals(False)
        self._update_counter()

    def export(self) -> list:
        """Export the layer's landmarks (CSV, measurements CSV, .mrk.json) to a file chosen by the user."""
        if self.corrector is None:
            from napari.utils.notifications import show_error

            show_error("no landmark layer to export")
            return []
        return self.corrector.export_dialog(self.coords_combo.currentText())

    def _flags(self) -> dict | None:
        if self.corrector is not None:
            return self.corrector.flags
        return (self.layer.metadata or {}).get("needs_review") if self.layer is not None else None

    def _landmarks(self) -> Landmarks | None:
        try:
            return landmarks_from_points(self.layer.data, self.layer.features, self.layer.metadata)
        except DGLandmarkError as exc:
            self.message.setText(str(exc))
            return None

    def _update_counter(self) -> None:
        lms = self._landmarks() if self.layer is not None else None
        self.counter.setText(review_summary(lms, self._flags()) if lms is not None else "")

    def refresh(self) -> None:
        """Rebuild the rows from the layer (keeps the selected landmark selected)."""
        selected = self.selected_name()
        self.table.blockSignals(True)
        try:
            self.table.setRowCount(0)
            self.message.setText("")
            warning = str((self.layer.metadata or {}).get("image_warning") or "") if self.layer is not None else ""
            self.banner.setText(f"Image warning: {warning}" if warning else "")
            self.banner.setVisible(bool(warning))
            if self.layer is None:
                self.title.setText("No landmark layer")
                self.counter.setText("")
                return
            self.title.setText(self.layer.name)
            landmarks = self._landmarks()
            if landmarks is None:
                return
            flags = self._flags()
            self.counter.setText(review_summary(landmarks, flags))
            rows = landmark_table_rows(landmarks)
            flagged = review_flags(landmarks, flags)
            pending = pending_review(landmarks, flags)
            by = placed_by(landmarks)
            colours = landmark_colors(landmarks.names, protocol_of(self.layer.metadata, landmarks.names))
            order = review_order(landmarks, flags) if self.worst_first.isChecked() else range(len(rows))
            self.table.setRowCount(len(rows))
            for r, i in enumerate(order):
                name, status, conf, *ras = rows[i]
                review = "check" if pending[i] else "checked" if flagged[i] else ""
                cells = [name, status, review, "" if not np.isfinite(conf) else f"{conf:.2f}", by[i],
                         *(format_mm(v) for v in ras)]
                for c, text in enumerate(cells):
                    item = QTableWidgetItem(text)
                    if c >= 3:
                        item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                    self.table.setItem(r, c, item)
                first = self.table.item(r, 0)
                first.setIcon(swatch(colours[i], bool(pending[i])))
                tip = landmarks.descriptions[i] or name
                first.setToolTip(f"{name}: {tip}" if tip != name else name)
                if pending[i]:
                    self.table.item(r, 2).setForeground(QBrush(QColor("#ffb000")))
                    self.table.item(r, 2).setToolTip("flagged by the model: look at it, then accept (Y) or move it")
                if selected is not None and normalise_name(name) == normalise_name(selected):
                    self.table.selectRow(r)
        finally:
            self.table.blockSignals(False)

    def selected_name(self) -> str | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return item.text() if item is not None else None

    def row_names(self) -> list[str]:
        """The landmark names in the table's current row order."""
        return [self.table.item(r, 0).text() for r in range(self.table.rowCount())]

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
                self.table.scrollToItem(item)
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

"""Choosing one volume of a DICOM folder that holds several (series, echoes, magnitude/phase)."""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtWidgets import QDialog, QDialogButtonBox, QLabel, QListWidget, QVBoxLayout, QWidget


class SeriesChooser(QDialog):
    """A list of the folder's 3D volumes; OK opens the selected one."""

    def __init__(self, folder: str, choices: Sequence[tuple[str, str]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Choose a DICOM volume")
        self.ids = [c[0] for c in choices]
        label = QLabel(f"{folder}\nholds {len(choices)} 3D volumes. Choose the one to open:")
        label.setWordWrap(True)
        self.list = QListWidget()
        self.list.addItems([text for _, text in choices])
        self.list.setCurrentRow(0)
        self.list.itemDoubleClicked.connect(lambda _item: self.accept())
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.button(QDialogButtonBox.Ok).setText("Open")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(label)
        layout.addWidget(self.list, 1)
        layout.addWidget(buttons)
        width = max([self.list.fontMetrics().horizontalAdvance(t) for _, t in choices] + [400])
        self.resize(min(width + 60, 1400), 160 + 24 * len(choices))

    def chosen(self) -> str | None:
        row = self.list.currentRow()
        return self.ids[row] if 0 <= row < len(self.ids) else None


def choose_series(folder: str, choices: Sequence[tuple[str, str]]) -> str | None:
    """Ask which volume to open (modal); its id, or None when cancelled (module level: tests answer it)."""
    dialog = SeriesChooser(folder, choices)
    return dialog.chosen() if dialog.exec() == QDialog.Accepted else None

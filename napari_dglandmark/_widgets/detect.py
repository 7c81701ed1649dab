"""'Detect landmarks' dock widget (stage 1: the controls; the detection engine plugs in later)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from qtpy.QtWidgets import QComboBox, QFormLayout, QPushButton, QVBoxLayout, QWidget

if TYPE_CHECKING:
    import napari

DEVICES = ("auto", "cpu", "cuda", "mps")
NO_ENGINE = "no detection engine installed"


def _inference_module():
    """``napari_dglandmark.model.inference`` or None while it does not exist."""
    try:
        return importlib.import_module("napari_dglandmark.model.inference")
    except ImportError:
        return None


class DetectWidget(QWidget):
    """Choose an image layer, a model and a device, then detect."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.detect_button = QPushButton("Detect")
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.detect_button)
        layout.addStretch(1)
        self.detect_button.clicked.connect(self.detect)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.viewer.layers.events.changed.connect(self._refresh_images)
        self._refresh_images()
        self._refresh_models()

    def _refresh_images(self, event=None) -> None:
        from napari.layers import Image

        current = self.image_combo.currentText()
        names = [lay.name for lay in self.viewer.layers if isinstance(lay, Image) and lay.ndim == 3]
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)

    def _refresh_models(self) -> None:
        self.model_combo.clear()
        engine = _inference_module()
        lister = getattr(engine, "available_models", None) if engine else None
        names = list(lister()) if callable(lister) else []
        self.model_combo.addItems([str(n) for n in names] or ["(no models)"])
        self.model_combo.setEnabled(bool(names))

    def detect(self) -> None:
        """Run detection on the chosen image (stage 2 wires the engine in)."""
        from napari.utils.notifications import show_info, show_warning

        if _inference_module() is None:
            show_warning(NO_ENGINE)
            return
        show_info("detection engine found; the Detect button is wired to it in the next release")

"""'Detect landmarks' dock widget: image layer + model + device -> a landmark points layer.

Inference runs in a worker thread (the viewer stays responsive) with a progress bar and Cancel.
The image choice is a magicgui layer choice: its value is the layer itself (renaming keeps it), the
newest image layer becomes the choice, and a removed one leaves it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from .._sample_data import SAMPLE_KEY
from ..errors import DGLandmarkError
from ..layers import (
    KIND_KEY,
    geometry_metadata,
    implausible_detection_warning,
    points_layer_data,
    volume_from_image_layer,
)
from ..session import CorrectionSession, load_sidecar, read_sidecar
from . import correction, landmark_layers, unwrap
from ._worker import WorkerRun

if TYPE_CHECKING:
    import napari

DEVICES = ("auto", "cpu", "cuda", "mps")
#: network runtimes (``model.registry.BACKEND_CHOICES``): auto = torch on a CUDA GPU, else ONNX Runtime
BACKENDS = ("auto", "onnx", "torch")
BROWSE = "Browse..."
#: the answers when a detection meets corrections (one question, three choices; closing it keeps them)
KEEP, REPLACE, NEW_LAYER = "Keep my corrections", "Replace them", "Show as a new layer"
NO_MODELS = "(no bundled models: use Browse...)"
#: loaded detectors by (checkpoint path, device, backend); owned by this widget module, reused across runs
_DETECTORS: dict[tuple[str, str, str], Any] = {}
_DETECTORS_LOCK = threading.Lock()


def get_detector(model: str, device: str, backend: str = "auto") -> Any:
    """The cached Detector for ``model`` (bundled name or path) on ``device`` and ``backend``, loaded on first use."""
    from ..model.registry import resolve_model

    key = (str(Path(resolve_model(model)).resolve()), device, backend)
    with _DETECTORS_LOCK:
        if key not in _DETECTORS:
            from ..model.inference import load_detector

            _DETECTORS[key] = load_detector(key[0], device=device, backend=backend)
        return _DETECTORS[key]


def bundled_model_names() -> list[str]:
    from ..model.registry import bundled_models

    return list(bundled_models())


def browse_checkpoint() -> str | None:
    """A .safetensors file chosen by the user (module level, so tests can answer it)."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getOpenFileName(None, "Model checkpoint", "", "Model (*.safetensors)")
    return path or None


def landmark_layer_name(image: str, model: str) -> str:
    return f"{image} landmarks ({model})"


def _edit_count(session: Any) -> str:
    statuses = list(session.landmarks.status)
    parts = [f"{statuses.count(s)} {s}" for s in ("corrected", "added", "verified") if statuses.count(s)]
    return ", ".join(parts) or "edited"


def _run_detection(model: str, device: str, volume: Any, progress: Callable[[int, int], None],
                   cancelled: Callable[[], bool], backend: str = "auto") -> tuple[str, Any, Any]:
    """Worker body: ("ok", landmarks, model info) / ("cancelled", None, None) / ("error", message, None)."""
    from ..model.inference import Cancelled

    try:
        detector = get_detector(model, device, backend)
        if cancelled():
            raise Cancelled()
        landmarks = detector.detect(volume, progress=progress, cancelled=cancelled)
        return "ok", landmarks, detector.info
    except Cancelled:
        return "cancelled", None, None
    except DGLandmarkError as exc:
        return "error", str(exc), None
    except Exception as exc:  # noqa: BLE001 - the widget must stay usable; the reason is shown
        first = (str(exc).strip().splitlines() or [""])[0]
        return "error", f"detection failed: {exc.__class__.__name__}: {first}", None


class DetectWidget(WorkerRun, QWidget):
    """Choose an image layer, a model and a device, then detect (in a worker thread)."""

    progressed = Signal(int, int)
    #: emitted with the new/updated points layer (or None when nothing was added)
    finished = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from magicgui.widgets import ComboBox

        self.viewer = unwrap(napari_viewer)
        #: injectable for tests: yes/no questions and the checkpoint file dialog
        self.ask: Callable[[str], bool] | None = None
        self.choose: Callable[[str, tuple[str, ...], str], str] | None = None
        self.browse: Callable[[], str | None] | None = None
        self._browsed: list[str] = []
        #: (image path, model) -> the answer to "restore the autosave?": asked once per image and model
        self.restore_answers: dict[tuple[str, str], bool] = {}
        self.image_choice = ComboBox(choices=self._image_choices, nullable=False)
        self.image_combo = self.image_choice.native
        self.model_combo = QComboBox()
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.backend_combo = QComboBox()
        self.backend_combo.addItems(BACKENDS)
        self.backend_combo.setToolTip("auto: torch on a CUDA GPU, else ONNX Runtime on the CPU (faster start)")
        self.detect_button = QPushButton("Detect")
        buttons = self._run_controls(self.detect_button)
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Backend", self.backend_combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)  # no empty space under Detect
        self.detect_button.clicked.connect(self.detect)
        self.model_combo.activated.connect(self._on_model_activated)
        self.progressed.connect(self._on_progress)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.inserted.connect(self._offer_sidecar)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        for layer in self.viewer.layers:
            layer.events.name.connect(self.reset_choices)
        self.reset_choices()
        self._refresh_models()

    # -- choices -----------------------------------------------------------------------------
    def _ask(self, question: str) -> bool:
        return (self.ask or correction.ask)(question)

    def _restore(self, image: str, model: str | None, question: str) -> bool:
        """Ask once per image and model whether to restore its autosave; later calls reuse the answer."""
        key = (str(image), model or "")
        if key not in self.restore_answers:
            self.restore_answers[key] = self._ask(question)
        return self.restore_answers[key]

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        """(name, layer) of every 3D image layer, newest last (magicgui choices)."""
        from napari.layers import Image

        return [(lay.name, lay) for lay in self.viewer.layers if isinstance(lay, Image) and lay.ndim == 3]

    def image_layer(self) -> Any | None:
        """The chosen image layer (None when there is none)."""
        value = self.image_choice.value
        return value if value is not None and value in self.viewer.layers else None

    def reset_choices(self, event: Any = None) -> None:
        """Re-read the image layers (napari also calls this on a docked widget when layers change)."""
        current = self.image_layer()
        choices = self._image_choices()
        self.image_choice.reset_choices()
        if current is None and choices:
            self.image_choice.value = choices[-1][1]  # the chosen one went away: the newest left
        self._show_missing_image()

    def _on_inserted(self, event: Any) -> None:
        """A new image layer becomes the choice (a freshly opened scan is what the user wants to detect on)."""
        from napari.layers import Image

        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.reset_choices)
        self.reset_choices()
        if isinstance(layer, Image) and layer.ndim == 3:
            self.image_choice.value = layer
            if not (layer.metadata or {}).get(SAMPLE_KEY):
                QTimer.singleShot(0, lambda _layer=layer: self._show_opened(_layer))

    def _show_opened(self, layer: Any) -> None:
        """A scan was opened: retire the sample and bring the scan into view (its slice, the whole of it)."""
        from .planes import bring_into_view

        self.retire_sample()
        bring_into_view(self.viewer, layer)

    def _show_missing_image(self) -> None:
        if not self._image_choices():
            self.status.setText("No 3D image: open a scan (File > Open, or drag it onto the viewer) to detect on.")
        elif self.status.text().startswith("No 3D image"):
            self.status.setText("")

    def retire_sample(self) -> list[str]:
        """Remove the bundled sample (image and unedited landmark layers) once the user opened a scan."""
        if not any(not (lay.metadata or {}).get(SAMPLE_KEY) for lay in self._image_choices_layers()):
            return []
        removed = []
        for layer in list(self.viewer.layers):
            if not (layer.metadata or {}).get(SAMPLE_KEY):
                continue
            corrector = correction.existing_corrector(layer)
            if corrector is not None and corrector.session.edited:
                continue  # someone worked on it: leave it to them
            self.viewer.layers.remove(layer)
            removed.append(layer.name)
        if removed:
            self.reset_choices()
        return removed

    def _image_choices_layers(self) -> list[Any]:
        return [lay for _, lay in self._image_choices()]

    def _refresh_models(self, select: str | None = None) -> None:
        try:
            names = bundled_model_names()
        except Exception:  # noqa: BLE001 - an engine that fails to import must not break the viewer
            names = []
        items = names + self._browsed
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(items or [NO_MODELS])
        self.model_combo.addItem(BROWSE)
        if select is not None:
            self.model_combo.setCurrentText(select)
        self.model_combo.blockSignals(False)

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemText(index) == BROWSE:
            self.choose_checkpoint()

    def choose_checkpoint(self, path: str | None = None) -> str | None:
        """Add a .safetensors checkpoint to the model list and select it."""
        path = path or (self.browse or browse_checkpoint)()
        if not path:
            self._refresh_models()
            return None
        if not str(path).endswith(".safetensors"):
            from napari.utils.notifications import show_error

            show_error(f"{path}: not a .safetensors model checkpoint")
            self._refresh_models()
            return None
        if path not in self._browsed:
            self._browsed.append(str(path))
        self._refresh_models(select=str(path))
        return str(path)

    def model(self) -> str | None:
        text = self.model_combo.currentText()
        return None if text in (BROWSE, NO_MODELS, "") else text

    # -- running -----------------------------------------------------------------------------
    def detect(self) -> Any:
        """Start detection on the chosen image; returns the worker (None when it could not start)."""
        from napari.layers import Image
        from napari.utils.notifications import show_error, show_warning

        if self.worker is not None:
            show_warning("a detection is already running")
            return None
        layer = self.image_layer()
        if not isinstance(layer, Image):
            self.status.setText("No 3D image to detect on: open a scan first (File > Open).")
            show_error("no 3D image layer: open a volume first")
            return None
        name = layer.name
        model = self.model()
        if model is None:
            show_error("no model chosen: pick a bundled model or Browse... for a .safetensors checkpoint")
            return None
        try:
            volume = volume_from_image_layer(layer.data, layer.metadata, layer.affine.affine_matrix)
        except DGLandmarkError as exc:
            show_error(f"{name}: {exc}")
            return None
        from napari.qt.threading import create_worker

        self._begin(f"detecting on {name}...")  # busy until the first step reports (model loading)
        worker = create_worker(_run_detection, model, self.device_combo.currentText(), volume,
                               self.progressed.emit, self._cancel.is_set, self.backend_combo.currentText(),
                               _start_thread=False)
        return self._launch(worker, lambda result, _layer=layer, _vol=volume: self._done(result, _layer, _vol))

    @property
    def run_button(self) -> QPushButton:
        return self.detect_button

    def _done(self, result: tuple[str, Any, Any], image_layer: Any, volume: Any) -> None:
        from napari.utils.notifications import show_error, show_info

        kind, payload, info = result
        layer = None
        try:
            if kind == "cancelled":
                self.status.setText("cancelled")
                show_info("detection cancelled")
            elif kind == "error":
                self.status.setText(payload)
                show_error(payload)
            else:
                layer = self._show_result(payload, info, image_layer, volume)
        finally:
            self.finished.emit(layer)

    def _show_result(self, landmarks: Any, info: Any, image_layer: Any, volume: Any) -> Any:
        """One points layer per image and model. Where corrections exist (in the layer, or in the autosave),
        one question decides: keep them, replace them with the new detection, or show it as a new layer."""
        from napari.utils.notifications import show_info, show_warning

        name = landmark_layer_name(image_layer.name, info.name)
        image_path = image_layer.metadata.get("path") or volume.path
        landmarks.image = image_path
        warning = landmarks.image_warning or implausible_detection_warning(landmarks)
        landmarks.image_warning = warning
        session = CorrectionSession(landmarks, image=image_path, model=info.name, model_sha256=info.sha256,
                                    protocol=info.protocol or None)
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        prior, where = self._prior_corrections(existing, image_path, info.name)
        choice = REPLACE if prior is None else self._choose(
            f"{where} holds your corrections of these landmarks ({_edit_count(prior)}). The new detection with "
            f"{info.name} would:", (KEEP, REPLACE, NEW_LAYER), KEEP)
        if choice == KEEP and existing is not None:
            self.status.setText(f"kept your corrections in {name}; the new detection was not applied")
            self.viewer.layers.selection.active = existing
            return existing
        if choice == KEEP:  # corrections only in the autosave: bring them back instead of the detection
            prior.model_sha256 = prior.model_sha256 or info.sha256
            layer = self._add_layer(prior, info, image_layer, volume, name)
            self.status.setText(f"restored your corrections from the autosave into {name}; "
                                "the new detection was not applied")
            return layer
        if choice == NEW_LAYER:
            suffix = self._free_suffix(name)
            name = f"{name} {suffix}"
            session.sidecar_key = f"{info.name} {suffix}"  # its own autosave entry: the corrected layer's stays
            existing = None
        if existing is not None:
            correction.corrector_for(existing, self.viewer, session)
            existing.metadata.update(self._metadata(info, image_layer, volume))
            existing.metadata["image_warning"] = warning
            layer = existing
        else:
            layer = self._add_layer(session, info, image_layer, volume, name)
        self.viewer.layers.selection.active = layer
        done = f"{len(landmarks)} landmarks from {info.name}" + (f" in {name}" if choice == NEW_LAYER else "")
        self.status.setText(done + (f". Warning: {warning}" if warning else ""))
        show_info(f"detected {len(landmarks)} landmarks on {image_layer.name} with {info.name}")
        if warning:
            show_warning(f"{image_layer.name}: {warning}")
        return layer

    def _prior_corrections(self, existing: Any, image_path: str | None, model: str) -> tuple[Any, str]:
        """(session, where) of the user's corrections for this image and model; (None, "") when there are none.

        The open layer counts first; else the autosave, unless the user already declined to restore it.
        """
        from napari.utils.notifications import show_info

        corrector = correction.existing_corrector(existing) if existing is not None else None
        if corrector is not None and corrector.session.edited:
            return corrector.session, f"The layer {existing.name}"
        if existing is not None or not image_path or self.restore_answers.get((str(image_path), model)) is False:
            return None, ""
        try:
            saved = load_sidecar(image_path, model)
        except DGLandmarkError as exc:
            show_info(f"autosave not restored: {exc}")
            return None, ""
        return (saved, f"The autosave of {Path(image_path).name}") if saved is not None and saved.edited else (None, "")

    def _choose(self, question: str, options: tuple[str, ...], default: str) -> str:
        return (self.choose or correction.choose)(question, options, default)

    def _free_suffix(self, name: str) -> str:
        n = 2
        while f"{name} [{n}]" in self.viewer.layers:
            n += 1
        return f"[{n}]"

    def _add_layer(self, session: Any, info: Any, image_layer: Any, volume: Any, name: str) -> Any:
        data, kwargs, _ = points_layer_data(session.landmarks, info.protocol or None, name=name,
                                            image=session.image, model_sha256=info.sha256)
        kwargs["metadata"].update(self._metadata(info, image_layer, volume))
        layer = self.viewer.add_points(data, **kwargs)
        correction.corrector_for(layer, self.viewer, session)
        self.viewer.layers.selection.active = layer
        return layer

    @staticmethod
    def _metadata(info: Any, image_layer: Any, volume: Any) -> dict[str, Any]:
        return {"model": info.name, "model_path": info.path, "model_sha256": info.sha256,
                "image_layer": image_layer.name, "geometry": geometry_metadata(volume.geometry)}

    # -- reopening ---------------------------------------------------------------------------
    def _offer_sidecar(self, event=None) -> None:
        """An image with an autosave sidecar was opened: offer to bring its corrections back."""
        from napari.layers import Image
        from napari.utils.notifications import show_warning

        layer = getattr(event, "value", None)
        if not isinstance(layer, Image) or (layer.metadata or {}).get(KIND_KEY) != "volume":
            return
        path = layer.metadata.get("path")
        if not path:
            return
        try:
            entries = read_sidecar(path)
        except DGLandmarkError as exc:
            show_warning(str(exc))
            return
        for model in entries:
            name = landmark_layer_name(layer.name, model or "corrected")
            if name in self.viewer.layers or any(lay.metadata.get("image") == path and lay.metadata.get("model")
                                                 == (model or None) for lay in landmark_layers(self.viewer)):
                continue
            session = load_sidecar(path, model or None)
            if session is not None and model and model != session.model:
                session.sidecar_key = model  # a second layer's entry ("afids32 [2]"): it saves back there
            if session is None or not session.edited or not self._restore(
                    path, model, f"{Path(path).name} has autosaved corrections from "
                    f"{model or 'a previous session'}. Restore them?"):
                continue
            volume = volume_from_image_layer(layer.data, layer.metadata)
            data, kwargs, _ = points_layer_data(session.landmarks, session.protocol, name=name, image=path,
                                                model_sha256=session.model_sha256)
            kwargs["metadata"].update({"model": session.model, "image_layer": layer.name,
                                       "geometry": geometry_metadata(volume.geometry)})
            restored = self.viewer.add_points(data, **kwargs)
            correction.corrector_for(restored, self.viewer, session)

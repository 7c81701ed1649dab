"""'Adapt model to these scans' dock widget: the reviewed landmark layers fine-tune the model.

Thin: it gathers (image layer, reviewed landmarks) pairs from the viewer, asks where to save the
new model (default: the working folder, never the scans' own folder), runs ``training.adapt.adapt`` in a worker thread with
progress and Cancel, then selects the new model in the Detect widget (its public ``choose_checkpoint``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSizePolicy, QSpinBox, QVBoxLayout, QWidget

from .._sample_data import SAMPLE_KEY
from ..errors import DGLandmarkError
from ..io.landmarks import count_reviewed
from ..layers import landmarks_from_points, volume_from_image_layer
from . import landmark_layers, remember_folder, unwrap, working_folder
from ._worker import WorkerRun

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-dglandmark"
DETECT_WIDGET = "Detect landmarks"
#: the time budget box: minutes (the recipe stops earlier when the check scan stops improving)
BUDGET_MINUTES = (1, 120, 10)


def ask_model_path(start: str) -> str | None:
    """Where to save the adapted model (module level, so tests can answer it)."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(None, "Save the adapted model", start, "Model (*.safetensors)")
    return path or None


def detect_widgets(viewer: Any) -> list[Any]:
    """The Detect widgets of ``viewer`` (docked or not)."""
    from qtpy.QtWidgets import QApplication

    from .detect import DetectWidget

    found: list[Any] = []
    for top in QApplication.topLevelWidgets():
        for w in ([top] if isinstance(top, DetectWidget) else []) + top.findChildren(DetectWidget):
            if w.viewer is viewer and w not in found:
                found.append(w)
    return found


def select_model(viewer: Any, path: str) -> bool:
    """Select the model file ``path`` in the viewer's Detect widgets (docking one when there is none)."""
    widgets = detect_widgets(viewer)
    if not widgets and getattr(viewer, "window", None) is not None:
        try:
            _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, DETECT_WIDGET)
            widgets = [widget]
        except Exception:  # noqa: BLE001 - no dockable Detect widget (headless use): the file is still saved
            widgets = []
    for w in widgets:
        w.choose_checkpoint(str(path))
    return bool(widgets)


def _image_layer_for(viewer: Any, points: Any) -> Any | None:
    """The image layer a landmark layer was detected on (by layer name, else by file path)."""
    from napari.layers import Image

    meta = points.metadata or {}
    name = meta.get("image_layer")
    if name and name in viewer.layers and isinstance(viewer.layers[name], Image):
        return viewer.layers[name]
    path = meta.get("image")
    for layer in viewer.layers:
        if isinstance(layer, Image) and layer.ndim == 3 and path and (layer.metadata or {}).get("path") == path:
            return layer
    return None


def gather(viewer: Any) -> tuple[list[tuple[Any, Any, Any]], list[str]]:
    """(image layer, landmark layer, Landmarks) of every scan with reviewed landmarks, and notes on
    what was left out. One landmark layer per image: the one with the most reviewed landmarks."""
    best: dict[int, tuple[int, Any, Any, Any]] = {}
    notes: list[str] = []
    for points in landmark_layers(viewer):
        if (points.metadata or {}).get(SAMPLE_KEY):
            continue  # the bundled example is not the user's site
        try:
            lms = landmarks_from_points(points.data, points.features, points.metadata)
        except DGLandmarkError as exc:
            notes.append(f"{points.name}: {exc}")
            continue
        n = count_reviewed(lms)
        if n == 0:
            continue
        image = _image_layer_for(viewer, points)
        if image is None:
            notes.append(f"{points.name}: no image layer for it in the viewer")
            continue
        if id(image) not in best or n > best[id(image)][0]:
            best[id(image)] = (n, image, points, lms)
    return [(image, points, lms) for _, image, points, lms in best.values()], notes


def count_text(pairs: list[tuple[Any, Any, Any]]) -> str:
    scans = len(pairs)
    marks = sum(count_reviewed(lms) for _, _, lms in pairs)
    return f"{scans} scan{'s' if scans != 1 else ''}, {marks} landmark{'s' if marks != 1 else ''} reviewed"


def plain_summary(result: Any) -> str:
    """What an adaptation did, in words a user reads (the recipe's terms stay in the model's metadata)."""
    better = result.after_mm < result.before_mm
    return (f"On {result.evaluated_on}, kept aside to check the new model, the landmarks are now "
            f"{result.after_mm:.1f} mm from yours on average ({result.before_mm:.1f} mm before: "
            f"{'better' if better else 'not better; keep using the previous model'}). "
            f"It took {result.seconds / 60:.1f} min.")


def _run_adaptation(base: str, cases: list, out: str, options: Any, progress: Callable[[int, int], None],
                    cancelled: Callable[[], bool], message: Callable[[str], None]) -> tuple[str, Any]:
    """Worker body: ("ok", AdaptResult) / ("cancelled", None) / ("error", one-line message)."""
    from napari_dglandmark.model.inference import Cancelled
    from training.adapt import adapt

    try:
        return "ok", adapt(base, cases, out, options, progress=progress, cancelled=cancelled, message=message)
    except Cancelled:
        return "cancelled", None
    except DGLandmarkError as exc:
        return "error", str(exc)
    except Exception as exc:  # noqa: BLE001 - the widget must stay usable; the reason is shown
        first = (str(exc).strip().splitlines() or [""])[0]
        return "error", f"adaptation failed: {exc.__class__.__name__}: {first}"


class AdaptWidget(WorkerRun, QWidget):
    """Fine-tune the model on the scans whose landmarks were reviewed, then use the new model."""

    progressed = Signal(int, int)
    news = Signal(str)
    #: emitted with the adapted model's path (None when nothing was saved)
    finished = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        #: injectable for tests: the save dialog and the adaptation settings (else the time budget box sets them)
        self.ask_path: Callable[[str], str | None] | None = None
        self.options: Any = None
        self.base_model: str | None = None  # None: the model that made the landmark layers
        self.counts = QLabel("")
        self.adapt_button = QPushButton("Adapt model to these scans")
        self.adapt_button.setToolTip("Teach the detection model your scans: it learns from the landmarks you "
                                     "verified, corrected or added, on this computer; your scans stay here")
        low, high, default = BUDGET_MINUTES
        self.budget = QSpinBox()
        self.budget.setRange(low, high)
        self.budget.setValue(default)
        self.budget.setSuffix(" min")
        self.budget.setToolTip("The longest the adaptation may take; it stops earlier when the model stops "
                               "getting better")
        self.budget.valueChanged.connect(lambda _v: self.refresh())
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        budget_row = QHBoxLayout()
        budget_row.addWidget(QLabel("Time budget:"))
        budget_row.addWidget(self.budget)
        budget_row.addStretch(1)
        buttons = self._run_controls(self.adapt_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addWidget(self.counts)
        layout.addLayout(budget_row)
        layout.addWidget(self.estimate)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)
        self.adapt_button.clicked.connect(self.start)
        self.progressed.connect(self._on_progress)
        self.news.connect(self.status.setText)
        self.viewer.layers.events.inserted.connect(self._on_layers)
        self.viewer.layers.events.removed.connect(self._on_layers)
        for layer in self.viewer.layers:
            self._watch(layer)
        self.refresh()

    # -- counts ------------------------------------------------------------------------------
    def _watch(self, layer: Any) -> None:
        for name in ("data", "features"):
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(self.refresh)

    def _on_layers(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and getattr(event, "type", "") == "inserted":
            self._watch(layer)
        self.refresh()

    def refresh(self, event: Any = None) -> str:
        """Update the "N scans, M landmarks reviewed" line; returns it."""
        pairs, _ = gather(self.viewer)
        text = count_text(pairs)
        self.counts.setText(text)
        self.estimate.setText(f"Takes up to {self.budget.value()} min on this computer (less when the model "
                              "stops getting better); the new model is saved as a new file.")
        return text

    def reset_choices(self, event: Any = None) -> None:
        """napari calls this on docked widgets when layers change."""
        self.refresh()

    # -- running -----------------------------------------------------------------------------
    def _base(self, pairs: list[tuple[Any, Any, Any]]) -> str:
        """The model to adapt: the one that made the reviewed layers, else the Detect widget's, else the default."""
        from ..model.inference import DEFAULT_MODEL

        if self.base_model:
            return self.base_model
        made = [p.metadata.get("model_path") for _, p, _ in pairs if (p.metadata or {}).get("model_path")]
        made = [m for m in made if Path(m).is_file()]
        if made:
            return max(set(made), key=made.count)
        for w in detect_widgets(self.viewer):
            if w.model():
                return w.model()
        return DEFAULT_MODEL

    def _fail(self, text: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(text)
        show_error(text)

    def start(self) -> Any:
        """Check the situation, ask where to save, and start adapting; returns the worker (None if not started)."""
        from napari.utils.notifications import show_warning

        from training.adapt import AdaptCase, AdaptOptions, check_output, default_output, prepare_adaptation

        from ..model.checkpoint import file_sha256

        if self.worker is not None:
            show_warning("an adaptation is already running")
            return None
        pairs, notes = gather(self.viewer)
        self.counts.setText(count_text(pairs))
        if not landmark_layers(self.viewer):
            self._fail("No landmark layers: detect landmarks on your scans, review them (verify, correct, add), "
                       "then adapt.")
            return None
        if not pairs:
            why = f" ({'; '.join(notes)})" if notes else ""
            self._fail("No reviewed landmarks: verify (Y), correct or add landmarks first; predictions nobody "
                       f"reviewed are not used{why}.")
            return None
        try:
            cases = []
            for image, points, lms in pairs:
                volume = volume_from_image_layer(image.data, image.metadata, image.affine.affine_matrix)
                path = (image.metadata or {}).get("path") or ""
                digest = file_sha256(path) if path and Path(path).is_file() else ""
                cases.append(AdaptCase(image.name, volume, lms, Path(path).name if path else image.name, digest,
                                       points.name))
            # the core's pre-checks (model kind, protocol, enough reviewed landmarks), as the CLI runs them
            base_path = prepare_adaptation(self._base(pairs), cases).base_path
        except DGLandmarkError as exc:
            self._fail(str(exc))
            return None
        answer = (self.ask_path or ask_model_path)(str(default_output(base_path, working_folder())))
        if not answer:
            self.status.setText("not adapted: no file chosen")
            return None
        remember_folder(answer)
        out = answer if answer.endswith(".safetensors") else answer + ".safetensors"
        try:
            check_output(Path(base_path), out)
        except DGLandmarkError as exc:
            self._fail(str(exc))
            return None
        from napari.qt.threading import create_worker

        # busy until the first step reports (preparing, first check); a cancelled run saves nothing
        self._begin(f"adapting {Path(base_path).name} to {count_text(pairs)}...")
        options = self.options or AdaptOptions(max_minutes=float(self.budget.value()))
        worker = create_worker(_run_adaptation, str(base_path), cases, out, options, self.progressed.emit,
                               self._cancel.is_set, self.news.emit, _start_thread=False)
        return self._launch(worker, self._done)

    @property
    def run_button(self) -> QPushButton:
        return self.adapt_button

    def _done(self, result: tuple[str, Any]) -> None:
        from napari.utils.notifications import show_info

        kind, payload = result
        path = None
        try:
            if kind == "cancelled":
                self.status.setText("adaptation cancelled; nothing was saved")
                show_info("adaptation cancelled")
            elif kind == "error":
                self._fail(payload)
            else:
                path = str(payload.path)
                selected = select_model(self.viewer, path)
                where = " and selected it in Detect" if selected else ""
                self.status.setText(f"saved {Path(path).name}{where}. {plain_summary(payload)}")
                show_info(f"adapted model saved: {path}")
        finally:
            self.finished.emit(path)

"""Qt widgets of the napari plugin (thin: they call the core)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari


def unwrap(obj: Any) -> Any:
    """The object behind napari's plugin proxies (``PublicOnlyProxy``).

    napari hands dock widgets a proxy viewer whose layers are fresh proxies on every access, so
    ``is`` checks and weak references on them silently fail; the widgets keep the real objects.
    """
    for _ in range(8):  # proxies of proxies are possible, loops are not
        inner = getattr(obj, "__wrapped__", None)
        if inner is None or inner is obj:
            break
        obj = inner
    return obj


#: where Export and Adapt propose to save (else the folder last chosen, else Documents/napari-dglandmark)
WORK_DIR_ENV = "DGLANDMARK_WORK_DIR"
_last_folder: dict[str, Path] = {}


def working_folder() -> Path:
    """The folder Export and Adapt propose: the one last chosen in this session, else ``$DGLANDMARK_WORK_DIR``,
    else ``<Documents>/napari-dglandmark``; never the scan's own folder (read-only archives, BIDS datasets)."""
    if "last" in _last_folder and _last_folder["last"].is_dir():
        return _last_folder["last"]
    env = os.environ.get(WORK_DIR_ENV)
    if env:
        folder = Path(env).expanduser()
    else:
        import platformdirs

        folder = Path(platformdirs.user_documents_dir()) / "napari-dglandmark"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path.home()
    return folder


def remember_folder(path: str | os.PathLike) -> None:
    """The folder of a file the user chose: proposed next time."""
    _last_folder["last"] = Path(path).expanduser().resolve().parent


def landmark_layers(viewer: napari.viewer.Viewer) -> list[Any]:
    """Points layers that hold named landmarks (a ``landmark`` feature)."""
    from napari.layers import Points

    return [lay for lay in viewer.layers if isinstance(lay, Points) and "landmark" in lay.features]


def current_landmark_layer(viewer: napari.viewer.Viewer) -> Any | None:
    """The active landmark layer, else the last selected one, else the top-most one."""
    layers = landmark_layers(viewer)
    active = viewer.layers.selection.active
    if active in layers:
        return active
    selected = [lay for lay in layers if lay in viewer.layers.selection]
    if selected:
        return selected[-1]
    return layers[-1] if layers else None


class LayerFollower:
    """Mixin: follow the current landmark layer and call ``refresh`` when its points change."""

    viewer: Any
    layer: Any = None

    def _build_panel(self, viewer: napari.viewer.Viewer, columns: tuple[str, ...]) -> None:
        """The shared parts of a landmark panel: a title, a read-only table and a message line."""
        from qtpy.QtWidgets import QAbstractItemView, QLabel, QTableWidget

        self.viewer = unwrap(viewer)
        self.layer = None
        self.title = QLabel()
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.table = QTableWidget(0, len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)

    def _follow(self) -> None:
        sel = self.viewer.layers.selection.events
        sel.active.connect(self._rebind)
        self.viewer.layers.events.inserted.connect(self._rebind)
        self.viewer.layers.events.removed.connect(self._rebind)
        self._rebind()

    def _rebind(self, event=None) -> None:
        layer = current_landmark_layer(self.viewer)
        if layer is self.layer and layer is not None and layer in self.viewer.layers:
            return
        if self.layer is not None:
            for name in ("data", "features"):
                emitter = getattr(self.layer.events, name, None)
                if emitter is not None:
                    emitter.disconnect(self._on_change)
        self.layer = layer
        if layer is not None:
            for name in ("data", "features"):
                emitter = getattr(layer.events, name, None)
                if emitter is not None:
                    emitter.connect(self._on_change)
        self.refresh()

    def _on_change(self, event=None) -> None:
        self.refresh()

    def refresh(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

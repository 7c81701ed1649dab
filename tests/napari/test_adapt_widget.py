"""'Adapt model to these scans': detect -> review -> adapt -> the new model selected in Detect (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dglandmark._widgets import adapt as adapt_widget
from napari_dglandmark._widgets.adapt import AdaptWidget
from napari_dglandmark._widgets.detect import DetectWidget
from napari_dglandmark.io import read_landmarks
from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.layers import points_layer_data
from napari_dglandmark.model.checkpoint import file_sha256, read_metadata
from tests.training.test_adapt import make_site
from training.adapt import AdaptOptions

from .conftest import PLUGIN

pytestmark = pytest.mark.napari
WAIT_MS = 240_000  # a loaded 2-CPU machine (training runs beside the tests)
TINY = AdaptOptions(coarse_steps=2, fine_steps=4, device="cpu")


@pytest.fixture
def notes(monkeypatch):
    import napari.utils.notifications as notifications

    shown: list[tuple[str, str]] = []
    for kind in ("error", "warning", "info"):
        monkeypatch.setattr(notifications, f"show_{kind}", lambda msg, _k=kind: shown.append((_k, str(msg))))
    return shown


def _detect(widget: DetectWidget, qtbot, image) -> object:
    widget.image_choice.value = image
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as blocker:
        widget.detect_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    return blocker.args[0]


def _correct(layer, truth: Landmarks, names: list[str]) -> None:
    """What dragging points onto the right place does: those landmarks become 'corrected'."""
    data = layer.data.copy()
    for name in names:
        data[list(layer.features["landmark"]).index(name)] = truth.get(name)[::-1]
    layer.data = data


def _adapt(widget: AdaptWidget, qtbot) -> object:
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as blocker:
        widget.adapt_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    return blocker.args[0]


def test_detect_review_adapt_select(make_napari_viewer, tiny_model_path, qtbot, tmp_path, notes):
    site = make_site(tmp_path / "site", 2, statuses=False)
    viewer = make_napari_viewer()
    detect, adapter = DetectWidget(viewer), AdaptWidget(viewer)
    viewer.window.add_dock_widget(detect, area="right", name="Detect landmarks")
    viewer.window.add_dock_widget(adapter, area="right", name="Adapt model to these scans")
    detect.choose_checkpoint(str(tiny_model_path))
    assert adapter.counts.text() == "0 scans, 0 landmarks reviewed"
    layers = []
    for s in range(2):
        image = viewer.open(str(site / f"scan{s}.nii.gz"), plugin=PLUGIN)[0]
        layers.append(_detect(detect, qtbot, image))
    assert all(set(lay.features["status"]) == {"predicted"} for lay in layers)

    adapter.adapt_button.click()  # nothing reviewed yet
    assert "No reviewed landmarks" in adapter.status.text() and adapter.worker is None
    assert any(kind == "error" for kind, _ in notes)

    names = read_metadata(tiny_model_path)["landmark_names"]
    for s, layer in enumerate(layers):
        _correct(layer, read_landmarks(site / f"scan{s}.mrk.json"), names[: 10 + 2 * s])
    assert set(layers[0].features["status"]) == {"predicted", "corrected"}
    assert adapter.counts.text() == "2 scans, 22 landmarks reviewed"

    asked: list[str] = []
    out = tmp_path / "my-site.safetensors"
    adapter.ask_path = lambda start: asked.append(start) or str(out)
    adapter.options = TINY
    base_hash = file_sha256(tiny_model_path)
    path = _adapt(adapter, qtbot)
    assert path == str(out) and out.is_file(), adapter.status.text()
    # the working folder, never the scans' own folder (archives, BIDS datasets)
    assert asked and not asked[0].startswith(str(site)) and asked[0].endswith(".safetensors")
    assert file_sha256(tiny_model_path) == base_hash
    assert adapter.progress_log and adapter.progress_log[-1][0] == adapter.progress_log[-1][1] > 0
    meta = read_metadata(out)["adaptation"]
    assert meta["base_model"]["sha256"] == base_hash
    assert [(c["image_file"], c["reviewed_landmarks"]) for c in meta["cases"]] == [("scan0.nii.gz", 10),
                                                                                  ("scan1.nii.gz", 12)]
    assert meta["cases"][0]["image_sha256"] == file_sha256(site / "scan0.nii.gz")
    # the Detect widget now uses the adapted model, and detecting with it works
    assert detect.model() == str(out)
    again = _detect(detect, qtbot, viewer.layers["scan0"])
    assert again is not None and again.metadata["model_path"] == str(out)
    assert "saved my-site.safetensors and selected it in Detect" in adapter.status.text()


def test_bad_situations_are_clear_messages(make_napari_viewer, tiny_model_path, qtbot, tmp_path, notes):
    site = make_site(tmp_path / "site", 1, statuses=False)
    viewer = make_napari_viewer()
    adapter = AdaptWidget(viewer)
    adapter.base_model = str(tiny_model_path)
    adapter.options = TINY
    adapter.adapt_button.click()
    assert adapter.status.text().startswith("No landmark layers") and adapter.worker is None

    image = viewer.open(str(site / "scan0.nii.gz"), plugin=PLUGIN)[0]
    other = Landmarks(["nasion", "inion"], np.array([[0.0, 80.0, 0.0], [0.0, -100.0, 0.0]]))  # another protocol
    data, kwargs, _ = points_layer_data(other, None, name="scan0 skull marks", image=image.metadata["path"])
    viewer.add_points(data, **kwargs)
    assert adapter.counts.text() == "1 scan, 2 landmarks reviewed"
    adapter.adapt_button.click()
    assert "protocol mismatch" in adapter.status.text() and "nasion" in adapter.status.text()
    assert adapter.worker is None

    # the user closes the save dialog: nothing runs
    viewer.layers.remove("scan0 skull marks")
    truth = read_landmarks(site / "scan0.mrk.json")
    data, kwargs, _ = points_layer_data(truth, "afids32", name="scan0 truth", image=image.metadata["path"])
    viewer.add_points(data, **kwargs)
    adapter.ask_path = lambda start: None
    adapter.adapt_button.click()
    assert adapter.status.text() == "not adapted: no file chosen" and adapter.worker is None

    # the base model itself is refused as the output
    adapter.ask_path = lambda start: str(tiny_model_path)
    adapter.adapt_button.click()
    assert "refusing to overwrite" in adapter.status.text() and adapter.worker is None

    # cancel: nothing saved, the widget usable again
    out = tmp_path / "cancelled.safetensors"
    adapter.ask_path = lambda start: str(out)
    adapter.options = AdaptOptions(coarse_steps=0, fine_steps=10_000, device="cpu")
    with qtbot.waitSignal(adapter.finished, timeout=WAIT_MS) as blocker:
        adapter.adapt_button.click()
        adapter.cancel_button.click()
    qtbot.waitUntil(lambda: adapter.worker is None, timeout=WAIT_MS)
    assert blocker.args[0] is None and not out.exists()
    assert "cancelled" in adapter.status.text() and adapter.adapt_button.isEnabled()


def test_docked_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt model to these scans")
    assert widget is not None and "reviewed" in widget.counts.text()
    assert adapt_widget.detect_widgets(viewer) == []

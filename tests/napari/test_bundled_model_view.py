"""The default model in the viewer: detect on the sample and look at the result (screenshots)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dglandmark._sample_data import SAMPLE_LANDMARKS
from napari_dglandmark._widgets.detect import DetectWidget
from napari_dglandmark._widgets.table import LandmarkTableWidget
from napari_dglandmark.io import read_landmarks
from napari_dglandmark.layers import world_to_lps

from .conftest import PLUGIN

pytestmark = pytest.mark.napari


def test_default_model_detects_on_the_sample(make_napari_viewer, qtbot, artifacts):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "afids_t1w")
    viewer.layers.remove(viewer.layers[1])
    detect, table = DetectWidget(viewer), LandmarkTableWidget(viewer)
    viewer.window.add_dock_widget(detect, area="right", name="Detect landmarks")
    viewer.window.add_dock_widget(table, area="right", name="Landmark table")
    viewer.window._qt_window.resize(1400, 1000)
    assert detect.model_combo.currentText().startswith("afids32")  # the bundled default is preselected
    with qtbot.waitSignal(detect.finished, timeout=120_000) as blocker:
        detect.detect_button.click()
    qtbot.waitUntil(lambda: detect.worker is None, timeout=120_000)
    layer = blocker.args[0]
    truth = read_landmarks(SAMPLE_LANDMARKS)
    names = list(layer.features["landmark"])
    err = [np.linalg.norm(world_to_lps(layer.data[i]) - truth.get(n)) for i, n in enumerate(names)]
    assert len(names) == 32 and np.mean(err) < 1.0 and np.max(err) < 5.0  # world coords are the physical landmarks
    table.select_landmark("AC")
    viewer.dims.ndisplay = 2
    viewer.screenshot(str(artifacts / "bundled_window_at_AC.png"), canvas_only=False)
    viewer.dims.ndisplay = 3
    viewer.scene.camera.angles = (0, -60, 90)
    viewer.screenshot(str(artifacts / "bundled_3d.png"), canvas_only=True)

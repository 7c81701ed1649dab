"""3D Slicer's own markups readers and writers (slicer-core's MRML library) as the oracle for our files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark.io import Landmarks, read_landmarks, write_landmarks
from napari_dglandmark.io.markups_json import write_line_json
from tests.conftest import GT_FCSV

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML library, `import slicer`) is not installed")

# vtkMRMLMarkupsNode position status codes
_UNDEFINED, _DEFINED = 0, 2


def _sample() -> Landmarks:
    ras = np.array([[0.1, -2.000000000000001, 1e-9], [123.456789012345, 0.0, -77.5], [np.nan] * 3,
                    [-1.0 / 3.0, 2.0 / 7.0, 1e5]])
    return Landmarks.from_ras(["AC", "left, \"quoted\" name", "Missing one", "R superior LMS"], ras,
                              descriptions=["anterior commissure", "", "not placed", "ünïcode"],
                              confidence=[0.93, np.nan, np.nan, 0.5],
                              status=["predicted", "corrected", "missing", "verified"])


def _slicer_read(path: Path, node_class=None, storage_class=None):
    """Read a file with Slicer's storage node; returns the markups node."""
    scene = slicer.vtkMRMLScene()
    node = (node_class or slicer.vtkMRMLMarkupsFiducialNode)()
    scene.AddNode(node)
    if storage_class is None:
        storage_class = (slicer.vtkMRMLMarkupsFiducialStorageNode if path.name.endswith(".fcsv")
                         else slicer.vtkMRMLMarkupsJsonStorageNode)
    storage = storage_class()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, f"Slicer could not read {path.name}"
    return node


def _slicer_points(node) -> tuple[list[str], list[str], np.ndarray, list[int]]:
    """Labels, descriptions, RAS world positions and position statuses as Slicer reports them."""
    labels, descriptions, positions, status = [], [], [], []
    for i in range(node.GetNumberOfControlPoints()):
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, ras)
        labels.append(node.GetNthControlPointLabel(i))
        descriptions.append(node.GetNthControlPointDescription(i))
        positions.append(ras)
        status.append(node.GetNthControlPointPositionStatus(i))
    return labels, descriptions, np.array(positions), status


@pytest.mark.parametrize("coords", ["RAS", "LPS"])
def test_slicer_reads_our_mrk_json(tmp_path: Path, coords: str) -> None:
    lm = _sample()
    path = tmp_path / f"ours_{coords}.mrk.json"
    write_landmarks(path, lm, coords)  # carries our dglandmarkStatus / dglandmarkConfidence keys
    labels, descriptions, ras, status = _slicer_points(_slicer_read(path))
    assert labels == lm.names
    assert descriptions == lm.descriptions
    assert status == [_DEFINED, _DEFINED, _UNDEFINED, _DEFINED]
    expected = lm.positions_in("RAS")
    np.testing.assert_allclose(ras[lm.defined], expected[lm.defined], atol=1e-9, rtol=1e-12)


def test_slicer_reads_our_mrk_json_with_lines(tmp_path: Path) -> None:
    """Extra Line markups after the point list do not disturb Slicer's point-list reader."""
    lm = _sample()
    path = tmp_path / "lines.mrk.json"
    write_landmarks(path, lm, "RAS", measurements=[("d", "AC", "R superior LMS")])
    labels, _, ras, _ = _slicer_points(_slicer_read(path))
    assert labels == lm.names
    np.testing.assert_allclose(ras[0], lm.positions_in("RAS")[0], atol=1e-9)


def test_slicer_reads_our_line_file(tmp_path: Path) -> None:
    a, b = np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0, 3.0])  # LPS
    path = tmp_path / "TCD.mrk.json"
    write_line_json(path, "TCD", a, b, ["TCD-1", "TCD-2"], coords="RAS")
    node = _slicer_read(path, slicer.vtkMRMLMarkupsLineNode)
    labels, _, ras, _ = _slicer_points(node)
    assert labels == ["TCD-1", "TCD-2"]
    np.testing.assert_allclose(ras, [[-1.0, -2.0, 3.0], [-4.0, -6.0, 3.0]], atol=1e-9)
    assert node.GetLineLengthWorld() == pytest.approx(5.0)


@pytest.mark.parametrize("coords", ["RAS", "LPS"])
def test_slicer_reads_our_fcsv(tmp_path: Path, coords: str) -> None:
    lm = _sample()
    path = tmp_path / f"ours_{coords}.fcsv"
    write_landmarks(path, lm, coords)
    labels, descriptions, ras, _ = _slicer_points(_slicer_read(path))
    placed = lm.reordered([n for i, n in enumerate(lm.names) if lm.defined[i]])
    assert labels == placed.names
    assert descriptions == placed.descriptions
    np.testing.assert_allclose(ras, placed.positions_in("RAS"), atol=1e-9, rtol=1e-12)


def test_slicer_reads_our_groundtruth_conversions(tmp_path: Path, shared_data: Path) -> None:
    gt = read_landmarks(GT_FCSV)
    for name in ("gt.mrk.json", "gt.fcsv"):
        write_landmarks(tmp_path / name, gt, "RAS")
        labels, _, ras, _ = _slicer_points(_slicer_read(tmp_path / name))
        assert labels == gt.names
        np.testing.assert_allclose(ras, gt.positions_in("RAS"), atol=1e-9)


def _slicer_written_node():
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    points = {"AC": [10.5, -3.25, 7.0], "PC": [-0.125, 22.0, -5.5], "Unplaced": None, "F_1-7": [1e-7, 2.0, 3.0]}
    for label, ras in points.items():
        n = node.AddControlPointWorld(ras or [0.0, 0.0, 0.0], label)
        node.SetNthControlPointDescription(n, f"about {label}")
        if ras is None:
            node.UnsetNthControlPointPosition(n)
    return scene, node, points


@pytest.mark.parametrize("suffix", [".mrk.json", ".fcsv"])
def test_our_reader_reads_slicer_output(tmp_path: Path, suffix: str) -> None:
    scene, node, points = _slicer_written_node()
    storage = (slicer.vtkMRMLMarkupsJsonStorageNode() if suffix == ".mrk.json"
               else slicer.vtkMRMLMarkupsFiducialStorageNode())
    scene.AddNode(storage)
    path = tmp_path / f"slicer{suffix}"
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1
    lm = read_landmarks(path)
    assert lm.names == list(points)
    assert lm.descriptions == [f"about {k}" for k in points]
    for name, ras in points.items():
        if ras is None:
            assert np.isnan(lm.get(name)).all()
        else:
            np.testing.assert_allclose(lm.positions_in("RAS")[lm.index_of(name)], ras, atol=1e-9)
    assert lm.status == ["defined", "defined", "missing", "defined"]

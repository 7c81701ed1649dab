"""The inference path: geometry handling, decoding, devices, errors (tiny untrained model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io.volume import Geometry, Volume
from napari_dglandmark.model.decode import decode
from napari_dglandmark.model.devices import resolve_device
from napari_dglandmark.model.inference import Cancelled, Detector
from napari_dglandmark.model.pipeline import PipelineConfig, prepare_source
from napari_dglandmark.model.resample import grid_around, resample


def _phantom(direction=None, spacing=(1.5, 1.0, 2.0)) -> Volume:
    direction = np.eye(3) if direction is None else direction
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 5, size=(30, 40, 36)).astype(np.float32)
    arr[10:20, 12:30, 10:26] += 300
    return Volume(arr, Geometry(arr.shape, spacing, (10.0, -20.0, 5.0), direction), "phantom.nii.gz")


def test_resample_reproduces_source_on_its_own_grid():
    vol = _phantom(direction=np.diag([-1.0, -1.0, 1.0]))
    out = resample(torch.as_tensor(vol.array), vol.geometry, vol.geometry)[0, 0].numpy()
    np.testing.assert_allclose(out, vol.array, rtol=1e-5, atol=1e-3)


def test_resample_samples_the_physical_point():
    """A bright voxel lands where its physical position says, on a differently oriented grid."""
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    vol = _phantom(direction=rot)
    vol.array[:] = 0
    vol.array[15, 20, 18] = 1000.0  # k, j, i
    point = vol.index_to_physical(np.array([18.0, 20.0, 15.0]))
    grid = grid_around(point, 0.5, (9, 9, 9))
    out = resample(torch.as_tensor(vol.array), vol.geometry, grid)[0, 0]
    k, j, i = np.unravel_index(int(out.argmax()), out.shape)
    np.testing.assert_allclose(grid.index_to_physical(np.array([i, j, k], float)), point, atol=1e-6)


def test_decode_softmax_centroid_is_subvoxel():
    d = 16
    k, j, i = np.meshgrid(np.arange(d), np.arange(d), np.arange(d), indexing="ij")
    truth = np.array([7.3, 8.6, 5.25])  # i, j, k
    logits = -((i - truth[0]) ** 2 + (j - truth[1]) ** 2 + (k - truth[2]) ** 2) / (2 * 1.0**2)
    index, conf = decode(torch.as_tensor(logits[None], dtype=torch.float32), "softmax-centroid", radius=4)
    assert np.abs(index[0].numpy() - truth).max() < 0.05
    assert 0.95 < float(conf[0]) <= 1.0
    flat, conf_flat = decode(torch.zeros(1, d, d, d), "softmax-centroid", radius=2)
    assert float(conf_flat[0]) < 0.05  # a flat map is no evidence


def test_decode_argmax_is_integer():
    maps = torch.zeros(1, 8, 8, 8)
    maps[0, 2, 3, 4] = 255
    index, _ = decode(maps, "argmax")
    assert index[0].tolist() == [4.0, 3.0, 2.0]


def test_detect_returns_every_landmark_in_physical_space(tiny_model_path):
    det = Detector(tiny_model_path, device="cpu")
    vol = _phantom(direction=np.diag([-1.0, -1.0, 1.0]))
    calls = []
    lms = det.detect(vol, progress=lambda done, total: calls.append((done, total)))
    assert lms.names == det.names and len(lms) == 32
    assert np.isfinite(lms.positions).all()
    assert ((lms.confidence >= 0) & (lms.confidence <= 1)).all()
    assert set(lms.status) == {"predicted"}
    assert calls[-1][0] == calls[-1][1]
    for right, left in det.bilateral_pairs:  # never on swapped sides
        assert lms.get(right)[0] <= lms.get(left)[0]


def test_detect_can_be_cancelled(tiny_model_path):
    det = Detector(tiny_model_path, device="cpu")
    with pytest.raises(Cancelled):
        det.detect(_phantom(), cancelled=lambda: True)


@pytest.mark.parametrize("array, reason", [
    (np.zeros((20, 20, 20), np.float32), "constant"),
    (np.full((20, 20, 20), np.nan, np.float32), "NaN"),
])
def test_detect_refuses_unusable_voxels(tiny_model_path, array, reason):
    det = Detector(tiny_model_path, device="cpu")
    with pytest.raises(DGLandmarkError, match=reason):
        det.detect(Volume(array, Geometry(array.shape, (1, 1, 1), (0, 0, 0)), "bad.nii.gz"))


def test_auto_device_is_cpu_here_and_cuda_request_is_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(DGLandmarkError, match="CUDA"):
        resolve_device("cuda")


def test_pipeline_config_round_trips_through_metadata():
    cfg = PipelineConfig(coarse_size=(10, 12, 14))
    assert PipelineConfig.from_dict(cfg.to_dict()) == cfg


def test_prepare_source_normalises_to_unit_range():
    src = prepare_source(_phantom(), PipelineConfig())
    assert 0.0 <= float(src.image.min()) and float(src.image.max()) <= 1.0


def test_out_of_memory_on_the_accelerator_falls_back_to_cpu(tiny_model_path):
    """A CUDA OOM mid-detection is answered with a warning and a CPU re-run, not a crash."""
    det = Detector(tiny_model_path, device="cpu", backend="torch")
    coarse = det.network.coarse
    calls = {"n": 0}

    class FailsOnce(torch.nn.Module):
        def forward(self, x):
            calls["n"] += 1
            if x.device.type == "meta":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return coarse(x)

    det.network.coarse = FailsOnce()
    det.runner.torch_device = torch.device("meta")  # stands in for a GPU: tensors move, the forward pass "runs out"
    with pytest.warns(UserWarning, match="falling back to the CPU"):
        lms = det.detect(_phantom())
    assert det.device == "cpu" and calls["n"] == 2 and np.isfinite(lms.positions).all()

"""Backends of the one inference path: numpy sampling/decoding vs the torch functions training uses,
ONNX Runtime vs torch networks, the ONNX exports' SHA-256 check, and a torch-free CLI start."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dglandmark.cli import main
from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import read_volume
from napari_dglandmark.io.geometry import Geometry, Volume
from napari_dglandmark.model import onnx_export, registry
from napari_dglandmark.model import resample as resample_module
from napari_dglandmark.model.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from napari_dglandmark.model.decode import decode, decode_array
from napari_dglandmark.model.inference import Detector
from napari_dglandmark.model.pipeline import (
    PipelineConfig,
    coarse_input,
    crop_source,
    fine_grids,
    fine_input,
    fine_reach_mm,
    fix_swapped_sides,
    pooled_copy,
    prepare_source,
)
from napari_dglandmark.model.preprocess import percentiles
from napari_dglandmark.model.resample import grid_around, resample, resample_array
from napari_dglandmark.sample import SAMPLE_VOLUME as SAMPLE_IMAGE
from tests.conftest import SHARED_DATA, T1W, require_shared

ROOT = Path(__file__).resolve().parents[2]
STROKE_T2 = SHARED_DATA / "real-unlabelled" / "stroke_T2.nii.gz"
AGREE_MM = 0.01  # ONNX Runtime vs torch, every landmark (issue 19)


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path, monkeypatch) -> Path:
    """Exports of test checkpoints go to a temporary cache, never the user's."""
    folder = tmp_path / "onnx-cache"
    monkeypatch.setenv(onnx_export.CACHE_ENV, str(folder))
    return folder


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _phantom() -> Volume:
    rng = np.random.default_rng(3)
    arr = rng.normal(100, 20, size=(30, 40, 36)).astype(np.float32)
    arr[8:22, 10:30, 9:27] += 400
    direction = _rotation(2, 30) @ np.diag([-1.0, -1.0, 1.0])
    return Volume(arr, Geometry(arr.shape, (1.5, 1.0, 2.0), (10.0, -20.0, 5.0), direction), "phantom.nii.gz")


# ----------------------------------------------------------------------------- numpy == torch

def test_numpy_resampling_matches_torch_grid_sample():
    """Rotated source, rotated and shifted transforms, grids partly outside the image (zeros)."""
    vol = _phantom()
    image = vol.array / 500.0
    grid = grid_around(vol.index_to_physical(np.array([18.0, 20.0, 15.0])), 1.3, (11, 9, 13))
    move = np.eye(4)
    move[:3, :3] = _rotation(0, 25)
    move[:3, 3] = [30.0, -5.0, 12.0]  # far enough that part of the grid leaves the image
    transforms = [None, move]
    want = resample(torch.as_tensor(image), vol.geometry, grid, transforms).numpy()
    got = resample_array(image, vol.geometry, grid, transforms)
    assert got.shape == want.shape == (2, 1, 13, 9, 11)
    assert (want[1] == 0).any() and (want[1] != 0).any()  # the second grid really is partly outside
    np.testing.assert_allclose(got, want, atol=2e-5)



def test_numpy_resampling_in_blocks_matches_torch_grid_sample(monkeypatch):
    """Grids of several blocks (the last one partial), partly outside the image, blocks of any size."""
    vol = _phantom()
    image = vol.array / 500.0
    grid = grid_around(vol.index_to_physical(np.array([25.0, 20.0, 12.0])), 1.1, (31, 23, 29))
    move = np.eye(4)
    move[:3, :3] = _rotation(1, -35)
    move[:3, 3] = [-8.0, 14.0, 3.0]
    want = resample(torch.as_tensor(image), vol.geometry, grid, [move, None]).numpy()
    assert np.prod(grid.shape) > resample_module.BLOCK and (want == 0).any() and (want != 0).any()
    got = resample_array(image, vol.geometry, grid, [move, None])
    np.testing.assert_allclose(got, want, atol=2e-5)
    monkeypatch.setattr(resample_module, "BLOCK", 1000)  # another cut, the same numbers
    resample_module._grid_index_blocks.cache_clear()
    np.testing.assert_array_equal(resample_array(image, vol.geometry, grid, [move, None]), got)
    resample_module._grid_index_blocks.cache_clear()


@pytest.mark.parametrize("values", [
    np.random.default_rng(0).integers(-3000, 3000, 100_001).astype(np.int16),
    np.random.default_rng(1).integers(0, 256, 5_000).astype(np.uint8),
    np.random.default_rng(2).integers(0, 4096, 77).astype(np.float32),  # integer-valued floats
    np.random.default_rng(3).normal(0, 1, 10_000).astype(np.float32),  # real floats: numpy itself
    np.array([7], np.uint16),
    np.array([1.0, np.nan, 3.0], np.float32),
])
def test_percentiles_are_numpys(values):
    for q in ([0.5, 99.5], [0, 100], [50], [0.1, 33.3, 99.9]):
        want = np.percentile(values.astype(np.float32), q)
        got = percentiles(values, q)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype

def test_fine_and_coarse_inputs_agree_between_numpy_and_torch_sources():
    vol = _phantom()
    cfg = PipelineConfig(coarse_spacing=4.0, coarse_size=(16, 16, 16), fine_size=(8, 8, 8))
    arrays, tensors = prepare_source(vol, cfg, device=None), prepare_source(vol, cfg)
    assert arrays.is_array and not tensors.is_array
    np.testing.assert_allclose(arrays.image, tensors.image.numpy(), atol=1e-7)
    np.testing.assert_allclose(arrays.pooled, tensors.pooled.numpy(), atol=1e-6)
    frame = np.eye(4)
    frame[:3, :3] = _rotation(1, 20)
    from napari_dglandmark.model.pipeline import coarse_grid

    grid = coarse_grid(cfg, arrays.center)
    np.testing.assert_allclose(coarse_input(arrays, grid, [None, frame]),
                               coarse_input(tensors, grid, [None, frame]).numpy(), atol=2e-5)
    centers = arrays.center + np.array([[0.0, 0, 0], [5, -3, 2], [-20, 10, 4]])
    grids = fine_grids(cfg, centers)
    frames = [frame, None, frame]
    np.testing.assert_allclose(fine_input(arrays, grids, frames), fine_input(tensors, grids, frames).numpy(),
                               atol=2e-5)


def test_pooling_numpy_matches_avg_pool3d():
    vol = _phantom()
    image = np.random.default_rng(0).random(vol.array.shape, dtype=np.float32)
    a, ga = pooled_copy(image, vol.geometry, 8.0)
    t, gt = pooled_copy(torch.as_tensor(image), vol.geometry, 8.0)
    assert a.shape == tuple(t.shape) and a.shape != image.shape
    np.testing.assert_allclose(a, t.numpy(), atol=1e-6)
    assert ga.shape == gt.shape and ga.spacing == gt.spacing and np.allclose(ga.origin, gt.origin)


@pytest.mark.parametrize("method", ["softmax-centroid", "centroid", "argmax"])
def test_numpy_decoding_matches_torch(method):
    rng = np.random.default_rng(1)
    maps = rng.normal(0, 1, size=(5, 12, 10, 14)).astype(np.float32)
    for n, (k, j, i) in enumerate([(5, 4, 6), (0, 0, 0), (11, 9, 13), (6, 0, 7), (3, 8, 1)]):  # edges too
        maps[n, k, j, i] += 12.0
        maps[n, max(k - 1, 0), j, i] += 6.0
    want_idx, want_conf = decode(torch.as_tensor(maps), method, radius=2, expected_peak=20.0)
    got_idx, got_conf = decode_array(maps, method, radius=2, expected_peak=20.0)
    np.testing.assert_allclose(got_idx, want_idx.numpy(), atol=1e-5)
    np.testing.assert_allclose(got_conf, want_conf.numpy(), atol=1e-5)  # float32 sums in another order
    with pytest.raises(ValueError, match="unknown decoding"):
        decode_array(maps, "median")


def test_crop_for_test_time_copy_samples_the_same_values():
    vol = _phantom()
    cfg = PipelineConfig(fine_size=(8, 8, 8))
    src = prepare_source(vol, cfg, device=None)
    centers = src.center + np.array([[2.0, 1, 0], [-4, 3, 1]])
    cropped = crop_source(src, centers, fine_reach_mm(cfg))
    assert cropped.image.size < src.image.size
    frame = np.eye(4)
    frame[:3, :3] = _rotation(0, 40)
    grids = fine_grids(cfg, centers)
    np.testing.assert_allclose(fine_input(cropped, grids, [frame, frame]), fine_input(src, grids, [frame, frame]),
                               atol=1e-6)


def test_swapped_sides_are_swapped_back():
    pos = np.array([[10.0, 0, 0], [-10.0, 0, 0], [0, 5, 0]])  # row 0 is "R" but lies at larger LPS x
    conf = np.array([0.8, 0.6, 0.9])
    fixed, c = fix_swapped_sides(pos, conf, np.eye(3), [(0, 1)])
    np.testing.assert_array_equal(fixed[:2], pos[[1, 0]])
    np.testing.assert_allclose(c, [0.3, 0.3, 0.9])
    assert pos[0, 0] == 10.0  # the inputs are not changed
    turned, _ = fix_swapped_sides(pos, conf, -np.eye(3) @ np.diag([1.0, 1.0, -1.0]), [(0, 1)])
    np.testing.assert_array_equal(turned, pos)  # facing the other way, these sides are right


# ----------------------------------------------------------------------------- ONNX Runtime == torch

def _assert_agree(a, b) -> None:
    assert a.names == b.names
    worst = float(np.linalg.norm(a.positions - b.positions, axis=1).max())
    assert worst <= AGREE_MM, worst
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-3)
    np.testing.assert_array_equal(a.needs_review, b.needs_review)
    assert a.image_warning == b.image_warning


@pytest.fixture(scope="module")
def bundled() -> dict[str, Detector]:
    return {b: Detector("afids32", device="cpu", backend=b) for b in ("onnx", "torch")}


def test_bundled_exports_belong_to_the_bundled_weights():
    """Fails when afids32.safetensors changed and scripts/export_onnx.py was not rerun."""
    import onnxruntime as ort

    model = registry.bundled_models()["afids32"]
    for stage in onnx_export.STAGES:
        session = ort.InferenceSession(str(onnx_export.onnx_path(model, stage)), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        assert meta[onnx_export.SHA_KEY] == file_sha256(model), "rerun: python scripts/export_onnx.py"


def test_onnx_and_torch_give_the_same_landmarks_on_the_sample(bundled):
    vol = read_volume(SAMPLE_IMAGE)
    assert bundled["onnx"].backend == "onnx" and bundled["torch"].backend == "torch"
    _assert_agree(bundled["onnx"].detect(vol), bundled["torch"].detect(vol))


def test_onnx_and_torch_give_the_same_landmarks_on_a_rotated_real_scan(bundled):
    """A real patient scan presented 25 degrees rolled and 15 pitched (its direction matrix turned)."""
    vol = read_volume(require_shared(STROKE_T2))
    turn = _rotation(1, 25) @ _rotation(0, 15)
    rotated = Volume(vol.array, Geometry(vol.geometry.shape, vol.spacing, vol.origin, turn @ vol.direction),
                     vol.path)
    onnx, reference = bundled["onnx"].detect(rotated), bundled["torch"].detect(rotated)
    _assert_agree(onnx, reference)
    ac_pc = np.linalg.norm(onnx.get("AC") - onnx.get("PC"))
    assert 20 < ac_pc < 34  # a real detection, not two equal failures


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_torch_path_agrees_with_onnx_on_the_cpu(bundled):
    """On a GPU build with a device: torch on CUDA (fp16 autocast) against ONNX Runtime on the CPU.
    Mixed precision moves heatmap peaks a little, so the bound is the fine grid's 1 mm / 20, not 0.01 mm."""
    cuda = Detector("afids32", device="auto", backend="auto")
    assert cuda.backend == "torch" and cuda.device.startswith("cuda")
    vol = read_volume(require_shared(T1W))
    a, b = cuda.detect(vol), bundled["onnx"].detect(vol)
    assert float(np.linalg.norm(a.positions - b.positions, axis=1).max()) <= 0.05


# ----------------------------------------------------------------------------- exports and their hash

def test_export_records_the_checkpoint_hash_and_passes_the_onnx_checker(tiny_model_path, tmp_path):
    import onnx

    paths = onnx_export.export_onnx(tiny_model_path, tmp_path)
    assert set(paths) == {"coarse", "fine"}
    for stage, path in paths.items():
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta[onnx_export.SHA_KEY] == file_sha256(tiny_model_path)
        assert meta[onnx_export.STAGE_KEY] == stage


def _changed_copy(src: Path, folder: Path) -> Path:
    """``src`` saved again under the same name in ``folder`` with other weights."""
    network, meta = load_checkpoint(src)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.05)
    out = folder / src.name
    save_checkpoint(out, network, {k: v for k, v in meta.items() if k not in ("architecture", "created")})
    return out


def test_stale_export_is_never_run(tiny_model_path, tmp_path, onnx_cache):
    """An export beside the checkpoint made from other weights is refused (warning), a fresh one is
    made into the cache, and detection equals torch's on the new weights."""
    folder = tmp_path / "models"
    folder.mkdir()
    old = folder / tiny_model_path.name
    shutil.copy(tiny_model_path, old)
    onnx_export.export_onnx(old)  # beside it
    new = _changed_copy(tiny_model_path, tmp_path / "models")  # same name: the export beside it is now stale
    assert file_sha256(new) != file_sha256(tiny_model_path)
    with pytest.warns(UserWarning, match="other weights") as caught:
        det = Detector(new, device="cpu", backend="onnx")
    assert det.backend == "onnx"
    assert any("exported to ONNX once" in str(w.message) for w in caught)
    assert any(onnx_cache.rglob("*.onnx"))
    vol = _phantom()
    _assert_agree(det.detect(vol), Detector(new, device="cpu", backend="torch").detect(vol))


def test_without_an_exporter_the_torch_backend_runs_and_says_so(tiny_model_path, monkeypatch):
    from napari_dglandmark.model import runners

    def no_onnx(*args, **kwargs):
        raise DGLandmarkError("exporting to ONNX needs the onnx package (pip install onnx)")

    monkeypatch.setattr(runners, "export_onnx", no_onnx)
    with pytest.warns(UserWarning, match="running on torch"):
        det = Detector(tiny_model_path, device="cpu", backend="auto")
    assert det.backend == "torch"


def test_assigning_a_network_runs_detection_on_it(tiny_model_path):
    """Adaptation trains ``detector.network`` in place: detection must then run those weights (torch)."""
    det = Detector(tiny_model_path, device="cpu", backend="onnx")
    vol = _phantom()
    before = det.detect(vol)
    trained, _ = load_checkpoint(tiny_model_path)
    trained.load_state_dict(det.network.state_dict())
    with torch.no_grad():
        for p in trained.fine.parameters():
            p.mul_(1.5)
    det.network = trained
    assert det.backend == "torch" and det.network is trained
    assert np.abs(det.detect(vol).positions - before.positions).max() > 1e-3


# ----------------------------------------------------------------------------- choosing, and a torch-free start

def test_backend_choice(monkeypatch):
    monkeypatch.setattr(registry, "cuda_may_be_present", lambda: False)
    assert registry.choose_backend("auto", "auto") == ("onnx", "cpu")
    assert registry.choose_backend("auto", "cpu") == ("onnx", "cpu")
    assert registry.choose_backend("auto", "cuda") == ("torch", "cuda")
    assert registry.choose_backend("torch", "auto") == ("torch", "auto")
    with pytest.raises(DGLandmarkError, match="runs on the CPU"):
        registry.choose_backend("onnx", "cuda")
    with pytest.raises(DGLandmarkError, match="unknown backend"):
        registry.choose_backend("tensorrt", "auto")
    if torch.cuda.is_available():
        monkeypatch.setattr(registry, "cuda_may_be_present", lambda: True)
        assert registry.choose_backend("auto", "auto") == ("torch", "cuda")


def test_onnx_backend_with_a_gpu_device_is_one_error_line(capsys):
    assert main(["detect", str(SAMPLE_IMAGE), "--backend", "onnx", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--backend torch" in err[0]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_cli_parser_and_onnx_detection_do_not_import_torch(tmp_path):
    parsed = _modules_after("from napari_dglandmark.cli import build_parser; build_parser()")
    assert not {"torch", "onnxruntime", "SimpleITK", "numpy"} & parsed
    out = tmp_path / "out.csv"
    ran = _modules_after(f"from napari_dglandmark.cli import main; assert main(['detect', {str(SAMPLE_IMAGE)!r}, "
                         f"'--quiet', '--out', {str(out)!r}]) == 0")
    assert "onnxruntime" in ran and "torch" not in ran
    assert len(out.read_text().splitlines()) == 33


def test_review_and_sampling_modules_do_not_import_the_detector():
    loaded = _modules_after("import napari_dglandmark.model.quality, napari_dglandmark.model.runners, "
                            "napari_dglandmark.model.single_stage")
    assert "napari_dglandmark.model.inference" not in loaded

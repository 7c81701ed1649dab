"""Shared fixtures: the read-only real data beside the checkout."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def _choose_qt_binding() -> None:
    """One Qt binding for napari (qtpy) and pytest-qt alike: PyQt6 (napari deprecated PyQt5) when installed.

    pytest-qt and qtpy guess in different orders, so with two bindings installed they could each load a
    different one; pinning both here (before pytest-qt configures) keeps them together.
    """
    api = os.environ.get("QT_API") or ("pyqt6" if importlib.util.find_spec("PyQt6") else None)
    if api:
        os.environ["QT_API"] = api
        os.environ.setdefault("PYTEST_QT_API", api)


_choose_qt_binding()

SHARED_DATA = Path(
    os.environ.get("DGLANDMARK_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
AFIDS = SHARED_DATA / "afids-mni2009c"
T1W = AFIDS / "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
GT_FCSV = AFIDS / "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"
RATER2_FCSV = AFIDS / "tpl-MNI152NLin2009cAsym_res-01_T1w.fcsv"
RATER2_MRK = AFIDS / "tpl-MNI152NLin2009cAsym_res-01_T1w_afids.mrk.json"
MNI2009A = SHARED_DATA / "mni-icbm152-2009a"
SCHEMA = SHARED_DATA / "slicer-markups-schema" / "markups-schema-v1.0.3.json"
CT_DIR = SHARED_DATA / "slicerio-ct"


# CI sets this (``.ci/run``): missing shared data is then a failure, not a quiet skip.
REQUIRE_SHARED_DATA_ENV = "DGLANDMARK_REQUIRE_SHARED_DATA"


def shared_data_required() -> bool:
    return os.environ.get(REQUIRE_SHARED_DATA_ENV, "").strip().lower() not in ("", "0", "false", "no")


def require_shared(path: Path) -> Path:
    """``path`` under the shared data; skips the test when it is absent (fails under the CI switch)."""
    if not path.exists():
        reason = f"shared data not found: {path} (set DGLANDMARK_SHARED_DATA)"
        if shared_data_required():
            pytest.fail(f"{reason}; {REQUIRE_SHARED_DATA_ENV} is set, so this is a failure", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; skips the test (with the reason) when it is absent, fails under the CI switch."""
    require_shared(T1W)
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """An untrained, tiny two-stage afids32 model (fast on CPU): for plumbing tests, not accuracy."""
    import torch

    from napari_dglandmark.model.checkpoint import save_checkpoint
    from napari_dglandmark.model.networks import TwoStageDetector
    from napari_dglandmark.model.pipeline import PipelineConfig
    from napari_dglandmark.protocols import load_protocol

    torch.manual_seed(0)
    protocol = load_protocol("afids32")
    n = len(protocol.names)
    net = TwoStageDetector(dict(name="resunet3d", in_channels=1, out_channels=n, base_width=4, depth=2,
                                blocks_per_stage=1),
                           dict(name="resunet3d", in_channels=1, out_channels=n, base_width=4, depth=1,
                                blocks_per_stage=1))
    pipeline = PipelineConfig(coarse_spacing=8.0, coarse_size=(24, 24, 24), fine_size=(12, 12, 12), fine_iterations=1)
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_checkpoint(path, net, {"model_name": "tiny", "protocol": "afids32", "landmark_names": list(protocol.names),
                                "pipeline": pipeline.to_dict(),
                                "bilateral_pairs": [list(p) for p in protocol.bilateral_pairs]})
    return path

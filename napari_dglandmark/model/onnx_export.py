"""ONNX exports of a two-stage checkpoint: one ``.onnx`` per network, made from the ``.safetensors``.

Each export records the SHA-256 of the checkpoint it was made from (ONNX metadata
``dglandmark.source_sha256``) and the grid it reads; :mod:`model.runners` refuses an export whose
hash is not the checkpoint's, so stale weights never run. Exporting needs torch and the ``onnx``
package (``pip install napari-dglandmark[export]``); running an export needs only ONNX Runtime.

    python scripts/export_onnx.py            # the bundled models, beside their .safetensors
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DGLandmarkError
from ..io.atomic import atomic_path

STAGES = ("coarse", "fine")
OPSET = 17
SHA_KEY = "dglandmark.source_sha256"
STAGE_KEY = "dglandmark.stage"
SIZE_KEY = "dglandmark.input_size"  # "D,H,W" of the grid the network reads
INPUT, OUTPUT = "image", "heatmaps"
CACHE_ENV = "DGLANDMARK_ONNX_CACHE"
TOLERANCE = 1e-3  # largest |ONNX - torch| logit accepted when an export is checked


def onnx_path(checkpoint: str | os.PathLike, stage: str, folder: str | os.PathLike | None = None) -> Path:
    """``<stem>.<stage>.onnx`` beside the checkpoint, or in ``folder``."""
    src = Path(checkpoint)
    stem = src.name[: -len(".safetensors")] if src.name.endswith(".safetensors") else src.stem
    return Path(folder or src.parent) / f"{stem}.{stage}.onnx"


def cache_folder(sha256: str) -> Path:
    """Where exports of user checkpoints go (one folder per checkpoint hash); ``$DGLANDMARK_ONNX_CACHE`` overrides."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        try:
            import platformdirs

            root = platformdirs.user_cache_dir("napari-dglandmark", appauthor=False)
        except ImportError:
            root = str(Path.home() / ".cache" / "napari-dglandmark")
        root = str(Path(root) / "onnx")
    return Path(root) / sha256[:16]


def input_sizes(metadata: dict) -> dict[str, tuple[int, int, int]]:
    """Array shape (D, H, W) each network reads, from the checkpoint's pipeline settings."""
    from .pipeline import PipelineConfig

    cfg = PipelineConfig.from_dict(metadata.get("pipeline", {}))
    return {"coarse": tuple(cfg.coarse_size[::-1]), "fine": tuple(cfg.fine_size[::-1])}


def export_onnx(checkpoint: str | os.PathLike, folder: str | os.PathLike | None = None,
                check: bool = True) -> dict[str, Path]:
    """Export both networks of a two-stage checkpoint (atomically); returns stage -> path.

    With ``check``, ONNX Runtime runs each export on a random batch and must match torch within
    :data:`TOLERANCE`.
    """
    try:
        import onnx
    except ImportError:
        raise DGLandmarkError("exporting to ONNX needs the onnx package (pip install onnx)", checkpoint) from None
    import torch

    from .checkpoint import file_sha256, load_checkpoint

    src = Path(checkpoint)
    network, meta = load_checkpoint(src)
    if meta["architecture"]["name"] != "two-stage":
        raise DGLandmarkError("only two-stage detection models are exported to ONNX", src)
    sha = file_sha256(src)
    sizes = input_sizes(meta)
    out: dict[str, Path] = {}
    for stage in STAGES:
        net = getattr(network, stage).eval()
        example = torch.zeros(2, 1, *sizes[stage])
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # tracer notes on shape checks that are constant for a fixed grid
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        model = onnx.load_from_string(buffer.getvalue())
        for key, value in ((SHA_KEY, sha), (STAGE_KEY, stage), (SIZE_KEY, ",".join(map(str, sizes[stage]))),
                           ("dglandmark.model_name", str(meta.get("model_name", src.stem)))):
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        path = onnx_path(src, stage, folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(model.SerializeToString())
            if check:
                _check_export(tmp, net, sizes[stage])
        out[stage] = path
    return out


def _check_export(path: str | os.PathLike, net, size: tuple[int, int, int]) -> None:
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).random((3, 1, *size), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT: x})[0]
    with torch.inference_mode():
        want = net(torch.from_numpy(x)).numpy()
    worst = float(np.abs(got - want).max())
    if not worst <= TOLERANCE:
        raise DGLandmarkError(f"ONNX export differs from torch by {worst:.2g} (> {TOLERANCE:g})", path)

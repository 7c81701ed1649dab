"""Which model, on which backend and device: bundled names, resolving a model, choices. Torch-free.

The CLI parser, the Slicer module's ``--xml`` and the napari widget's lists read this module, so
it imports neither torch nor ONNX Runtime (``choose_backend`` imports torch only on a machine that
may have a CUDA device, where the torch backend is what runs anyway).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import DGLandmarkError

DEFAULT_MODEL = "afids32"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
BACKEND_CHOICES = ("auto", "onnx", "torch")
BACKEND_HELP = ("auto = torch on a CUDA GPU when there is one, else ONNX Runtime on the CPU (fast start, "
                "no torch import); onnx = ONNX Runtime (CPU); torch = PyTorch on --device")
SUFFIX = ".safetensors"


def bundled_models_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "models"


def bundled_models() -> dict[str, Path]:
    """Bundled model name -> .safetensors path."""
    return {p.name[: -len(SUFFIX)]: p for p in sorted(bundled_models_dir().glob("*" + SUFFIX))}


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """A bundled model by name, or a checkpoint path."""
    key = str(name_or_path or DEFAULT_MODEL)
    models = bundled_models()
    if key in models:
        return models[key]
    path = Path(key)
    if path.exists():
        return path
    known = ", ".join(models) or "none"
    raise DGLandmarkError(f"no bundled model or file named {key!r} (bundled: {known})")


def is_bundled(path: str | os.PathLike) -> bool:
    return Path(path).resolve().parent == bundled_models_dir()


@dataclass
class ModelInfo:
    path: str
    name: str
    protocol: str
    landmark_names: list[str]
    sha256: str
    metadata: dict


def model_info(model: str | os.PathLike | None, two_stage: bool | None = None) -> ModelInfo:
    """Describe a landmark model from its metadata (no weights read, no torch); with ``two_stage``,
    refuse the wrong kind of network."""
    from .checkpoint import file_sha256, read_metadata

    path = resolve_model(model)
    meta = read_metadata(path)
    if two_stage is not None and (meta["architecture"]["name"] == "two-stage") != two_stage:
        what = ("is not a detection model (expected a two-stage landmark detector)" if two_stage
                else "is a two-stage model; use inference.Detector")
        raise DGLandmarkError(what, path)
    if not meta.get("landmark_names"):
        raise DGLandmarkError("checkpoint metadata lists no landmark names", path)
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem
    return ModelInfo(str(path), meta.get("model_name", stem), meta.get("protocol", ""),
                     list(meta["landmark_names"]), file_sha256(path), meta)


# ----------------------------------------------------------------------------- backend and device

def check_device_name(device: str) -> str:
    choice = str(device).lower()
    if choice not in DEVICE_CHOICES and not choice.startswith("cuda:"):
        raise DGLandmarkError(f"unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)}")
    return choice


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def cuda_may_be_present() -> bool:
    """Whether torch could find a CUDA (or ROCm) device here, judged without importing torch:
    a torch build that is not CPU-only and an NVIDIA/AMD driver on the machine."""
    import importlib.metadata
    import shutil

    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    if version.endswith("+cpu") or sys.platform == "darwin":
        return False
    if any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd")):
        return True
    return shutil.which("nvidia-smi") is not None


def choose_backend(backend: str = "auto", device: str = "auto") -> tuple[str, str]:
    """(backend, device) that will run: ``("onnx", "cpu")`` or ``("torch", <device choice>)``.

    ``auto``: torch on CUDA when there is a CUDA device (or one is asked for, or MPS is asked for),
    else ONNX Runtime on the CPU; ONNX Runtime runs on the CPU only here.
    """
    choice = str(backend).lower()
    if choice not in BACKEND_CHOICES:
        raise DGLandmarkError(f"unknown backend {backend!r}; use one of {', '.join(BACKEND_CHOICES)}")
    dev = check_device_name(device)
    if choice == "onnx":
        if dev not in ("auto", "cpu"):
            raise DGLandmarkError(f"the onnx backend runs on the CPU; use --backend torch for --device {dev}")
        return "onnx", "cpu"
    if choice == "torch":
        return "torch", dev
    if dev not in ("auto", "cpu"):
        return "torch", dev
    if dev == "auto" and cuda_may_be_present():
        import torch

        if torch.cuda.is_available():
            return "torch", "cuda"
    return ("onnx", "cpu") if onnxruntime_available() else ("torch", "cpu")

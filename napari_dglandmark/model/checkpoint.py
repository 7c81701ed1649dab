"""Model files: safetensors weights with JSON metadata in the header, plus a sidecar ``<stem>.json``.

Pickles are never loaded; ``import_pth_state_dict`` reads raw state dicts with ``weights_only=True``.
Reading metadata (``read_metadata``, ``file_sha256``) does not import torch; loading and saving do.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from ..errors import DGLandmarkError
from ..io.atomic import atomic_path

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT_VERSION = 1
HEADER_KEY = "dglandmark"
SUFFIX = ".safetensors"
_PICKLE_HINT = (
    "is a pickled PyTorch file; convert it with `dglandmark-train import-pth`, pickles are never loaded"
)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside a checkpoint: ``<stem>.json``."""
    return Path(path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths turn up in metadata from callers; store them as plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serialisable")


def save_file(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None) -> None:
    """safetensors' torch writer, imported when a model is saved."""
    from safetensors.torch import save_file as write

    write(tensors, filename, metadata=metadata)


def save_checkpoint(path: str | os.PathLike, network: nn.Module, metadata: dict[str, Any]) -> None:
    """Write ``network`` to ``path`` (.safetensors, metadata in the header) and a ``<stem>.json`` sidecar, atomically."""
    from .networks import architecture_of

    out = Path(path)
    if out.suffix != SUFFIX:
        raise DGLandmarkError(f"model files must end in {SUFFIX}", out)
    meta = dict(metadata)
    meta["architecture"] = architecture_of(network)
    meta["format_version"] = FORMAT_VERSION
    meta["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    meta.pop("sha256", None)
    header_json = json.dumps(meta, default=_json_default, sort_keys=True)
    # Round-trip through JSON so the sidecar holds exactly what the header holds.
    meta = json.loads(header_json)
    # safetensors refuses non-contiguous or storage-sharing tensors; clones are cheap at these sizes.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in network.state_dict().items()}
    with atomic_path(out) as tmp_weights:
        save_file(tensors, str(tmp_weights), metadata={HEADER_KEY: header_json})
        sidecar = dict(meta, sha256=file_sha256(tmp_weights))
        with atomic_path(sidecar_path(out)) as tmp_json:
            tmp_json.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80") or zipfile.is_zipfile(path)


def _open(path: Path, framework: str = "numpy"):
    """safe_open ``path`` (``framework="pt"`` to read torch tensors), every failure a one-line DGLandmarkError."""
    if not path.exists():
        raise DGLandmarkError("model file not found", path)
    if not path.is_file():
        raise DGLandmarkError("not a file", path)
    try:
        return safe_open(str(path), framework=framework, device="cpu")
    except (SafetensorError, OSError) as exc:
        if _looks_pickled(path):
            raise DGLandmarkError(_PICKLE_HINT, path) from None
        raise DGLandmarkError(f"not a safetensors model file ({exc})", path) from None


def _parse_metadata(path: Path, header: dict[str, str] | None) -> dict[str, Any]:
    raw = (header or {}).get(HEADER_KEY)
    source = path
    if raw is None:
        side = sidecar_path(path)
        if not side.is_file():
            raise DGLandmarkError(f"no dglandmark metadata in the header and no sidecar {side.name}", path)
        raw, source = side.read_text(encoding="utf-8"), side
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DGLandmarkError(f"metadata is not valid JSON ({exc})", source) from None
    if not isinstance(meta, dict):
        raise DGLandmarkError("metadata is not a JSON object", source)
    if source != path and meta.get("sha256") and meta["sha256"] != file_sha256(path):
        raise DGLandmarkError(f"sidecar {source.name} belongs to different weights (sha256 mismatch)", path)
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise DGLandmarkError("metadata has no architecture name", source)
    if not isinstance(arch.get("hparams", {}), dict):
        raise DGLandmarkError("architecture hparams must be a JSON object", source)
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a model file (header, else sidecar) without reading weights or building the network."""
    src = Path(path)
    with _open(src) as handle:
        header = handle.metadata()
    return _parse_metadata(src, header)


def _load_strict(network: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line summary of what does not match."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} with wrong shape (e.g. {shapes[0]})")
        raise DGLandmarkError(f"weights do not match {what}: {'; '.join(parts)}", path)
    network.load_state_dict(state, strict=True)


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a .safetensors model file; returns (network in eval mode, metadata)."""
    from .networks import NETWORKS, build_network

    src = Path(path)
    with _open(src, framework="pt") as handle:
        meta = _parse_metadata(src, handle.metadata())
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    arch = meta["architecture"]
    name = arch["name"]
    if name.lower() not in NETWORKS:
        raise DGLandmarkError(f"unknown architecture {name!r}; known: {', '.join(sorted(NETWORKS))}", src)
    try:
        network = build_network(name, **arch.get("hparams", {}))
    except DGLandmarkError as exc:
        raise DGLandmarkError(str(exc), src) from None
    _load_strict(network, state, src, f"architecture {name!r}")
    return network.to(device).eval(), meta


def _load_failure(exc: BaseException) -> str:
    """A one-line reason from torch.load's long, multi-paragraph errors."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: (GLOBAL \S+)", text)
    if isinstance(exc, pickle.UnpicklingError):
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it pickles objects other than tensors{what}; weights_only loading refused it, nothing was run"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def import_pth_state_dict(pth_path: str | os.PathLike, network: nn.Module) -> nn.Module:
    """Load a raw PyTorch state dict (``weights_only=True``, ``module.`` prefix stripped) into ``network``."""
    import torch

    src = Path(pth_path)
    if not src.is_file():
        raise DGLandmarkError("file not found", src)
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    # A corrupt file makes the unpickler raise almost anything (KeyError, IndexError, ...): all are user errors.
    except Exception as exc:
        raise DGLandmarkError(f"not a plain PyTorch state dict ({_load_failure(exc)})", src) from None
    # Training scripts often wrap the state dict: {"state_dict": ...}, {"model": ...}, ...
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net", "network"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DGLandmarkError("does not hold a state dict (a mapping of names to tensors)", src)
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}
    _load_strict(network, state, src, type(network).__name__)
    return network

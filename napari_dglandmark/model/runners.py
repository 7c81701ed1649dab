"""Network runners: the only part of detection that differs between backends.

A runner takes a batch ``[B, 1, D, H, W]`` (numpy float32) for a stage (``"coarse"`` or ``"fine"``)
and returns the heatmap logits ``[B, L, D, H, W]`` (numpy float32), or with ``channels`` only
channel ``channels[b]`` of item ``b``: ``[B, D, H, W]`` (the fine stage reads each patch on its own
landmark's channel). :class:`OnnxRunner` runs the
checkpoint's ONNX exports on ONNX Runtime (CPU, no torch import); :class:`TorchRunner` runs the
torch networks on any device (CUDA with mixed precision, and a CPU fallback on out-of-memory).
:func:`open_runner` picks one and never runs an export made from other weights.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import DGLandmarkError
from .onnx_export import INPUT, SHA_KEY, SIZE_KEY, STAGES, cache_folder, export_onnx, input_sizes, onnx_path
from .registry import ModelInfo, choose_backend, is_bundled

if TYPE_CHECKING:
    import onnxruntime
    import torch


class Runner(Protocol):
    backend: str

    @property
    def device(self) -> str: ...

    def run(self, stage: str, x: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray: ...


def _pick(out: np.ndarray, channels: np.ndarray | None) -> np.ndarray:
    return out if channels is None else out[np.arange(len(out)), channels]


class StaleExport(Exception):
    """An ONNX export that does not belong to the checkpoint (other weights, other grid) or cannot be read."""


@functools.cache
def _shared_arena() -> bool:
    """Register (once per process) one CPU memory arena for every detection session that grows by what
    is asked, not by powers of two; False when this ONNX Runtime cannot (each session keeps its own)."""
    import onnxruntime as ort

    try:
        config = ort.OrtArenaCfg(0, 1, -1, -1)  # no limit, kSameAsRequested, default chunk and dead bytes
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, config)
    except (AttributeError, RuntimeError, TypeError):
        return False
    return True


def session_options(threads: int = 0) -> onnxruntime.SessionOptions:
    """ONNX Runtime settings for detection: full graph optimisation, ``threads`` intra-op threads
    (0: one per physical core) that stop spinning when a run ends (a spinning thread would take a core
    from the numpy work between network runs), and one memory arena shared by the coarse and fine
    networks (:func:`_shared_arena`): buffers are reused from run to run (without an arena every run
    maps and zeroes them afresh), and peak memory is ~100 MB lower than with an arena per session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = max(0, int(threads))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if _shared_arena():
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = 3  # ONNX Runtime's own warnings would be extra stderr lines
    return options


class OnnxRunner:
    """Both networks on ONNX Runtime's CPU provider (:func:`session_options`); batches run in chunks
    of ``CHUNK`` (bigger chunks cost activation memory and buy little speed)."""

    backend = "onnx"
    device = "cpu"
    CHUNK = 8

    def __init__(self, paths: dict[str, Path], sha256: str, sizes: dict[str, tuple[int, int, int]],
                 threads: int = 0) -> None:
        import onnxruntime as ort

        options = session_options(threads)
        self.paths = dict(paths)
        self.sessions = {}
        for stage in STAGES:
            path = paths[stage]
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - a damaged export is stale: export again or use torch
                raise StaleExport(f"{path.name} cannot be read ({exc.__class__.__name__})") from None
            meta = session.get_modelmeta().custom_metadata_map
            if meta.get(SHA_KEY) != sha256:
                raise StaleExport(f"{path.name} was exported from other weights "
                                  f"(sha256 {meta.get(SHA_KEY, 'none')[:12]}, the checkpoint's is {sha256[:12]})")
            if meta.get(SIZE_KEY) != ",".join(map(str, sizes[stage])):
                raise StaleExport(f"{path.name} reads a {meta.get(SIZE_KEY)} grid, the checkpoint a {sizes[stage]}")
            self.sessions[stage] = session

    def run(self, stage: str, x: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        session = self.sessions[stage]
        parts = []
        for start in range(0, len(x), self.CHUNK):
            out = session.run(None, {INPUT: x[start: start + self.CHUNK]})[0]
            parts.append(_pick(out, None if channels is None else channels[start: start + self.CHUNK]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class TorchRunner:
    """Both networks on torch (``network``: a ``TwoStageDetector``)."""

    backend = "torch"

    def __init__(self, network: torch.nn.Module, device: str | torch.device = "cpu", threads: int = 0) -> None:
        import torch

        from .devices import resolve_device

        if threads:
            torch.set_num_threads(int(threads))
        self.torch_device = resolve_device(device)
        self.network = network.to(self.torch_device).eval()

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "cpu", threads: int = 0) -> TorchRunner:
        from .checkpoint import load_checkpoint

        network, _ = load_checkpoint(checkpoint)
        return cls(network, device, threads)

    @property
    def device(self) -> str:
        return str(self.torch_device)

    def run(self, stage: str, x: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
        """Forward pass with mixed precision on CUDA and a CPU fallback on out-of-memory."""
        import torch

        from .devices import is_out_of_memory

        net = getattr(self.network, stage)
        device = self.torch_device
        try:
            with torch.inference_mode():
                batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
                if device.type == "cuda":
                    with torch.autocast("cuda", dtype=torch.float16):
                        out = net(batch).float()
                else:
                    out = net(batch)
                if channels is not None:
                    out = out[torch.arange(len(out), device=device), torch.as_tensor(channels, device=device)]
                return out.cpu().numpy()
        except (RuntimeError, MemoryError) as exc:
            if device.type == "cpu" or not is_out_of_memory(exc):
                raise
            warnings.warn(f"{device.type} ran out of memory; falling back to the CPU", stacklevel=2)
            self.torch_device = torch.device("cpu")
            self.network.to(self.torch_device)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return self.run(stage, x, channels)


def _try_onnx(paths: dict[str, Path], info: ModelInfo, threads: int) -> tuple[OnnxRunner | None, str]:
    """(runner, "") or (None, why not)."""
    if not all(p.is_file() for p in paths.values()):
        return None, "no export"
    try:
        return OnnxRunner(paths, info.sha256, input_sizes(info.metadata), threads), ""
    except StaleExport as exc:
        return None, str(exc)


def open_onnx(info: ModelInfo, threads: int = 0) -> OnnxRunner | None:
    """The checkpoint's ONNX exports on ONNX Runtime: beside the checkpoint, else in the cache, else
    exported into the cache now. None (with a warning) when none can be had: run on torch then."""
    beside = {s: onnx_path(info.path, s) for s in STAGES}
    runner, why = _try_onnx(beside, info, threads)
    if runner is not None:
        return runner
    if why != "no export":
        warnings.warn(f"{why}; not using it", stacklevel=3)
    cached = {s: onnx_path(info.path, s, cache_folder(info.sha256)) for s in STAGES}
    runner, _ = _try_onnx(cached, info, threads)
    if runner is not None:
        return runner
    try:
        export_onnx(info.path, cache_folder(info.sha256))
    except (DGLandmarkError, OSError) as exc:
        hint = " (refresh the bundled one with scripts/export_onnx.py)" if is_bundled(info.path) else ""
        warnings.warn(f"{Path(info.path).name}: no usable ONNX export{hint}: {exc}; running on torch", stacklevel=3)
        return None
    runner, why = _try_onnx(cached, info, threads)
    if runner is None:
        warnings.warn(f"{Path(info.path).name}: the fresh ONNX export does not load ({why}); running on torch",
                      stacklevel=3)
        return runner
    warnings.warn(f"{Path(info.path).name}: exported to ONNX once, into {cached['coarse'].parent}", stacklevel=3)
    return runner


def open_runner(info: ModelInfo, backend: str = "auto", device: str = "auto", threads: int = 0) -> Runner:
    """The runner for a two-stage checkpoint: see :func:`registry.choose_backend` for ``auto``."""
    chosen, dev = choose_backend(backend, device)
    if chosen == "onnx":
        runner = open_onnx(info, threads)
        if runner is not None:
            return runner
        dev = "cpu"
    return TorchRunner.load(info.path, dev, threads)

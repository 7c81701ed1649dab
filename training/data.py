"""Datasets: finding (image, landmarks) and (image, label) pairs, and a content-keyed preprocessing cache.

Landmark dataset: a folder of pairs sharing a stem (``case.nii.gz`` + ``case.fcsv`` | ``.mrk.json`` |
``.csv``), a CSV manifest with columns ``image,landmarks`` (paths relative to it), or the seed's
folder-per-case layout (a folder holding one image and one Line ``*.mrk.json`` per measurement).
Segmentation dataset: a manifest with ``image,label``, a folder with ``images/`` and ``labels/``,
or a flat folder of ``case.nii.gz`` + ``case_label|_seg|_mask|_dseg.nii.gz``.
The cache holds ``.npy`` + ``.json`` (never pickle) under a key made of the sha256 of the input
files and of the JSON of the preprocessing settings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import LANDMARK_SUFFIXES, Landmarks, is_seed_case, read_landmarks, read_volume
from napari_dglandmark.io.atomic import atomic_path, write_text_atomic
from napari_dglandmark.io.volume import Geometry, Volume, is_volume_file, strip_volume_suffix
from napari_dglandmark.model.checkpoint import file_sha256
from napari_dglandmark.model.resample import resample
from napari_dglandmark.model.single_stage import SingleStageConfig, model_grid, prepare_input

LABEL_SUFFIXES = ("_label", "_labels", "_seg", "_mask", "_dseg")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LandmarkItem:
    name: str
    image: Path
    landmarks: Path  # a landmark file or a seed case folder


@dataclass(frozen=True)
class SegmentationItem:
    name: str
    image: Path
    label: Path


def _is_volume(path: Path) -> bool:
    return path.is_file() and is_volume_file(path)


def _read_manifest(path: Path, columns: tuple[str, str]) -> list[tuple[str, Path, Path]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DGLandmarkError(f"cannot read manifest ({exc})", path) from None
    if not rows or any(c not in rows[0] for c in columns):
        raise DGLandmarkError(f"manifest needs the columns {','.join(columns)}", path)
    out = []
    for n, row in enumerate(rows, 2):
        a, b = (path.parent / (row[c] or "").strip() for c in columns)
        for p in (a, b):
            if not p.exists():
                raise DGLandmarkError(f"line {n}: {p} does not exist", path)
        out.append((row.get("name") or strip_volume_suffix(a.name), a, b))
    return out


def find_landmark_cases(path: str | os.PathLike) -> list[LandmarkItem]:
    """The (image, landmarks) pairs of a folder, a seed layout folder or a CSV manifest, sorted by name."""
    root = Path(path)
    if not root.exists():
        raise DGLandmarkError("no such dataset folder or manifest", root)
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DGLandmarkError("a dataset is a folder or a CSV manifest (image,landmarks)", root)
        return [LandmarkItem(n, a, b) for n, a, b in _read_manifest(root, ("image", "landmarks"))]
    items = []
    for image in sorted(p for p in root.iterdir() if _is_volume(p)):
        stem = strip_volume_suffix(image.name)
        found = [root / (stem + s) for s in LANDMARK_SUFFIXES if (root / (stem + s)).is_file()]
        if found:
            items.append(LandmarkItem(stem, image, found[0]))
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and is_seed_case(p)):
        images = [p for p in folder.iterdir() if _is_volume(p)]
        if len(images) != 1:
            raise DGLandmarkError(f"a case folder needs exactly one image, found {len(images)}", folder)
        items.append(LandmarkItem(folder.name, images[0], folder))
    if not items:
        raise DGLandmarkError(
            "no (image, landmarks) pairs: expected case.nii.gz + case.fcsv/.mrk.json/.csv, case folders "
            "of Line .mrk.json files, or a CSV manifest with columns image,landmarks", root)
    return sorted(items, key=lambda it: it.name)


def find_segmentation_cases(path: str | os.PathLike) -> list[SegmentationItem]:
    """The (image, label) pairs of a folder or a CSV manifest (columns image,label), sorted by name."""
    root = Path(path)
    if not root.exists():
        raise DGLandmarkError("no such dataset folder or manifest", root)
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DGLandmarkError("a dataset is a folder or a CSV manifest (image,label)", root)
        return [SegmentationItem(n, a, b) for n, a, b in _read_manifest(root, ("image", "label"))]
    items = []
    if (root / "images").is_dir() and (root / "labels").is_dir():
        for image in sorted(p for p in (root / "images").iterdir() if _is_volume(p)):
            label = root / "labels" / image.name
            if label.is_file():
                items.append(SegmentationItem(strip_volume_suffix(image.name), image, label))
    else:
        volumes = sorted(p for p in root.iterdir() if _is_volume(p))
        by_stem = {strip_volume_suffix(p.name): p for p in volumes}
        for stem, image in by_stem.items():
            if stem.endswith(LABEL_SUFFIXES):
                continue
            for suffix in LABEL_SUFFIXES:
                label = next((p for s, p in by_stem.items() if s == stem + suffix), None)
                if label is not None:
                    items.append(SegmentationItem(stem, image, label))
                    break
    if not items:
        raise DGLandmarkError(
            "no (image, label) pairs: expected images/ + labels/, case.nii.gz + case_label.nii.gz, "
            "or a CSV manifest with columns image,label", root)
    return items


@dataclass(frozen=True)
class LabelSpec:
    """Which label voxels form the structure: a list of values, or a threshold (``>127``)."""

    values: tuple[float, ...] = ()
    threshold: float | None = None

    @classmethod
    def parse(cls, spec: str | Sequence[str | float] | None) -> LabelSpec:
        """``"1,2"``, ``["1", "2"]``, ``">127"`` or ``None`` (= ``>0``)."""
        if spec is None:
            return cls(threshold=0.0)
        text = ",".join(str(s) for s in spec) if not isinstance(spec, str) else spec
        text = text.strip()
        try:
            if text.startswith(">"):
                return cls(threshold=float(text[1:]))
            values = tuple(float(v) for v in text.replace(" ", ",").split(",") if v)
        except ValueError:
            raise DGLandmarkError(f"--labels takes label values (1,2) or a threshold (>127), not {text!r}") from None
        if not values:
            return cls(threshold=0.0)
        return cls(values=values)

    def mask(self, label: np.ndarray) -> np.ndarray:
        if self.threshold is not None:
            return label > self.threshold
        return np.isin(label, np.asarray(self.values, dtype=label.dtype if label.dtype.kind == "f" else float))

    def to_json(self) -> dict:
        return {"values": list(self.values), "threshold": self.threshold}


# ---------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$DGLANDMARK_CACHE``, else ``$XDG_CACHE_HOME/dglandmark``, else ``~/.cache/dglandmark``."""
    if os.environ.get("DGLANDMARK_CACHE"):
        return Path(os.environ["DGLANDMARK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dglandmark"


class Cache:
    """Preprocessed arrays on disk: ``<key>.<name>.npy`` + ``<key>.json``, keyed by content and settings."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self._hashes: dict[tuple[str, float, int], str] = {}

    def _file_hash(self, path: Path) -> str:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime, st.st_size)  # rehash only when the file changed
        if key not in self._hashes:
            self._hashes[key] = file_sha256(path)
        return self._hashes[key]

    def key(self, files: Sequence[Path], settings: dict) -> str:
        digest = hashlib.sha256()
        for f in files:
            digest.update(self._file_hash(Path(f)).encode())
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return digest.hexdigest()[:32]

    def get(self, files: Sequence[Path], settings: dict,
            compute: Callable[[], tuple[dict[str, np.ndarray], dict]]) -> tuple[dict[str, np.ndarray], dict]:
        """The cached (arrays, metadata) for these files and settings, computing and storing them when absent."""
        key = self.key(files, settings)
        meta_path = self.root / f"{key}.json"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                arrays = {n: np.load(self.root / f"{key}.{n}.npy", allow_pickle=False) for n in meta["arrays"]}
                return arrays, meta["meta"]
            except (OSError, ValueError, KeyError):
                pass  # a damaged entry is recomputed
        arrays, meta = compute()
        self.root.mkdir(parents=True, exist_ok=True)
        for name, arr in arrays.items():
            with atomic_path(self.root / f"{key}.{name}.npy") as tmp:
                np.save(tmp, np.ascontiguousarray(arr), allow_pickle=False)
        record = {"arrays": sorted(arrays), "meta": meta, "files": [str(f) for f in files], "settings": settings}
        write_text_atomic(meta_path, json.dumps(record, sort_keys=True))  # written last: marks the entry complete
        return arrays, meta


# --------------------------------------------------------------------------------------- prepared cases


def _geometry_to_json(g: Geometry) -> dict:
    return {"shape": list(g.shape), "spacing": list(g.spacing), "origin": list(g.origin),
            "direction": np.asarray(g.direction).ravel().tolist()}


def _geometry_from_json(d: dict) -> Geometry:
    return Geometry(tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]), np.array(d["direction"]).reshape(3, 3))


@dataclass
class LandmarkCase:
    """A landmark case on its model grid: image [D, H, W] in [0, 1], truth in LPS mm and grid voxels."""

    name: str
    image: torch.Tensor
    grid: Geometry
    names: list[str]
    truth: np.ndarray  # [L, 3] LPS mm, NaN where missing

    @property
    def points(self) -> np.ndarray:
        """Truth as continuous grid voxel indices (i, j, k)."""
        return self.grid.physical_to_index(self.truth)


@dataclass
class SegmentationCase:
    name: str
    image: torch.Tensor  # [D, H, W] float32
    mask: torch.Tensor  # [D, H, W] bool
    grid: Geometry


def read_case_landmarks(item: LandmarkItem) -> Landmarks:
    return read_landmarks(item.landmarks)


def landmark_names_of(items: Sequence[LandmarkItem]) -> list[str]:
    """Landmark names in the order of the first case, then any new ones from the others."""
    names: list[str] = []
    seen: set[str] = set()
    for item in items:
        for n in read_case_landmarks(item).names:
            if n.casefold() not in seen:
                seen.add(n.casefold())
                names.append(n)
    return names


def _preprocessed_image(volume_path: Path, config: SingleStageConfig, cache: Cache) -> tuple[torch.Tensor, Geometry]:
    settings = {"kind": "single-stage-image", "grid_size": list(config.grid_size), "window": [config.window_low, config.window_high]}

    def compute():
        image, grid = prepare_input(read_volume(volume_path), config)
        return {"image": image.numpy()}, {"grid": _geometry_to_json(grid)}

    arrays, meta = cache.get([volume_path], settings, compute)
    return torch.from_numpy(np.array(arrays["image"], dtype=np.float32)), _geometry_from_json(meta["grid"])


def load_landmark_cases(items: Sequence[LandmarkItem], names: Sequence[str], config: SingleStageConfig,
                        cache: Cache, progress: Progress | None = None) -> list[LandmarkCase]:
    """Preprocess (or read from the cache) every case; landmarks in ``names`` order (absent ones NaN)."""
    out = []
    for n, item in enumerate(items, 1):
        image, grid = _preprocessed_image(item.image, config, cache)
        truth = read_case_landmarks(item).reordered(names, strict=False).positions
        out.append(LandmarkCase(item.name, image, grid, list(names), truth))
        if progress:
            progress(n, len(items))
    return out


def load_segmentation_cases(items: Sequence[SegmentationItem], labels: LabelSpec, config: SingleStageConfig,
                            cache: Cache, progress: Progress | None = None) -> list[SegmentationCase]:
    """Image and structure mask of every case on the model grid (mask by nearest-neighbour resampling)."""
    out = []
    for n, item in enumerate(items, 1):
        settings = {"kind": "single-stage-seg", "grid_size": list(config.grid_size),
                    "window": [config.window_low, config.window_high], "labels": labels.to_json()}

        def compute(item=item):
            volume = read_volume(item.image)
            label = read_volume(item.label)
            if tuple(label.geometry.shape) != tuple(volume.geometry.shape):
                raise DGLandmarkError(f"label grid {label.geometry.shape} differs from image grid "
                                      f"{volume.geometry.shape}", item.label)
            image, grid, m = _on_model_grid(volume, labels.mask(label.array), config)
            if not m.any():
                raise DGLandmarkError("no voxel of the label matches --labels", item.label)
            return {"image": image.numpy(), "mask": m.astype(np.uint8)}, {"grid": _geometry_to_json(grid)}

        arrays, meta = cache.get([item.image, item.label], settings, compute)
        out.append(SegmentationCase(item.name, torch.from_numpy(np.array(arrays["image"], dtype=np.float32)),
                                    torch.from_numpy(arrays["mask"].astype(bool)), _geometry_from_json(meta["grid"])))
        if progress:
            progress(n, len(items))
    return out


def _on_model_grid(volume: Volume, mask: np.ndarray, config: SingleStageConfig
                   ) -> tuple[torch.Tensor, Geometry, np.ndarray]:
    """The prepared image, its model grid and the mask resampled onto it (nearest neighbour)."""
    image, grid = prepare_input(volume, config)
    m = torch.from_numpy(np.asarray(mask).astype(np.float32))
    resized = resample(m, volume.geometry, model_grid(volume.geometry, config.grid_size), mode="nearest")
    return image, grid, resized[0, 0].numpy() > 0.5


def segmentation_case_from(name: str, volume: Volume, mask: np.ndarray, config: SingleStageConfig) -> SegmentationCase:
    """A pre-training case from an in-memory image and structure mask (same grid)."""
    image, grid, m = _on_model_grid(volume, mask, config)
    return SegmentationCase(name, image, torch.from_numpy(m), grid)


def landmark_case_from(name: str, volume: Volume, landmarks: Landmarks, names: Sequence[str],
                       config: SingleStageConfig) -> LandmarkCase:
    """A fine-tuning case from an in-memory image and its landmarks (``names`` order, absent ones NaN)."""
    image, grid = prepare_input(volume, config)
    return LandmarkCase(name, image, grid, list(names), landmarks.reordered(names, strict=False).positions)


def split_cases(items: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded ``fraction`` held out, at least one when there are two or more cases.

    With a single case, it is both (a warning-worthy setting, but it lets tiny runs select a checkpoint).
    """
    items = list(items)
    if len(items) < 2 or fraction <= 0:
        return items, items[:1] if fraction > 0 else []
    n_val = max(1, int(round(len(items) * fraction)))
    n_val = min(n_val, len(items) - 1)
    order = np.random.default_rng(seed).permutation(len(items))
    val = sorted(order[:n_val].tolist())
    return [it for i, it in enumerate(items) if i not in val], [items[i] for i in val]


def volume_of(case: LandmarkCase | SegmentationCase) -> Volume:
    """The preprocessed image as a Volume on its grid (for snapshots and checks)."""
    return Volume(case.image.numpy(), case.grid)

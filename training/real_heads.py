"""Real people's heads for training: whole-head label maps with landmark truth transferred onto them.

The shared ``label-maps`` hold 40 real individuals' whole heads (SynthSeg's 20 FreeSurfer-style maps
at 1 mm, BrainWeb's 20 tissue models at 0.5 mm) but no landmarks. Each map becomes:

- a tissue map on a 1 mm grid cropped to the head: the brain classes of ``synth.TISSUES`` (CSF, grey,
  white, deep grey) and every extra-cerebral class of the source as its own class (skull, fat,
  muscle, eyes, ...), so a random contrast gives each tissue its own intensity (SynthSeg-style);
- the template's AFIDs transferred by a deformable registration (ANTs SyN, Mattes mutual
  information) of the template's brain to a T1-like rendering of the person's brain;
- the transfer's own error, measured on template warps whose truth is exact (``transfer_check``)
  and by how real the transferred configurations look against the 60 expert-placed real shapes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Geometry, Volume, read_volume, volume_to_sitk, write_volume

#: FreeSurfer labels -> ``synth.TISSUES`` brain classes (1 CSF, 2 grey, 3 white, 4 deep grey)
FREESURFER_BRAIN = {
    1: (4, 5, 14, 15, 24, 43, 44, 72),  # ventricles, CSF, 5th ventricle
    2: (3, 8, 17, 18, 42, 47, 53, 54, 25, 57, 136, 137, 163, 164),  # cortex, cerebellar cortex, hippocampus, amygdala
    3: (2, 7, 16, 28, 41, 46, 60, 85, 30, 62),  # white matter, cerebellar WM, brainstem, ventral DC, chiasm, vessels
    4: (10, 11, 12, 13, 26, 49, 50, 51, 52, 58),  # thalamus, caudate, putamen, pallidum, accumbens
}
#: BrainWeb crisp classes -> brain classes; the other classes (fat, muscle, skin, skull, vessels, dura,
#: marrow) stay extra-cerebral classes of their own
BRAINWEB_BRAIN = {1: (1,), 2: (2,), 3: (3,)}
BRAIN_CLASSES = 5  # background + the four brain classes
#: T1-like intensity of each brain class, for registration only (the contrast the template has)
T1_LIKE = np.array([0.0, 0.12, 0.55, 0.85, 0.65], np.float32)
HEAD_MARGIN_MM = 6.0


@dataclass
class LabelHead:
    """One real person's whole head as tissue classes on a 1 mm grid (``labels`` z, y, x)."""

    name: str
    labels: np.ndarray  # uint8: 0 background, 1-4 brain (``synth.TISSUES``), 5.. extra-cerebral classes
    geometry: Geometry
    source: str  # which label-map set

    @property
    def classes(self) -> int:
        return int(self.labels.max()) + 1

    def brain_t1_like(self) -> Volume:
        """The brain (extra-cerebral classes removed) in a T1-like contrast: the registration target."""
        table = np.zeros(max(self.classes, BRAIN_CLASSES), np.float32)
        table[:BRAIN_CLASSES] = T1_LIKE
        return Volume(table[self.labels], self.geometry, None)


def _remap(values: np.ndarray, brain: dict[int, Sequence[int]]) -> np.ndarray:
    """Source label values -> tissue classes: brain classes by ``brain``, every other non-zero value
    its own extra-cerebral class (5, 6, ... in increasing source value)."""
    out = np.zeros(values.shape, np.uint8)
    used = set()
    for cls, members in brain.items():
        hit = np.isin(values, members)
        out[hit] = cls
        used.update(members)
    extra = [v for v in np.unique(values) if v != 0 and v not in used]
    for k, v in enumerate(extra):
        out[values == v] = BRAIN_CLASSES + k
    return out


def _crop_to_head(labels: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    nz = np.argwhere(labels > 0)
    margin = np.ceil(HEAD_MARGIN_MM / np.asarray(geometry.spacing)[::-1]).astype(int)
    lo = np.maximum(nz.min(0) - margin, 0)
    hi = np.minimum(nz.max(0) + margin + 1, labels.shape)
    crop = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    origin = geometry.index_to_physical(lo[::-1].astype(float))
    return np.ascontiguousarray(crop), Geometry(shape=crop.shape, spacing=geometry.spacing, origin=tuple(origin),
                                                direction=geometry.direction)


def read_label_head(path: str | os.PathLike) -> LabelHead:
    """A shared label map as a ``LabelHead`` (SynthSeg maps by their FreeSurfer labels, BrainWeb maps
    by their 12 classes, 0.5 mm taken every other voxel to 1 mm)."""
    path = Path(path)
    vol = read_volume(path)
    values = np.rint(vol.array).astype(np.int32)
    geometry = vol.geometry
    if "brainweb" in str(path) or path.name.endswith("_crisp.nii.gz"):
        step = max(1, int(round(1.0 / min(geometry.spacing))))
        values = values[::step, ::step, ::step]
        geometry = Geometry(shape=values.shape, spacing=tuple(s * step for s in geometry.spacing),
                            origin=geometry.origin, direction=geometry.direction)
        labels, source = _remap(values, BRAINWEB_BRAIN), "brainweb-20"
    else:
        labels, source = _remap(values, FREESURFER_BRAIN), "synthseg-20"
    labels, geometry = _crop_to_head(labels, geometry)
    name = path.name.split(".")[0].replace("_crisp", "")
    return LabelHead(f"{source}/{name}", labels, geometry, source)


def label_map_paths(data: Path) -> list[Path]:
    """Every shared label map, sorted (SynthSeg's, then BrainWeb's)."""
    root = data / "label-maps"
    return sorted((root / "synthseg-20").glob("training_seg_*.nii.gz")) + sorted(
        (root / "brainweb-20").glob("subject*_crisp.nii.gz"))


def held_out(names: Sequence[str], every: int = 5) -> set[str]:
    """Every ``every``-th head of each label-map set (sorted) is kept out of training (benchmarks)."""
    out = set()
    for source in sorted({n.split("/")[0] for n in names}):
        members = sorted(n for n in names if n.startswith(source + "/"))
        out.update(members[every - 1::every])
    return out


# ----------------------------------------------------------------------------- truth transfer

def _brain_of_template(t1w: Volume, tissue_labels: np.ndarray) -> Volume:
    brain = (tissue_labels >= 1) & (tissue_labels <= 4)
    arr = t1w.array.astype(np.float32)
    lo, hi = np.percentile(arr[brain], [0.5, 99.5])
    return Volume(np.clip((arr - lo) / (hi - lo), 0, 1.2) * brain, t1w.geometry, None)


def _to_ants(volume: Volume, folder: str, name: str, spacing_mm: float):
    """An ANTs image of ``volume`` resampled to ``spacing_mm`` (through a NIfTI file: one geometry path)."""
    import ants
    import SimpleITK as sitk

    image = volume_to_sitk(volume)
    size = [int(round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), spacing_mm / 2.0)
    small = sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [spacing_mm] * 3,
                          image.GetDirection(), 0.0, sitk.sitkFloat32)
    path = os.path.join(folder, f"{name}.nii.gz")
    sitk.WriteImage(small, path)
    return ants.image_read(path)


def transfer_landmarks(template_brain: Volume, truth: Landmarks, target_brain: Volume,
                       spacing_mm: float = 2.0, iterations: Sequence[int] = (60, 40, 20),
                       seed: int = 1) -> tuple[Landmarks, dict]:
    """The template's landmarks on ``target_brain`` (LPS mm) by ANTs SyN from the template's brain,
    and a small report (final similarity, time)."""
    import time

    import ants
    import pandas as pd

    start = time.time()
    with tempfile.TemporaryDirectory() as folder:
        fixed = _to_ants(target_brain, folder, "fixed", spacing_mm)
        moving = _to_ants(template_brain, folder, "moving", spacing_mm)
        reg = ants.registration(fixed, moving, type_of_transform="SyN", aff_metric="mattes", syn_metric="mattes",
                                reg_iterations=tuple(iterations), random_seed=seed, verbose=False)
        defined = ~np.isnan(truth.positions).any(1)
        # points move opposite to images: template -> person uses the inverse transforms
        frame = pd.DataFrame(truth.positions[defined], columns=["x", "y", "z"])
        moved = ants.apply_transforms_to_points(3, frame, reg["invtransforms"], whichtoinvert=[True, False])
        warped = ants.apply_transforms(fixed, moving, reg["fwdtransforms"])
        similarity = float(np.corrcoef(warped.numpy().ravel(), fixed.numpy().ravel())[0, 1])
    out = truth.copy()
    pos = np.full_like(truth.positions, np.nan)
    pos[defined] = moved[["x", "y", "z"]].to_numpy()
    out.positions = pos
    return out, {"correlation_after": round(similarity, 4), "seconds": round(time.time() - start, 1)}


# ----------------------------------------------------------------------------- the prepared set on disk

def head_paths(folder: Path, name: str) -> tuple[Path, Path, Path]:
    stem = folder / name.replace("/", "__")
    return stem.with_suffix(".labels.nii.gz"), stem.with_suffix(".afids.json"), stem.with_suffix(".report.json")


def save_head(folder: Path, head: LabelHead, landmarks: Landmarks, report: dict) -> None:
    """The tissue map (NIfTI), the transferred landmarks and the transfer report (JSON), written atomically."""
    from napari_dglandmark.io.atomic import write_text_atomic

    labels_path, afids_path, report_path = head_paths(folder, head.name)
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(Volume(head.labels, head.geometry, None), labels_path)
    write_text_atomic(afids_path, json.dumps({"names": landmarks.names, "lps": np.round(landmarks.positions, 4).tolist(),
                                              "source": head.source}))
    write_text_atomic(report_path, json.dumps(report, indent=1))


def head_names(folder: Path) -> list[str]:
    """The names of the prepared heads in ``folder``, sorted, without reading them."""
    return sorted(p.name[: -len(".afids.json")].replace("__", "/") for p in folder.glob("*.afids.json"))


def load_heads(folder: Path, names: Sequence[str] | None = None) -> list[tuple[LabelHead, Landmarks]]:
    """The prepared heads in ``folder`` (all, or those named), with their transferred landmarks."""
    out = []
    for name in head_names(folder):
        if names is not None and name not in names:
            continue
        labels_path, afids_path, _ = head_paths(folder, name)
        data = json.loads(afids_path.read_text())
        vol = read_volume(labels_path)
        head = LabelHead(name, np.rint(vol.array).astype(np.uint8), vol.geometry, data["source"])
        out.append((head, Landmarks(data["names"], np.asarray(data["lps"], float))))
    return out


def transfer_check(data: Path, t1w: Volume, truth: Landmarks, tissue_labels: np.ndarray, template_brain: Volume,
                   count: int, log=None, **settings) -> list[dict]:
    """The transfer's own error where the truth is exact: the template (image and tissue map) warped
    by a thin-plate spline to ``count`` held-out real people's AFIDs, rendered like a label-map head,
    then the template's landmarks transferred onto it and compared with the warped truth (mm)."""
    from .shapes import read_subjects, split_subjects, to_template_frame
    from .synth import warped_to_shape

    _, held = split_subjects(read_subjects(data / "afids-shapes", truth.names))
    rows = []
    for subject in held[:count]:
        target = to_template_frame(subject, truth.positions)
        _, exact, warped_labels = warped_to_shape(t1w, truth, target, tissue_labels)
        head = LabelHead(f"check/{subject.name}", warped_labels, t1w.geometry, "template warp")
        moved, report = transfer_landmarks(template_brain, truth, head.brain_t1_like(), **settings)
        err = np.linalg.norm(moved.positions - exact.positions, axis=1)
        shift = np.linalg.norm(exact.positions - truth.positions, axis=1)
        row = {"subject": subject.name, "mre_mm": round(float(np.nanmean(err)), 3),
               "max_mm": round(float(np.nanmax(err)), 3), "warp_displacement_mean_mm": round(float(np.nanmean(shift)), 2),
               "errors_mm": np.round(err, 3).tolist(), **report}
        rows.append(row)
        if log:
            log({"transfer_check": {k: v for k, v in row.items() if k != "errors_mm"}})
    return rows


# ----------------------------------------------------------------------------- training cases

#: T1-like intensity of the extra-cerebral classes in the case's fixed rendering (only its foreground
#: centre is used: every item of a label-map case is a random contrast)
EXTRA_T1_LIKE = 0.45


def label_head_case(head: LabelHead, landmarks: Landmarks, names: Sequence[str], pipeline, shapes=()):
    """A training case from a real person's tissue map (``training.detector``): every item is a random
    contrast of its classes, warped like the other realistic cases; the coarse grid is placed by the
    same foreground centre as at inference (head with neck: its top 17 cm)."""
    import torch

    from napari_dglandmark.model.pipeline import pooled_copy

    from .detector import landmark_case

    table = np.full(head.classes, EXTRA_T1_LIKE, np.float32)
    table[:BRAIN_CLASSES] = T1_LIKE
    table[0] = 0.0
    case = landmark_case(Volume(table[head.labels], head.geometry, None), landmarks, names, pipeline)
    labels = torch.as_tensor(head.labels.astype(np.float32))
    case.labels = labels
    case.tissues_pooled = torch.stack([pooled_copy((labels == c).float(), head.geometry, pipeline.coarse_spacing)[0]
                                       for c in range(head.classes)])
    case.shapes = [np.asarray(s, float) for s in shapes]
    return case

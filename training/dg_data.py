"""Data of the domain-generalisation benchmark: pre-training sources and the harder unseen domains.

Pre-training sources (``SOURCES``), each a list of (image, structure mask) pairs on the image's grid:

- ``wm2009a``: the MNI 2009a T1w with its white-matter map (> 127), the paper-style default;
- ``tissue``: the AFIDs template T1w with the CSF class (ventricles and sulci, on whose walls many
  AFIDs lie) of its tissue label map (``synth.tissue_labels``);
- ``synth``: four SynthSeg-style random contrasts rendered from the 2009a tissue label map, with the
  2009a white-matter mask (the image changes, the structure stays);
- ``chest-ct``: the shared chest CT with the union of its 3D Slicer segments (ribs, spine, ...),
  a cross-anatomy check;
- ``brain-all``: ``wm2009a`` + ``tissue`` + ``synth``.

Source-domain training anatomies (``training_anatomies``): the template warped to real people of the
training split, shown as T1w (the same centre and contrast, other brains).

Harder unseen domains: the template warped (thin-plate spline, exact at the landmarks) to held-out
real people's AFIDs from ``afids-shapes`` (never used for training), shown as T1w and as fixed
synthetic T2-/FLAIR-/PD-like contrasts rendered from the warped tissue labels; and the stroke
patient's co-registered T1w/T2w pair, which has no truth and is scored by T1-vs-T2 agreement.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Volume
from napari_dglandmark.protocols import load_protocol

from .shapes import read_subjects, split_subjects, to_template_frame
from .synth import CONTRASTS, one_hot, render_contrast, synthesize_contrast, tissue_labels, warped_to_shape

AFIDS_T1W = "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
AFIDS_TRUTH = "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"
MNI09A = "mni-icbm152-2009a/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
CHEST_CT = "slicerio-ct/CTChest4.nrrd"
CHEST_SEG = "slicerio-ct/Segmentation.seg.nrrd"
STROKE = ("real-unlabelled/stroke_T1.nii.gz", "real-unlabelled/stroke_T2.nii.gz")

SourcePairs = list[tuple[Volume, np.ndarray]]


def _need(data: Path, rel: str) -> Path:
    path = data / rel
    if not path.exists():
        raise DGLandmarkError("shared data file not found", path)
    return path


def _wm2009a(data: Path) -> SourcePairs:
    t1, wm = read_volume(_need(data, MNI09A.format("t1"))), read_volume(_need(data, MNI09A.format("wm")))
    return [(t1, wm.array > 127)]


def _labels_2009a(data: Path) -> tuple[Volume, np.ndarray]:
    t1 = read_volume(_need(data, MNI09A.format("t1")))
    grey, white = (read_volume(_need(data, MNI09A.format(k))) for k in ("gm", "wm"))
    return t1, tissue_labels(t1, grey, white)


def afids_tissue_labels(data: Path, t1w: Volume) -> np.ndarray:
    """The AFIDs template's tissue label map (grey/white hull from the 2009a maps, by position)."""
    return tissue_labels(t1w, read_volume(_need(data, MNI09A.format("gm"))), read_volume(_need(data, MNI09A.format("wm"))))


def _tissue(data: Path) -> SourcePairs:
    t1w = read_volume(_need(data, AFIDS_T1W))
    return [(t1w, afids_tissue_labels(data, t1w) == 1)]


def _synth(data: Path, count: int = 4, seed: int = 31) -> SourcePairs:
    t1, labels = _labels_2009a(data)
    wm = read_volume(_need(data, MNI09A.format("wm"))).array > 127
    gen = torch.Generator().manual_seed(seed)
    tissues = one_hot(labels)[None]
    out = []
    for _ in range(count):
        image = synthesize_contrast(tissues, gen)[0, 0].numpy()
        out.append((Volume((image * 1000).astype(np.float32), t1.geometry, None), wm))
    return out


def _chest_ct(data: Path) -> SourcePairs:
    ct, seg = read_volume(_need(data, CHEST_CT)), read_volume(_need(data, CHEST_SEG))
    if seg.array.shape != ct.array.shape:
        raise DGLandmarkError("segmentation grid differs from the CT grid", data / CHEST_SEG)
    return [(ct, seg.array > 0)]


SOURCES: dict[str, Callable[[Path], SourcePairs]] = {
    "wm2009a": _wm2009a,
    "tissue": _tissue,
    "synth": _synth,
    "chest-ct": _chest_ct,
    "brain-all": lambda data: _wm2009a(data) + _tissue(data) + _synth(data),
}


def pretraining_pairs(data: Path, names: list[str]) -> SourcePairs:
    """(image, mask) pairs of the named sources, in order."""
    out: SourcePairs = []
    for name in names:
        if name not in SOURCES:
            raise DGLandmarkError(f"unknown pre-training source {name!r} (known: {', '.join(SOURCES)})")
        out += SOURCES[name](Path(data))
    return out


def real_geometry_domains(data: Path, count: int, t1w: Volume, truth: Landmarks,
                          contrasts: tuple[str, ...] = tuple(CONTRASTS)) -> dict[str, list[tuple[Volume, Landmarks]]]:
    """The template warped to ``count`` held-out real people: as T1w and as each fixed synthetic contrast."""
    protocol = load_protocol("afids32")
    _, held = split_subjects(read_subjects(_need(data, "afids-shapes"), protocol.names))
    labels = afids_tissue_labels(data, t1w)
    out: dict[str, list[tuple[Volume, Landmarks]]] = {"real geometry, T1w": []}
    out.update({f"real geometry, {c}": [] for c in contrasts})
    for k, subject in enumerate(held[:count]):
        target = to_template_frame(subject, truth.positions)
        vol, lms, warped = warped_to_shape(t1w, truth, target, labels)
        out["real geometry, T1w"].append((vol, lms))
        for c in contrasts:
            synth = render_contrast(warped, vol.geometry, c, np.random.default_rng(8000 + k))
            out[f"real geometry, {c}"].append((synth, lms))
    return out


def training_anatomies(data: Path, count: int, t1w: Volume, truth: Landmarks) -> list[tuple[Volume, Landmarks]]:
    """More source-domain (T1w) training cases: the template warped to ``count`` real people of the
    training split of ``afids-shapes`` (never to the held-out ones the test domains use)."""
    if count <= 0:
        return []
    protocol = load_protocol("afids32")
    train, _ = split_subjects(read_subjects(_need(data, "afids-shapes"), protocol.names))
    step = max(1, len(train) // count)
    out = []
    for subject in train[::step][:count]:
        vol, lms, _ = warped_to_shape(t1w, truth, to_template_frame(subject, truth.positions))
        out.append((vol, lms))
    return out


def stroke_pair(data: Path) -> tuple[Volume, Volume]:
    """The stroke patient's co-registered T1w and T2w (no truth: scored by agreement)."""
    return read_volume(_need(data, STROKE[0])), read_volume(_need(data, STROKE[1]))


def source_truth(data: Path) -> tuple[Volume, Landmarks]:
    """The fine-tuning source: the AFIDs template T1w and its expert landmarks (protocol order)."""
    protocol = load_protocol("afids32")
    return read_volume(_need(data, AFIDS_T1W)), protocol.conform(read_landmarks(_need(data, AFIDS_TRUTH)))

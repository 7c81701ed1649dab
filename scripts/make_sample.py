"""Make the bundled sample (napari_dglandmark/sample_data/) from ../shared/data.

The AFIDs MNI152NLin2009cAsym T1w, smoothed and resampled to 2 mm, cropped to the head,
int16 ``.nii.gz``; its 32 ground-truth AFIDs as ``.mrk.json`` (physical positions copied
unchanged: resampling keeps the physical space); and a NOTICE with the licences.

    python scripts/make_sample.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_dglandmark.io import read_landmarks, read_volume, write_landmarks, write_volume
from napari_dglandmark.io.atomic import write_text_atomic
from napari_dglandmark.io.volume import volume_from_sitk
from napari_dglandmark.protocols import load_protocol

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "napari_dglandmark" / "sample_data"
T1W = "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
GT = "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"
VOLUME_NAME = "afids_t1w_2mm.nii.gz"
LANDMARKS_NAME = "afids_t1w_2mm_groundtruth.mrk.json"
SPACING = 2.0
MAX_BYTES = 3 * 1024 * 1024

MNI_NOTICE = """\
MNI ICBM152 non-linear 2009 templates
Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University. Permission to use, copy, modify, and distribute this software and
its documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University make no representations
about the suitability of this software for any purpose. It is provided "as is" without express
or implied warranty. The authors are not responsible for any data loss, equipment damage,
property loss, or injury to subjects or patients resulting from the use or misuse of this
software package.
References: V.S. Fonov, A.C. Evans, R.C. McKinstry, C.R. Almli and D.L. Collins, "Unbiased
nonlinear average age-appropriate brain templates from birth to adulthood", NeuroImage 47,
Supplement 1, 2009, S102; V. Fonov, A.C. Evans, K. Botteron, C.R. Almli, R.C. McKinstry,
D.L. Collins and BDCG, "Unbiased average age-appropriate atlases for pediatric studies",
NeuroImage 54(1), 2011, 313-327.
"""


def downsample(image: sitk.Image, spacing: float) -> sitk.Image:
    """Anti-aliased resampling to an isotropic grid covering the same physical box."""
    old = np.array(image.GetSpacing())
    new = np.full(3, spacing)
    size = [int(math.ceil(n * o / spacing)) for n, o in zip(image.GetSize(), old, strict=True)]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    # keep the box's corner where it was: the first new voxel centre moves by half the size change
    origin = np.array(image.GetOrigin()) + direction @ ((new - old) / 2.0)
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), [spacing * 0.4] * 3)
    out = sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), new.tolist(),
                        direction.ravel().tolist(), 0.0, sitk.sitkFloat32)
    return out


def crop_to_head(image: sitk.Image, margin: int = 2) -> sitk.Image:
    """Crop to the bounding box of voxels brighter than 5% of the robust maximum."""
    arr = sitk.GetArrayFromImage(image)
    mask = arr > 0.05 * np.percentile(arr, 99.5)
    zyx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    lo = [max(int(v[0]) - margin, 0) for v in zyx]
    hi = [min(int(v[-1]) + margin + 1, n) for v, n in zip(zyx, arr.shape, strict=True)]
    # SimpleITK slicing is (x, y, z) and keeps the physical placement of the kept voxels
    return image[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    image = sitk.ReadImage(str(args.shared / T1W))
    small = crop_to_head(downsample(image, SPACING))
    small = sitk.Cast(sitk.Clamp(sitk.Round(small), sitk.sitkFloat32, -32768, 32767), sitk.sitkInt16)
    volume = volume_from_sitk(small, VOLUME_NAME)
    write_volume(volume, args.out / VOLUME_NAME)

    protocol = load_protocol("afids32")
    landmarks = protocol.conform(read_landmarks(args.shared / GT), args.shared / GT, allow_missing=False)
    landmarks.image = VOLUME_NAME
    write_landmarks(args.out / LANDMARKS_NAME, landmarks, coords="RAS",
                    measurements=protocol.measurement_triples())

    licences = sorted((args.shared / "afids-mni2009c").glob("LICENSE-*"))
    notice = [
        "Sample data bundled with napari-dglandmark (made by scripts/make_sample.py).",
        "",
        f"{VOLUME_NAME}: the MNI ICBM152 2009c nonlinear asymmetric T1w template (TemplateFlow",
        "tpl-MNI152NLin2009cAsym_res-01_T1w, as shipped in the PyPI package autoafids 0.1.4), smoothed,",
        f"resampled to {SPACING:g} mm and cropped to the head.",
        f"{LANDMARKS_NAME}: the 32 ground-truth AFIDs (mean of expert raters) on that template, from",
        "autoafids 0.1.4 resources (tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv).",
        "AFIDs protocol: Lau et al., Human Brain Mapping 2019; Taha et al., Scientific Data 2023.",
        "",
        "=" * 78, MNI_NOTICE.rstrip(),
    ]
    for lic in licences:
        notice += ["", "=" * 78, f"AFIDs ({lic.name.removeprefix('LICENSE-')}):", "",
                   lic.read_text(encoding="utf-8").rstrip()]
    write_text_atomic(args.out / "NOTICE", "\n".join(notice) + "\n")

    # checks: the file is small, and the landmarks still sit inside the grid at the same mm
    size = (args.out / VOLUME_NAME).stat().st_size
    assert size <= MAX_BYTES, f"{VOLUME_NAME} is {size} bytes"
    back = read_volume(args.out / VOLUME_NAME)
    lms = read_landmarks(args.out / LANDMARKS_NAME)
    assert np.allclose(lms.positions, landmarks.positions, atol=1e-9)
    index = back.physical_to_index(lms.positions)
    inside = np.all((index > -0.5) & (index < np.array(back.geometry.size) - 0.5), axis=1)
    assert inside.all(), f"outside the sample grid: {[n for n, ok in zip(lms.names, inside, strict=True) if not ok]}"
    ac = index[lms.index_of("AC")]
    print(f"{VOLUME_NAME}: {back.array.shape} (z,y,x) {back.array.dtype} spacing {back.spacing} "
          f"origin {back.origin}, {size / 1e6:.2f} MB; AC at index {np.round(ac, 2)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Accuracy where real use is hard: head pose, real people's anatomy, other MR contrasts, real scans.

Test sets (none used in training as such):
- **pose**: the AFIDs T1w rotated 15/30/45 degrees (and -30) about each LPS axis, on a grid padded
  by 40 mm so nothing is cut; truth moved exactly.
- **real geometry**: the template warped (thin-plate spline) to the AFIDs of the 10 afids-shapes
  subjects that training never saw (``training.shapes.split_subjects``), as T1w and as fixed
  synthetic T2-, FLAIR- and PD-like contrasts rendered from the warped tissue label map.
- **real scans** (no truth): the stroke patient's co-registered T1w and T2w (same grid, so the same
  landmarks are expected), and on every real brain scan: AC-PC distance (adults 22-32 mm), midline
  landmarks on one plane (off-plane RMS), left/right order of the bilateral pairs.

    python benchmarks/real_use.py [--model afids32] [--out benchmarks/results/real_use]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.model.inference import Detector
from napari_dglandmark.model.shape import load_shape_model, robust_similarity
from napari_dglandmark.protocols import load_protocol
from training.dg_data import afids_tissue_labels
from training.evaluate import landmark_errors, summarise
from training.shapes import read_subjects, split_subjects, to_template_frame
from training.synth import CONTRASTS, render_contrast, rotated_copy, warped_to_shape

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
T1W = DATA / "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
TRUTH = DATA / "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"
REAL_BRAINS = ("stroke_T1.nii.gz", "stroke_T2.nii.gz", "chris_t1.nii.gz", "T2w_1x1x2mm.nii.gz",
               "T1_head_neck_1.6mm.nii.gz", "freesurfer_norm.mgz")
MIDLINE = ("AC", "PC", "infracollicular sulcus", "PMJ", "superior interpeduncular fossa", "culmen",
           "intermammillary sulcus", "pineal gland", "genu of CC", "splenium of CC")


def plausibility(landmarks, protocol) -> dict:
    """AC-PC distance, midline off-plane RMS and side order (in the head's own frame)."""
    shape = load_shape_model("afids32")
    fit, _ = robust_similarity(shape.reference, landmarks.positions)
    head = landmarks.positions @ fit.rotation  # image -> head frame (rotation only)
    mid = np.array([head[protocol.index_of(n)] for n in MIDLINE])
    centred = mid - mid.mean(0)
    normal = np.linalg.svd(centred)[2][-1]
    swapped = [r for r, left in protocol.bilateral_pairs if head[protocol.index_of(r), 0] > head[protocol.index_of(left), 0]]
    acpc = float(np.linalg.norm(landmarks.get("AC") - landmarks.get("PC")))
    return {"ac_pc_mm": round(acpc, 2), "ac_pc_plausible": bool(22 <= acpc <= 32),
            "midline_off_plane_rms_mm": round(float(np.sqrt(np.mean((centred @ normal) ** 2))), 2),
            "side_swaps": swapped, "pose_deg": round(fit.angle_deg, 1), "scale": round(fit.scale, 3)}


def run(model: str, out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    protocol = load_protocol("afids32")
    t1w = read_volume(T1W)
    truth = protocol.conform(read_landmarks(TRUTH))
    detector = Detector(model, device="cpu")
    t0 = time.time()
    groups: dict[str, list[np.ndarray]] = {}
    cases: list[dict] = []

    def record(group: str, name: str, volume, lms) -> None:
        err = landmark_errors(lms, detector.detect(volume), protocol.names)
        groups.setdefault(group, []).append(err)
        worst = int(np.nanargmax(err))
        cases.append({"group": group, "case": name, "mre_mm": round(float(np.nanmean(err)), 3),
                      "max_mm": round(float(np.nanmax(err)), 2), "worst": protocol.names[worst]})
        print(f"{group:>22} {name:<28} MRE {np.nanmean(err):5.2f}  max {np.nanmax(err):5.1f} mm "
              f"({protocol.names[worst]})  [{time.time() - t0:.0f} s]", flush=True)

    for axis, label in enumerate("xyz"):
        for angle in (15, 30, 45, -30):
            vol, lms = rotated_copy(t1w, truth, axis, angle)
            record(f"pose about {label} (LPS)", f"{angle:+d} deg", vol, lms)

    labels = afids_tissue_labels(DATA, t1w)
    _, held = split_subjects(read_subjects(DATA / "afids-shapes", protocol.names))
    contrasts = list(CONTRASTS)
    for k, subject in enumerate(held):
        target = to_template_frame(subject, truth.positions)
        vol, lms, warped_labels = warped_to_shape(t1w, truth, target, labels)
        record("real geometry, T1w", subject.name, vol, lms)
        contrast = contrasts[k % len(contrasts)]
        synth = render_contrast(warped_labels, vol.geometry, contrast, np.random.default_rng(5000 + k))
        record("real geometry, synthetic", f"{subject.name} {contrast}", synth, lms)

    real: dict[str, dict] = {}
    detections = {}
    for name in REAL_BRAINS:
        path = DATA / "real-unlabelled" / name
        try:
            detections[name] = detector.detect(read_volume(path))
        except DGLandmarkError as exc:
            real[name] = {"error": str(exc)}
            print(f"{name}: {exc}", flush=True)
            continue
        real[name] = plausibility(detections[name], protocol)
        print(f"{name:<28} {real[name]}", flush=True)
    agreement = None
    if "stroke_T1.nii.gz" in detections and "stroke_T2.nii.gz" in detections:
        d = np.linalg.norm(detections["stroke_T1.nii.gz"].positions - detections["stroke_T2.nii.gz"].positions, axis=1)
        agreement = {"median_mm": round(float(np.median(d)), 2), "mean_mm": round(float(np.mean(d)), 2),
                     "max_mm": round(float(np.max(d)), 1), "worst": protocol.names[int(np.argmax(d))],
                     "per_landmark_mm": dict(zip(protocol.names, np.round(d, 2).tolist(), strict=True))}
        print(f"stroke T1 vs T2: median {agreement['median_mm']} mm, max {agreement['max_mm']} mm ({agreement['worst']})")

    result = {"model": str(detector.info.path), "sha256": detector.info.sha256, "date": time.strftime("%Y-%m-%d"),
              "seconds": round(time.time() - t0), "groups": {k: summarise(np.stack(v)) for k, v in groups.items()},
              "cases": cases, "real_scans": real, "stroke_t1_vs_t2": agreement}
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_use.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| test set | cases | MRE (mm) | median (mm) | max (mm) | SDR 2 mm | SDR 4 mm |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in result["groups"].items():
        lines.append(f"| {name} | {s['n'] // len(protocol.names)} | {s['mre_mm']:.2f} | {s['median_mm']:.2f} | "
                     f"{s['max_mm']:.1f} | {100 * s['sdr_2mm']:.1f} % | {100 * s['sdr_4mm']:.1f} % |")
    lines += ["", "| real scan | AC-PC (mm) | midline off-plane RMS (mm) | side swaps | pose (deg) |", "| --- | --- | --- | --- | --- |"]
    for name, r in real.items():
        if "error" in r:
            lines.append(f"| {name} | unreadable: {r['error']} | | | |")
        else:
            lines.append(f"| {name} | {r['ac_pc_mm']:.1f}{'' if r['ac_pc_plausible'] else ' (implausible)'} | "
                         f"{r['midline_off_plane_rms_mm']:.2f} | {len(r['side_swaps'])} | {r['pose_deg']:.0f} |")
    if agreement:
        lines += ["", f"Stroke T1w vs T2w (co-registered): median {agreement['median_mm']} mm, mean "
                      f"{agreement['mean_mm']} mm, max {agreement['max_mm']} mm ({agreement['worst']})."]
    (out / "real_use.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="afids32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/real_use"))
    args = ap.parse_args()
    run(args.model, Path(args.out), args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())

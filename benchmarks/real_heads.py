"""Real people's heads: is every detection on a real scan plausible, and how accurate where truth exists?

Scans (none used in training as images):
- every shared real brain MRI: ``real-unlabelled`` (stroke T1w/T2w, chris_t1, T2w 1x1x2 mm, T1 head
  and neck 1.6 mm, FreeSurfer norm.mgz), the Siemens 2D sagittal T1 DICOM series, the 20 IXI T1w
  heads with neck (2 mm), and the bundled 2 mm sample;
- held-out label-map heads (``training.real_heads.held_out``: never trained on), rendered with fixed
  T1-like and T2-like tissue intensities at 1 mm and at 2 mm (T1-like 2 mm also with the top of the
  head cut off); truth = the template's AFIDs
  transferred by ANTs SyN (its own error, measured on exact template warps, is in
  ``transfer_check_*.json`` of the prepared heads and in the results).
Per scan (no truth): AC-PC (adults 22-32 mm), midline off-plane RMS (<= 1.5 mm), the median residual
to the closest of the 60 real people's expert configurations after a similarity fit (<= 3 mm),
flags, image warning. Stroke pair: median T1w-T2w disagreement.

    python benchmarks/real_heads.py [--model afids32] [--out benchmarks/results/real_heads]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from real_use import REAL_BRAINS, plausibility

from napari_dglandmark.io import read_volume
from napari_dglandmark.io.volume import Geometry, Volume
from napari_dglandmark.model.inference import Detector
from napari_dglandmark.model.shape import robust_similarity
from napari_dglandmark.protocols import load_protocol
from napari_dglandmark.sample import SAMPLE_VOLUME
from training.data import default_cache_dir
from training.real_heads import BRAIN_CLASSES, T1_LIKE, head_names, held_out, load_heads
from training.shapes import read_subjects

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DICOM = "real-dicom/siemens_t1_sagittal_supine/3_t1_fl2d_sag"
AC_PC = (22.0, 32.0)
MIDLINE_RMS_MM = 1.5
SHAPE_RESIDUAL_MM = 3.0
#: fixed T2-like brain intensities (background, CSF, grey, white, deep grey)
T2_LIKE = np.array([0.0, 1.0, 0.55, 0.35, 0.45], np.float32)


def shape_residual(positions: np.ndarray, people: list[np.ndarray]) -> float:
    """Median residual (mm) to the closest real person's configuration after a robust similarity fit."""
    best = np.inf
    for person in people:
        ok = ~np.isnan(person).any(1) & ~np.isnan(positions).any(1)
        if ok.sum() < 8:
            continue
        fit, _ = robust_similarity(person[ok], positions[ok])
        best = min(best, float(np.median(np.linalg.norm(fit.apply(person[ok]) - positions[ok], axis=1))))
    return best


def rendered(head, contrast: str, spacing: float, seed: int) -> Volume:
    """A held-out head with fixed intensities: the brain classes by ``contrast``, every extra-cerebral class
    a fixed random intensity (seeded per class), mild blur and noise; resampled to ``spacing`` mm."""
    import SimpleITK as sitk

    from napari_dglandmark.io.volume import volume_from_sitk, volume_to_sitk

    rng = np.random.default_rng(seed)
    table = rng.uniform(0.05, 0.9, max(head.classes, BRAIN_CLASSES)).astype(np.float32)
    table[:BRAIN_CLASSES] = T1_LIKE if contrast == "T1-like" else T2_LIKE
    image = volume_to_sitk(Volume(table[head.labels], head.geometry, None))
    image = sitk.SmoothingRecursiveGaussian(image, 0.6)
    if spacing != 1.0:
        size = [int(round(n / spacing)) for n in image.GetSize()]
        image = sitk.Resample(sitk.SmoothingRecursiveGaussian(image, spacing / 2), size, sitk.Transform(),
                              sitk.sitkLinear, image.GetOrigin(), [spacing] * 3, image.GetDirection(), 0.0)
    arr = sitk.GetArrayFromImage(image)
    arr = arr + rng.normal(scale=0.02, size=arr.shape).astype(np.float32) * (arr > 0.01)
    out = volume_from_sitk(sitk.GetImageFromArray(np.clip(arr, 0, None) * 1000))
    return Volume(out.array, Geometry(shape=arr.shape, spacing=image.GetSpacing(), origin=image.GetOrigin(),
                                      direction=np.asarray(image.GetDirection()).reshape(3, 3)), None)


def top_cut(volume: Volume, truth: np.ndarray, margin_mm: float = 15.0) -> Volume:
    """The scan with its field of view ending ``margin_mm`` above the highest landmark (the top of the head
    cut off, as in a scan planned too low): everything superior to that plane is background."""
    shape = volume.array.shape
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    z = volume.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3).astype(float))[:, 2].reshape(shape)
    array = np.where(z > np.nanmax(truth[:, 2]) + margin_mm, 0, volume.array).astype(volume.array.dtype)
    return Volume(array, volume.geometry, None)


def run(model: str, out: Path, heads_dir: Path) -> dict:
    protocol = load_protocol("afids32")
    detector = Detector(model, device="cpu")
    people = [s.positions for s in read_subjects(DATA / "afids-shapes", protocol.names)]
    rows: list[dict] = []
    results: dict = {"model": detector.info.name, "model_sha256": detector.info.sha256, "rows": rows}

    def detect(group: str, name: str, volume: Volume, truth: np.ndarray | None = None) -> np.ndarray:
        start = time.time()
        lms = detector.detect(volume)
        p = plausibility(lms, protocol)
        row = {"group": group, "scan": name, "spacing": [round(float(s), 2) for s in volume.spacing],
               **{k: p[k] for k in ("ac_pc_mm", "midline_off_plane_rms_mm", "pose_deg", "scale")},
               "side_swaps": len(p["side_swaps"]),
               "shape_residual_mm": round(shape_residual(lms.positions, people), 2),
               "flagged": int(np.sum(lms.needs_review)) if lms.needs_review is not None else 0,
               "warning": lms.image_warning, "seconds": round(time.time() - start, 1)}
        row["plausible"] = bool(AC_PC[0] <= row["ac_pc_mm"] <= AC_PC[1] and row["midline_off_plane_rms_mm"] <= MIDLINE_RMS_MM
                                and row["shape_residual_mm"] <= SHAPE_RESIDUAL_MM)
        if truth is not None:
            err = np.linalg.norm(lms.positions - truth, axis=1)
            row["mre_mm"] = round(float(np.nanmean(err)), 2)
            row["max_mm"] = round(float(np.nanmax(err)), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
        return lms.positions

    real = DATA / "real-unlabelled"
    stroke = {}
    for name in REAL_BRAINS:
        stroke[name] = detect("real scan", name, read_volume(real / name))
    disagreement = np.linalg.norm(stroke["stroke_T1.nii.gz"] - stroke["stroke_T2.nii.gz"], axis=1)
    results["stroke_t1_t2_median_mm"] = round(float(np.median(disagreement)), 2)
    results["stroke_t1_t2_max_mm"] = round(float(disagreement.max()), 2)
    detect("real scan", "Siemens 2D sagittal T1 (DICOM)", read_volume(DATA / DICOM))
    detect("bundled sample", "afids_t1w_2mm", read_volume(SAMPLE_VOLUME))
    for path in sorted((DATA / "real-heads-ixi").glob("*.nii.gz")):
        detect("IXI T1w with neck (2 mm)", path.name.split("_")[0], read_volume(path))
    if heads_dir.is_dir():
        keep_out = held_out(head_names(heads_dir))
        checks = sorted(heads_dir.glob("transfer_check*.json"))  # scripts/make_real_heads.py --check N
        if checks:
            summary = json.loads(checks[-1].read_text())
            results["transfer_error_on_exact_warps"] = {k: summary[k] for k in ("mre_mm", "median_mm", "p90_mm")}
        for k, (head, truth) in enumerate(load_heads(heads_dir, sorted(keep_out))):
            for contrast in ("T1-like", "T2-like"):
                for spacing in (1.0, 2.0):
                    volume = rendered(head, contrast, spacing, seed=100 + k)
                    detect(f"held-out label-map head, {contrast} {spacing:g} mm", head.name, volume, truth.positions)
                    if contrast == "T1-like" and spacing == 2.0:
                        detect("held-out label-map head, T1-like 2 mm, top cut off 15 mm above the landmarks",
                               head.name, top_cut(volume, truth.positions), truth.positions)
    results["summary"] = summarise(rows, results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_heads.json").write_text(json.dumps(results, indent=1))
    (out / "real_heads.md").write_text(markdown(results))
    return results


def summarise(rows: list[dict], results: dict) -> dict:
    groups: dict[str, dict] = {}
    for r in rows:
        g = groups.setdefault(r["group"], {"scans": 0, "plausible": 0, "warned": 0, "all_flagged": 0, "errors": []})
        g["scans"] += 1
        g["plausible"] += int(r["plausible"])
        g["warned"] += int(bool(r["warning"]))
        g["all_flagged"] += int(r["flagged"] == 32)
        if "mre_mm" in r:
            g["errors"].append(r["mre_mm"])
    for g in groups.values():
        errors = g.pop("errors")
        if errors:
            g["mre_mm"] = round(float(np.mean(errors)), 2)
    return groups


def markdown(results: dict) -> str:
    lines = [f"# Real heads: {results['model']} ({results['model_sha256'][:12]})", "",
             f"Stroke T1w vs T2w: median disagreement {results['stroke_t1_t2_median_mm']} mm "
             f"(max {results['stroke_t1_t2_max_mm']} mm).", ""]
    if "transfer_error_on_exact_warps" in results:
        t = results["transfer_error_on_exact_warps"]
        lines += [f"Truth of the held-out label-map heads: the template's AFIDs transferred by ANTs SyN; the transfer's "
                  f"own error on template warps with exact truth: MRE {t['mre_mm']} mm, median {t['median_mm']}, "
                  f"90th percentile {t['p90_mm']} mm.", ""]
    lines += ["| group | scans | plausible | warned | all 32 flagged | MRE (mm) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, g in results["summary"].items():
        lines.append(f"| {name} | {g['scans']} | {g['plausible']} | {g['warned']} | {g['all_flagged']} | {g.get('mre_mm', '')} |")
    lines += ["", "| group | scan | AC-PC | midline RMS | shape residual | flagged | plausible | MRE | warning |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["rows"]:
        lines.append(f"| {r['group']} | {r['scan']} | {r['ac_pc_mm']} | {r['midline_off_plane_rms_mm']} | "
                     f"{r['shape_residual_mm']} | {r['flagged']} | {'yes' if r['plausible'] else 'no'} | "
                     f"{r.get('mre_mm', '')} | {r['warning']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="afids32")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/real_heads"))
    ap.add_argument("--heads", default=str(default_cache_dir() / "real-heads"), help="prepared label-map heads")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = run(args.model, Path(args.out), Path(args.heads))
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

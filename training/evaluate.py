"""Evaluation in physical space: MRE (mm), median, per-landmark table, SDR at 1..6 mm and the 0-6 mm curve.

Failure policy: a landmark that the truth has but the model did not place (NaN) is a *failure*
with infinite error. It counts against the SDR at every radius (the SDR denominator is every
landmark with a truth), and it is left out of MRE / median / std, which are computed over placed
landmarks only and reported together with a ``failures`` count (a mean with an infinite term would
say nothing). Landmarks without a truth are not evaluated at all.
Outputs: ``metrics.json``, ``per_landmark.csv``, ``predictions.csv``, ``sdr_curve.png`` and, on
request, one snapshot PNG per case.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import Landmarks, Volume, lps_to_ras, read_volume
from napari_dglandmark.io.atomic import atomic_path, write_text_atomic

from .data import find_landmark_cases, read_case_landmarks

CURVE_RADII = np.round(np.arange(0.0, 6.0 + 1e-9, 0.1), 1)  # the paper's Fig. 3 x axis
SDR_RADII = CURVE_RADII  # alias used by training.benchmark
REPORT_RADII = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)  # SDR values listed in metrics.json and per_landmark.csv
FAILURE_POLICY = ("unplaced landmarks (NaN prediction where a truth exists) are failures: infinite error, "
                  "counted against SDR at every radius; MRE/median/std are over placed landmarks only")
Progress = Callable[[int, int], None]


def position_errors(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Euclidean error (mm) per row of two (N, 3) position arrays in the same landmark order: NaN where
    the truth lacks a position, inf where the prediction does (the failure policy)."""
    t, p = np.asarray(truth, dtype=float), np.asarray(prediction, dtype=float)
    err = np.linalg.norm(p - t, axis=-1)
    has_truth = np.isfinite(t).all(-1)
    placed = np.isfinite(p).all(-1)
    return np.where(has_truth, np.where(placed, err, np.inf), np.nan)


def landmark_errors(truth: Landmarks, prediction: Landmarks, names: Sequence[str]) -> np.ndarray:
    """Euclidean error (mm) per name: NaN where the truth lacks it, inf where the prediction does."""
    return position_errors(truth.reordered(names, strict=False).positions,
                           prediction.reordered(names, strict=False).positions)


def mean_radial_error(truth: Landmarks, prediction: Landmarks, names: Sequence[str]) -> float:
    """MRE (mm) of one prediction over ``names`` under the failure policy (placed landmarks only)."""
    return summarise(landmark_errors(truth, prediction, names))["mre_mm"]


def sdr(errors: np.ndarray, radius: float) -> float:
    """Share of evaluated landmarks (truth present) within ``radius`` mm; failures are never within."""
    valid = errors[~np.isnan(errors)]
    return float((valid <= radius).mean()) if valid.size else math.nan


def summarise(errors: np.ndarray) -> dict:
    """MRE, std, median, max over placed landmarks, failures, SDR at 1..6 mm for any array of errors."""
    flat = np.asarray(errors, dtype=float).ravel()
    evaluated = flat[~np.isnan(flat)]
    placed = evaluated[np.isfinite(evaluated)]

    def stat(fn):
        return float(fn(placed)) if placed.size else math.nan

    out = {"n": int(evaluated.size), "failures": int(evaluated.size - placed.size),
           "mre_mm": stat(np.mean), "std_mm": stat(np.std), "median_mm": stat(np.median), "max_mm": stat(np.max)}
    for r in REPORT_RADII:
        out[f"sdr_{r:g}mm"] = sdr(flat, r)
    return out


def sdr_curve(errors: np.ndarray) -> np.ndarray:
    """SDR (fraction) at every radius of ``CURVE_RADII`` (0-6 mm in 0.1 mm steps)."""
    return np.array([sdr(np.asarray(errors, dtype=float).ravel(), float(r)) for r in CURVE_RADII])


def summarise_errors(errors: np.ndarray) -> dict:
    """``{"mre", "median", "failures", "n", "sdr": {radius: fraction}}`` over ``CURVE_RADII`` (same failure policy)."""
    s = summarise(errors)
    return {"mre": s["mre_mm"], "median": s["median_mm"], "std": s["std_mm"], "failures": s["failures"],
            "n": s["n"], "sdr": dict(zip((float(r) for r in CURVE_RADII), sdr_curve(errors).tolist(), strict=True))}


@dataclass
class Evaluation:
    """Per-case truth and predictions for the landmark ``names``; ``errors`` is [cases, landmarks]."""

    names: list[str]
    cases: list[str] = field(default_factory=list)
    truths: list[Landmarks] = field(default_factory=list)
    predictions: list[Landmarks] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)

    def add(self, case: str, truth: Landmarks, prediction: Landmarks) -> np.ndarray:
        err = landmark_errors(truth, prediction, self.names)
        self.cases.append(case)
        self.truths.append(truth.reordered(self.names, strict=False))
        self.predictions.append(prediction.reordered(self.names, strict=False))
        self.rows.append(err)
        return err

    @property
    def errors(self) -> np.ndarray:
        return np.array(self.rows, dtype=float).reshape(len(self.rows), len(self.names))

    def metrics(self) -> dict:
        errors = self.errors
        overall = summarise(errors)
        curve = sdr_curve(errors).tolist()
        return {
            **overall,
            "n_cases": len(self.cases),
            "n_landmarks": len(self.names),
            "sdr_mm": {f"{r:g}": overall[f"sdr_{r:g}mm"] for r in REPORT_RADII},
            "sdr_curve": {"radius_mm": CURVE_RADII.tolist(), "sdr": curve},
            "failure_policy": FAILURE_POLICY,
            "coordinates": "physical mm (LPS internally; predictions.csv is written in RAS)",
        }

    def per_landmark(self) -> list[dict]:
        errors = self.errors
        return [{"landmark": name, **summarise(errors[:, i])} for i, name in enumerate(self.names)]


def _json_safe(obj):
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _csv_text(rows: list[dict], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else
                             ("" if isinstance(v, float) and math.isnan(v) else v)) for k, v in row.items()})
    return buf.getvalue()


def write_report(evaluation: Evaluation, out_dir: str | os.PathLike, extra: dict | None = None) -> dict:
    """Write metrics.json, per_landmark.csv, predictions.csv and sdr_curve.png into ``out_dir``; returns the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(evaluation.metrics(), **(extra or {}))
    metrics["per_landmark"] = evaluation.per_landmark()
    write_text_atomic(out / "metrics.json", json.dumps(_json_safe(metrics), indent=2) + "\n")
    per = evaluation.per_landmark()
    write_text_atomic(out / "per_landmark.csv", _csv_text(per, list(per[0]) if per else ["landmark"]))
    rows = []
    for case, truth, pred, err in zip(evaluation.cases, evaluation.truths, evaluation.predictions,
                                      evaluation.rows, strict=True):
        t_ras, p_ras = lps_to_ras(truth.positions), lps_to_ras(pred.positions)
        for i, name in enumerate(evaluation.names):
            rows.append({"case": case, "landmark": name,
                         "true_r": t_ras[i, 0], "true_a": t_ras[i, 1], "true_s": t_ras[i, 2],
                         "pred_r": p_ras[i, 0], "pred_a": p_ras[i, 1], "pred_s": p_ras[i, 2],
                         "error_mm": "failure" if np.isinf(err[i]) else float(err[i]),
                         "confidence": float(pred.confidence[i])})
    fields = ["case", "landmark", "true_r", "true_a", "true_s", "pred_r", "pred_a", "pred_s", "error_mm", "confidence"]
    write_text_atomic(out / "predictions.csv", _csv_text(rows, fields))
    plot_sdr_curve(metrics["sdr_curve"], out / "sdr_curve.png")
    return metrics


def plot_sdr_curve(curve: dict, path: Path, label: str = "model") -> None:
    """The paper's Fig. 3: SDR (%) against radius 0-6 mm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(curve["radius_mm"], [100 * (v if v is not None else math.nan) for v in curve["sdr"]], label=label)
    ax.set(xlabel="radius (mm)", ylabel="SDR (%)", xlim=(0, 6), ylim=(0, 100), title="Successful detection rate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def snapshot(volume: Volume, truth: Landmarks, prediction: Landmarks, path: Path, title: str = "") -> None:
    """One PNG: for each landmark, the axial slice through its truth with truth (+) and prediction (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(truth.names)
    cols = min(n, 6) or 1
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), dpi=80, squeeze=False)
    arr = np.asarray(volume.array, dtype=float)
    lo, hi = np.percentile(arr, [1, 99])
    for ax in axes.ravel():
        ax.axis("off")
    for i, name in enumerate(truth.names):
        ax = axes.ravel()[i]
        t, p = truth.positions[i], prediction.positions[i]
        anchor = t if np.isfinite(t).all() else p
        if not np.isfinite(anchor).all():
            continue
        ti = volume.physical_to_index(anchor)
        k = int(np.clip(np.round(ti[2]), 0, arr.shape[0] - 1))
        ax.imshow(arr[k], cmap="gray", vmin=lo, vmax=hi, origin="lower")
        if np.isfinite(t).all():
            ax.plot(*volume.physical_to_index(t)[:2], "+", color="lime", ms=9, mew=1.5)
        if np.isfinite(p).all():
            ax.plot(*volume.physical_to_index(p)[:2], "x", color="red", ms=7, mew=1.5)
        err = float(np.linalg.norm(p - t)) if np.isfinite(p).all() and np.isfinite(t).all() else math.inf
        label = textwrap.shorten(name, width=22, placeholder="...")
        ax.set_title(f"{label}\n{err:.1f} mm" if math.isfinite(err) else f"{label}\nfailed", fontsize=7)
    fig.suptitle(f"{title}  (+ truth, x prediction; slice through the truth)", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def evaluate_model(model: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike,
                   device: str = "auto", snapshots: bool = False, progress: Progress | None = None) -> dict:
    """Run a checkpoint (two-stage or single-network) over a landmark dataset and write the report."""
    from napari_dglandmark.model.inference import load_detector

    detector = load_detector(model, device)
    items = find_landmark_cases(data)
    evaluation = Evaluation(list(detector.names))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if snapshots:
        (out / "snapshots").mkdir(exist_ok=True)
    for n, item in enumerate(items, 1):
        volume = read_volume(item.image)
        truth = read_case_landmarks(item)
        known = {x.casefold() for x in detector.names}
        if not any(name.casefold() in known for name in truth.names):
            raise DGLandmarkError("shares no landmark name with the model", item.landmarks)
        prediction = detector.detect(volume)
        evaluation.add(item.name, truth, prediction)
        if snapshots:
            snapshot(volume, evaluation.truths[-1], evaluation.predictions[-1],
                     out / "snapshots" / f"{item.name}.png", item.name)
        if progress:
            progress(n, len(items))
    return write_report(evaluation, out, {"model": str(model), "data": str(data),
                                          "model_sha256": detector.info.sha256})

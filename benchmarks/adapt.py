"""Site adaptation benchmark: does fine-tuning on a few corrected cases fix a new site, and at what cost?

A simulated new site the model never saw: the template's tissue label map rendered as a fixed
FLAIR-like contrast (``training.synth.render_contrast``), warped (thin-plate spline) to the AFIDs of
real people (``afids-shapes``). Evaluation cases use the HELD-OUT subjects (never seen in training);
adaptation cases use other subjects, with every landmark "corrected" to the truth.
Reported: MRE on the evaluation cases before and after adapting on 1, 3 and 5 cases; the time
adaptation took; forgetting (error on the original T1w template and on T1w versions of the
evaluation cases). Then the real stroke T1/T2 pair (co-registered): adapt on the T1 with its own
detections as truth, and measure the T1-T2 disagreement before and after.

    python benchmarks/adapt.py --out benchmarks/results/adapt            # ~30 min on 2 CPU cores
    python benchmarks/adapt.py --quick --out /tmp/adapt-quick             # plumbing check, minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_dglandmark.io import read_landmarks, read_volume, write_landmarks
from napari_dglandmark.io.atomic import write_text_atomic
from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Volume, write_volume
from napari_dglandmark.model.checkpoint import file_sha256, read_metadata
from napari_dglandmark.model.inference import Detector, resolve_model
from napari_dglandmark.protocols import load_protocol
from training.adapt import AdaptOptions, adapt, cases_from_dataset
from training.dg_data import AFIDS_T1W, AFIDS_TRUTH, afids_tissue_labels, source_truth
from training.evaluate import mean_radial_error
from training.shapes import Subject, split_subjects, to_template_frame
from training.synth import render_contrast, thick_slices, warped_to_shape

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STROKE = ("real-unlabelled/stroke_T1.nii.gz", "real-unlabelled/stroke_T2.nii.gz")
CONTRAST = "FLAIR-like"
#: the simulated sites: name -> (description, slice thickening factor)
SITES = {"flair": ("FLAIR-like, 1 mm", 1),
         "flair-5mm": ("FLAIR-like, axial 2D with 5 mm slices and more noise", 5)}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def read_subjects_by_label(root: Path, n: int) -> list[Subject]:
    """afids-shapes ground truth matched by AFID number (the ``label`` column), as its README asks:
    OASIS calls landmark 20 "splenium", so matching by name loses it (and a NaN row makes the
    similarity fit of ``to_template_frame`` NaN)."""
    subjects = []
    for cohort in ("hcp", "oasis"):
        for path in sorted((root / cohort / "afids_groundtruth").glob("sub-*/anat/*_afids.fcsv")):
            pos = np.full((n, 3), np.nan)
            rows = [r for r in csv.reader(path.read_text().splitlines()) if r and not r[0].startswith("#")]
            for r in rows:
                k = int(float(r[11])) - 1
                if 0 <= k < n:
                    pos[k] = (-float(r[1]), -float(r[2]), float(r[3]))  # RAS -> LPS
            subjects.append(Subject(f"{cohort}/{path.parts[-3]}", pos))
    return subjects


def make_cases(data: Path, cache: Path, names: list[str], n_eval: int, n_adapt: int,
               site: str = "flair") -> dict[str, list[dict]]:
    """The site's cases on disk (cached): ``eval`` (held-out subjects) and ``adapt`` (other subjects);
    each has the site's image (``site``), a T1w image of the same anatomy and the truth (.mrk.json)."""
    cache.mkdir(parents=True, exist_ok=True)
    train_s, held_s = split_subjects(read_subjects_by_label(data / "afids-shapes", len(names)))
    chosen = {"eval": held_s[:n_eval], "adapt": train_s[::10][:n_adapt]}  # both cohorts, fixed whatever n
    t1w, truth, labels = None, None, None
    out: dict[str, list[dict]] = {}
    for role, subjects in chosen.items():
        out[role] = []
        for k, s in enumerate(subjects):
            stem = s.name.replace("/", "_")
            files = {"flair": cache / f"{stem}_flair.nii.gz", "t1w": cache / f"{stem}_t1w.nii.gz",
                     "truth": cache / f"{stem}.mrk.json"}
            if not all(f.is_file() for f in files.values()):
                if t1w is None:
                    t1w, truth = source_truth(data)
                    labels = afids_tissue_labels(data, t1w)
                target = to_template_frame(s, truth.positions)
                vol, lms, lab = warped_to_shape(t1w, truth, target, labels)
                seed = 1000 * (role == "adapt") + k
                flair = render_contrast(lab, vol.geometry, CONTRAST, np.random.default_rng(seed))
                for key, arr in (("flair", flair.array), ("t1w", vol.array)):  # int16, as scanners store them
                    write_volume(Volume(np.round(arr).astype(np.int16), vol.geometry, None), files[key])
                lms.status = ["corrected"] * len(lms)  # the clinician put every landmark where it belongs
                write_landmarks(files["truth"], lms)
                log(f"made {role} case {s.name}")
            files["site"] = files["flair"]
            if SITES[site][1] > 1:
                files["site"] = cache / f"{stem}_{site}.nii.gz"
                if not files["site"].is_file():
                    thick = thick_slices(read_volume(files["flair"]), SITES[site][1])
                    rng = np.random.default_rng(2000 + 1000 * (role == "adapt") + k)
                    noisy = thick.array + rng.normal(scale=30.0, size=thick.array.shape) * (thick.array > 20)
                    write_volume(Volume(np.round(np.clip(noisy, 0, None)).astype(np.int16), thick.geometry, None),
                                 files["site"])
            out[role].append({"subject": s.name, **{k2: str(v) for k2, v in files.items()}})
    return out


def errors(model: str | Path, images: list[str], truths: list[Landmarks]) -> dict:
    """Per-case MRE (mm, ``training.evaluate``'s failure policy) of ``model`` and the mean/median/max over cases."""
    det = Detector(model, device="cpu")
    per_case = [mean_radial_error(truth, det.detect(read_volume(image)), det.names)
                for image, truth in zip(images, truths, strict=True)]
    return {"mre_mm": float(np.mean(per_case)), "median_case_mm": float(np.median(per_case)),
            "max_case_mm": float(np.max(per_case)), "per_case_mm": [round(e, 3) for e in per_case]}


def evaluate(model: str | Path, cases: dict, template: tuple[str, Landmarks], names: list[str]) -> dict:
    truths = [read_landmarks(c["truth"]).reordered(names, strict=False) for c in cases["eval"]]
    return {
        "site": errors(model, [c["site"] for c in cases["eval"]], truths),
        "original_t1w_template": errors(model, [template[0]], [template[1]])["mre_mm"],
        "original_t1w_eval_anatomy": errors(model, [c["t1w"] for c in cases["eval"]], truths),
    }


def stroke(base: str | Path, data: Path, work: Path, options: AdaptOptions) -> dict:
    """Adapt on the stroke T1 with its own detections as truth; T1-T2 disagreement before/after."""
    t1, t2 = (read_volume(data / p) for p in STROKE)

    def answers(model: str | Path) -> tuple[np.ndarray, np.ndarray, Landmarks]:
        det = Detector(model, device="cpu")
        a, b = det.detect(t1), det.detect(t2)
        return a.positions, b.positions, a

    p1, p2, found = answers(base)
    folder = work / "stroke"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / STROKE[0], folder / "stroke_T1.nii.gz")
    found.status = ["verified"] * len(found)  # "corrected to themselves": the clinician accepted every one
    write_landmarks(folder / "stroke_T1.mrk.json", found)
    result = adapt(base, cases_from_dataset(folder), work / "stroke_adapted.safetensors", options, message=log)
    q1, q2, _ = answers(result.path)
    before, after = np.linalg.norm(p1 - p2, axis=1), np.linalg.norm(q1 - q2, axis=1)
    return {"t1_t2_disagreement_mm": {"before": float(before.mean()), "after": float(after.mean()),
                                      "before_max": float(before.max()), "after_max": float(after.max())},
            "t1_moved_mm": float(np.linalg.norm(q1 - p1, axis=1).mean()),
            "t2_moved_mm": float(np.linalg.norm(q2 - p2, axis=1).mean()),
            "adaptation": {"seconds": round(result.seconds, 1), "steps": result.steps, "stopped_by": result.stopped_by}}


def table(results: dict) -> str:
    n = len(results["evaluation_subjects"])
    rows = [f"| model | site MRE ({n} held-out, {results.get('site', CONTRAST)}) | median case | worst case | T1w template | "
            "T1w, same anatomy | adapt time | steps (coarse+fine) | held-back error |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        a = r.get("adaptation")
        held = (f"{a['error_mm']['before']:.2f} -> {a['error_mm']['after']:.2f} mm"
                if a and a["error_mm"]["held_back"] else "-")
        minutes = f"{a['seconds'] / 60:.1f} min" if a else "-"
        steps = f"{a['steps']['coarse']} + {a['steps']['fine']}" if a else "-"
        rows.append(f"| {name} | {r['site']['mre_mm']:.2f} mm | {r['site']['median_case_mm']:.2f} | "
                    f"{r['site']['max_case_mm']:.2f} | {r['original_t1w_template']:.2f} mm | "
                    f"{r['original_t1w_eval_anatomy']['mre_mm']:.2f} mm | "
                    f"{minutes} | {steps} | {held} |")
    st = results.get("stroke_t1_t2")
    if st:
        d = st["t1_t2_disagreement_mm"]
        rows += ["", "| stroke T1/T2 (adapted on the T1, its own detections as truth) | before | after |",
                 "|---|---|---|",
                 f"| mean T1-T2 disagreement | {d['before']:.2f} mm | {d['after']:.2f} mm |",
                 f"| worst landmark | {d['before_max']:.1f} mm | {d['after_max']:.1f} mm |",
                 f"| T1 answer moved / T2 answer moved | - | {st['t1_moved_mm']:.2f} / {st['t2_moved_mm']:.2f} mm |"]
    return "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="afids32", help="base model (bundled name or file)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/adapt"))
    ap.add_argument("--cache", default=str(Path.home() / ".cache/dglandmark/adapt-benchmark"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--eval", type=int, default=10, help="evaluation cases (held-out subjects)")
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-stroke", action="store_true")
    ap.add_argument("--site", choices=list(SITES), default="flair", help="the simulated new site")
    ap.add_argument("--quick", action="store_true", help="2 evaluation cases, sizes 1 and 3, 2-minute budget")
    args = ap.parse_args()
    if args.quick:
        args.eval, args.sizes, args.max_minutes = 2, [1, 3], 2.0
    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    base = resolve_model(args.model)
    meta = read_metadata(base)
    names = list(meta["landmark_names"])
    start = time.time()
    cases = make_cases(data, Path(args.cache), names, args.eval, max(args.sizes), args.site)
    template = (str(data / AFIDS_T1W), load_protocol("afids32").conform(read_landmarks(data / AFIDS_TRUTH))
                .reordered(names, strict=False))
    options = AdaptOptions(max_minutes=args.max_minutes, device="cpu")
    results: dict = {
        "what": f"site adaptation on a simulated new site ({SITES[args.site][0]}: {CONTRAST} contrast from the "
                "template's tissue labels, warped to real people's AFIDs; evaluation on held-out afids-shapes subjects)",
        "site": SITES[args.site][0],
        "base_model": {"name": meta.get("model_name"), "file": base.name, "sha256": file_sha256(base),
                       "created": meta.get("created")},
        "evaluation_subjects": [c["subject"] for c in cases["eval"]],
        "adaptation_subjects": [c["subject"] for c in cases["adapt"]],
        "options": {"max_minutes": args.max_minutes, "threads": args.threads, "device": "cpu"},
        "machine": {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "load_average_at_start": os.getloadavg()},
        "models": {},
    }
    try:
        results["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                               text=True).stdout.strip()
    except OSError:
        pass

    def save() -> None:
        write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
        write_text_atomic(out / "results.md", table(results))

    log(f"base model {base.name}: evaluating")
    results["models"]["base"] = evaluate(base, cases, template, names)
    save()
    log(f"base: site MRE {results['models']['base']['site']['mre_mm']:.2f} mm")
    for k in args.sizes:
        folder = work / f"site_{k}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for c in cases["adapt"][:k]:
            stem = c["subject"].replace("/", "_")
            shutil.copy(c["site"], folder / f"{stem}.nii.gz")
            shutil.copy(c["truth"], folder / f"{stem}.mrk.json")
        log(f"adapting on {k} case(s)")
        result = adapt(base, cases_from_dataset(folder), work / f"adapted_{k}.safetensors", options, message=log)
        log(f"adapted on {k}: {result.summary()}")
        r = evaluate(result.path, cases, template, names)
        r["adaptation"] = {k2: result.metadata[k2] for k2 in ("steps", "seconds", "stopped_by", "error_mm", "selected")}
        results["models"][f"adapted on {k}"] = r
        save()
        log(f"adapted on {k}: site MRE {r['site']['mre_mm']:.2f} mm, template {r['original_t1w_template']:.2f}")
    if not args.no_stroke:
        log("stroke T1/T2")
        results["stroke_t1_t2"] = stroke(base, data, work, AdaptOptions(max_minutes=min(args.max_minutes, 5.0),
                                                                          device="cpu"))
        save()
    results["seconds"] = round(time.time() - start)
    results["machine"]["load_average_at_end"] = os.getloadavg()  # other work on the machine slows every timing
    save()
    shutil.rmtree(work, ignore_errors=True)
    log(f"done in {results['seconds']} s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

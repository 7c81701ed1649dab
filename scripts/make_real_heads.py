"""Prepare the real-heads training set: the shared label maps with the template's AFIDs transferred.

For every map in ``../shared/data/label-maps`` (SynthSeg's and BrainWeb's, interleaved so a partial
run is balanced) it writes, into ``--out``, the 1 mm tissue map, the transferred landmarks and a
report (``training.real_heads``). ``--check N`` first measures the transfer on N template warps whose
truth is exact (the template warped by a thin-plate spline to held-out real people's AFIDs).
Resumable: heads already in ``--out`` are skipped. Long (about a minute a head on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=None, help="default: the training cache's real-heads folder")
    ap.add_argument("--check", type=int, default=3, help="template warps with exact truth to measure the transfer on")
    ap.add_argument("--limit", type=int, default=0, help="at most this many heads (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spacing", type=float, default=2.5, help="registration grid (mm)")
    ap.add_argument("--iterations", default="60,40,20", help="SyN iterations per level (coarse to fine)")
    args = ap.parse_args()
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))

    from napari_dglandmark.model.shape import load_shape_model
    from training.data import default_cache_dir
    from training.dg_data import afids_tissue_labels, source_truth
    from training.real_heads import (
        _brain_of_template,
        head_paths,
        label_map_paths,
        read_label_head,
        save_head,
        transfer_check,
        transfer_landmarks,
    )

    data = Path(args.data)
    settings = {"spacing_mm": args.spacing, "iterations": tuple(int(v) for v in args.iterations.split(","))}
    out = Path(args.out) if args.out else default_cache_dir() / "real-heads"
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    def log(row: dict) -> None:
        print(json.dumps({"t": round(time.time() - start, 1), **row}), flush=True)

    t1w, truth = source_truth(data)
    labels = afids_tissue_labels(data, t1w)
    template_brain = _brain_of_template(t1w, labels)
    shape = load_shape_model("afids32")
    if args.check:
        check_path = out / f"transfer_check_{args.spacing:g}mm.json"
        if check_path.exists():
            log({"transfer_check": "kept", "file": str(check_path)})
        else:
            rows = transfer_check(data, t1w, truth, labels, template_brain, args.check, log, **settings)
            errors = np.concatenate([r["errors_mm"] for r in rows])
            summary = {"cases": rows, "mre_mm": round(float(errors.mean()), 3),
                       "median_mm": round(float(np.median(errors)), 3), "p90_mm": round(float(np.percentile(errors, 90)), 3)}
            check_path.write_text(json.dumps(summary, indent=1))
            log({"transfer_check": {k: v for k, v in summary.items() if k != "cases"}})
    paths = label_map_paths(data)
    synthseg = [p for p in paths if "synthseg" in str(p)]
    brainweb = [p for p in paths if "brainweb" in str(p)]
    order = [p for pair in itertools.zip_longest(synthseg, brainweb) for p in pair if p is not None]
    if args.limit:
        order = order[: args.limit]
    for path in order:
        head = read_label_head(path)
        if head_paths(out, head.name)[1].exists():
            log({"head": head.name, "skipped": "done"})
            continue
        moved, report = transfer_landmarks(template_brain, truth, head.brain_t1_like(), **settings)
        fit, residual = shape.fit(moved.positions)
        ac_pc = float(np.linalg.norm(moved.positions[0] - moved.positions[1]))
        report.update({"file": str(path.relative_to(data)), "registration": {"spacing_mm": args.spacing,
                                                                              "iterations": args.iterations}, "similarity_scale": round(float(fit.scale), 3),
                       "shape_residual_median_mm": round(float(np.median(residual)), 2),
                       "shape_residual_max_mm": round(float(residual.max()), 2), "ac_pc_mm": round(ac_pc, 2)})
        save_head(out, head, moved, report)
        log({"head": head.name, **report})
    log({"done": len(order), "out": str(out)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

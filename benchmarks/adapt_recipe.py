"""Recipe check for site adaptation: base vs adapted on N FLAIR-like evaluation cases.

Uses the cases of ``benchmarks/adapt.py`` (adapts on 3 of its adaptation cases) and prints the
errors before and after; the logs in ``benchmarks/results/adapt/recipe-experiments/`` are its runs
(2026-11-25, bundled model v2, 2 shared CPU cores).

    python benchmarks/adapt_recipe.py --eval 4 --max-minutes 10 --options '{"lr": 2e-4, "fine_steps": 300}'
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from napari_dglandmark.io import read_landmarks
from training.adapt import AdaptOptions, adapt, cases_from_dataset

import adapt as bench  # benchmarks/adapt.py: this script's folder is first on sys.path  # isort: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", type=int, default=4, help="evaluation cases (held-out subjects)")
    ap.add_argument("--max-minutes", type=float, default=10.0)
    ap.add_argument("--options", default="{}", help="AdaptOptions fields as JSON")
    ap.add_argument("--model", default="afids32")
    ap.add_argument("--data", default=str(bench.DATA))
    ap.add_argument("--cache", default=str(Path.home() / ".cache/dglandmark/adapt-benchmark"))
    ap.add_argument("--work", default="", help="folder for the adaptation cases and model (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    base = bench.resolve_model(args.model)
    names = bench.read_metadata(base)["landmark_names"]
    cases = bench.make_cases(Path(args.data), Path(args.cache), names, args.eval, 3)
    ev = cases["eval"]
    truths = [read_landmarks(c["truth"]).reordered(names, strict=False) for c in ev]
    print("base", bench.errors(base, [c["flair"] for c in ev], truths), flush=True)
    print("base t1", bench.errors(base, [c["t1w"] for c in ev], truths), flush=True)
    with tempfile.TemporaryDirectory(prefix="adapt-recipe-") as tmp:
        work = Path(args.work or tmp)
        folder = work / "site3"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for c in cases["adapt"][:3]:
            stem = c["subject"].replace("/", "_")
            shutil.copy(c["flair"], folder / f"{stem}.nii.gz")
            shutil.copy(c["truth"], folder / f"{stem}.mrk.json")
        opts = AdaptOptions(max_minutes=args.max_minutes, **json.loads(args.options))
        r = adapt(base, cases_from_dataset(folder), work / "a3.safetensors", opts,
                  message=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
        print(r.summary())
        print("after", bench.errors(r.path, [c["flair"] for c in ev], truths), flush=True)
        print("after t1", bench.errors(r.path, [c["t1w"] for c in ev], truths), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

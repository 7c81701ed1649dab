"""Recipe check: base vs adapted on N FLAIR-like evaluation cases (adapt cases from benchmarks/adapt.py).

Usage: python experiment.py N_EVAL MAX_MINUTES '{"lr": 2e-4, ...}'   (AdaptOptions fields as JSON)
The logs beside this file are its runs (2026-11-25, bundled model v2, 2 shared CPU cores).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import adapt as bench  # noqa: E402 - benchmarks/adapt.py, not a package

from napari_dglandmark.io import read_landmarks  # noqa: E402
from training.adapt import AdaptOptions, adapt, cases_from_dataset  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    names = bench.read_metadata(bench.resolve_model("afids32"))["landmark_names"]
    cases = bench.make_cases(bench.DATA, Path.home() / ".cache/dglandmark/adapt-benchmark", names, int(sys.argv[1]), 3)
    ev = cases["eval"]
    truths = [read_landmarks(c["truth"]).reordered(names, strict=False).positions for c in ev]
    base = bench.resolve_model("afids32")
    print("base", bench.errors(base, [c["flair"] for c in ev], truths), flush=True)
    print("base t1", bench.errors(base, [c["t1w"] for c in ev], truths), flush=True)
    folder = Path("/tmp/adapt/site3")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for c in cases["adapt"][:3]:
        stem = c["subject"].replace("/", "_")
        shutil.copy(c["flair"], folder / f"{stem}.nii.gz")
        shutil.copy(c["truth"], folder / f"{stem}.mrk.json")
    opts = AdaptOptions(max_minutes=float(sys.argv[2]), **(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}))
    r = adapt(base, cases_from_dataset(folder), "/tmp/adapt/a3.safetensors", opts,
              message=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
    print(r.summary())
    print("after", bench.errors(r.path, [c["flair"] for c in ev], truths), flush=True)
    print("after t1", bench.errors(r.path, [c["t1w"] for c in ev], truths), flush=True)


if __name__ == "__main__":
    main()

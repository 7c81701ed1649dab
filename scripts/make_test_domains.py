"""Write landmark datasets made from the real AFIDs T1w: deformed copies, optionally scanner-shifted.

For ``dglandmark-train evaluate --data DIR`` and ``benchmark --extra-domain DIR``:
    python scripts/make_test_domains.py --out /tmp/afids-deformed --cases 5 [--site 3] [--seed 1000]
Each case is ``case_NN.nii.gz`` + ``case_NN.fcsv`` (RAS), a fixed seeded deformation (rotation up
to 10 degrees, scaling 0.9-1.1, elastic) that training never sees.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_dglandmark.io import read_landmarks, read_volume, write_landmarks, write_volume
from napari_dglandmark.protocols import load_protocol
from training.synth import SITES, Deformation, deform, scanner_shift

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "afids-mni2009c"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--site", type=int, default=None, help=f"simulated site 0-{len(SITES) - 1} (default: none)")
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = load_protocol("afids32")
    t1w = read_volume(Path(args.data) / "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz")
    truth = protocol.conform(read_landmarks(Path(args.data) / "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"))
    for c in range(args.cases):
        volume, landmarks = deform(t1w, truth, np.random.default_rng(args.seed + c), Deformation())
        if args.site is not None:
            volume = scanner_shift(volume, SITES[args.site], np.random.default_rng(args.seed + 500 + c))
        write_volume(volume, out / f"case_{c:02d}.nii.gz")
        write_landmarks(out / f"case_{c:02d}.fcsv", landmarks)
        print(f"wrote {out / f'case_{c:02d}.nii.gz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

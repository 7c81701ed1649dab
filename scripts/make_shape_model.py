"""Build ``protocols/afids32.shape.json``: the template's AFIDs as the reference configuration and
the spread of real people's AFIDs around it (afids-shapes training subjects only; CC BY 4.0)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.model.preprocess import foreground_center
from napari_dglandmark.model.shape import shape_model_path
from napari_dglandmark.protocols import load_protocol
from training.shapes import build_shape_model, read_subjects, split_subjects

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> int:
    protocol = load_protocol("afids32")
    reference = protocol.conform(read_landmarks(
        DATA / "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv")).positions
    train, held = split_subjects(read_subjects(DATA / "afids-shapes", protocol.names))
    model = build_shape_model(protocol.names, reference, train,
                              source=f"reference: AFIDs ground truth on MNI152NLin2009cAsym (MIT, autoafids); spread: "
                                     f"expert AFIDs of {len(train)} HCP/OASIS subjects (afids-hcp, AFIDs-OASIS, CC BY 4.0), "
                                     f"held out: {', '.join(s.name for s in held)}")
    t1w = read_volume(DATA / "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz")
    model.head_center = foreground_center(t1w)  # where inference centres the canonical coarse grid
    path = shape_model_path("afids32")
    path.write_text(json.dumps(model.to_dict(), indent=1) + "\n")
    print(path, "spread mm:", [round(float(s), 1) for s in model.spread])
    return 0


if __name__ == "__main__":
    sys.exit(main())

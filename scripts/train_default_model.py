"""Train the bundled default model ``afids32`` from ../shared/data (long: run in the background).

BaPDG pre-training on the MNI 2009a template's white-matter boundary, then coarse and fine
fine-tuning on the AFIDs T1w template with strong spatial and contrast augmentation.
Usage: python scripts/train_default_model.py [--out napari_dglandmark/models/afids32.safetensors]
       [--coarse-steps N] [--fine-steps N] [--pretrain-steps N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.protocols import load_protocol
from training.detector import DetectorRecipe, DetectorTrainer, landmark_case, segmentation_case

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "napari_dglandmark/models/afids32.safetensors"))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--coarse-steps", type=int, default=3000)
    ap.add_argument("--fine-steps", type=int, default=3000)
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    protocol = load_protocol("afids32")
    t1w = read_volume(data / "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz")
    truth = protocol.conform(read_landmarks(data / "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"))
    seg_image = read_volume(data / "mni-icbm152-2009a/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    wm = read_volume(data / "mni-icbm152-2009a/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    recipe = DetectorRecipe(coarse_steps=args.coarse_steps, fine_steps=args.fine_steps,
                            pretrain_coarse_steps=args.pretrain_steps, pretrain_fine_steps=args.pretrain_steps,
                            seed=args.seed)
    start = time.time()

    def log(row: dict) -> None:
        row = {"t": round(time.time() - start, 1), **row}
        print(json.dumps(row), flush=True)

    trainer = DetectorTrainer(recipe, protocol.names, log=log)
    seg = segmentation_case(seg_image, wm.array > 127, recipe)
    trainer.pretrain([seg])
    case = landmark_case(t1w, truth, protocol.names, recipe.pipeline)
    trainer.finetune([case])
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    trainer.save(args.out, {
        "model_name": "afids32",
        "protocol": "afids32",
        "bilateral_pairs": [list(p) for p in protocol.bilateral_pairs],
        "method": "BaPDG (boundary-aware pre-training, mixing loss) + two-stage fine-tuning",
        "data": {"pretrain": "MNI ICBM152 2009a sym T1 + white-matter map > 127 (boundary band 5 grid voxels)",
                 "finetune": "AFIDs ground truth on MNI152NLin2009cAsym T1w template (1 image, 32 landmarks)"},
        "provenance": {"git_commit": commit, "seconds": round(time.time() - start), "torch": torch.__version__},
    })
    print(json.dumps({"saved": args.out, "seconds": round(time.time() - start)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the bundled default model ``afids32`` from ../shared/data (long: run it in the background).

Two stages, each a documented recipe:
- ``--stage template`` (v2, 33 min on 2 CPUs): BaPDG pre-training on the MNI 2009a white-matter
  boundary, then coarse and fine fine-tuning on the AFIDs T1w template (strong intensity augmentation).
- ``--stage robust`` (v3, from the template-stage model via ``--init``): the same two networks
  trained on realistic cases: head poses up to 55 degrees, the template warped (thin-plate spline)
  to the landmark configurations of 50 real people (afids-shapes; 10 held out), and random
  MR contrasts synthesised from a tissue label map of the template (SynthSeg-style), with
  skull-stripped variants.
Usage: python scripts/train_default_model.py --stage robust --init OLD.safetensors --out NEW.safetensors
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.model.checkpoint import file_sha256, load_checkpoint
from napari_dglandmark.model.shape import load_shape_model
from napari_dglandmark.protocols import load_protocol
from training.detector import (
    DetectorRecipe,
    DetectorTrainer,
    landmark_case,
    realistic_case,
    segmentation_case,
)
from training.shapes import read_subjects, split_subjects, to_template_frame
from training.synth import tissue_labels

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
T1W = "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
TRUTH = "afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"
MNI09A = "mni-icbm152-2009a/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def robust_recipe(args: argparse.Namespace) -> DetectorRecipe:
    return DetectorRecipe(coarse_steps=args.coarse_steps, fine_steps=args.fine_steps, pretrain_coarse_steps=0,
                          pretrain_fine_steps=0, seed=args.seed, lr=args.lr, intensity="robust",
                          p_head_invert=0.1, rotation_deg=15.0, scale=(0.85, 1.15), translation_mm=8.0,
                          p_large_rotation=0.5, large_rotation_deg=55.0, center_jitter_mm=12.0, p_shape=0.85,
                          shape_blend=(0.3, 1.1), shape_noise_mm=1.0, p_synth=0.6, p_skull_strip=0.15,
                          val_every=250)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=("template", "robust", "combine"), default="robust")
    ap.add_argument("--coarse-from", help="combine: the model whose coarse network is kept")
    ap.add_argument("--fine-from", help="combine: the model whose fine network is kept")
    ap.add_argument("--init", help="start from this checkpoint (robust stage: the template-stage model)")
    ap.add_argument("--out", default=str(ROOT / "napari_dglandmark/models/afids32.safetensors"))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--coarse-steps", type=int, default=3000)
    ap.add_argument("--fine-steps", type=int, default=3000)
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", default="coarse,fine",
                    help="robust stage: which networks to train (the two are independent: run them in parallel)")
    ap.add_argument("--run-dir", help="folder for the resume state and metrics of each network (then --resume works)")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    protocol = load_protocol("afids32")
    t1w = read_volume(data / T1W)
    truth = protocol.conform(read_landmarks(data / TRUTH))
    start = time.time()
    if args.stage == "combine":
        return combine(args)

    def log(row: dict) -> None:
        print(json.dumps({"t": round(time.time() - start, 1), **row}), flush=True)

    if args.stage == "template":
        recipe = DetectorRecipe(coarse_steps=args.coarse_steps, fine_steps=args.fine_steps,
                                pretrain_coarse_steps=args.pretrain_steps, pretrain_fine_steps=args.pretrain_steps,
                                seed=args.seed)
        trainer = DetectorTrainer(recipe, protocol.names, log=log)
        seg = segmentation_case(read_volume(data / MNI09A.format("t1")), read_volume(data / MNI09A.format("wm")).array > 127,
                                recipe)
        trainer.pretrain([seg])
        trainer.finetune([landmark_case(t1w, truth, protocol.names, recipe.pipeline)])
        described = {"method": "BaPDG (boundary-aware pre-training, mixing loss) + two-stage fine-tuning",
                     "data": {"pretrain": "MNI ICBM152 2009a sym T1 + white-matter map > 127",
                              "finetune": "AFIDs ground truth on the MNI152NLin2009cAsym T1w template"}}
    else:
        recipe = robust_recipe(args)
        trainer = DetectorTrainer(recipe, protocol.names, log=log, run_dir=args.run_dir, resume=args.resume)
        init_meta = {}
        if args.init:
            network, init_meta = load_checkpoint(args.init, device="cpu")
            trainer.network.load_state_dict(network.state_dict())
        labels = tissue_labels(t1w, read_volume(data / MNI09A.format("gm")), read_volume(data / MNI09A.format("wm")))
        train, held = split_subjects(read_subjects(data / "afids-shapes", protocol.names))
        shapes = [to_template_frame(s, truth.positions) for s in train]
        log({"tissue_voxels": np.bincount(labels.ravel()).tolist(), "train_subjects": len(train),
             "held_out_subjects": [s.name for s in held]})
        case = realistic_case(t1w, truth, protocol.names, recipe.pipeline, labels, shapes)
        stages = args.stages.split(",")
        if "coarse" in stages:
            trainer.finetune([case], stages=("coarse",))
            save(trainer, args, protocol, start, {"stage_done": "coarse"}, args.out.replace(".safetensors", ".coarse-only.safetensors"))
        if "fine" in stages:
            trainer.finetune([case], stages=("fine",))
        described = robust_description(len(train), [s.name for s in held])
        described["init"] = {"path": Path(args.init).name if args.init else None,
                             "sha256": file_sha256(args.init) if args.init else None,
                             "provenance": init_meta.get("provenance")}
    save(trainer, args, protocol, start, described, args.out)
    log({"saved": args.out, "seconds": round(time.time() - start)})
    return 0


def robust_description(train_count: int, held_out: list[str]) -> dict:
    """What the robust stage was trained on (model metadata)."""
    return {
        "method": "BaPDG pre-training + two-stage fine-tuning (template stage), then robust fine-tuning: "
                  "poses up to 55 deg, TPS warps to real people's AFIDs, synthetic MR contrasts from a "
                  "tissue label map, skull-stripped variants; canonical-frame inference",
        "data": {"template_stage": "MNI 2009a WM boundary pre-training; AFIDs on the MNI152NLin2009cAsym T1w",
                 "robust_stage": f"the same T1w and its tissue label map (2009a grey/white maps + multi-Otsu); "
                                 f"landmark configurations of {train_count} afids-shapes subjects "
                                 f"(held out: {', '.join(held_out)})"},
    }


def combine(args: argparse.Namespace) -> int:
    """One model from the coarse network of one robust run and the fine network of another (the two
    networks train independently, so they can run side by side on two cores)."""
    fine, fine_meta = load_checkpoint(args.fine_from, device="cpu")
    coarse, coarse_meta = load_checkpoint(args.coarse_from, device="cpu")
    # a two-stage model, or the coarse network alone as the one loop saved it (run dir: coarse/model.safetensors)
    fine.coarse.load_state_dict((coarse.coarse if hasattr(coarse, "coarse") else coarse).state_dict())
    meta = {k: v for k, v in fine_meta.items() if k not in ("architecture", "format_version", "created", "sha256")}
    history = [r for r in coarse_meta.get("training", {}).get("history", []) if r.get("stage") == "coarse"]
    history += [r for r in fine_meta["training"]["history"] if r.get("stage") == "fine"]
    meta["training"] = dict(fine_meta["training"], history=history, coarse_selected=coarse_meta.get("training"))
    meta["provenance"] = {"coarse_from": {"file": Path(args.coarse_from).name, "sha256": file_sha256(args.coarse_from),
                                          "provenance": coarse_meta.get("provenance")},
                          "fine_from": {"file": Path(args.fine_from).name, "sha256": file_sha256(args.fine_from),
                                        "provenance": fine_meta.get("provenance")},
                          "torch": torch.__version__}
    meta.pop("stage_done", None)
    train, held = split_subjects(read_subjects(Path(args.data) / "afids-shapes", meta["landmark_names"]))
    meta.update(robust_description(len(train), [s.name for s in held]))
    from napari_dglandmark.model.checkpoint import save_checkpoint

    save_checkpoint(args.out, fine, meta)
    print(json.dumps({"combined": args.out}))
    return 0


def save(trainer: DetectorTrainer, args: argparse.Namespace, protocol, start: float, described: dict, out: str) -> None:
    """Write the model with its metadata: protocol, reference configuration, recipe, data, provenance."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    shape = load_shape_model("afids32")
    trainer.save(out, {
        "model_name": "afids32",
        "protocol": "afids32",
        "bilateral_pairs": [list(p) for p in protocol.bilateral_pairs],
        "reference_lps": np.round(shape.reference, 4).tolist(),
        **described,
        "provenance": {"git_commit": commit, "seconds": round(time.time() - start), "torch": torch.__version__,
                       "stage": args.stage},
    })


if __name__ == "__main__":
    sys.exit(main())

"""Run a training recipe (``training.recipes``): build its cases, train the networks it names, save.

The one trainer (``training.detector.DetectorTrainer``, the one loop) does the work; this module only
turns the recipe's sources into cases and their draw weights, and writes the model with its metadata.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.model.checkpoint import file_sha256, read_metadata
from napari_dglandmark.model.shape import load_shape_model
from napari_dglandmark.protocols import load_protocol

from .detector import Case, DetectorRecipe, DetectorTrainer, realistic_case
from .recipes import Recipe

ROOT = Path(__file__).resolve().parents[1]


def label_heads_dir(recipe: Recipe) -> Path | None:
    if not recipe.sources.label_heads:
        return None
    path = Path(recipe.sources.label_heads).expanduser()
    if not path.is_absolute():
        from .data import default_cache_dir

        path = default_cache_dir() / path
    return path


def build_cases(recipe: Recipe, data: Path, detector: DetectorRecipe, log: Callable[[dict], None]) -> tuple[
        list[Case], list[Case], dict]:
    """(template cases, label-map head cases, what was used) for ``recipe`` from the shared ``data``."""
    from .dg_data import afids_tissue_labels, source_truth
    from .real_heads import head_names, held_out, label_head_case, load_heads
    from .shapes import read_subjects, split_subjects, to_template_frame

    protocol = load_protocol(recipe.protocol)
    used: dict = {}
    template_cases: list[Case] = []
    if recipe.sources.template:
        t1w, truth = source_truth(data)
        labels = afids_tissue_labels(data, t1w)
        train, held = split_subjects(read_subjects(data / "afids-shapes", protocol.names))
        shapes = [to_template_frame(s, truth.positions) for s in train]
        template_cases.append(realistic_case(t1w, truth, protocol.names, detector.pipeline, labels, shapes))
        used["template"] = {"shapes_train": len(train), "shapes_held_out": [s.name for s in held]}
    head_cases: list[Case] = []
    folder = label_heads_dir(recipe)
    if folder is not None:
        if not folder.is_dir():
            raise DGLandmarkError("prepared label-map heads not found (run scripts/make_real_heads.py)", folder)
        names = head_names(folder)
        keep_out = held_out(names, recipe.sources.held_out_every)
        trained = [n for n in names if n not in keep_out]
        chosen = load_heads(folder, trained[: recipe.sources.max_heads or None])
        for head, landmarks in chosen:
            head_cases.append(label_head_case(head, landmarks, protocol.names, detector.pipeline))
        used["label_heads"] = {"folder": str(folder), "trained": [h.name for h, _ in chosen],
                               "held_out": sorted(keep_out)}
        log({"label_heads": len(chosen), "held_out": sorted(keep_out)})
    if not template_cases and not head_cases:
        raise DGLandmarkError("the recipe has no training data", recipe.path)
    return template_cases, head_cases, used


def set_shares(template_cases: list[Case], head_cases: list[Case], head_share: float) -> list[Case]:
    """Draw weights so label-map heads are ``head_share`` of the items (uniform within each kind)."""
    if not head_cases or not template_cases:
        return template_cases + head_cases
    for c in template_cases:
        c.weight = (1.0 - head_share) / len(template_cases)
    for c in head_cases:
        c.weight = head_share / len(head_cases)
    return template_cases + head_cases


def run_recipe(recipe: Recipe, data: Path, out: Path, run_dir: Path, resume: bool = False,
               stages: tuple[str, ...] | None = None, device: str = "cpu",
               log: Callable[[dict], None] = print, steps: int | None = None) -> Path:
    """Train the recipe's networks (``stages``: a subset, e.g. to run coarse and fine side by side) and
    save the model to ``out``; returns ``out``. ``steps`` caps every stage (smoke runs)."""
    start = time.time()
    detector = DetectorRecipe(**recipe.detector)
    if steps:
        detector.coarse_steps, detector.fine_steps = min(detector.coarse_steps, steps), min(detector.fine_steps, steps)
        detector.val_every = min(detector.val_every, steps)
    protocol = load_protocol(recipe.protocol)
    trainer = DetectorTrainer(detector, protocol.names, log=log, device=device, run_dir=run_dir, resume=resume)
    init_meta: dict = {}
    if recipe.init:
        from napari_dglandmark.model.inference import resolve_model

        from .loop import init_from_checkpoint

        init_path = resolve_model(recipe.init)
        copied, total = init_from_checkpoint(trainer.network, init_path)
        init_meta = {"path": Path(init_path).name, "sha256": file_sha256(init_path),
                     "provenance": read_metadata(init_path).get("provenance"), "tensors": f"{copied}/{total}"}
        log({"init": str(init_path), "tensors": f"{copied}/{total}"})
    template_cases, head_cases, used = build_cases(recipe, data, detector, log)
    for stage in stages or recipe.stages:
        share = recipe.sources.coarse_label_head_share if stage == "coarse" else recipe.sources.fine_label_head_share
        trainer.finetune(set_shares(template_cases, head_cases, share), stages=(stage,))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    shape = load_shape_model(recipe.protocol)
    trainer.save(out, {
        "model_name": recipe.name, "protocol": recipe.protocol,
        "bilateral_pairs": [list(p) for p in protocol.bilateral_pairs],
        "reference_lps": np.round(shape.reference, 4).tolist(),
        "method": recipe.description,
        "data": used, "init": init_meta,
        "recipe": {"file": recipe.path.name if recipe.path else None,
                   "sha256": file_sha256(recipe.path) if recipe.path else None,
                   "stages": list(stages or recipe.stages),
                   "label_head_share": {"coarse": recipe.sources.coarse_label_head_share,
                                        "fine": recipe.sources.fine_label_head_share}},
        "provenance": {"git_commit": commit, "seconds": round(time.time() - start), "torch": torch.__version__},
    })
    log({"saved": str(out), "seconds": round(time.time() - start)})
    return out


def combine_stage_runs(coarse_model: Path, fine_model: Path, out: Path) -> Path:
    """One model from two runs of a recipe's stages side by side (``--stages coarse`` and ``--stages fine``):
    the coarse network and its metadata from ``coarse_model``, the fine network from ``fine_model``; both
    runs' histories and provenance are kept. The two must come from the same recipe file."""
    from napari_dglandmark.model.checkpoint import load_checkpoint, save_checkpoint

    network, meta = load_checkpoint(coarse_model)
    fine_network, fine_meta = load_checkpoint(fine_model)
    recipes = [m.get("recipe", {}).get("sha256") for m in (meta, fine_meta)]
    if None in recipes or recipes[0] != recipes[1]:
        raise DGLandmarkError("the two runs were not trained by the same recipe file", fine_model)
    for path, m, stage in ((coarse_model, meta, "coarse"), (fine_model, fine_meta, "fine")):
        if m["recipe"].get("stages") != [stage]:
            raise DGLandmarkError(f"not a --stages {stage} run (it trained {m['recipe'].get('stages')})", path)
    network.fine.load_state_dict(fine_network.fine.state_dict())
    training = dict(meta.get("training", {}))
    training["history"] = list(training.get("history", [])) + list(fine_meta.get("training", {}).get("history", []))
    meta["training"] = training
    meta["recipe"] = {**meta["recipe"], "stages": ["coarse", "fine"]}
    meta["provenance"] = {"coarse_from": {"file": str(coarse_model), "sha256": file_sha256(coarse_model),
                                          **meta.get("provenance", {})},
                          "fine_from": {"file": str(fine_model), "sha256": file_sha256(fine_model),
                                        **fine_meta.get("provenance", {})}}
    save_checkpoint(out, network, meta)
    return out

"""``dglandmark-train``: pretrain, finetune, evaluate, import-pth, benchmark, adapt.

A run folder (``--out``) holds ``model.safetensors`` + ``model.json`` (the final checkpoint),
``train.log``, ``metrics.csv``, ``config.json`` (the settings used) and the resume state.
Scale out with ``torchrun --nproc_per_node N -m training.cli finetune ...``.
User errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_dglandmark.cli import EXIT_USAGE, run_command
from napari_dglandmark.errors import DGLandmarkError

PROG = "dglandmark-train"


def _tqdm_progress(desc: str, enabled: bool = True):
    from tqdm.auto import tqdm

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if not enabled:
            return
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="case")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress


class Run:
    """A run folder: config.json, train.log; only rank 0 writes."""

    def __init__(self, out: str, resume: bool, main: bool = True) -> None:
        self.dir = Path(out)
        self.main = main
        if self.dir.exists() and not self.dir.is_dir():
            raise DGLandmarkError("--out must be a folder", self.dir)
        if not resume and (self.dir / "resume.json").exists():
            raise DGLandmarkError("already holds a run; pass --resume to continue it or choose another --out", self.dir)
        if main:
            self.dir.mkdir(parents=True, exist_ok=True)

    def log(self, text: str) -> None:
        if self.main:
            stamp = _dt.datetime.now().isoformat(timespec="seconds")
            with open(self.dir / "train.log", "a", encoding="utf-8") as handle:
                handle.write(f"{stamp} {text}\n")

    def save_config(self, command: str, args: argparse.Namespace, settings: dict) -> None:
        if not self.main:
            return
        from napari_dglandmark.io.atomic import write_text_atomic

        given = {k: v for k, v in vars(args).items() if k != "func" and v is not None}
        record = {"command": command, "arguments": given, "settings": settings}
        write_text_atomic(self.dir / "config.json", json.dumps(record, indent=2, default=str) + "\n")


def _setup_device(name: str):
    from napari_dglandmark.model.devices import resolve_device

    from . import ddp

    return ddp.setup(resolve_device(name))


def _protocol(name: str | None):
    if not name:
        return None
    from napari_dglandmark.protocols import load_protocol

    return load_protocol(name)


def _pretrain(args: argparse.Namespace) -> int:
    from napari_dglandmark.model.networks import build_network

    from .config import build_config
    from .data import Cache, LabelSpec, find_segmentation_cases, load_segmentation_cases
    from .loop import PretrainTask, seed_everything, train

    cfg = build_config(args.preset, "pretrain", args.config, {
        "max_steps": args.max_steps, "seed": args.seed, "target": args.target, "loss": args.loss,
        "max_dist": args.max_dist, "labels": ",".join(args.labels) if args.labels else None})
    info, device = _setup_device(args.device)
    run = Run(args.out, args.resume, info.is_main)
    protocol = _protocol(args.protocol)
    items = find_segmentation_cases(args.data)
    cases = load_segmentation_cases(items, LabelSpec.parse(cfg.labels), cfg.single_stage(), Cache(cfg.cache_dir),
                                    _tqdm_progress("preprocess", info.is_main))
    channels = cfg.out_channels or (len(protocol) if protocol else 1)
    run.save_config("pretrain", args, cfg.to_dict())
    run.log(f"pretrain: {len(cases)} cases, target={cfg.target}, loss={cfg.loss}, {channels} channels, {device}")
    seed_everything(cfg.seed)
    network = build_network(cfg.arch, in_channels=1, out_channels=channels, **cfg.network_hparams())
    meta = {"kind": "pretrained", "model_name": run.dir.name, "single_stage": cfg.single_stage().to_dict(),
            "protocol": protocol.name if protocol else "",
            "landmark_names": list(protocol.names) if protocol else [],
            "training": {"command": "pretrain", "data": str(args.data), "config": cfg.to_dict()}}
    result = train(network, PretrainTask(cases, cfg), cfg, run.dir, device, meta, resume=args.resume, info=info,
                   log=run.log)
    if info.is_main:
        print(f"pretrained {result.steps} steps, final loss {result.final_loss:.4g}: {result.checkpoint}")
    return 0


def _finetune_recipe(args: argparse.Namespace) -> int:
    """``--recipe``: a recipe file (``training.recipes``) run as one resumable command."""
    from napari_dglandmark.model.devices import resolve_device

    from .recipes import load_recipe
    from .train_recipe import run_recipe

    recipe = load_recipe(args.recipe)
    if args.combine:
        from .train_recipe import combine_stage_runs

        out = Path(args.out) / "model.safetensors"
        Path(args.out).mkdir(parents=True, exist_ok=True)
        combine_stage_runs(Path(args.combine[0]), Path(args.combine[1]), out)
        print(f"combined {recipe.name}: coarse from {args.combine[0]}, fine from {args.combine[1]}: {out}")
        return 0
    data = Path(args.data) if args.data else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not data.is_dir():
        raise DGLandmarkError("shared data folder not found (give --data)", data)
    run = Run(args.out, args.resume)
    stages = tuple(args.stages.split(",")) if args.stages else None
    run.save_config("finetune", args, {"recipe": str(recipe.path), "stages": stages or recipe.stages})
    out = run.dir / "model.safetensors"
    run_recipe(recipe, data, out, run.dir, resume=args.resume, stages=stages, device=str(resolve_device(args.device)),
               log=lambda row: run.log(json.dumps(row)), steps=args.max_steps)
    print(f"trained {recipe.name} by {recipe.path.name}: {out}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    if args.recipe:
        return _finetune_recipe(args)
    if not args.data:
        raise DGLandmarkError("finetune needs --data (a landmark dataset) or --recipe")
    if args.preset == "default":
        return _finetune_two_stage(args)
    from napari_dglandmark.model.networks import build_network

    from .config import build_config
    from .data import Cache, find_landmark_cases, landmark_names_of, load_landmark_cases, split_cases
    from .loop import LandmarkTask, init_from_checkpoint, seed_everything, train

    cfg = build_config(args.preset, "finetune", args.config, {"max_steps": args.max_steps, "seed": args.seed})
    info, device = _setup_device(args.device)
    run = Run(args.out, args.resume, info.is_main)
    protocol = _protocol(args.protocol)
    items = find_landmark_cases(args.data)
    names = list(protocol.names) if protocol else landmark_names_of(items)
    if args.val:
        train_items, val_items = items, find_landmark_cases(args.val)
    else:
        train_items, val_items = split_cases(items, cfg.val_fraction, cfg.seed)
    cache, single = Cache(cfg.cache_dir), cfg.single_stage()
    progress = _tqdm_progress("preprocess", info.is_main)
    train_cases = load_landmark_cases(train_items, names, single, cache, progress)
    val_cases = load_landmark_cases(val_items, names, single, cache)
    run.save_config("finetune", args, cfg.to_dict())
    run.log(f"finetune ({cfg.preset}): {len(train_cases)} training, {len(val_cases)} validation cases, "
            f"{len(names)} landmarks, {device}")
    seed_everything(cfg.seed)
    network = build_network(cfg.arch, in_channels=1, out_channels=len(names), **cfg.network_hparams())
    if args.init and not args.resume:
        copied, total = init_from_checkpoint(network, args.init)
        run.log(f"initialised {copied} of {total} tensors from {args.init}")
    meta = {"kind": "landmarks", "model_name": run.dir.name, "landmark_names": names,
            "protocol": protocol.name if protocol else "", "single_stage": single.to_dict(),
            "training": {"command": "finetune", "data": str(args.data), "init": args.init, "config": cfg.to_dict()}}
    result = train(network, LandmarkTask(train_cases, val_cases, cfg), cfg, run.dir, device, meta,
                   resume=args.resume, info=info, log=run.log)
    if info.is_main:
        best = f", best validation MRE {result.best_mre_mm:.2f} mm at step {result.best_step}" if result.best_step else ""
        print(f"fine-tuned {result.steps} steps{best}: {result.checkpoint}")
    return 0


def _finetune_two_stage(args: argparse.Namespace) -> int:
    """``--preset default``: the two-stage recipe of the bundled model (training.detector)."""
    from napari_dglandmark.io import read_volume
    from napari_dglandmark.model.checkpoint import read_metadata
    from napari_dglandmark.model.devices import resolve_device
    from napari_dglandmark.model.pipeline import PipelineConfig

    from .config import build_config
    from .data import find_landmark_cases, landmark_names_of, read_case_landmarks
    from .detector import DetectorRecipe, DetectorTrainer, landmark_case, write_history
    from .loop import init_from_checkpoint

    if args.resume:
        raise DGLandmarkError("--resume is available for the single-network loop (--preset paper) only")
    cfg = build_config(args.preset, "finetune", args.config, {"seed": args.seed})
    recipe_fields = DetectorRecipe.__dataclass_fields__
    unknown = sorted(set(cfg.detector) - set(recipe_fields))
    if unknown:
        raise DGLandmarkError(f"unknown [detector] setting(s): {', '.join(unknown)}", args.config)
    changes = dict(cfg.detector, seed=cfg.seed)
    if "pipeline" in changes:
        changes["pipeline"] = PipelineConfig.from_dict(changes["pipeline"])
    if args.max_steps:
        changes.update(coarse_steps=args.max_steps, fine_steps=args.max_steps,
                       val_every=min(args.max_steps, changes.get("val_every", 250)))
    recipe = DetectorRecipe(**changes)
    run = Run(args.out, False)
    protocol = _protocol(args.protocol)
    items = find_landmark_cases(args.data)
    names = list(protocol.names) if protocol else landmark_names_of(items)
    run.save_config("finetune", args, {**cfg.to_dict(), "recipe": recipe.to_dict()})
    device = resolve_device(args.device)
    trainer = DetectorTrainer(recipe, names, log=lambda row: run.log(json.dumps(row)), device=str(device))
    if args.init:
        two_stage = read_metadata(args.init)["architecture"]["name"] == "two-stage"
        copied, total = init_from_checkpoint(trainer.network if two_stage else trainer.network.coarse, args.init)
        run.log(f"initialised {copied} of {total} tensors from {args.init}")
    progress = _tqdm_progress("preprocess")
    cases = []
    for n, item in enumerate(items, 1):
        cases.append(landmark_case(read_volume(item.image), read_case_landmarks(item), names, recipe.pipeline))
        progress(n, len(items))
    run.log(f"finetune (default, two-stage): {len(cases)} cases, {len(names)} landmarks, {device}")
    trainer.finetune(cases)
    out = run.dir / "model.safetensors"
    trainer.save(out, {"model_name": run.dir.name, "protocol": protocol.name if protocol else "",
                       "bilateral_pairs": [list(p) for p in protocol.bilateral_pairs] if protocol else []})
    write_history(run.dir / "history.jsonl", trainer.history)
    print(f"trained the two-stage detector: {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_model

    metrics = evaluate_model(args.model, args.data, args.out, device=args.device, snapshots=args.snapshots,
                             progress=_tqdm_progress("evaluate"))
    sdr = metrics["sdr_mm"]
    print(f"MRE {metrics['mre_mm']:.2f} mm (median {metrics['median_mm']:.2f}, {metrics['failures']} failures), "
          f"SDR 2/3/4 mm {100 * sdr['2']:.0f}/{100 * sdr['3']:.0f}/{100 * sdr['4']:.0f} %: {args.out}")
    return 0


def _import_pth(args: argparse.Namespace) -> int:
    from napari_dglandmark.model.checkpoint import file_sha256, import_pth_state_dict, save_checkpoint
    from napari_dglandmark.model.networks import build_network

    from .config import build_config

    cfg = build_config(args.preset, "import-pth", args.config, {"arch": args.arch})
    protocol = _protocol(args.protocol)
    channels = args.out_channels or cfg.out_channels or (len(protocol) if protocol else None)
    if not channels:
        raise DGLandmarkError("give --protocol or --out-channels: the number of output heatmaps")
    network = build_network(cfg.arch, in_channels=1, out_channels=channels, **cfg.network_hparams())
    import_pth_state_dict(args.pth, network)
    names = list(protocol.names) if protocol else [f"landmark-{i + 1}" for i in range(channels)]
    save_checkpoint(args.out, network, {
        "kind": "landmarks", "model_name": Path(args.out).name[: -len(".safetensors")],
        "landmark_names": names, "protocol": protocol.name if protocol else "",
        "single_stage": cfg.single_stage().to_dict(),
        "source": {"pth": Path(args.pth).name, "sha256": file_sha256(args.pth)}})
    print(f"wrote {args.out} ({channels} heatmaps, {cfg.arch})")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    import torch

    from .benchmark import run_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    run_benchmark(args.config, args.out, args.data, preset=args.preset,
                  extra=[Path(p) for p in args.extra_domain or []], methods=args.methods, seeds=args.seeds)
    return 0


def _adapt(args: argparse.Namespace) -> int:
    """Fine-tune a two-stage model on a site's reviewed cases (training.adapt)."""
    from tqdm.auto import tqdm

    from .adapt import AdaptOptions, adapt, cases_from_dataset

    options = AdaptOptions(max_minutes=args.max_minutes, device=args.device, seed=args.seed)
    if args.coarse_steps is not None:
        options.coarse_steps = args.coarse_steps
    if args.fine_steps is not None:
        options.fine_steps = args.fine_steps
    cases = cases_from_dataset(args.data, _tqdm_progress("read"))
    bars: list = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="adapt", unit="step"))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    try:
        result = adapt(args.model, cases, args.out, options, progress=progress, message=tqdm.write)
    finally:
        for bar in bars:
            bar.close()
    print(f"adapted {result.metadata['base_model']['name']} on {len(result.metadata['cases'])} case(s); "
          f"{result.summary()}: {result.path}")
    return 0


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="settings file (TOML or JSON); keys of training.config.TrainConfig")
    p.add_argument("--max-steps", type=int, help="number of optimisation steps")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--preset", default="default", choices=["paper", "default"],
                   help="paper: the published recipe; default: ours (finetune: the two-stage detector)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="boundary-aware pre-training on a segmentation dataset")
    p.add_argument("--data", required=True, help="folder or CSV manifest (image,label) of segmentations")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--labels", nargs="+", help="label values forming the structure (1 2) or a threshold (>127)")
    p.add_argument("--target", choices=["boundary", "mask", "edge"], help="BaPDG | SegDG | EdgeDG target")
    p.add_argument("--loss", choices=["mse", "logcosh", "mix"], help="mix: log-cosh -> MSE over training")
    p.add_argument("--max-dist", type=float, help="boundary band width, model-grid voxels (paper: 5)")
    p.add_argument("--protocol", help="protocol whose landmark count sets the output channels")
    _add_training_options(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("finetune", help="train a landmark detector")
    p.add_argument("--data", help="landmark dataset folder or CSV manifest (image,landmarks); with --recipe: "
                                  "the shared data folder (default ../shared/data beside the checkout)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--recipe", help="a recipe file or bundled recipe name (training/recipes/NAME.toml): "
                                    "data, start model and settings as one resumable command")
    p.add_argument("--stages", help="with --recipe: only these networks (coarse, fine; comma-separated)")
    p.add_argument("--combine", nargs=2, metavar=("COARSE_MODEL", "FINE_MODEL"),
                   help="with --recipe: one model from two --stages runs of it done side by side")
    p.add_argument("--init", help="checkpoint to start from (e.g. a pretrain run's model.safetensors)")
    p.add_argument("--protocol", help="protocol name or JSON: landmark names and order")
    p.add_argument("--val", help="separate validation dataset (default: a seeded share of --data)")
    _add_training_options(p)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("evaluate", help="MRE / SDR of a model on a landmark dataset")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors) or bundled model name")
    p.add_argument("--data", required=True, help="landmark dataset folder or CSV manifest")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--snapshots", action="store_true", help="one PNG per case: slices through each landmark")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("import-pth", help="convert a raw PyTorch state dict into a .safetensors model")
    p.add_argument("pth", help="the .pth / .pt file (loaded with weights_only=True)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--arch", default="resunet3d", help="network architecture (default resunet3d)")
    p.add_argument("--protocol", help="protocol name or JSON: landmark names")
    p.add_argument("--out-channels", type=int, help="number of heatmaps when no protocol is given")
    p.add_argument("--config", help="settings file with the network hyper-parameters (base_width, depth, ...)")
    p.add_argument("--preset", default="paper", choices=["paper", "default"], help="hyper-parameter preset")
    p.set_defaults(func=_import_pth)

    p = sub.add_parser("benchmark", help="domain-generalisation benchmark (methods x seeds x unseen domains)")
    p.add_argument("--config", required=True, help="benchmark TOML (e.g. benchmarks/dg_afids.toml)")
    p.add_argument("--preset", default="cpu", help="preset section of the config: cpu (~1 h, 2 cores) or gpu")
    p.add_argument("--out", default="benchmarks/results/dg", help="results folder (tables, figure, JSON)")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
                   help="the shared data folder (afids-mni2009c/, mni-icbm152-2009a/)")
    p.add_argument("--extra-domain", action="append", help="extra landmark dataset folder, evaluated the same way")
    p.add_argument("--methods", nargs="+", help="subset of the config's methods")
    p.add_argument("--seeds", nargs="+", type=int, help="subset of the config's seeds")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.set_defaults(func=_benchmark)

    p = sub.add_parser("adapt", help="adapt a model to your site: fine-tune it on a few reviewed cases")
    p.add_argument("--model", default="afids32", help="base model: bundled name or .safetensors (default afids32)")
    p.add_argument("--data", required=True, help="folder of image + landmark files (same stem) or CSV manifest; "
                   "with review statuses only verified/corrected/added landmarks count")
    p.add_argument("--out", required=True, help="the adapted model (.safetensors); never the base model")
    p.add_argument("--max-minutes", type=float, default=10.0, help="time budget (default 10)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--coarse-steps", type=int, help="at most this many coarse steps (default 20)")
    p.add_argument("--fine-steps", type=int, help="at most this many fine steps (default 600)")
    p.set_defaults(func=_adapt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args.func, args, PROG)
    finally:
        from . import ddp

        ddp.teardown(ddp.from_env())


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "build_parser", "EXIT_USAGE"]

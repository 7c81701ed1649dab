"""The domain-generalisation benchmark: Baseline, AugDG, EdgeDG, SegDG, BaPDG (+ variants) x seeds.

Two arms share the test domains, the sources and the tables:

- ``arm = "two-stage"`` (ours): the coarse + fine detector of ``training.detector`` (spatial-softmax
  fine-tuning, sub-voxel decoding), pre-trained on boundary maps;
- ``arm = "single"`` (the paper's setting): one residual U-Net over the whole field of view resized to a
  fixed grid, pre-trained on the boundary map on every output channel, then fine-tuned unchanged with
  MSE on 255-scaled Gaussian heatmaps, Adam, +-rotation, checkpoint by validation MRE, and decoded by
  integer argmax as published (``decodes`` adds sub-voxel variants of the same networks).

Every method is trained with the same budget on the source domain (the AFIDs T1w template, spatial
augmentation only) and evaluated on unseen domains: deformed copies of the T1w as simulated sites
(``training.synth.SITES``), the template warped to held-out real people's AFIDs as T1w and synthetic
T2/FLAIR/PD-like contrasts (``training.dg_data``), the stroke patient's T1w-vs-T2w agreement, and any
``--extra-domain`` landmark datasets. Pre-training sources per method (``pretrain_sources``) come from
``training.dg_data.SOURCES``. Writes per-domain Markdown tables (mean +- std over seeds), the JSON and
the SDR-curve figure; ``benchmark.log`` and per-run training logs stay in the results folder.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import read_volume
from napari_dglandmark.io.atomic import atomic_path, write_text_atomic
from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Volume
from napari_dglandmark.model.devices import resolve_device
from napari_dglandmark.model.inference import Detector
from napari_dglandmark.model.pipeline import PipelineConfig
from napari_dglandmark.model.single_stage import SingleStageConfig, SingleStageDetector
from napari_dglandmark.protocols import load_protocol

from .data import find_landmark_cases, landmark_case_from, read_case_landmarks, segmentation_case_from
from .detector import DetectorRecipe, DetectorTrainer, landmark_case, segmentation_case
from .dg_data import pretraining_pairs, real_geometry_domains, source_truth, stroke_pair, training_anatomies
from .evaluate import SDR_RADII, landmark_errors, sdr_curve, summarise_errors
from .synth import SITES, Deformation, deform, scanner_shift

ARMS = ("two-stage", "single")
DOMAIN_KINDS = ("source", "sites", "real-geometry", "stroke")


@dataclass
class Domain:
    name: str
    cases: list[tuple[Volume, Landmarks]]


def load_config(path: str | Path) -> dict:
    src = Path(path)
    try:
        config = tomllib.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DGLandmarkError("no such benchmark config", src) from None
    except tomllib.TOMLDecodeError as exc:
        raise DGLandmarkError(f"malformed TOML: {exc}", src) from None
    bench = config.get("benchmark", {})
    if bench.get("arm", "two-stage") not in ARMS:
        raise DGLandmarkError(f"benchmark arm must be one of {', '.join(ARMS)}", src)
    unknown = set(bench.get("domains", DOMAIN_KINDS)) - set(DOMAIN_KINDS)
    if unknown:
        raise DGLandmarkError(f"unknown domain kind(s) {sorted(unknown)}; use {', '.join(DOMAIN_KINDS)}", src)
    return config


def _sections(config: dict, preset: str, method: str) -> tuple[dict, dict]:
    try:
        return config["preset"][preset], config["methods"][method]
    except KeyError as exc:
        raise DGLandmarkError(f"benchmark config has no {exc.args[0]!r} section") from None


def sources_of(config: dict, method: str) -> list[str]:
    """The pre-training sources of a method (none without pre-training)."""
    m = config["methods"][method]
    if m.get("pretrain", "none") == "none":
        return []
    return list(m.get("pretrain_sources", config["benchmark"].get("pretrain_sources", ["wm2009a"])))


def recipe_for(config: dict, preset: str, method: str, seed: int) -> DetectorRecipe:
    """The two-stage training recipe of one method under one preset (same budget for every method)."""
    p, m = _sections(config, preset, method)
    pipeline = PipelineConfig(coarse_spacing=p["coarse_spacing"], coarse_size=tuple(p["coarse_size"]),
                              fine_size=tuple(p["fine_size"]), fine_iterations=p["fine_iterations"])
    pretrain = m.get("pretrain", "none")
    return DetectorRecipe(
        pipeline=pipeline, coarse_net=dict(p["coarse_net"]), fine_net=dict(p["fine_net"]),
        pretrain_coarse_steps=0 if pretrain == "none" else p["pretrain_steps"],
        pretrain_fine_steps=0 if pretrain == "none" else p["pretrain_steps"],
        pretrain_target="boundary" if pretrain == "none" else pretrain,
        pretrain_loss=m.get("pretrain_loss", "mix"),
        coarse_steps=p["coarse_steps"], fine_steps=p["fine_steps"],
        batch_coarse=p["batch_coarse"], batch_fine=p["batch_fine"],
        rotation_deg=m.get("rotation_deg", 5.0), scale=(1.0, 1.0), translation_mm=5.0, elastic_mm=0.0,
        intensity="none", p_head_invert=0.0, val_every=max(p["coarse_steps"], p["fine_steps"]), seed=seed,
    )


def single_config_for(config: dict, preset: str, method: str, seed: int):
    """(pre-training, fine-tuning) ``TrainConfig`` of the paper's single network for one method."""
    from .config import preset as train_preset

    p, m = _sections(config, preset, method)
    common = {k: p[k] for k in ("grid_size", "base_width", "depth", "blocks_per_stage", "norm", "sigma_vox",
                                "batch_size", "lr", "val_every", "steps_per_epoch", "max_dist") if k in p}
    common.update(rotation_deg=m.get("rotation_deg", 5.0), seed=seed, log_every=10, checkpoint_every=10**6)
    base = train_preset("paper").updated(common)
    target = m.get("pretrain", "none")
    pre = base.updated(dict(max_steps=max(1, p["pretrain_steps"]), target="boundary" if target == "none" else target,
                            loss=m.get("pretrain_loss", "mix")))
    return pre, base.updated(dict(max_steps=p["finetune_steps"]))


def source_deformation(config: dict) -> Deformation:
    """The benchmark's ``source_deformation`` setting (deformed copies of the template)."""
    return Deformation(**{k: (tuple(v) if isinstance(v, list) else v)
                          for k, v in config["benchmark"].get("source_deformation", {}).items()})


def build_domains(data: Path, config: dict, extra: list[Path]) -> list[Domain]:
    """Test domains: a source-like deformed set, the simulated sites, real geometry, then extra datasets."""
    protocol = load_protocol("afids32")
    t1w, truth = source_truth(data)
    bench = config["benchmark"]
    kinds = bench.get("domains", ["source", "sites"])
    setting = source_deformation(config)
    n = int(bench.get("cases_per_domain", 3))
    domains = []
    if "source" in kinds:
        domains.append(Domain("source (deformed T1w)", [deform(t1w, truth, np.random.default_rng(5000 + c), setting)
                                                        for c in range(n)]))
    if "sites" in kinds:
        for s, site in enumerate(SITES):
            cases = []
            for c in range(n):
                vol, lms = deform(t1w, truth, np.random.default_rng(6000 + 100 * s + c), setting)
                cases.append((scanner_shift(vol, site, np.random.default_rng(7000 + 100 * s + c)), lms))
            domains.append(Domain(site.name, cases))
    if "real-geometry" in kinds:
        for name, cases in real_geometry_domains(data, n, t1w, truth).items():
            domains.append(Domain(name, cases))
    for folder in extra:
        cases = [(read_volume(item.image), protocol.conform(read_case_landmarks(item), item.landmarks))
                 for item in find_landmark_cases(folder)]
        if not cases:
            raise DGLandmarkError("extra domain holds no (image, landmarks) pairs", folder)
        domains.append(Domain(f"extra: {folder.name}", cases))
    return domains


def validation_cases(t1w: Volume, truth: Landmarks, config: dict, count: int = 2) -> list[tuple[Volume, Landmarks]]:
    """Source-like deformed copies for checkpoint selection (seeds apart from every test case)."""
    setting = source_deformation(config)
    return [deform(t1w, truth, np.random.default_rng(9000 + c), setting) for c in range(count)]


def evaluate_detector(detector, domains: list[Domain], names: list[str]) -> dict[str, np.ndarray]:
    """Errors (mm) [cases, landmarks] per domain; a landmark the model cannot place is infinite."""
    out = {}
    for domain in domains:
        out[domain.name] = np.stack([landmark_errors(truth, detector.detect(volume), names)
                                     for volume, truth in domain.cases])
    return out


def stroke_agreement(detector, pair: tuple[Volume, Volume]) -> float:
    """Median distance (mm) between the T1w and T2w answers of a co-registered pair."""
    a, b = (detector.detect(v).positions for v in pair)
    return float(np.nanmedian(np.linalg.norm(a - b, axis=1)))


class _Arm:
    """How one arm trains a method and which detectors (rows) it evaluates."""

    def __init__(self, config: dict, preset: str, data: Path, work: Path, names: list[str],
                 log: Callable[[str], None]) -> None:
        self.config, self.preset, self.data, self.work, self.names, self.log = config, preset, data, work, names, log
        self.t1w, self.truth = source_truth(data)
        self._sources: dict[str, list] = {}
        self.device = resolve_device("auto")  # CUDA (mixed precision) when there is one

    def pairs(self, method: str) -> list:
        names = sources_of(self.config, method)
        key = "+".join(names)
        if key not in self._sources:
            self._sources[key] = pretraining_pairs(self.data, names) if names else []
        return self._sources[key]

    def metadata(self, method: str, seed: int) -> dict:
        protocol = load_protocol("afids32")
        return {"model_name": f"{method}-seed{seed}", "protocol": "afids32", "method": method,
                "pretrain_sources": sources_of(self.config, method),
                "bilateral_pairs": [list(p) for p in protocol.bilateral_pairs]}


class TwoStageArm(_Arm):
    """Ours: pre-train both networks of the pair, fine-tune on the template, one row per model."""

    def train(self, method: str, seed: int) -> dict[str, object]:
        recipe = recipe_for(self.config, self.preset, method, seed)
        trainer = DetectorTrainer(recipe, self.names, device=str(self.device))
        if recipe.pretrain_coarse_steps:
            trainer.pretrain([segmentation_case(v, m, recipe) for v, m in self.pairs(method)])
        trainer.finetune([landmark_case(self.t1w, self.truth, self.names, recipe.pipeline)])
        path = self.work / f"{method}-seed{seed}.safetensors"
        trainer.save(path, self.metadata(method, seed))
        return {method: Detector(path, device=str(self.device))}


class SingleArm(_Arm):
    """The paper's: one network pre-trained then fine-tuned unchanged; one row per decoding."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.validation = validation_cases(self.t1w, self.truth, self.config)
        count = int(self.config["benchmark"].get("training_anatomies", 0))
        self.extra = training_anatomies(self.data, count, self.t1w, self.truth)
        self.log(f"source domain: the T1w template and {len(self.extra)} warped training anatomies")

    def train(self, method: str, seed: int) -> dict[str, object]:
        from napari_dglandmark.model.networks import build_network

        from .loop import LandmarkTask, PretrainTask, seed_everything, train

        pre_cfg, cfg = single_config_for(self.config, self.preset, method, seed)
        single = cfg.single_stage()
        run = self.work / f"{method}-seed{seed}"
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)

        def log(text: str) -> None:
            with open(run / "train.log", "a", encoding="utf-8") as handle:
                handle.write(text + "\n")

        seed_everything(seed)
        network = build_network(cfg.arch, in_channels=1, out_channels=len(self.names), **cfg.network_hparams())
        meta = dict(self.metadata(method, seed), kind="landmarks", landmark_names=list(self.names),
                    single_stage=single.to_dict(), training={"preset": self.preset, "config": cfg.to_dict()})
        device = self.device
        if sources_of(self.config, method):
            seg = [segmentation_case_from(f"source{k}", v, m, single) for k, (v, m) in enumerate(self.pairs(method))]
            train(network, PretrainTask(seg, pre_cfg), pre_cfg, run / "pretrain", device,
                  dict(meta, kind="pretrained"), progress=False, log=log)
        source = [landmark_case_from("AFIDs T1w", self.t1w, self.truth, self.names, single)]
        source += [landmark_case_from(f"anatomy {k}", v, lms, self.names, single) for k, (v, lms) in enumerate(self.extra)]
        val = [landmark_case_from(f"validation {k}", v, lms, self.names, single)
               for k, (v, lms) in enumerate(self.validation)]
        result = train(network, LandmarkTask(source, val, cfg), cfg, run / "finetune", device, meta,
                       progress=False, log=log)
        detectors = {}
        for n, decode in enumerate(self.config["benchmark"].get("decodes", ["argmax"])):
            detector = SingleStageDetector(result.checkpoint, device=str(self.device))
            detector.config = SingleStageConfig.from_dict(dict(detector.config.to_dict(), decode=decode))
            detectors[method if n == 0 else f"{method}, {decode} decoding"] = detector
        return detectors


def run_benchmark(config_path: str | Path, out: str | Path, data: str | Path, preset: str = "cpu",
                  extra: list[Path] | None = None, methods: list[str] | None = None,
                  seeds: list[int] | None = None, log: Callable[[str], None] = print) -> dict:
    config = load_config(config_path)
    out, data = Path(out), Path(data)
    if not (data / "afids-mni2009c").exists():
        raise DGLandmarkError("shared AFIDs data not found (expected afids-mni2009c/ inside)", data)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs"
    work.mkdir(exist_ok=True)
    bench = config["benchmark"]
    methods = methods or list(bench["methods"])
    seeds = seeds or list(bench["seeds"])
    for method in methods:
        _sections(config, preset, method)
    names = list(load_protocol("afids32").names)
    t0 = time.time()
    domains = build_domains(data, config, list(extra or []))
    pair = stroke_pair(data) if "stroke" in bench.get("domains", []) else None
    log(f"built {len(domains)} test domains in {time.time() - t0:.0f} s")
    arm_name = bench.get("arm", "two-stage")
    arm = (SingleArm if arm_name == "single" else TwoStageArm)(config, preset, data, work, names, log)
    errors: dict[str, dict[str, list[np.ndarray]]] = {}
    stroke: dict[str, list[float]] = {}
    for method in methods:
        for seed in seeds:
            for row, detector in arm.train(method, seed).items():
                result = evaluate_detector(detector, domains, names)
                for name, e in result.items():
                    errors.setdefault(row, {}).setdefault(name, []).append(e)
                text = ", ".join(f"{k} {np.mean(v[np.isfinite(v)]):.2f}" for k, v in result.items())
                if pair is not None:
                    stroke.setdefault(row, []).append(stroke_agreement(detector, pair))
                    text += f", stroke T1 vs T2 median {stroke[row][-1]:.2f}"
                log(f"{row} seed {seed}: {text} ({time.time() - t0:.0f} s)")
            partial = summarise(errors, preset, seeds, time.time() - t0, stroke, arm_name, config)
            write_text_atomic(out / "dg_results.json", json.dumps(partial, indent=2) + "\n")
    summary = summarise(errors, preset, seeds, time.time() - t0, stroke, arm_name, config)
    write_text_atomic(out / "dg_results.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "dg_tables.md", markdown_tables(summary))
    main_rows = {k: v for k, v in errors.items() if ", " not in k and "[" not in k}
    plot_sdr_curves(main_rows or errors, out / "dg_sdr_curves.png")
    if len(main_rows) < len(errors):
        plot_sdr_curves({k: v for k, v in errors.items() if k not in main_rows or k == "BaPDG"},
                        out / "dg_sdr_curves_variants.png")
    log(markdown_tables(summary))
    return summary


def summarise(errors: dict, preset: str, seeds: list[int], seconds: float, stroke: dict | None = None,
              arm: str = "two-stage", config: dict | None = None) -> dict:
    """Mean +- std over seeds per domain and row; the stroke agreement; the mean over unseen domains."""
    table: dict = {}
    unseen: dict = {}
    for method, per_domain in errors.items():
        per_seed_unseen = []
        for domain, runs in per_domain.items():
            stats = [summarise_errors(e) for e in runs]
            row = {"runs": len(runs), "mre_mean": float(np.mean([s["mre"] for s in stats])),
                   "mre_std": float(np.std([s["mre"] for s in stats]))}
            for r in (2.0, 3.0, 4.0):
                vals = [100 * s["sdr"][r] for s in stats]
                row[f"sdr{int(r)}_mean"], row[f"sdr{int(r)}_std"] = float(np.mean(vals)), float(np.std(vals))
            table.setdefault(domain, {})[method] = row
            if not domain.startswith("source"):
                per_seed_unseen.append([s["mre"] for s in stats])
        if per_seed_unseen:
            n = min(len(v) for v in per_seed_unseen)
            means = np.mean([v[:n] for v in per_seed_unseen], axis=0)
            unseen[method] = {"mre_mean": float(np.mean(means)), "mre_std": float(np.std(means)), "runs": n}
    stroke_rows = {k: {"median_mm_mean": float(np.mean(v)), "median_mm_std": float(np.std(v)), "runs": len(v)}
                   for k, v in (stroke or {}).items()}
    per_seed = {m: {d: [float(summarise_errors(e)["mre"]) for e in runs] for d, runs in per_domain.items()}
                for m, per_domain in errors.items()}
    return {"arm": arm, "preset": preset, "seeds": seeds, "seconds": round(seconds),
            "date": time.strftime("%Y-%m-%d"), "settings": (config or {}).get("preset", {}).get(preset, {}),
            "domains": table, "unseen_mean": unseen, "stroke_t1_vs_t2": stroke_rows, "per_seed_mre": per_seed}


def markdown_tables(summary: dict) -> str:
    lines = [f"Arm: **{summary.get('arm', 'two-stage')}**, preset `{summary['preset']}`, seeds {summary['seeds']}, "
             f"{summary['seconds']} s, {summary['date']}.", ""]
    if summary.get("unseen_mean"):
        lines += ["**Mean MRE over all unseen domains** (per seed, then mean +- std over seeds)", "",
                  "| method | MRE (mm) | stroke T1 vs T2 median (mm) |", "| --- | --- | --- |"]
        stroke = summary.get("stroke_t1_vs_t2", {})
        for method, r in summary["unseen_mean"].items():
            s = stroke.get(method)
            agree = f"{s['median_mm_mean']:.2f} +- {s['median_mm_std']:.2f}" if s else "-"
            lines.append(f"| {method} | {r['mre_mean']:.2f} +- {r['mre_std']:.2f} | {agree} |")
        lines.append("")
    for domain, rows in summary["domains"].items():
        lines += [f"**{domain}** (mean +- std over seeds)", "",
                  "| method | MRE (mm) | SDR 2 mm (%) | SDR 3 mm (%) | SDR 4 mm (%) |", "| --- | --- | --- | --- | --- |"]
        for method, r in rows.items():
            lines.append(f"| {method} | {r['mre_mean']:.2f} +- {r['mre_std']:.2f} | "
                         + " | ".join(f"{r[f'sdr{k}_mean']:.1f} +- {r[f'sdr{k}_std']:.1f}" for k in (2, 3, 4)) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_sdr_curves(errors: dict, path: Path) -> None:
    """The paper's Fig. 3 style: SDR vs radius 0-6 mm, one panel per domain, shaded std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = list(next(iter(errors.values())).keys())
    cols = min(3, len(domains))
    rows = int(np.ceil(len(domains) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, domain in zip(axes.ravel(), domains, strict=False):
        for method, per_domain in errors.items():
            curves = np.stack([sdr_curve(e) for e in per_domain[domain]]) * 100
            mean, std = curves.mean(0), curves.std(0)
            ax.plot(SDR_RADII, mean, label=method)
            ax.fill_between(SDR_RADII, mean - std, mean + std, alpha=0.2)
        ax.set_title(domain, fontsize=10)
        ax.set_xlabel("radius (mm)")
        ax.set_ylabel("SDR (%)")
        ax.set_xlim(0, 6)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(domains):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


"""The domain-generalisation benchmark: Baseline, AugDG, EdgeDG, SegDG, BaPDG, BaPDG-MSE x seeds.

Each method is trained with the same budget on the source domain (the AFIDs T1w template,
spatial augmentation only) and evaluated on unseen domains: deformed copies of the T1w as
simulated sites (``training.synth.SITES``), plus any ``--extra-domain`` landmark datasets.
Writes per-domain Markdown tables (mean +- std over seeds) and the SDR-curve figure.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.io.landmarks import Landmarks
from napari_dglandmark.io.volume import Volume
from napari_dglandmark.model.inference import Detector
from napari_dglandmark.model.pipeline import PipelineConfig
from napari_dglandmark.protocols import load_protocol

from .data import find_landmark_cases, read_case_landmarks
from .detector import DetectorRecipe, DetectorTrainer, landmark_case, segmentation_case
from .evaluate import SDR_RADII, landmark_errors, sdr_curve, summarise_errors
from .synth import SITES, Deformation, deform, scanner_shift

AFIDS = "afids-mni2009c"
T1W = f"{AFIDS}/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
TRUTH = f"{AFIDS}/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"
SEG_T1 = "mni-icbm152-2009a/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
SEG_WM = "mni-icbm152-2009a/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


@dataclass
class Domain:
    name: str
    cases: list[tuple[Volume, Landmarks]]


def load_config(path: str | Path) -> dict:
    src = Path(path)
    try:
        return tomllib.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DGLandmarkError("no such benchmark config", src) from None
    except tomllib.TOMLDecodeError as exc:
        raise DGLandmarkError(f"malformed TOML: {exc}", src) from None


def recipe_for(config: dict, preset: str, method: str, seed: int) -> DetectorRecipe:
    """The training recipe of one method under one preset (same budget for every method)."""
    try:
        p = config["preset"][preset]
        m = config["methods"][method]
    except KeyError as exc:
        raise DGLandmarkError(f"benchmark config has no {exc.args[0]!r} section") from None
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


def build_domains(data: Path, config: dict, extra: list[Path]) -> list[Domain]:
    """Test domains: a source-like deformed set, the simulated sites, then extra datasets."""
    protocol = load_protocol("afids32")
    t1w = read_volume(data / T1W)
    truth = protocol.conform(read_landmarks(data / TRUTH))
    bench = config["benchmark"]
    setting = Deformation(**{k: (tuple(v) if isinstance(v, list) else v)
                             for k, v in bench.get("source_deformation", {}).items()})
    n = int(bench.get("cases_per_domain", 3))
    domains = [Domain("source (deformed T1w)", [deform(t1w, truth, np.random.default_rng(5000 + c), setting)
                                                for c in range(n)])]
    for s, site in enumerate(SITES):
        cases = []
        for c in range(n):
            vol, lms = deform(t1w, truth, np.random.default_rng(6000 + 100 * s + c), setting)
            cases.append((scanner_shift(vol, site, np.random.default_rng(7000 + 100 * s + c)), lms))
        domains.append(Domain(site.name, cases))
    for folder in extra:
        cases = [(read_volume(item.image), protocol.conform(read_case_landmarks(item), item.landmarks))
                 for item in find_landmark_cases(folder)]
        if not cases:
            raise DGLandmarkError("extra domain holds no (image, landmarks) pairs", folder)
        domains.append(Domain(f"extra: {folder.name}", cases))
    return domains


def evaluate_model(model_path: Path, domains: list[Domain]) -> dict[str, np.ndarray]:
    """Errors (mm) [cases, landmarks] per domain; a landmark the model cannot place is infinite."""
    detector = Detector(model_path, device="cpu")
    out = {}
    for domain in domains:
        errs = []
        for volume, truth in domain.cases:
            errs.append(landmark_errors(truth, detector.detect(volume), truth.names))
        out[domain.name] = np.stack(errs)
    return out


def run_benchmark(config_path: str | Path, out: str | Path, data: str | Path, preset: str = "cpu",
                  extra: list[Path] | None = None, methods: list[str] | None = None,
                  seeds: list[int] | None = None, log: Callable[[str], None] = print) -> dict:
    config = load_config(config_path)
    out, data = Path(out), Path(data)
    if not (data / T1W).exists():
        raise DGLandmarkError("shared AFIDs data not found (expected afids-mni2009c/ inside)", data)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs"
    work.mkdir(exist_ok=True)
    methods = methods or list(config["benchmark"]["methods"])
    seeds = seeds or list(config["benchmark"]["seeds"])
    protocol = load_protocol("afids32")
    t0 = time.time()
    domains = build_domains(data, config, list(extra or []))
    log(f"built {len(domains)} test domains in {time.time() - t0:.0f} s")
    t1w, truth = read_volume(data / T1W), protocol.conform(read_landmarks(data / TRUTH))
    seg_image, wm = read_volume(data / SEG_T1), read_volume(data / SEG_WM)
    errors: dict[str, dict[str, list[np.ndarray]]] = {m: {d.name: [] for d in domains} for m in methods}
    for method in methods:
        for seed in seeds:
            recipe = recipe_for(config, preset, method, seed)
            trainer = DetectorTrainer(recipe, protocol.names)
            if recipe.pretrain_coarse_steps:
                trainer.pretrain([segmentation_case(seg_image, wm.array > 127, recipe)])
            trainer.finetune([landmark_case(t1w, truth, protocol.names, recipe.pipeline)])
            path = work / f"{method}-seed{seed}.safetensors"
            trainer.save(path, {"model_name": f"{method}-seed{seed}", "protocol": "afids32",
                                "bilateral_pairs": [list(p) for p in protocol.bilateral_pairs],
                                "method": method})
            result = evaluate_model(path, domains)
            for name, e in result.items():
                errors[method][name].append(e)
            log(f"{method} seed {seed}: " + ", ".join(f"{k} {np.mean(v[np.isfinite(v)]):.2f}"
                                                       for k, v in result.items()) + f" ({time.time() - t0:.0f} s)")
    summary = summarise(errors, preset, seeds, time.time() - t0)
    (out / "dg_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "dg_tables.md").write_text(markdown_tables(summary))
    plot_sdr_curves(errors, out / "dg_sdr_curves.png")
    log(markdown_tables(summary))
    return summary


def summarise(errors: dict, preset: str, seeds: list[int], seconds: float) -> dict:
    table: dict = {}
    for method, per_domain in errors.items():
        for domain, runs in per_domain.items():
            stats = [summarise_errors(e) for e in runs]
            row = {"mre_mean": float(np.mean([s["mre"] for s in stats])),
                   "mre_std": float(np.std([s["mre"] for s in stats]))}
            for r in (2.0, 3.0, 4.0):
                vals = [100 * s["sdr"][r] for s in stats]
                row[f"sdr{int(r)}_mean"], row[f"sdr{int(r)}_std"] = float(np.mean(vals)), float(np.std(vals))
            table.setdefault(domain, {})[method] = row
    return {"preset": preset, "seeds": seeds, "seconds": round(seconds), "date": time.strftime("%Y-%m-%d"),
            "domains": table}


def markdown_tables(summary: dict) -> str:
    lines = []
    for domain, rows in summary["domains"].items():
        lines += [f"**{domain}** (mean +- std over {len(summary['seeds'])} seeds)", "",
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


"""Speed and memory: our pipeline against the paper's, side by side, with ratios.

Whole-process figures run each pipeline as a fresh process (start-up, imports, model load, I/O
included) and read its peak resident memory; in-process figures time detection alone with the
model loaded. Medians of ``--repeats`` runs. Also: a training step at the paper's 128^3 setting
with the paper's data path (CPU Gaussians over the whole grid per landmark) against ours
(separable Gaussians near each landmark, on the device), and the boundary target at 128^3 (exact
EDT) against repeated 3x3x3 dilation.
    python benchmarks/speed.py [--image PATH] [--repeats 5] [--out benchmarks/results/speed]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
T1W = ROOT.parent / "shared/data/afids-mni2009c/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"  # 193x229x193
IXI = ROOT.parent / "shared/data/real-heads-ixi"


def whole_process(cmd: list[str], repeats: int) -> tuple[float, float]:
    """Median wall seconds and max peak RSS (MB) of a command run ``repeats`` times."""
    walls, peaks = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        pid = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(pid.pid, 0)
        walls.append(time.perf_counter() - t)
        if status != 0:
            raise RuntimeError(f"{cmd} failed: {pid.stderr.read().decode()[-500:]}")
        peaks.append(usage.ru_maxrss / 1024)
    return statistics.median(walls), max(peaks)


def paired_whole_process(cmds: dict[str, list[str]], pairs: int) -> dict[str, dict[str, float]]:
    """Each command run ``pairs`` times, alternating (so load changes hit every arm alike): medians."""
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    peaks: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(pairs):
        for name, cmd in cmds.items():
            wall, peak = whole_process(cmd, 1)
            walls[name].append(wall)
            peaks[name].append(peak)
    return {k: {"wall_s": statistics.median(walls[k]), "peak_mb": statistics.median(peaks[k]),
                "runs_s": walls[k]} for k in cmds}


def batch_throughput(images: list[str], backend: str, threads: int) -> float:
    """Images per second over ``images`` (read + detect) with the model loaded once (after start-up)."""
    from napari_dglandmark.io import read_volume
    from napari_dglandmark.model.inference import Detector

    det = Detector("afids32", device="cpu", backend=backend, threads=threads)
    det.detect(read_volume(images[0]))  # warm-up
    start = time.perf_counter()
    for path in images:
        det.detect(read_volume(path))
    return len(images) / (time.perf_counter() - start)


STAGES = ("read + detect (total)", "read", "prepare (normalise, centre, pool)", "coarse passes",
          "fine passes (detect and review)", "review (re-search, test-time pass, image warning)",
          "network runs (every stage)")


def stage_seconds(images: list[str], threads: int) -> dict[str, float]:
    """Mean seconds per image in each stage of read + ``Detector.detect`` on ONNX Runtime, model loaded.

    Stages overlap: the fine passes include the review's, and the network runs are part of every stage.
    """
    from napari_dglandmark.io import read_volume
    from napari_dglandmark.model import inference

    det = inference.Detector("afids32", device="cpu", backend="onnx", threads=threads)
    det.detect(read_volume(images[0]))  # warm-up
    spent = dict.fromkeys(STAGES, 0.0)

    def timed(stage: str, func):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                spent[stage] += time.perf_counter() - start
        return run

    prepare, review = inference.prepare_source, inference.quality.review
    inference.prepare_source, inference.quality.review = timed(STAGES[2], prepare), timed(STAGES[5], review)
    det._coarse, det.refine = timed(STAGES[3], det._coarse), timed(STAGES[4], det.refine)
    det.runner.run = timed(STAGES[6], det.runner.run)
    try:
        start = time.perf_counter()
        for path in images:
            det.detect(timed(STAGES[1], read_volume)(path))
        spent[STAGES[0]] = time.perf_counter() - start
    finally:
        inference.prepare_source, inference.quality.review = prepare, review
    return {k: v / len(images) for k, v in spent.items()}


def paper_batch_throughput(images: list[str]) -> float:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from paper_pipeline import detect_paper

    detect_paper(images[0])
    start = time.perf_counter()
    for path in images:
        detect_paper(path)
    return len(images) / (time.perf_counter() - start)


def backends(args: argparse.Namespace) -> int:
    """Detection only: whole process per backend vs the paper's pipeline (paired), and batch throughput."""
    py = sys.executable
    ours = [py, "-m", "napari_dglandmark.cli", "detect", args.image, "--quiet", "--threads", str(args.threads)]
    cmds = {"onnx": ours + ["--backend", "onnx"], "torch": ours + ["--backend", "torch"],
            "paper": [py, str(ROOT / "benchmarks/paper_pipeline.py"), args.image]}
    whole = paired_whole_process(cmds, args.repeats)
    batch = sorted(str(p) for p in IXI.glob("*_T1.nii.gz"))[:10]
    tput = {b: batch_throughput(batch, b, args.threads) for b in ("onnx", "torch")}
    tput["paper"] = paper_batch_throughput(batch)
    stages = stage_seconds(batch, args.threads)
    load = os.getloadavg()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "image": args.image, "threads": args.threads,
              "pairs": args.repeats, "load_average_after": load, "whole_process": whole,
              "batch_images": batch, "batch_images_per_s": tput, "onnx_stage_s_per_image": stages}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backends.json").write_text(json.dumps(result, indent=2) + "\n")
    p = whole["paper"]
    lines = [f"{result['date']}, {os.cpu_count()} CPUs, {args.threads} threads, median of {args.repeats} "
             f"alternating runs; load average after: {load[0]:.2f}",
             "", "| arm | whole process (s) | x paper | peak memory (MB) | x paper | batch of 10 (images/s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k in ("onnx", "torch", "paper"):
        w = whole[k]
        lines.append(f"| {k} | {w['wall_s']:.2f} | {w['wall_s'] / p['wall_s']:.2f} | {w['peak_mb']:.0f} | "
                     f"{w['peak_mb'] / p['peak_mb']:.2f} | {tput[k]:.2f} |")
    lines += ["", "Where an image of the batch goes (onnx, model loaded; stages overlap: the fine passes include "
              "the review's, the network runs are part of every stage):", "", "| stage | s per image | share |",
              "| --- | --- | --- |"]
    for k, v in stages.items():
        lines.append(f"| {k} | {v:.3f} | {v / stages[STAGES[0]]:.0%} |")
    (out / "backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def in_process_ours(image: str, repeats: int) -> float:
    from napari_dglandmark.io import read_volume
    from napari_dglandmark.model.inference import Detector

    det = Detector("afids32", device="cpu")
    vol = read_volume(image)
    det.detect(vol)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        det.detect(vol)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def training_steps(repeats: int) -> dict:
    """One training step at the paper's setting: 128^3, batch 1, 32 landmarks, width-32 ResUNet.

    Data path = random +-5 degree rotation of image and targets plus heatmap targets. The paper's:
    full-grid numpy Gaussian per landmark, then scipy rotation of the image and of every heatmap.
    Ours (the training loop's sampler, ``training.warps``): the image resampled once through the core's
    resampling (grid_sample), landmarks moved analytically, separable Gaussians near each landmark.
    The network forward/backward is the same for both.
    """
    from scipy import ndimage

    from napari_dglandmark.io.volume import Geometry
    from napari_dglandmark.model.networks import ResUNet3D
    from training.config import preset
    from training.loop import spatial_of
    from training.targets import gaussian_heatmaps, points_inside
    from training.warps import warp_items

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = ResUNet3D(1, 32, base_width=32, depth=3)
    opt = torch.optim.Adam(net.parameters())
    image = torch.rand(1, 1, 128, 128, 128)
    pts = torch.rand(1, 32, 3) * 100 + 14
    grid = Geometry((128, 128, 128), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    truth = grid.index_to_physical(pts[0].double().numpy())
    config = spatial_of(preset("paper"))

    def paper_data() -> tuple[torch.Tensor, torch.Tensor]:
        zz, yy, xx = np.meshgrid(np.arange(128), np.arange(128), np.arange(128), indexing="ij")
        maps = [255 * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2 + (zz - p[2]) ** 2) / (2 * 5.0**2))
                for p in pts[0].numpy()]
        angle, axes = rng.uniform(-5, 5), [(0, 1), (0, 2), (1, 2)][rng.integers(3)]
        img = ndimage.rotate(image[0, 0].numpy(), angle, axes=axes, reshape=False, order=1)
        maps = [ndimage.rotate(m, angle, axes=axes, reshape=False, order=1) for m in maps]
        return torch.as_tensor(img)[None, None], torch.as_tensor(np.stack(maps)[None], dtype=torch.float32)

    def ours_data() -> tuple[torch.Tensor, torch.Tensor]:
        x, _, moved = warp_items([image[0, 0]], [grid], config, rng, points_lps=[truth])
        valid = points_inside(moved, (128, 128, 128))
        return x, gaussian_heatmaps(moved, (128, 128, 128), 5.0, peak=255.0, valid=valid)

    def network_step(x: torch.Tensor, target: torch.Tensor) -> None:
        loss = torch.nn.functional.mse_loss(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    out = {}
    for name, make in (("paper", paper_data), ("ours", ours_data)):
        data_times, step_times = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            x, target = make()
            data_times.append(time.perf_counter() - t)
            network_step(x, target)
            step_times.append(time.perf_counter() - t)
        out[name] = {"data_s": statistics.median(data_times), "step_s": statistics.median(step_times)}
    return out


def boundary_targets(repeats: int) -> dict:
    from training.targets import boundary_distance_target, dilation_distance_target

    z, y, x = np.mgrid[:128, :128, :128]
    mask = torch.as_tensor(((x - 64) ** 2 / 40**2 + (y - 60) ** 2 / 30**2 + (z - 70) ** 2 / 35**2) < 1)[None, None]
    res = {}
    for name, fn in (("edt", lambda: boundary_distance_target(mask, 5.0)),
                     ("dilation", lambda: dilation_distance_target(mask, 5))):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        res[name] = statistics.median(times)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(T1W))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/speed"))
    ap.add_argument("--backends", action="store_true",
                    help="detection only: onnx / torch / paper whole process (paired) and batch throughput")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.backends:
        return backends(args)
    py = sys.executable
    ours_cmd = [py, "-m", "napari_dglandmark.cli", "detect", args.image, "--quiet", "--threads", str(args.threads)]
    paper_cmd = [py, str(ROOT / "benchmarks/paper_pipeline.py"), args.image]
    ours_wall, ours_mem = whole_process(ours_cmd, args.repeats)
    paper_wall, paper_mem = whole_process(paper_cmd, max(1, args.repeats // 2))
    ours_in = in_process_ours(args.image, args.repeats)
    steps = training_steps(max(2, args.repeats // 2))
    bnd = boundary_targets(args.repeats)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, GPU {gpu}",
        "image": args.image,
        "detect_whole_process": {"ours_s": ours_wall, "ours_peak_mb": ours_mem, "paper_s": paper_wall,
                                 "paper_peak_mb": paper_mem, "speedup": paper_wall / ours_wall,
                                 "memory_ratio": paper_mem / ours_mem},
        "detect_in_process_ours_s": ours_in,
        "training_step_128": {**steps, "speedup": steps["paper"]["step_s"] / steps["ours"]["step_s"],
                              "data_speedup": steps["paper"]["data_s"] / steps["ours"]["data_s"]},
        "boundary_target_128": {**bnd, "speedup": bnd["dilation"] / bnd["edt"]},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    d, s, b = result["detect_whole_process"], result["training_step_128"], result["boundary_target_128"]
    table = "\n".join([
        f"Machine: {result['machine']}; {result['date']}; median of {args.repeats} runs.",
        "",
        "| measure | ours | paper's pipeline | ratio |",
        "| --- | --- | --- | --- |",
        f"| detect, whole process (s) | {d['ours_s']:.2f} | {d['paper_s']:.2f} | {d['speedup']:.1f}x faster |",
        f"| detect, peak memory (MB) | {d['ours_peak_mb']:.0f} | {d['paper_peak_mb']:.0f} | {d['memory_ratio']:.1f}x less |",
        f"| detect, in process, model loaded (s) | {ours_in:.2f} | | |",
        f"| training data path at 128^3: rotation + 32 heatmap targets (s) | {s['ours']['data_s']:.3f} | "
        f"{s['paper']['data_s']:.2f} | {s['data_speedup']:.0f}x faster |",
        f"| whole training step at 128^3, width-32 ResUNet, CPU (s) | {s['ours']['step_s']:.2f} | "
        f"{s['paper']['step_s']:.2f} | {s['speedup']:.1f}x faster |",
        f"| boundary target at 128^3 (s) | {b['edt']:.3f} (exact EDT) | {b['dilation']:.3f} (dilation) | "
        f"{b['speedup']:.1f}x |",
    ])
    (out / "speed.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

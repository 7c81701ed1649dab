"""How the BIDS App scales: peak memory against the participant count, seconds per image, group report size.

Builds a BIDS dataset of N participants from the shared 2 mm IXI heads (symlinks, one T1w each), runs
``dglandmark bids DS OUT participant --threads T`` once as a subprocess and reads the process's peak
resident memory (``VmHWM``) every time an image is finished (its stderr progress line). The images run
in a fixed order, so the peak after n images is the peak of a run of n participants: one run gives
the curve for every n <= N. Then the group level on that derivative, and on a cohort of 500 images
made by repeating its results (no detection), for the report's time and size.

    nice -n 19 python benchmarks/bids_scale.py [--participants 20] [--threads 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IXI = Path(os.environ.get("DGLANDMARK_SHARED_DATA", ROOT.parent / "shared" / "data")) / "real-heads-ixi"
PROGRESS = re.compile(r"\[(\d+)/(\d+)\] ")


def make_dataset(root: Path, count: int) -> list[Path]:
    """``sub-01 .. sub-N``, each one T1w: a symlink to an IXI head (cycled when N > 20)."""
    heads = sorted(IXI.glob("IXI*_T1.nii.gz"))
    if not heads:
        raise SystemExit(f"no IXI heads in {IXI}")
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "IXI 2 mm", "BIDSVersion": "1.10.0"}))
    used = []
    for n in range(1, count + 1):
        anat = root / f"sub-{n:03d}" / "anat"
        anat.mkdir(parents=True)
        head = heads[(n - 1) % len(heads)]
        (anat / f"sub-{n:03d}_T1w.nii.gz").symlink_to(head)
        used.append(head)
    return used


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def run_participant(ds: Path, out: Path, threads: int) -> dict:
    """One participant-level run; the peak RSS after the model load and after each image."""
    cmd = [str(ROOT / ".venv/bin/dglandmark"), "bids", str(ds), str(out), "participant", "--threads", str(threads)]
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    steps: list[dict] = []
    after_load_mib = None
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line.rstrip())
        found = PROGRESS.search(line)
        try:
            peak = _status_kib(proc.pid, "VmHWM") / 1024
            rss = _status_kib(proc.pid, "VmRSS") / 1024
        except (OSError, ValueError):
            continue
        if found:
            steps.append({"images": int(found.group(1)), "peak_rss_mib": round(peak, 1), "rss_mib": round(rss, 1),
                          "elapsed_s": round(time.perf_counter() - start, 1)})
        elif " image(s) of " in line:
            after_load_mib = round(peak, 1)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = [json.loads(p.read_text())["Seconds"] for p in sorted(out.glob("sub-*/anat/*_afids.json"))]
    return {"command": " ".join([Path(cmd[0]).name, *cmd[1:]]), "exit_status": proc.returncode, "wall_s": round(wall, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "peak_rss_after_model_load_mib": after_load_mib,
            "per_image": steps, "image_seconds": seconds,
            "mean_image_s": round(sum(seconds) / len(seconds), 2) if seconds else None,
            "wall_per_image_s": round(wall / max(len(seconds), 1), 2),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "stderr_tail": lines[-3:]}


def replicate(out: Path, big: Path, count: int) -> None:
    """A derivative of ``count`` images made by repeating ``out``'s results under new participant labels."""
    shutil.copytree(out, big, symlinks=True, ignore=shutil.ignore_patterns("*.html", "logs"))
    sources = sorted(p for p in out.glob("sub-*/anat/*_afids.json"))
    for n in range(len(sources) + 1, count + 1):
        src = sources[(n - 1) % len(sources)]
        doc = json.loads(src.read_text())
        old = doc["SourceEntities"]["sub"]
        label = f"{n:03d}"
        doc["SourceEntities"]["sub"] = label
        doc["Sources"] = [s.replace(f"sub-{old}", f"sub-{label}") for s in doc["Sources"]]
        files = {}
        for kind, rel in doc["Files"].items():
            new = rel.replace(f"sub-{old}", f"sub-{label}")
            (big / new).parent.mkdir(parents=True, exist_ok=True)
            (big / new).symlink_to((out / rel).resolve())
            files[kind] = new
        doc["Files"] = files
        (big / files["tsv"]).with_suffix(".json").write_text(json.dumps(doc))


def time_group(out: Path) -> dict:
    from napari_dglandmark.bids.report import write_report

    start = time.perf_counter()
    path, cohort = write_report(out)
    text = path.read_text()
    return {"images": len(cohort.records), "seconds": round(time.perf_counter() - start, 2),
            "html_kib": round(len(text.encode()) / 1024, 1), "img_tags_in_static_html": text.count("<img"),
            "pngs_beside_kib": round(sum((out / r.snapshot).stat().st_size for r in cohort.records
                                         if r.snapshot) / 1024, 1)}


def busy(run: dict) -> str:
    """What the load average says about the timings: other work shared the cores, or it did not."""
    if max(run["loadavg_before"][0], run["loadavg_after"][0]) > 1.0:
        return "other work shared the cores: times are slower than on an idle machine"
    return "an otherwise idle machine"


def write_markdown(result: dict, path: Path) -> None:
    run = result["participant"]
    rows = "\n".join(f"| {s['images']} | {s['peak_rss_mib']:.0f} | {s['rss_mib']:.0f} | {s['elapsed_s']:.0f} |"
                     for s in run["per_image"])
    groups = "\n".join(f"| {g['images']} | {g['seconds']:.2f} | {g['html_kib']:.0f} | {g['pngs_beside_kib']:.0f} |"
                       for g in result["group"])
    path.write_text(f"""# BIDS App scaling ({result['date']}, {result['machine']})

`{run['command']}` on {result['participants']} participants, each one 2 mm IXI T1w head (symlinks to
`shared/data/real-heads-ixi`), {result['cpus']} CPU cores, load average {run['loadavg_before'][0]} before and
{run['loadavg_after'][0]} after ({busy(run)}).

Peak resident memory of the one process after n participants (the run of n participants is the first n images
of this run: same order). Model loaded, before the first image: {run['peak_rss_after_model_load_mib']} MiB.

| participants done | peak RSS (MiB) | RSS now (MiB) | elapsed (s) |
| ---: | ---: | ---: | ---: |
{rows}

Whole process: peak RSS {run['peak_rss_mib']} MiB, wall {run['wall_s']} s, exit status {run['exit_status']};
per image (read, detect, QC picture, four files) mean {run['mean_image_s']} s, wall per image {run['wall_per_image_s']} s.

Group level (report from the derivative alone; 500 = the results repeated under new labels, no detection):

| images | seconds | HTML (KiB) | PNGs beside (KiB) |
| ---: | ---: | ---: | ---: |
{groups}

The HTML holds no `<img>` until its script builds one page of 24 cards (`loading="lazy"`); the table pages by 50.
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--participants", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group-images", type=int, default=500)
    ap.add_argument("--work", default=None, help="keep the dataset and derivatives here (default: a temporary folder)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bids"))
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bids_scale_"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty")
    ds, out, big = work / "ds", work / "ds/derivatives/dglandmark", work / "report500"
    heads = make_dataset(ds, args.participants)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor()
              or platform.machine(), "cpus": os.cpu_count(), "participants": args.participants,
              "images": [h.name for h in heads]}
    result["participant"] = run_participant(ds, out, args.threads)
    result["group"] = [time_group(out)]
    replicate(out, big, args.group_images)
    result["group"].append(time_group(big))
    target = Path(args.out)
    target.mkdir(parents=True, exist_ok=True)
    (target / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, target / "scale.md")
    print((target / "scale.md").read_text())
    if not args.work:
        shutil.rmtree(work)
    return 0 if result["participant"]["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

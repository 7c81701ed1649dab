"""``dglandmark bids BIDS_DIR OUTPUT_DIR participant|group``: the BIDS App command line.

``participant``: detect on every selected anatomical image and write the derivative (a SLURM array
runs one participant per task with ``--participant-label``); ``group``: the HTML QC report, from
the derivative alone. User errors: one line, exit 2. Failed images: one line each, exit 2 at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import DGLandmarkError

EXIT_FAILED = 2
EPILOG = """\
outputs (OUTPUT_DIR is a BIDS derivative; entities of the source image are kept):
  dataset_description.json              DatasetType derivative, GeneratedBy: version and model SHA-256
  sub-<l>/[ses-<l>/]anat/<source entities>_space-<suffix>_desc-dglandmark_afids.fcsv / .mrk.json
                                        the landmarks for 3D Slicer (RAS)
  ..._afids.tsv + ..._afids.json        positions, confidence, needs_review; sidecar: model, image
                                        warning, measurements (e.g. AC-PC)
  sub-<l>/[ses-<l>/]figures/..._afids.png  three-plane QC picture (the group report shows it)
  logs/failed/<source>.json             images that failed (removed when a re-run succeeds)
  dglandmark_report.html                the group level's QC report

examples:
  dglandmark bids /data/ds /data/ds/derivatives/dglandmark participant --participant-label 01 02
  dglandmark bids /data/ds /data/ds/derivatives/dglandmark participant --suffix T1w T2w --skip-existing
  dglandmark bids /data/ds /data/ds/derivatives/dglandmark group"""


def build_parser() -> argparse.ArgumentParser:
    from ..model.registry import BACKEND_CHOICES, BACKEND_HELP, DEVICE_CHOICES
    from .dataset import DEFAULT_SUFFIXES

    p = argparse.ArgumentParser(prog="dglandmark bids", description="BIDS App: detect landmarks in a BIDS "
                                "dataset's anatomical images (participant) and make a visual QC report (group).",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bids_dir", help="the BIDS dataset (with dataset_description.json)")
    p.add_argument("output_dir", help="the derivative folder (created; e.g. BIDS_DIR/derivatives/dglandmark)")
    p.add_argument("analysis_level", choices=["participant", "group"])
    p.add_argument("--participant-label", "--participant_label", nargs="+", default=[], metavar="LABEL",
                   help="only these participants (01 or sub-01); default: all")
    p.add_argument("--session-label", "--session_label", nargs="+", default=[], metavar="LABEL",
                   help="only these sessions (1 or ses-1); default: all")
    p.add_argument("--suffix", nargs="+", default=list(DEFAULT_SUFFIXES), metavar="SUFFIX",
                   help=f"anatomical suffixes to detect on, e.g. T1w T2w FLAIR (default: {' '.join(DEFAULT_SUFFIXES)})")
    p.add_argument("--model", default=None, help="bundled model name (default afids32) or a .safetensors path")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="torch device: auto = CUDA, then MPS, then CPU")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help=BACKEND_HELP)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the networks (default: the runtime's "
                   "choice); on a cluster, the cores the job was given")
    p.add_argument("--skip-existing", action="store_true", help="skip images whose results are complete "
                   "(resume a stopped run)")
    p.add_argument("--quiet", action="store_true", help="only warnings, errors and the closing line")
    return p


def _participant(args: argparse.Namespace, log) -> int:
    import SimpleITK as sitk

    from ..model.inference import load_detector
    from ..protocols import protocol_or_none
    from .dataset import find_images
    from .derivative import check_output
    from .participant import run_participant

    bids_dir, out_dir = Path(args.bids_dir), Path(args.output_dir)
    selection = find_images(bids_dir, args.participant_label, args.session_label, args.suffix)
    check_output(out_dir, bids_dir)
    for line in selection.skipped:
        log(f"warning: {line}")
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's own stderr noise; our errors are one line
    detector = load_detector(args.model, device=args.device, backend=args.backend, threads=args.threads)
    protocol = protocol_or_none(detector.info.protocol)
    if not args.quiet:
        log(f"{len(selection.images)} image(s) of {len({i.subject for i in selection.images})} participant(s); "
            f"model {detector.info.name} ({detector.info.sha256[:12]}) on "
            f"{getattr(detector, 'backend', 'torch')}/{detector.device}")
    outcome = run_participant(bids_dir, out_dir, selection.images, detector, protocol, args.skip_existing,
                              log, args.quiet)
    parts = [f"{len(outcome.done)} of {len(selection.images)} image(s) done -> {out_dir}"]
    if outcome.skipped:
        parts.append(f"{len(outcome.skipped)} skipped (done)")
    if outcome.failed:
        parts.append(f"{len(outcome.failed)} failed: {', '.join(outcome.failed)}")
    log("; ".join(parts))
    return EXIT_FAILED if outcome.failed else 0


def _group(args: argparse.Namespace, log) -> int:
    from .dataset import normalise_labels
    from .report import write_report

    path, cohort = write_report(args.output_dir, normalise_labels(args.participant_label, "sub") or None)
    failed = sum(1 for r in cohort.records if r.error)
    log(f"report of {len(cohort.records)} image(s) ({failed} failed) -> {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run; user errors are one line on stderr and exit status 2."""
    from .participant import stderr_log

    args = build_parser().parse_args(argv)
    try:
        if args.analysis_level == "participant":
            return _participant(args, stderr_log)
        return _group(args, stderr_log)
    except DGLandmarkError as exc:
        print(f"dglandmark bids: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

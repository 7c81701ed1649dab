"""The participant level: detect on each selected image and write its derivative files.

One image is in memory at a time: each is read, detected, written and released before the next is
read (the detector, loaded once, is the only thing kept). A bad image is named on one stderr line,
recorded under ``logs/failed/`` and the batch goes on; the exit status says whether any failed.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DGLandmarkError
from ..io import read_volume, write_landmarks
from ..io.atomic import write_text_atomic
from .dataset import BidsImage
from .derivative import COORDS, Provenance, prepare_output, sidecar, tsv_text, write_failure
from .naming import derivative_files, failure_path
from .snapshot import render_snapshot

Log = Callable[[str], None]


def stderr_log(line: str) -> None:
    print(f"dglandmark bids: {line}", file=sys.stderr, flush=True)


@dataclass
class Outcome:
    """What a participant-level run did."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def provenance_of(detector: Any) -> Provenance:
    info = detector.info
    return Provenance(info.name, info.sha256, info.protocol or "landmarks")


def is_done(out_dir: Path, image: BidsImage, protocol: str) -> bool:
    """All of an image's files exist (the sidecar is written last)."""
    return all(p.is_file() for p in derivative_files(out_dir, image, protocol).all_paths())


def process_image(image: BidsImage, out_dir: Path, detector: Any, protocol: Any, provenance: Provenance) -> dict:
    """Read, detect, write one image; returns its sidecar. Nothing of the image outlives the call."""
    start = time.perf_counter()
    volume = read_volume(image.path)
    landmarks = detector.detect(volume)
    detector.last_assessment = None  # benchmarks' debugging aid: not kept across images
    landmarks.image = f"bids:raw:{image.relpath}"
    files = derivative_files(out_dir, image, provenance.protocol)
    files.path("tsv").parent.mkdir(parents=True, exist_ok=True)
    files.path("png").parent.mkdir(parents=True, exist_ok=True)
    measurements: dict[str, tuple[float, str, str, str]] = {}
    triples: list[tuple[str, str, str]] = []
    labels = None
    if protocol is not None:
        values = protocol.measure(landmarks)
        measurements = {m.name: (values[m.name], m.a, m.b, m.description) for m in protocol.measurements}
        triples = protocol.measurement_triples()
        if len(protocol.acronyms) == len(protocol.names) and all(protocol.acronyms):
            labels = [protocol.acronyms[protocol.index_of(n)] for n in landmarks.names]
    from ..io.csv_table import landmark_rows

    render_snapshot(files.path("png"), volume, landmarks, labels)
    write_landmarks(files.path("fcsv"), landmarks, coords=COORDS)
    write_landmarks(files.path("mrk.json"), landmarks, coords=COORDS, measurements=triples)
    stamp = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    text = tsv_text(landmark_rows(landmarks, COORDS, volume.geometry,
                                  extra={"model_sha256": provenance.model_sha256, "exported_at": stamp}))
    write_text_atomic(files.path("tsv"), text)
    doc = sidecar(image, landmarks, provenance, files, measurements, text.split("\n", 1)[0].split("\t"),
                  volume.spacing, time.perf_counter() - start)
    write_text_atomic(files.sidecar, json.dumps(doc, indent=2) + "\n")
    failure_path(out_dir, image).unlink(missing_ok=True)
    return doc


def _failure_line(image: BidsImage, exc: BaseException) -> str:
    """One line naming the image and the problem (as ``dglandmark detect`` words it)."""
    from ..detect_cli import _failure_line as detect_failure_line

    return detect_failure_line(str(image.path), exc)


def _done_line(doc: dict) -> str:
    flagged = len(doc["NeedsReview"])
    parts = [f"{doc['DetectedCount']} landmarks", f"{flagged} need review"]
    parts += [f"{k} {v['Value']:.1f} mm" for k, v in list(doc["Measurements"].items())[:1] if v["Value"] is not None]
    return ", ".join(parts) + f" ({doc['Seconds']:.1f} s)"


def run_participant(bids_dir: Path, out_dir: Path, images: Sequence[BidsImage], detector: Any, protocol: Any,
                    skip_existing: bool = False, log: Log = stderr_log, quiet: bool = False) -> Outcome:
    """Detect on ``images`` one at a time, writing each image's derivative as soon as it is done."""
    provenance = provenance_of(detector)
    prepare_output(out_dir, bids_dir, provenance)
    outcome = Outcome()
    total = len(images)
    for n, image in enumerate(images, 1):
        where = f"[{n}/{total}] {image.relpath}"
        if skip_existing and is_done(out_dir, image, provenance.protocol):
            outcome.skipped.append(image.relpath)
            if not quiet:
                log(f"{where}: skipped (done)")
            continue
        try:
            doc = process_image(image, out_dir, detector, protocol, provenance)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad image must not lose the batch
            line = _failure_line(image, exc)
            outcome.failed.append(image.relpath)
            log(f"error: {line}")
            try:
                write_failure(out_dir, image, line)
            except (OSError, DGLandmarkError) as log_exc:
                log(f"error: cannot record the failure: {log_exc}")
            continue
        outcome.done.append(image.relpath)
        if doc["ImageWarning"]:
            log(f"warning: {image.relpath}: {doc['ImageWarning']}; every landmark needs review")
        if not quiet:
            log(f"{where}: {_done_line(doc)}")
    return outcome

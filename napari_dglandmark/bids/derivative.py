"""Writing the BIDS derivative: ``dataset_description.json`` and, per image, the landmark files
(``.fcsv`` / ``.mrk.json`` for 3D Slicer, a ``.tsv`` and its ``.json`` sidecar) and the QC picture.

Every file is written atomically; the sidecar last, so a sidecar means the image is complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import DGLandmarkError
from ..io.atomic import write_text_atomic
from ..io.landmarks import Landmarks
from .dataset import BidsImage
from .naming import FAILED_DIR, DerivativeFiles

PIPELINE = "napari-dglandmark"
BIDS_VERSION = "1.10.0"
COORDS = "RAS"  # what 3D Slicer and the AFIDs tools show; the TSV says it in its coordinate_system column
#: the derivative's own .bidsignore: the QC pictures, failure logs and the report are not BIDS files
DERIVATIVE_BIDSIGNORE = "figures/\nlogs/\n*.html\n"
NOT_AVAILABLE = "n/a"  # BIDS's empty TSV cell
COLUMN_HELP = {
    "landmark": "landmark name (protocol spelling)",
    "x": "position, mm, in the coordinate_system (RAS: what 3D Slicer shows)",
    "i": "position as a continuous voxel index of the source image (i, j, k = x, y, z array axes)",
    "confidence": "0-1, heatmap sharpness x test-time agreement x plausibility; compare within a scan",
    "needs_review": "1 when a person should check this landmark",
    "image_warning": "why the image is not the kind the model was made for (n/a when it is)",
}


@dataclass(frozen=True)
class Provenance:
    """What made the derivative: software version and model."""

    model_name: str
    model_sha256: str
    protocol: str

    def generated_by(self) -> list[dict[str, str]]:
        return [{"Name": PIPELINE, "Version": __version__,
                 "Description": f"landmarks of protocol {self.protocol} by model {self.model_name}, "
                                f"SHA-256 {self.model_sha256}"}]


def dataset_description(provenance: Provenance, bids_dir: Path) -> dict[str, Any]:
    source = bids_dir.resolve()
    return {"Name": f"{PIPELINE} landmarks ({provenance.protocol})", "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative", "GeneratedBy": provenance.generated_by(),
            "SourceDatasets": [{"URL": source.as_uri()}], "DatasetLinks": {"raw": source.as_uri()}}


def check_output(out_dir: Path, bids_dir: Path) -> None:
    """A one-line error, before any work, when OUTPUT_DIR cannot be the derivative's folder."""
    if out_dir.resolve() == bids_dir.resolve():
        raise DGLandmarkError("OUTPUT_DIR must not be the BIDS dataset itself (use e.g. "
                              "BIDS_DIR/derivatives/dglandmark)", out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DGLandmarkError("OUTPUT_DIR is not a folder", out_dir)


def prepare_output(out_dir: Path, bids_dir: Path, provenance: Provenance) -> None:
    """Create OUTPUT_DIR with its dataset_description.json, or check an existing one was made by the
    same version and model (mixing two models' results in one derivative would be silent and wrong)."""
    check_output(out_dir, bids_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "dataset_description.json"
    wanted = dataset_description(provenance, bids_dir)
    if path.is_file():
        try:
            have = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DGLandmarkError(f"unreadable ({exc.__class__.__name__}); remove it or use another OUTPUT_DIR",
                                  path) from None
        made_by = (have.get("GeneratedBy") or [{}])[0] if isinstance(have, dict) else {}
        if made_by.get("Name") != PIPELINE:
            raise DGLandmarkError(f"OUTPUT_DIR is another pipeline's derivative ({made_by.get('Name')!r}); "
                                  "use a folder of its own", out_dir)
        if made_by != wanted["GeneratedBy"][0]:
            raise DGLandmarkError(f"OUTPUT_DIR holds results of {made_by.get('Version')} "
                                  f"({made_by.get('Description')}); this run is {__version__} "
                                  f"({wanted['GeneratedBy'][0]['Description']}): use another OUTPUT_DIR", out_dir)
    else:  # concurrent jobs of an array may all get here: each writes the same text atomically
        write_text_atomic(path, json.dumps(wanted, indent=2) + "\n")
    ignore = out_dir / ".bidsignore"
    if not ignore.is_file():
        write_text_atomic(ignore, DERIVATIVE_BIDSIGNORE)


def tsv_text(rows: list[dict[str, str]]) -> str:
    """The landmark table as a BIDS TSV: the project's CSV columns and order (``io.csv_table``), tabs, n/a."""
    from ..io.csv_table import format_rows

    records = list(csv.reader(io.StringIO(format_rows(rows))))
    out = io.StringIO()
    for n, record in enumerate(records):
        cells = [" ".join(c.split()) for c in record]
        if n:
            cells = [c if c else NOT_AVAILABLE for c in cells]
        out.write("\t".join(cells) + "\n")
    return out.getvalue()


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a TSV (``n/a`` read as empty)."""
    text = Path(path).read_text(encoding="utf-8")
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    return [{h: ("" if v == NOT_AVAILABLE else v) for h, v in zip(header, line, strict=False)} for line in lines[1:]]


def _number(value: float) -> float | None:
    return round(float(value), 3) if math.isfinite(value) else None


def sidecar(image: BidsImage, landmarks: Landmarks, provenance: Provenance, files: DerivativeFiles,
            measurements: dict[str, tuple[float, str, str, str]], columns: list[str], spacing: tuple,
            seconds: float) -> dict[str, Any]:
    """The JSON sidecar of the TSV: column descriptions (BIDS), then what the report needs."""
    flags = landmarks.review_flags()
    conf = [c for c in landmarks.confidence if math.isfinite(c)]
    doc: dict[str, Any] = {}
    for column in columns:
        key = {"y": "x", "z": "x", "j": "i", "k": "i"}.get(column, column)
        if key in COLUMN_HELP:
            doc[column] = {"Description": COLUMN_HELP[key]}
    doc.update({
        "Description": f"{provenance.protocol} landmarks detected by {PIPELINE}",
        "Sources": [f"bids:raw:{image.relpath}"],
        "SourceEntities": dict(image.entities), "SourceSuffix": image.suffix,
        "SoftwareVersion": __version__, "Model": provenance.model_name, "ModelSHA256": provenance.model_sha256,
        "Protocol": provenance.protocol, "CoordinateSystem": COORDS, "Units": "mm",
        "VoxelSpacing": [round(float(s), 4) for s in spacing],
        "ImageWarning": landmarks.image_warning,
        "LandmarkCount": len(landmarks), "DetectedCount": int(landmarks.defined.sum()),
        "NeedsReview": [n for n, f in zip(landmarks.names, flags, strict=True) if f],
        "MeanConfidence": _number(sum(conf) / len(conf)) if conf else None,
        "MinConfidence": _number(min(conf)) if conf else None,
        "Measurements": {name: {"Value": _number(v), "Units": "mm", "From": a, "To": b, "Description": d}
                         for name, (v, a, b, d) in measurements.items()},
        "Files": {ext: files.relpath(ext) for ext in ("fcsv", "mrk.json", "tsv", "png")},
        "Seconds": round(seconds, 2),
    })
    return doc


def write_failure(out_dir: Path, image: BidsImage, line: str) -> None:
    """Record an image that failed (the group report lists it)."""
    folder = out_dir / FAILED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    record = {"Source": image.relpath, "Subject": image.subject, "Session": image.session,
              "Suffix": image.suffix, "Error": line, "SoftwareVersion": __version__}
    write_text_atomic(folder / f"{image.stem}.json", json.dumps(record, indent=2) + "\n")

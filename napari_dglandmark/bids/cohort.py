"""Reading a derivative back for the group report: one ``Record`` per image (done or failed).

Only the derivative is read (sidecars, TSVs, failure logs): the group level needs no image, no model
and no BIDS dataset, so it runs anywhere the OUTPUT_DIR is.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from .dataset import parse_name
from .derivative import read_tsv
from .naming import DESC, FAILED_DIR

ROBUST_Z = 3.5  # |x - median| / (1.4826 MAD) above this is an outlier (Iglewicz and Hoaglin)
MIN_SCALE_MM = 0.5  # a floor on the spread, so identical values do not make every difference an outlier
MIN_FOR_OUTLIERS = 5  # fewer images than this: no outlier is marked


@dataclass
class Record:
    """One image's result as the report shows it."""

    key: str
    subject: str
    session: str | None
    suffix: str
    entities: dict[str, str]
    source: str
    warning: str = ""
    flagged: list[str] = field(default_factory=list)
    confidence: dict[str, float] = field(default_factory=dict)  # per landmark
    landmarks: int = 0
    detected: int = 0
    measurements: dict[str, float | None] = field(default_factory=dict)
    snapshot: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    error: str = ""  # the image failed (or its derivative is broken)
    outliers: list[str] = field(default_factory=list)

    @property
    def min_confidence(self) -> float | None:
        values = [v for v in self.confidence.values() if math.isfinite(v)]
        return min(values) if values else None

    def severity(self) -> tuple:
        """Sort key, worst first: failed, image warning, outlying measurements, flags, low confidence."""
        low = self.min_confidence
        return (not self.error, not self.warning, -len(self.outliers), -len(self.flagged),
                1.0 if low is None else low, self.key)


@dataclass
class Cohort:
    records: list[Record]
    generated_by: dict[str, Any]
    measurement_names: list[str]


def _result_sidecars(out_dir: Path) -> list[Path]:
    found = []
    for pattern in ("sub-*/anat/*.json", "sub-*/ses-*/anat/*.json"):
        found += [p for p in out_dir.glob(pattern) if not p.name.endswith(".mrk.json") and f"_desc-{DESC}_" in p.name]
    return sorted(found)


def _record_from_sidecar(out_dir: Path, path: Path) -> Record:
    rel = path.relative_to(out_dir).as_posix()
    key = path.name[: -len(".json")]
    parsed = parse_name(path.name)
    entities = dict(parsed[0]) if parsed else {}
    base = Record(key, entities.get("sub", rel.split("/")[0][4:]), entities.get("ses"), entities.get("space", ""),
                  {}, rel)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        base.error = f"{rel}: unreadable sidecar ({exc.__class__.__name__})"
        return base
    source_entities = doc.get("SourceEntities") or {k: v for k, v in entities.items() if k not in ("space", "desc")}
    files = {k: str(v) for k, v in (doc.get("Files") or {}).items()}
    record = Record(key, str(source_entities.get("sub", base.subject)), source_entities.get("ses"),
                    str(doc.get("SourceSuffix") or base.suffix), {str(k): str(v) for k, v in source_entities.items()},
                    str((doc.get("Sources") or [rel])[0]).removeprefix("bids:raw:"),
                    warning=str(doc.get("ImageWarning") or ""), landmarks=int(doc.get("LandmarkCount") or 0),
                    detected=int(doc.get("DetectedCount") or 0), files=files)
    record.measurements = {str(name): (None if m.get("Value") is None else float(m["Value"]))
                           for name, m in (doc.get("Measurements") or {}).items() if isinstance(m, dict)}
    png = files.get("png")
    record.snapshot = png if png and (out_dir / png).is_file() else None
    tsv = out_dir / files["tsv"] if "tsv" in files else path.with_suffix(".tsv")
    try:
        rows = read_tsv(tsv)
    except (OSError, UnicodeDecodeError) as exc:
        record.error = f"{tsv.relative_to(out_dir).as_posix()}: unreadable landmark table ({exc.__class__.__name__})"
        return record
    for row in rows:
        name = row.get("landmark", "")
        try:
            record.confidence[name] = float(row.get("confidence") or "nan")
        except ValueError:
            record.confidence[name] = float("nan")
        if row.get("needs_review") == "1":
            record.flagged.append(name)
    return record


def _failure_records(out_dir: Path, done: set[str]) -> list[Record]:
    out = []
    for path in sorted((out_dir / FAILED_DIR).glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            doc = {"Error": f"{path.name}: unreadable failure record"}
        source = str(doc.get("Source") or path.name)
        if source in done:
            continue  # a later run succeeded (its cleanup was interrupted)
        parsed = parse_name(Path(source).name)
        entities = dict(parsed[0]) if parsed else {}
        out.append(Record(path.stem, str(doc.get("Subject") or entities.get("sub", "?")), doc.get("Session"),
                          str(doc.get("Suffix") or (parsed[1] if parsed else "")), entities, source,
                          error=str(doc.get("Error") or "failed")))
    return out


def outlier_limits(values: list[float]) -> tuple[float, float] | None:
    """The (low, high) beyond which a value is an outlier; None when too few values."""
    if len(values) < MIN_FOR_OUTLIERS:
        return None
    mid = median(values)
    scale = max(1.4826 * median(abs(v - mid) for v in values), MIN_SCALE_MM)
    return mid - ROBUST_Z * scale, mid + ROBUST_Z * scale


def mark_outliers(records: list[Record], names: list[str]) -> None:
    """Robust z-score of each measurement across the cohort; outlying names go to ``Record.outliers``."""
    for name in names:
        values = [r.measurements.get(name) for r in records]
        limits = outlier_limits([v for v in values if v is not None and math.isfinite(v)])
        if limits is None:
            continue
        for record, value in zip(records, values, strict=True):
            if value is not None and math.isfinite(value) and not limits[0] <= value <= limits[1]:
                record.outliers.append(name)


def read_cohort(out_dir: str | os.PathLike, participants: list[str] | None = None) -> Cohort:
    """Every record of the derivative in OUTPUT_DIR, worst first."""
    root = Path(out_dir)
    records = [_record_from_sidecar(root, p) for p in _result_sidecars(root)]
    records += _failure_records(root, {r.source for r in records})
    if participants:
        records = [r for r in records if r.subject in participants]
    names: list[str] = []
    for record in records:
        names += [n for n in record.measurements if n not in names]
    mark_outliers([r for r in records if not r.error], names)
    records.sort(key=Record.severity)
    generated_by: dict[str, Any] = {}
    try:
        description = json.loads((root / "dataset_description.json").read_text(encoding="utf-8"))
        generated_by = (description.get("GeneratedBy") or [{}])[0]
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, IndexError):
        pass
    return Cohort(records, generated_by, names)

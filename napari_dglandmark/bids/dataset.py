"""Reading a BIDS dataset's anatomical images: ``sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]``.

A light reader instead of pybids (which indexes every file into a database and pulls in pandas and
SQLAlchemy): a BIDS App needs only the anatomical images, their entities, sessions and
``.bidsignore``. Files that break the naming rules are reported (one line each) and left out.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DGLandmarkError
from .bidsignore import BidsIgnore

IMAGE_EXTENSIONS = (".nii.gz", ".nii")
DEFAULT_SUFFIXES = ("T1w",)
_LABEL = re.compile(r"^[a-zA-Z0-9]+$")
_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")


@dataclass(frozen=True)
class BidsImage:
    """One anatomical image of the dataset."""

    path: Path
    relpath: str  # from the dataset root, ``/``-separated
    entities: tuple[tuple[str, str], ...]  # in the file name's order, ``sub`` first
    suffix: str
    extension: str

    @property
    def subject(self) -> str:
        return self.entity("sub") or ""

    @property
    def session(self) -> str | None:
        return self.entity("ses")

    def entity(self, key: str) -> str | None:
        return dict(self.entities).get(key)

    @property
    def stem(self) -> str:
        """The file name without its extension (``sub-01_ses-1_T1w``)."""
        return self.path.name[: -len(self.extension)]


@dataclass
class Selection:
    """What ``find_images`` found: the images and a line per file left out."""

    images: list[BidsImage]
    skipped: list[str] = field(default_factory=list)


def parse_name(name: str) -> tuple[tuple[tuple[str, str], ...], str, str] | None:
    """``(entities, suffix, extension)`` of a BIDS file name, or None when it is not one."""
    extension = next((e for e in IMAGE_EXTENSIONS if name.endswith(e)), None)
    if extension is None:
        dot = name.find(".")
        extension = name[dot:] if dot > 0 else ""
    parts = name[: len(name) - len(extension)].split("_")
    if len(parts) < 2 or not _LABEL.match(parts[-1]):
        return None
    entities = []
    for part in parts[:-1]:
        found = _ENTITY.match(part)
        if not found:
            return None
        entities.append((found.group(1), found.group(2)))
    keys = [k for k, _ in entities]
    if keys[0] != "sub" or len(set(keys)) != len(keys):
        return None
    return tuple(entities), parts[-1], extension


def normalise_labels(labels: Iterable[str] | None, prefix: str) -> list[str]:
    """``["sub-01", "02"]`` -> ``["01", "02"]`` (BIDS Apps accept both); bad labels are an error."""
    out = []
    for label in labels or ():
        text = str(label).strip()
        text = text[len(prefix) + 1:] if text.startswith(f"{prefix}-") else text
        if not _LABEL.match(text):
            raise DGLandmarkError(f"{prefix} label {label!r} is not alphanumeric (BIDS labels are [a-zA-Z0-9]+)")
        out.append(text)
    return out


def check_dataset(root: str | os.PathLike) -> Path:
    """The dataset folder, with a one-line error when it is not a BIDS dataset."""
    path = Path(root)
    if not path.is_dir():
        raise DGLandmarkError("BIDS dataset folder not found", path)
    description = path / "dataset_description.json"
    if not description.is_file():
        raise DGLandmarkError("not a BIDS dataset: no dataset_description.json", path)
    try:
        data = json.loads(description.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DGLandmarkError(f"unreadable ({exc.__class__.__name__})", description) from None
    if not isinstance(data, dict):
        raise DGLandmarkError("not a JSON object", description)
    return path


def _folders(root: Path, pattern: str, ignore: BidsIgnore, prefix: str = "") -> list[Path]:
    return [p for p in sorted(root.glob(pattern))
            if p.is_dir() and not ignore.ignores(f"{prefix}{p.name}", is_dir=True)]


def _anat_folders(root: Path, subject: Path, ignore: BidsIgnore) -> list[tuple[str | None, Path]]:
    """(session label or None, anat folder) of one subject."""
    rel = f"{subject.name}/"
    out: list[tuple[str | None, Path]] = []
    if (subject / "anat").is_dir() and not ignore.ignores(f"{rel}anat", is_dir=True):
        out.append((None, subject / "anat"))
    for session in _folders(subject, "ses-*", ignore, rel):
        anat = session / "anat"
        if anat.is_dir() and not ignore.ignores(f"{rel}{session.name}/anat", is_dir=True):
            out.append((session.name[4:], anat))
    return out


def subjects_of(root: str | os.PathLike) -> list[str]:
    """Labels of the dataset's ``sub-*`` folders not ignored by ``.bidsignore``."""
    base = Path(root)
    return [p.name[4:] for p in _folders(base, "sub-*", BidsIgnore.from_dataset(base))]


def find_images(root: str | os.PathLike, participants: Sequence[str] = (), sessions: Sequence[str] = (),
                suffixes: Sequence[str] = DEFAULT_SUFFIXES) -> Selection:
    """The anatomical images of ``suffixes`` (all subjects and sessions unless labels are given).

    An unknown participant label, or a selection that finds no image, is an error (before any work).
    """
    base = check_dataset(root)
    ignore = BidsIgnore.from_dataset(base)
    wanted_subjects = normalise_labels(participants, "sub")
    wanted_sessions = normalise_labels(sessions, "ses")
    subjects = _folders(base, "sub-*", ignore)
    known = {p.name[4:] for p in subjects}
    unknown = [s for s in wanted_subjects if s not in known]
    if unknown:
        have = ", ".join(sorted(known)[:10]) + (" ..." if len(known) > 10 else "")
        raise DGLandmarkError(f"no participant {', '.join('sub-' + s for s in unknown)} in the dataset "
                              f"(has: {have or 'none'})", base)
    selection = Selection([])
    seen_sessions: set[str] = set()
    for subject in subjects:
        label = subject.name[4:]
        if not _LABEL.match(label) or (wanted_subjects and label not in wanted_subjects):
            continue
        for session, anat in _anat_folders(base, subject, ignore):
            if session is not None:
                seen_sessions.add(session)
            if wanted_sessions and session not in wanted_sessions:
                continue
            _collect(base, anat, label, session, suffixes, ignore, selection)
    missing = [s for s in wanted_sessions if s not in seen_sessions]
    if missing and not selection.images:
        raise DGLandmarkError(f"no session {', '.join('ses-' + s for s in missing)} in the selected participants",
                              base)
    if not selection.images:
        raise DGLandmarkError(f"no anatomical image with suffix {' / '.join(suffixes)} "
                              f"({' or '.join(IMAGE_EXTENSIONS)}) in the selection", base)
    return selection


def _collect(base: Path, anat: Path, subject: str, session: str | None, suffixes: Sequence[str],
             ignore: BidsIgnore, selection: Selection) -> None:
    for path in sorted(anat.iterdir()):
        rel = path.relative_to(base).as_posix()
        if not path.name.endswith(IMAGE_EXTENSIONS) or ignore.ignores(rel, path.is_dir()):
            continue
        parsed = parse_name(path.name)
        if parsed is None:
            selection.skipped.append(f"{rel}: not a BIDS file name (sub-<label>[_<key>-<value>...]_<suffix>); "
                                     "left out")
            continue
        entities, suffix, extension = parsed
        if suffix not in suffixes:
            continue
        names = dict(entities)
        if names["sub"] != subject or names.get("ses") != session:
            where = f"sub-{subject}" + (f"/ses-{session}" if session else "")
            selection.skipped.append(f"{rel}: its sub/ses entities do not match its folder {where}; left out")
            continue
        selection.images.append(BidsImage(path, rel, entities, suffix, extension))

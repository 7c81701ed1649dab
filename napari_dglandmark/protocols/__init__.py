"""Landmark protocols: ordered names, descriptions, colours, measurements (small JSON files)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import DGLandmarkError
from ..io.landmarks import Landmarks, distance, normalise_name


@dataclass(frozen=True)
class Measurement:
    """A named distance between two landmarks, reported in mm."""

    name: str
    a: str
    b: str
    description: str = ""


@dataclass(frozen=True)
class Protocol:
    """An ordered landmark set with display colours and measurements."""

    name: str
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    colors: tuple[str, ...]
    measurements: tuple[Measurement, ...] = ()
    bilateral_pairs: tuple[tuple[str, str], ...] = ()
    title: str = ""
    acronyms: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.names)

    def index_of(self, name: str) -> int:
        """Position of a landmark in the protocol, matched case-insensitively (also by acronym)."""
        key = normalise_name(name)
        for i, other in enumerate(self.names):
            if normalise_name(other) == key or (self.acronyms and normalise_name(self.acronyms[i]) == key):
                return i
        raise KeyError(name)

    def canonical(self, name: str) -> str:
        """The protocol's spelling of a landmark name."""
        return self.names[self.index_of(name)]

    def color_rgb(self, name: str) -> tuple[float, float, float]:
        """Display colour in [0, 1] RGB."""
        code = self.colors[self.index_of(name)].lstrip("#")
        return tuple(int(code[i:i + 2], 16) / 255.0 for i in (0, 2, 4))

    def conform(self, landmarks: Landmarks, source: str | os.PathLike | None = None,
                allow_missing: bool = True) -> Landmarks:
        """Landmarks renamed to the protocol's spelling and order; unknown names are an error."""
        unknown = []
        for name in landmarks.names:
            try:
                self.index_of(name)
            except KeyError:
                unknown.append(name)
        if unknown:
            raise DGLandmarkError(
                f"unknown landmark name(s) for protocol {self.name!r}: {', '.join(unknown[:5])}"
                + (" ..." if len(unknown) > 5 else ""), source)
        renamed = landmarks.copy()
        renamed.names = [self.canonical(n) for n in landmarks.names]
        if not allow_missing:
            absent = [n for n in self.names if n not in renamed.names]
            if absent:
                raise DGLandmarkError(f"lacks landmark(s) {', '.join(absent[:5])}", source)
        out = renamed.reordered(self.names, strict=False)
        for i in range(len(out)):
            if not out.descriptions[i]:
                out.descriptions[i] = self.descriptions[i]
        return out

    def measure(self, landmarks: Landmarks) -> dict[str, float]:
        """Each measurement in mm (NaN when an endpoint is missing or absent)."""
        values = {}
        for m in self.measurements:
            try:
                values[m.name] = distance(landmarks, m.a, m.b)
            except KeyError:
                values[m.name] = float("nan")
        return values

    def measurement_triples(self) -> list[tuple[str, str, str]]:
        return [(m.name, m.a, m.b) for m in self.measurements]


def _package_dir() -> Path:
    return Path(str(resources.files(__package__)))


def available_protocols() -> list[str]:
    """Names of the bundled protocols."""
    return sorted(p.stem for p in _package_dir().glob("*.json"))


def protocol_from_dict(data: dict, source: str | os.PathLike | None = None) -> Protocol:
    """Build a Protocol from its JSON form, checking it."""
    try:
        lms = data["landmarks"]
        names = tuple(str(x["name"]) for x in lms)
        meas = tuple(Measurement(str(m["name"]), str(m["from"]), str(m["to"]), str(m.get("description", "")))
                     for m in data.get("measurements", []))
        protocol = Protocol(
            name=str(data["name"]), names=names,
            descriptions=tuple(str(x.get("description", "")) for x in lms),
            colors=tuple(str(x.get("color", "#ffff00")) for x in lms),
            measurements=meas,
            bilateral_pairs=tuple((str(a), str(b)) for a, b in data.get("bilateral_pairs", [])),
            title=str(data.get("title", "")),
            acronyms=tuple(str(x.get("acronym", "")) for x in lms),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DGLandmarkError(f"malformed protocol ({exc.__class__.__name__}: {exc})", source) from None
    keys = [normalise_name(n) for n in names]
    if len(set(keys)) != len(keys):
        raise DGLandmarkError("protocol has duplicate landmark names", source)
    for m in protocol.measurements:
        for end in (m.a, m.b):
            if normalise_name(end) not in keys:
                raise DGLandmarkError(f"measurement {m.name!r} names unknown landmark {end!r}", source)
    return protocol


def load_protocol(name_or_path: str | os.PathLike) -> Protocol:
    """A bundled protocol by name (``afids32``) or a protocol JSON file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = _package_dir() / f"{name_or_path}.json"
        if not path.exists():
            raise DGLandmarkError(f"unknown protocol {str(name_or_path)!r}; bundled: {', '.join(available_protocols())}")
    if not path.exists():
        raise DGLandmarkError("no such protocol file", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DGLandmarkError(f"malformed protocol JSON at line {exc.lineno}: {exc.msg}", path) from None
    return protocol_from_dict(data, path)


def protocol_or_none(name: str | None) -> Protocol | None:
    """The bundled protocol a model names, or None when it names none or one not bundled here."""
    if not name:
        return None
    try:
        return load_protocol(name)
    except DGLandmarkError:
        return None

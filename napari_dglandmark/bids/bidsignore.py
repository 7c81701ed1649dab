"""``.bidsignore``: gitignore-style patterns of files a BIDS reader must not see.

The BIDS validator reads the file with gitignore semantics; this is that subset: comments, ``!``
negation (last match wins), a trailing ``/`` for folders only, a ``/`` inside a pattern anchors it
at the dataset root (otherwise it matches at any depth), ``*``, ``?``, ``[...]`` and ``**``.
A file inside an ignored folder is ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dirs_only: bool


def _translate(body: str) -> str:
    """Regex text for one gitignore glob (no anchoring)."""
    out, i = [], 0
    while i < len(body):
        if body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif body.startswith("/**", i) and i + 3 == len(body):
            out.append("/.*")
            i += 3
        elif body.startswith("**", i):
            out.append(".*")
            i += 2
        elif body[i] == "*":
            out.append("[^/]*")
            i += 1
        elif body[i] == "?":
            out.append("[^/]")
            i += 1
        elif body[i] == "[" and "]" in body[i + 2:]:
            end = body.index("]", i + 2)
            inner = body[i + 1:end]
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            out.append(f"[{inner.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        elif body[i] == "\\" and i + 1 < len(body):
            out.append(re.escape(body[i + 1]))
            i += 2
        else:
            out.append(re.escape(body[i]))
            i += 1
    return "".join(out)


def _rule(line: str) -> _Rule | None:
    text = line.rstrip("\n").rstrip()
    if not text or text.startswith("#"):
        return None
    negate = text.startswith("!")
    if negate:
        text = text[1:]
    dirs_only = text.endswith("/")
    text = text.rstrip("/")
    if not text:
        return None
    anchored = "/" in text
    text = text.lstrip("/")
    prefix = "^" if anchored else "^(?:.*/)?"
    return _Rule(re.compile(prefix + _translate(text) + "$"), negate, dirs_only)


class BidsIgnore:
    """The patterns of one ``.bidsignore`` (none when the file is absent)."""

    def __init__(self, lines: list[str] | tuple[str, ...] = ()) -> None:
        self.rules = [r for r in (_rule(line) for line in lines) if r is not None]

    @classmethod
    def from_dataset(cls, root: str | os.PathLike) -> BidsIgnore:
        path = Path(root) / ".bidsignore"
        if not path.is_file():
            return cls()
        return cls(path.read_text(encoding="utf-8", errors="replace").splitlines())

    def _matches(self, relpath: str, is_dir: bool) -> bool:
        ignored = False
        for rule in self.rules:
            if rule.dirs_only and not is_dir:
                continue
            if rule.regex.match(relpath):
                ignored = not rule.negate
        return ignored

    def ignores(self, relpath: str | os.PathLike, is_dir: bool = False) -> bool:
        """Whether ``relpath`` (relative to the dataset root, ``/``-separated) is ignored."""
        parts = [p for p in Path(relpath).as_posix().split("/") if p and p != "."]
        for n in range(1, len(parts)):
            if self._matches("/".join(parts[:n]), True):
                return True
        return bool(parts) and self._matches("/".join(parts), is_dir)

"""File names of the derivative: the source image's entities, then ``space-<source suffix>`` and
``desc-dglandmark``, then the protocol's suffix (``afids`` for AFIDs, as the AFIDs tools name them).

``sub-01/ses-1/anat/sub-01_ses-1_acq-fast_run-2_T1w.nii.gz`` ->
``sub-01/ses-1/anat/sub-01_ses-1_acq-fast_run-2_space-T1w_desc-dglandmark_afids.{fcsv,mrk.json,tsv,json}``
and the QC picture ``sub-01/ses-1/figures/..._afids.png``. ``space-T1w`` says the positions are in
that image's own (scanner) space, and keeps a T1w's and a T2w's results of one session apart.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .dataset import BidsImage

DESC = "dglandmark"
#: BIDS entity order (specification, "Entity table"); ``space`` goes before the entities after it
ENTITY_ORDER = ("sub", "tpl", "ses", "cohort", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc",
                "stain", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space",
                "split", "recording", "chunk", "atlas", "seg", "scale", "res", "den", "label", "desc")
LANDMARK_EXTENSIONS = ("fcsv", "mrk.json", "tsv", "json")


def protocol_suffix(protocol: str) -> str:
    """The derivative suffix for a protocol: ``afids`` for AFIDs protocols, else its alphanumerics."""
    if protocol.lower().startswith("afids"):
        return "afids"
    return re.sub(r"[^a-zA-Z0-9]", "", protocol) or "landmarks"


def derivative_entities(image: BidsImage) -> list[tuple[str, str]]:
    """The source's entities (in BIDS order) with ``space-<source suffix>`` and ``desc-dglandmark``."""
    rank = {k: n for n, k in enumerate(ENTITY_ORDER)}
    kept = [(k, v) for k, v in image.entities if k not in ("space", "desc")]
    kept += [("space", image.suffix), ("desc", DESC)]
    return sorted(kept, key=lambda kv: rank.get(kv[0], rank["space"] - 0.5))


@dataclass(frozen=True)
class DerivativeFiles:
    """Where one image's results go inside OUTPUT_DIR."""

    root: Path
    folder: str  # ``sub-01[/ses-1]``
    stem: str  # ``sub-01_..._space-T1w_desc-dglandmark_afids``

    def path(self, extension: str) -> Path:
        """``anat/<stem>.<extension>``; the PNG goes to ``figures/``."""
        sub = "figures" if extension == "png" else "anat"
        return self.root / self.folder / sub / f"{self.stem}.{extension}"

    @property
    def sidecar(self) -> Path:
        """The JSON sidecar: written last, so its presence means the image is done."""
        return self.path("json")

    def relpath(self, extension: str) -> str:
        return self.path(extension).relative_to(self.root).as_posix()

    def all_paths(self) -> list[Path]:
        return [self.path(e) for e in (*LANDMARK_EXTENSIONS, "png")]


def derivative_files(out_dir: str | os.PathLike, image: BidsImage, protocol: str) -> DerivativeFiles:
    folder = f"sub-{image.subject}" + (f"/ses-{image.session}" if image.session else "")
    name = "_".join(f"{k}-{v}" for k, v in derivative_entities(image))
    return DerivativeFiles(Path(out_dir), folder, f"{name}_{protocol_suffix(protocol)}")


FAILED_DIR = "logs/failed"  # in OUTPUT_DIR (listed in its .bidsignore): one JSON per image that failed


def failure_path(out_dir: str | os.PathLike, image: BidsImage) -> Path:
    """The record of an image's failure (removed when a later run succeeds)."""
    return Path(out_dir) / FAILED_DIR / f"{image.stem}.json"

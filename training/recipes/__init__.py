"""Training recipes as data: one TOML file says what a bundled model is trained from and how.

``dglandmark-train finetune --recipe FILE --out RUN`` runs one (resumable with ``--resume``). A recipe
names the start model, the data sources (the AFIDs template drawn as realistic cases; prepared
real-people heads from label maps, ``scripts/make_real_heads.py``) with how often each is drawn per
network, and the ``training.detector.DetectorRecipe`` settings. Unknown keys are errors.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from napari_dglandmark.errors import DGLandmarkError

RECIPES_DIR = Path(__file__).resolve().parent


@dataclass
class Sources:
    """What the cases are and how often each kind is drawn (per network)."""

    template: bool = True  # the AFIDs template T1w, its tissue map, warps to afids-shapes people
    label_heads: str = ""  # folder of prepared heads; relative paths are under the training cache
    held_out_every: int = 5  # every n-th head of each label-map set is never trained on (benchmarks)
    max_heads: int = 0  # 0: every prepared head
    coarse_label_head_share: float = 0.6  # share of coarse items drawn from label-map heads
    fine_label_head_share: float = 0.3


@dataclass
class Recipe:
    """One training recipe (``load_recipe``)."""

    name: str
    protocol: str = "afids32"
    init: str = ""  # bundled model name or checkpoint path to start from ("": from scratch)
    stages: tuple[str, ...] = ("coarse", "fine")
    description: str = ""
    sources: Sources = field(default_factory=Sources)
    detector: dict = field(default_factory=dict)  # DetectorRecipe fields
    path: Path | None = None


def _strict(section: dict, cls, where: str) -> dict:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise DGLandmarkError(f"unknown recipe setting(s) in [{where}]: {', '.join(unknown)}")
    return section


def recipe_path(name_or_path: str) -> Path:
    """A recipe file: a path, or the name of a bundled recipe (``training/recipes/NAME.toml``)."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        bundled = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml")))
        raise DGLandmarkError(f"no such recipe (bundled: {bundled})", name_or_path)
    return path


def load_recipe(name_or_path: str) -> Recipe:
    """Read and check a recipe file; every key must be known (a typo is an error, not a default)."""
    from training.detector import DetectorRecipe

    path = recipe_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise DGLandmarkError(f"not a valid TOML recipe: {exc}", path) from None
    try:
        top = {k: v for k, v in data.items() if k not in ("sources", "detector")}
        _strict(top, Recipe, "top level")
        sources = Sources(**_strict(data.get("sources", {}), Sources, "sources"))
        detector = _strict(data.get("detector", {}), DetectorRecipe, "detector")
        for key in ("scale", "shape_blend", "fov_margin_mm"):
            if key in detector:
                detector[key] = tuple(detector[key])
        recipe = Recipe(sources=sources, detector=detector, path=path,
                        **{k: tuple(v) if k == "stages" else v for k, v in top.items()})
    except DGLandmarkError as exc:
        raise DGLandmarkError(str(exc.args[0]) if exc.args else str(exc), path) from None
    except TypeError as exc:
        raise DGLandmarkError(f"bad recipe: {exc}", path) from None
    bad = sorted(set(recipe.stages) - {"coarse", "fine"})
    if bad:
        raise DGLandmarkError(f"unknown stage(s) {', '.join(bad)} (coarse, fine)", path)
    for key in ("coarse_label_head_share", "fine_label_head_share"):
        if not 0.0 <= getattr(recipe.sources, key) <= 1.0:
            raise DGLandmarkError(f"[sources] {key} must be in [0, 1]", path)
    return recipe

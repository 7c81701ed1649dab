"""Site adaptation: fine-tune a two-stage model on a handful of a site's reviewed cases.

The one training loop (``training.detector.DetectorTrainer``) with a small recipe: a lower learning
rate, strong augmentation, a few coarse steps and mostly the fine stage, a time budget, early
stopping on a held-back case (three or more cases) and provenance in the new model's metadata.
Only landmarks a person looked at count when a file carries review statuses (``verified``,
``corrected``, ``added``); predictions nobody reviewed are missing. The base model is never
overwritten. Used by ``dglandmark-train adapt`` and the napari "Adapt model" action.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from napari_dglandmark.errors import DGLandmarkError
from napari_dglandmark.io import read_landmarks, read_volume
from napari_dglandmark.io.landmarks import (
    REVIEW_STATUSES,
    REVIEWED,
    Landmarks,
    count_reviewed,
    is_reviewed_file,
    normalise_name,
    reviewed,
)
from napari_dglandmark.io.volume import Volume
from napari_dglandmark.model.checkpoint import file_sha256, read_metadata
from napari_dglandmark.model.inference import Cancelled, Detector, bundled_models, resolve_model
from napari_dglandmark.model.pipeline import PipelineConfig
from napari_dglandmark.sample import SAMPLE_LANDMARKS, SAMPLE_VOLUME

from .detector import Case, DetectorRecipe, DetectorTrainer, landmark_case
from .evaluate import mean_radial_error

MIN_CASES = 1
HOLD_OUT_FROM = 3  # with this many cases or more, one is held back for early stopping
Progress = Callable[[int, int], None]
Message = Callable[[str], None]


@dataclass
class AdaptCase:
    """One reviewed scan: the volume, its landmarks and where they came from (names and hashes only)."""

    name: str
    volume: Volume
    landmarks: Landmarks
    image_file: str = ""
    image_sha256: str = ""
    landmarks_file: str = ""
    landmarks_sha256: str = ""

    def __post_init__(self) -> None:
        if not self.landmarks_sha256:
            self.landmarks_sha256 = landmarks_sha256(reviewed(self.landmarks))


@dataclass
class AdaptOptions:
    """The adaptation recipe's knobs (the rest comes from the base model)."""

    max_minutes: float = 10.0
    coarse_steps: int = 20  # upper bounds: the time budget may allow fewer
    fine_steps: int = 1500
    batch_coarse: int = 2
    batch_fine: int = 8
    lr: float = 2e-4  # a tenth of the base recipe's: 4e-4 made the bundled model worse on a new site
    val_every: int = 50  # fine steps between held-back checks
    patience: int = 4  # held-back checks without improvement before stopping
    min_gain_mm: float = 0.005  # what counts as an improvement of the held-back error
    seed: int = 0
    device: str = "auto"
    #: also train on the bundled template (when its landmarks are the model's), so the model keeps what it knew
    rehearse: bool = True


@dataclass
class AdaptResult:
    path: Path
    metadata: dict
    before_mm: float
    after_mm: float
    evaluated_on: str
    steps: dict[str, int]
    seconds: float
    stopped_by: str

    def summary(self) -> str:
        return (f"{self.evaluated_on}: error {self.before_mm:.2f} -> {self.after_mm:.2f} mm; "
                f"{self.steps['coarse']} coarse + {self.steps['fine']} fine steps in {self.seconds / 60:.1f} min "
                f"(stopped by {self.stopped_by})")


# --------------------------------------------------------------------------------------------- cases


def landmarks_sha256(landmarks: Landmarks) -> str:
    """sha256 of the landmarks used (names and rounded LPS positions): for cases not read from a file."""
    rows = [[n, *(None if np.isnan(v) else round(float(v), 4) for v in p)]
            for n, p in zip(landmarks.names, landmarks.positions, strict=True)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _path_sha256(path: Path) -> str:
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()  # a folder-per-case layout: the hashes of its files, in name order
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path)}:{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def cases_from_dataset(path: str | os.PathLike, progress: Progress | None = None) -> list[AdaptCase]:
    """The cases of a landmark dataset (image + landmark file pairs by stem, or a CSV manifest)."""
    from napari_dglandmark.io import read_volume

    from .data import find_landmark_cases, read_case_landmarks

    items = find_landmark_cases(path)
    out = []
    for n, item in enumerate(items, 1):
        out.append(AdaptCase(item.name, read_volume(item.image), read_case_landmarks(item),
                             item.image.name, file_sha256(item.image), item.landmarks.name,
                             _path_sha256(item.landmarks)))
        if progress:
            progress(n, len(items))
    return out


def check_cases(cases: Sequence[AdaptCase], names: Sequence[str], protocol: str = "") -> list[AdaptCase]:
    """The cases that have reviewed landmarks; one-line errors for a protocol mismatch or nothing to learn from."""
    if not cases:
        raise DGLandmarkError("no cases to adapt on")
    known = {normalise_name(n) for n in names}
    what = f"the model's protocol {protocol!r}" if protocol else "the model"
    for case in cases:
        unknown = [n for n in case.landmarks.names if normalise_name(n) not in known]
        if unknown:
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise DGLandmarkError(f"protocol mismatch: {', '.join(unknown[:3])}{more} not among the {len(names)} "
                                  f"landmarks of {what}", case.landmarks_file or case.name)
    usable = [c for c in cases if count_reviewed(c.landmarks) > 0]
    if not usable:
        if cases and all(is_reviewed_file(c.landmarks) for c in cases):
            raise DGLandmarkError("no reviewed landmarks: verify, correct or add landmarks first "
                                  "(predictions nobody reviewed are not used)")
        raise DGLandmarkError("no landmarks with a position in any case")
    if len(usable) < MIN_CASES:
        raise DGLandmarkError(f"{len(usable)} reviewed case(s); adaptation needs at least {MIN_CASES}")
    return usable


# --------------------------------------------------------------------------------------------- recipe


def adapt_recipe(meta: dict, options: AdaptOptions, coarse_steps: int, fine_steps: int) -> DetectorRecipe:
    """The small recipe: the base model's grids and networks, strong augmentation, a low learning rate."""
    hp = meta["architecture"]["hparams"]
    nets = {k: {n: v for n, v in hp[k].items() if n not in ("in_channels", "out_channels")} for k in ("coarse", "fine")}
    return DetectorRecipe(
        pipeline=PipelineConfig.from_dict(meta.get("pipeline", {})), coarse_net=nets["coarse"], fine_net=nets["fine"],
        pretrain_coarse_steps=0, pretrain_fine_steps=0, coarse_steps=coarse_steps, fine_steps=fine_steps,
        batch_coarse=options.batch_coarse, batch_fine=options.batch_fine, lr=options.lr,
        rotation_deg=15.0, scale=(0.88, 1.12), translation_mm=8.0, elastic_mm=3.0, intensity="default",
        p_head_invert=0.1, fine_offset_mm=3.0,
        # the loop's own validation (on training items) only at the last step: held-back checks decide
        val_every=10**9, log_every=5, seed=options.seed)


def _step_seconds(trainer: DetectorTrainer, cases: Sequence[Case], stage: str, repeats: int = 1) -> float:
    """Seconds per optimisation step of ``stage``, timed on a copy of the network (weights untouched)."""
    net = copy.deepcopy(trainer.network.coarse if stage == "coarse" else trainer.network.fine).train()
    state = (trainer.rng.bit_generator.state, trainer.gen.get_state())
    r, dev = trainer.recipe, trainer.device
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        if stage == "coarse":
            x, pts = trainer.coarse_batch(cases)
            loss = trainer.softmax_ce(net(x.to(dev)), pts.to(dev), r.sigma_coarse_vox)
        else:
            x, pts, ch = trainer.fine_batch(cases)
            out = net(x.to(dev))
            loss = trainer.softmax_ce(out[torch.arange(len(ch)), ch][:, None], pts[:, None].to(dev), r.sigma_fine_vox)
        loss.backward()
        times.append(time.perf_counter() - t0)
    trainer.rng.bit_generator.state = state[0]
    trainer.gen.set_state(state[1])
    return float(np.median(times[1:]))  # the first one pays for allocation


def rehearsal_case(names: Sequence[str], pipeline) -> Case | None:
    """The bundled sample (the 2 mm AFIDs template) as a training case when its landmarks are exactly
    the model's, else None."""
    if not (SAMPLE_VOLUME.is_file() and SAMPLE_LANDMARKS.is_file()):
        return None
    landmarks = read_landmarks(SAMPLE_LANDMARKS)
    if {n.casefold() for n in landmarks.names} != {n.casefold() for n in names}:
        return None
    return landmark_case(read_volume(SAMPLE_VOLUME), landmarks, names, pipeline)


def _mre(detector: Detector, case: AdaptCase, truth: Landmarks) -> float:
    """Mean radial error (mm) of ``detector`` on one case, under ``training.evaluate``'s failure policy."""
    return mean_radial_error(truth, detector.detect(case.volume), detector.names)


def default_output(base: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """``<folder>/<base name>-adapted-<date>.safetensors`` (a free name)."""
    stem = Path(str(resolve_model(base))).name.removesuffix(".safetensors")
    day = _dt.date.today().isoformat()
    out = Path(folder) / f"{stem}-adapted-{day}.safetensors"
    k = 2
    while out.exists():
        out = Path(folder) / f"{stem}-adapted-{day}-{k}.safetensors"
        k += 1
    return out


def check_output(base_path: Path, out: str | os.PathLike) -> Path:
    """``out`` as a model path that is neither the base model nor a bundled model."""
    target = Path(out)
    if not target.name.endswith(".safetensors"):
        raise DGLandmarkError("the adapted model must be a .safetensors file", target)
    protected = [base_path, *bundled_models().values()]
    for p in protected:
        if target.resolve() == Path(p).resolve() or (target.exists() and os.path.samefile(target, p)):
            raise DGLandmarkError("refusing to overwrite the base or a bundled model; choose another --out", target)
    if not target.parent.is_dir():
        raise DGLandmarkError("folder does not exist", target.parent)
    return target


# --------------------------------------------------------------------------------------------- plan


@dataclass
class AdaptationPlan:
    """What an adaptation will use, checked before any training: the base model and the cases' roles."""

    base_path: Path
    meta: dict
    names: list[str]
    cases: list[AdaptCase]  # the usable cases, in name order
    held: AdaptCase | None  # the case held back for early stopping (three cases or more)

    @property
    def train(self) -> list[AdaptCase]:
        return [c for c in self.cases if c is not self.held]

    @property
    def evaluated_on(self) -> str:
        held = self.held
        return f"held-back case {held.name}" if held else f"the {len(self.train)} training case(s) (no case held back)"

    def truth(self, case: AdaptCase) -> Landmarks:
        """The landmarks of ``case`` that count (``reviewed``), in the model's order."""
        return reviewed(case.landmarks).reordered(self.names, strict=False)


def prepare_adaptation(base: str | os.PathLike, cases: Sequence[AdaptCase]) -> AdaptationPlan:
    """Every check that needs no training, in one place (the CLI, ``adapt`` and the napari widget):
    the base model is a two-stage detector, the cases use its protocol and some landmarks were
    reviewed; which case is held back. A one-line ``DGLandmarkError`` otherwise."""
    base_path = Path(resolve_model(base))
    meta = read_metadata(base_path)
    if meta.get("architecture", {}).get("name") != "two-stage":
        raise DGLandmarkError("adaptation needs a two-stage detection model", base_path)
    names = list(meta.get("landmark_names") or [])
    ordered = sorted(check_cases(cases, names, meta.get("protocol", "")), key=lambda c: c.name)
    held = ordered[-1] if len(ordered) >= HOLD_OUT_FROM else None
    return AdaptationPlan(base_path, meta, names, ordered, held)


def plan_steps(options: AdaptOptions, seconds_left: float, coarse_step_s: float, fine_step_s: float,
               check_s_per_fine_step: float) -> tuple[int, int]:
    """(coarse, fine) steps that fit ``seconds_left``: the coarse stage gets at most a fifth of the
    time, the fine stage (with its held-back checks) the rest; never more than the options allow."""
    coarse = min(options.coarse_steps, max(0, int(0.2 * seconds_left / coarse_step_s)))
    fine = min(options.fine_steps,
               max(0, int((seconds_left - coarse * coarse_step_s) / (fine_step_s + check_s_per_fine_step))))
    return coarse, fine


# --------------------------------------------------------------------------------------------- run


class _Run:
    """One adaptation while it trains: held-back checks, the best weights so far, why it stopped."""

    def __init__(self, trainer: DetectorTrainer, detector: Detector, plan: AdaptationPlan, options: AdaptOptions,
                 deadline: float, eval_seconds: float, before: float, say: Message,
                 cancelled: Callable[[], bool], progress: Progress | None) -> None:
        self.trainer, self.detector, self.plan, self.options = trainer, detector, plan, options
        self.evaluate = [plan.held] if plan.held is not None else plan.train
        self.deadline, self.eval_seconds = deadline, eval_seconds
        self.say, self.cancelled, self.progress = say, cancelled, progress
        self.best_mm, self.best_state, self.best_step = before, _state(trainer.network), "base"
        self.done = {"coarse": 0, "fine": 0}
        self.stale = 0
        self.stop_reason = ""
        self.total = trainer.recipe.coarse_steps + trainer.recipe.fine_steps

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled()

    def error(self) -> float:
        """Mean MRE over the evaluation cases, the networks in eval mode (their modes restored)."""
        net = self.trainer.network
        modes = [m.training for m in (net.coarse, net.fine)]
        net.eval()
        try:
            return float(np.mean([_mre(self.detector, c, self.plan.truth(c)) for c in self.evaluate]))
        finally:
            net.coarse.train(modes[0])
            net.fine.train(modes[1])

    def improves(self, mm: float) -> bool:
        return mm < self.best_mm - self.options.min_gain_mm

    def keep_best(self, mm: float, step: str) -> None:
        self.best_mm, self.best_state, self.best_step = mm, _state(self.trainer.network), step

    def consider(self, label: str) -> None:
        """A held-back check: keep the weights when they improve; early stopping after ``patience`` misses."""
        mm = self.error()
        if self.improves(mm):
            self.keep_best(mm, label)
            self.stale = 0
        else:
            self.stale += 1
        self.say(f"{label}: held-back error {mm:.2f} mm (best {self.best_mm:.2f})")
        if self.stale >= self.options.patience:
            self.stop_reason = "early stopping"

    def on_row(self, row: dict) -> None:
        """The trainer's log hook: progress, and a held-back check every ``val_every`` fine steps."""
        stage = row.get("stage")
        if stage not in self.done:
            return
        self.done[stage] = int(row["step"])
        if self.progress:
            self.progress(self.done["coarse"] + self.done["fine"], self.total)
        fine = self.done["fine"]
        if (self.plan.held is not None and stage == "fine" and fine % self.options.val_every == 0
                and fine < self.trainer.recipe.fine_steps):
            self.consider(f"fine step {fine}")

    def should_stop(self) -> bool:
        """The trainer's stop hook: Cancel, early stopping or the time budget (one last check must fit)."""
        self.check()
        if not self.stop_reason and time.monotonic() > self.deadline - 1.2 * self.eval_seconds * len(self.evaluate):
            self.stop_reason = "time budget"
        return bool(self.stop_reason)

    def coarse_stage(self, train_cases: Sequence[Case], before: float) -> bool | None:
        """Train the coarse network; keep it only when the evaluation error does not get worse
        (None: the run stopped inside the stage, which is then neither judged nor reverted)."""
        base_coarse = _state(self.trainer.network.coarse)
        self.trainer.finetune(train_cases, stages=("coarse",))
        if self.stop_reason:
            return None
        # a few coarse steps on a few cases can hurt more than help: keep them only when they do not
        mm = self.error()
        kept = mm <= before + 0.02
        if not kept:
            self.trainer.network.coarse.load_state_dict(base_coarse)
        elif self.plan.held is not None and self.improves(mm):
            self.keep_best(mm, "coarse")
        self.say(f"after the coarse stage: error {mm:.2f} mm ({'kept' if kept else 'reverted to the base coarse network'})")
        return kept

    def train(self, train_cases: Sequence[Case], before: float) -> tuple[str, bool | None]:
        """Both stages; returns (what stopped the run, whether the coarse stage was kept or None)."""
        trainer, recipe = self.trainer, self.trainer.recipe
        trainer.log, trainer.should_stop = self.on_row, self.should_stop
        if self.progress:
            self.progress(0, self.total)
        coarse_kept = None
        try:
            if recipe.coarse_steps:
                coarse_kept = self.coarse_stage(train_cases, before)
            if not self.stop_reason and recipe.fine_steps:
                trainer.finetune(train_cases, stages=("fine",))
        finally:
            trainer.should_stop = None
        trainer.network.eval()
        return self.stop_reason or "steps", coarse_kept

    def finish(self) -> tuple[float, str]:
        """The final error and the step whose weights are kept: the best held-back check, else the end."""
        if self.plan.held is not None:
            self.consider("end")
            self.trainer.network.load_state_dict(self.best_state)
            self.trainer.network.eval()
            return self.best_mm, self.best_step
        return self.error(), "end"


# --------------------------------------------------------------------------------------------- adapt


def adapt(base: str | os.PathLike, cases: Sequence[AdaptCase], out: str | os.PathLike,
          options: AdaptOptions | None = None, progress: Progress | None = None,
          cancelled: Callable[[], bool] | None = None, message: Message | None = None) -> AdaptResult:
    """Fine-tune ``base`` on ``cases`` and write the adapted model to ``out`` (atomically).

    ``progress(done, total)`` counts optimisation steps; ``cancelled()`` returning True stops the
    run (``inference.Cancelled`` is raised, nothing is written); ``message`` gets one-line news.
    """
    from napari_dglandmark.model.devices import resolve_device

    options = options or AdaptOptions()
    start = time.monotonic()
    deadline = start + 60.0 * options.max_minutes
    say = message or (lambda text: None)
    is_cancelled = cancelled or (lambda: False)

    def check() -> None:
        if is_cancelled():
            raise Cancelled()

    target = check_output(Path(resolve_model(base)), out)
    plan = prepare_adaptation(base, cases)
    held, train, names = plan.held, plan.train, plan.names
    device = resolve_device(options.device)
    detector = Detector(plan.base_path, device=str(device))
    say(f"preparing {len(train)} training case(s)" + (f", holding back {held.name}" if held else ""))
    recipe = adapt_recipe(plan.meta, options, options.coarse_steps, options.fine_steps)
    train_cases = []
    for c in train:
        check()
        train_cases.append(landmark_case(c.volume, reviewed(c.landmarks), names, recipe.pipeline))
    rehearsal = rehearsal_case(names, recipe.pipeline) if options.rehearse else None
    if rehearsal is not None:
        train_cases.append(rehearsal)
        say("also rehearsing on the bundled template, so the model does not forget it")
    evaluate = [held] if held is not None else train
    check()
    t0 = time.monotonic()
    before = float(np.mean([_mre(detector, c, plan.truth(c)) for c in evaluate]))
    eval_seconds = (time.monotonic() - t0) / len(evaluate)
    on = plan.evaluated_on
    say(f"error before adapting on {on}: {before:.2f} mm")

    trainer = DetectorTrainer(recipe, names, device=str(device))
    trainer.network.load_state_dict(detector.network.state_dict())
    detector.network = trainer.network  # held-back checks run the inference path on the weights being trained
    check()
    t_coarse = _step_seconds(trainer, train_cases, "coarse")
    t_fine = _step_seconds(trainer, train_cases, "fine")
    evals_outside = 1.5 + (1 if options.coarse_steps else 0)  # the final check, the check after the coarse stage
    left = deadline - time.monotonic() - evals_outside * eval_seconds * len(evaluate) - min(5.0, 3.0 * options.max_minutes)
    checks_per_step = (len(evaluate) * eval_seconds / options.val_every) if held else 0.0
    coarse_steps, fine_steps = plan_steps(options, left, t_coarse, t_fine, checks_per_step)
    if fine_steps + coarse_steps == 0:
        raise DGLandmarkError(f"--max-minutes {options.max_minutes:g} leaves no time to train "
                              f"(one fine step takes {t_fine:.1f} s here)")
    recipe.coarse_steps, recipe.fine_steps = coarse_steps, fine_steps
    say(f"{coarse_steps} coarse + {fine_steps} fine steps planned on {device}")

    run = _Run(trainer, detector, plan, options, deadline, eval_seconds, before, say, is_cancelled, progress)
    stopped_by, coarse_kept = run.train(train_cases, before)
    after, selected = run.finish()
    seconds = time.monotonic() - start
    say(f"error after adapting on {on}: {after:.2f} mm")
    check()
    record = _provenance(plan, run.done, before, after, stopped_by, seconds, options, device, selected)
    record["coarse_stage_kept"] = coarse_kept
    record["rehearsal"] = SAMPLE_VOLUME.name if rehearsal is not None else ""
    meta = plan.meta
    keep = {k: meta[k] for k in ("protocol", "bilateral_pairs", "reference_lps", "method", "data") if k in meta}
    trainer.save(target, {**keep, "model_name": target.name.removesuffix(".safetensors"), "adaptation": record})
    return AdaptResult(target, record, before, after, on, dict(run.done), seconds, stopped_by)


def _state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _provenance(plan: AdaptationPlan, done: dict, before: float, after: float, stopped_by: str, seconds: float,
                options: AdaptOptions, device: torch.device, selected: str) -> dict:
    base_path, meta, held = plan.base_path, plan.meta, plan.held

    def describe(c: AdaptCase) -> dict:
        return {"name": c.name, "role": "held-back" if c is held else "training",
                "image_file": Path(c.image_file).name if c.image_file else "", "image_sha256": c.image_sha256,
                "landmarks_file": Path(c.landmarks_file).name if c.landmarks_file else "",
                "landmarks_sha256": c.landmarks_sha256, "reviewed_landmarks": count_reviewed(c.landmarks)}

    return {
        "base_model": {"name": meta.get("model_name", base_path.stem), "file": base_path.name,
                       "sha256": file_sha256(base_path), "created": meta.get("created", "")},
        "cases": [describe(c) for c in plan.cases],
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "steps": dict(done),
        "selected": selected,
        "stopped_by": stopped_by,
        "seconds": round(seconds, 1),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "error_mm": {"evaluated_on": plan.evaluated_on, "before": round(before, 3), "after": round(after, 3),
                     "held_back": held is not None},
        "options": asdict(options),
    }


__all__ = ["MIN_CASES", "REVIEWED", "REVIEW_STATUSES", "AdaptCase", "AdaptOptions", "AdaptResult", "AdaptationPlan",
           "adapt", "adapt_recipe", "cases_from_dataset", "check_cases", "check_output", "count_reviewed",
           "default_output", "is_reviewed_file", "plan_steps", "prepare_adaptation", "reviewed"]

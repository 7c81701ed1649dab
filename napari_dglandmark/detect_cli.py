"""``dglandmark detect`` and ``dglandmark models``.

A batch is never lost: each image's result is written (atomically) as soon as it is computed, a
failing image is named on one stderr line and skipped, and the exit status is non-zero at the end
when any image failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DGLandmarkError

FORMATS = ("csv", "mrk.json", "fcsv")
EXIT_FAILED = 2  # some image (or the whole run) failed: same status as any bad input
QUALITY_HELP = """\
output columns:
  confidence     0-1 per landmark: heatmap sharpness x agreement when the fine stage is run again
                 on a gamma-changed image from a shifted start x plausibility of the position given
                 the other landmarks (real people's anatomy). Compare within a scan, not as a probability.
  needs_review   1 when the landmark should be checked by a person: low confidence, or far from
                 where the other landmarks put it (implausible landmarks are searched again first).
                 On hard test cases it marks most landmarks > 5 mm off and few within 2 mm
                 (numbers: README, benchmarks/results/quality/).
  image_warning  why the image is not the kind the model was made for (an adult head MRI of any
                 contrast): CT, body field of view, thick slices or low resolution, a slab too thin,
                 noise, or a detection no brain has. Empty when fine. Printed as one stderr line;
                 every landmark of such an image needs review, and --strict refuses it (exit 2)."""


@dataclass
class OutputPlan:
    """Where results go; decided (and checked) before any work so a bad --out fails fast."""

    fmt: str
    target: Path | None  # None: CSV on standard output
    to_dir: bool

    def image_path(self, image: str) -> Path:
        """The per-image output file in --out DIR."""
        assert self.target is not None and self.to_dir
        from .io.volume import strip_volume_suffix

        stem = strip_volume_suffix(Path(str(image).rstrip("/\\")).name) or "image"
        return self.target / f"{stem}.{self.fmt}"


def _output_plan(args: argparse.Namespace) -> OutputPlan:
    fmt = args.format
    if args.out is None:
        if (fmt or "csv") != "csv":
            raise DGLandmarkError(f"--format {fmt} needs --out FILE or DIR (only CSV goes to the terminal)")
        if args.skip_existing:
            raise DGLandmarkError("--skip-existing needs --out DIR (one result file per image)")
        return OutputPlan("csv", None, False)
    out = Path(args.out)
    if out.is_dir():
        plan = OutputPlan(fmt or "csv", out, True)
        names: dict[Path, str] = {}
        for image in args.images:
            path = plan.image_path(image)
            if path in names and names[path] != image:
                raise DGLandmarkError(f"{names[path]} and {image} would both be written to {path.name}; "
                                      "rename one or run them separately", out)
            names[path] = image
        return plan
    if args.skip_existing:
        raise DGLandmarkError("--skip-existing needs --out DIR (one result file per image)", out)
    from .io import landmark_format
    from .io.atomic import check_output_path

    check_output_path(out)
    file_fmt = landmark_format(out)
    if fmt and fmt != file_fmt:
        raise DGLandmarkError(f"--format {fmt} does not match the file name", out)
    if file_fmt != "csv" and len(args.images) > 1:
        raise DGLandmarkError(f"{len(args.images)} images need a folder or a .csv for --out", out)
    return OutputPlan(file_fmt, out, False)


@dataclass
class BatchWriter:
    """Writes each image's result as it completes; all writes to files are atomic."""

    plan: OutputPlan
    coords: str
    measurements: list[tuple[str, str, str]]
    csv_rows: list[dict[str, str]] = field(default_factory=list)
    header_written: bool = False

    def has_result(self, image: str) -> bool:
        """Whether ``image`` already has its result file in --out DIR (for --skip-existing)."""
        return self.plan.to_dir and self.plan.image_path(image).is_file()

    def add(self, image: str, volume: Any, landmarks: Any) -> None:
        from .io import write_landmarks
        from .io.atomic import write_text_atomic
        from .io.csv_table import LANDMARK_COLUMNS, format_rows, landmark_rows

        plan = self.plan
        if plan.fmt == "csv" and not plan.to_dir:
            rows = landmark_rows(landmarks, self.coords, volume.geometry, extra={"image": str(image)})
            rows = [{c: r.get(c, "") for c in LANDMARK_COLUMNS} for r in rows]  # the one landmark table
            if plan.target is None:  # stream: the rows of each image as soon as it is done
                text = format_rows(rows)
                if self.header_written:
                    text = text.split("\n", 1)[1]
                sys.stdout.write(text)
                sys.stdout.flush()
                self.header_written = True
            else:  # the whole table so far, replaced atomically: a crash keeps every finished image
                self.csv_rows += rows
                write_text_atomic(plan.target, format_rows(self.csv_rows))
            return
        path = plan.image_path(image) if plan.to_dir else plan.target
        assert path is not None
        write_landmarks(path, landmarks, coords=self.coords, geometry=volume.geometry,
                        measurements=self.measurements)


def _load_detector(args: argparse.Namespace) -> tuple[Any, Any]:
    """(detector, protocol or None); a bad model or protocol fails here, before any image is read."""
    from .model.inference import load_detector
    from .protocols import load_protocol, protocol_or_none

    detector = load_detector(args.model, device=args.device, backend=args.backend, threads=args.threads)
    protocol = protocol_or_none(detector.info.protocol)
    if args.protocol:
        wanted = load_protocol(args.protocol)
        if wanted.name != detector.info.protocol:
            raise DGLandmarkError(f"model is for protocol {detector.info.protocol!r}, not {wanted.name!r}",
                                  detector.info.path)
    return detector, protocol


def _detect_one(image: str, detector: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """Read one image and detect its landmarks: (volume, landmarks)."""
    from .io import read_volume

    volume = read_volume(image, series=getattr(args, "series", None))
    landmarks = detector.detect(volume)
    landmarks.image = str(image)
    return volume, landmarks


def _failure_line(image: str, exc: BaseException) -> str:
    """One line naming the image and the problem."""
    if isinstance(exc, DGLandmarkError):
        text = str(exc)
    else:  # not a user error, but one image must not lose the batch: name it and go on
        detail = " ".join(str(exc).split())[:300]
        text = f"unexpected {exc.__class__.__name__}" + (f": {detail}" if detail else "")
    if str(image) not in text:
        text = f"{image}: {text}"
    return text


def _quiet_itk() -> None:
    """ITK prints its own warnings on stderr (e.g. 'No Series were found'); errors are ours, one line."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)


class _NoBar:
    """The part of a tqdm bar ``_detect`` uses, for runs that show none (one image, --quiet): no tqdm import."""

    def __init__(self, items: list[str]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    @staticmethod
    def write(text: str, file: Any = None) -> None:
        print(text, file=file or sys.stdout)

    def close(self) -> None:
        pass


def _progress_bar(args: argparse.Namespace) -> Any:
    """A tqdm bar over the images on stderr, or :class:`_NoBar` when none is shown."""
    if args.quiet or len(args.images) < 2:
        return _NoBar(args.images)
    from tqdm import tqdm

    return tqdm(args.images, desc="detect", unit="image", file=sys.stderr)


def _detect(args: argparse.Namespace) -> int:
    plan = _output_plan(args)
    _quiet_itk()
    detector, protocol = _load_detector(args)
    writer = BatchWriter(plan, args.coords, protocol.measurement_triples() if protocol else [])
    done, skipped, failed = 0, 0, []
    bar = _progress_bar(args)
    for image in bar:
        if args.skip_existing and writer.has_result(image):
            skipped += 1
            continue
        try:
            volume, landmarks = _detect_one(image, detector, args)
            warning = landmarks.image_warning
            if warning and args.strict:
                raise DGLandmarkError(f"{warning} (--strict refuses images the model was not made for)", image)
            if warning:
                bar.write(f"dglandmark: warning: {image}: {warning}; every landmark needs review", file=sys.stderr)
            writer.add(image, volume, landmarks)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - per-image isolation, reported on one line
            failed.append(str(image))
            bar.write(f"dglandmark: error: {_failure_line(image, exc)}", file=sys.stderr)
            continue
        done += 1
    bar.close()
    _summary(args, plan, len(detector.names), done, skipped, failed)
    return EXIT_FAILED if failed else 0


def _summary(args: argparse.Namespace, plan: OutputPlan, n_landmarks: int, done: int, skipped: int,
             failed: list[str]) -> None:
    """One closing line: what was written where, what was skipped, which images failed."""
    if len(args.images) == 1 and failed:
        return  # the error line already says everything
    if args.quiet and not failed:
        return
    if plan.target is None and not failed:
        return
    parts = [f"detected {n_landmarks} landmarks in {done} of {len(args.images)} image(s)"]
    if plan.target is not None:
        parts[0] += f" -> {plan.target}"
    if skipped:
        parts.append(f"{skipped} skipped (result exists)")
    if failed:
        parts.append(f"{len(failed)} failed: {', '.join(failed)}")
    print("dglandmark: " + "; ".join(parts), file=sys.stderr)


def add_detect_parser(sub: argparse._SubParsersAction) -> None:
    from .model.registry import BACKEND_CHOICES, BACKEND_HELP, DEVICE_CHOICES

    p = sub.add_parser("detect", help="detect the landmarks of a protocol in 3D images",
                       description="Detect the landmarks of a protocol in 3D images.", epilog=QUALITY_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="NIfTI / NRRD / MetaImage file or DICOM folder")
    p.add_argument("--model", default=None, help="bundled model name (default afids32) or a .safetensors path")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="torch device: auto = CUDA, then MPS, then CPU")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help=BACKEND_HELP)
    p.add_argument("--out", default=None, help="output .csv/.mrk.json/.fcsv file, or a folder (one file per image);"
                   " default: CSV on standard output. Each image is written as soon as it is done")
    p.add_argument("--coords", default="RAS", type=str.upper, choices=["RAS", "LPS"])
    p.add_argument("--format", default=None, choices=FORMATS, help="file format when --out is a folder")
    p.add_argument("--skip-existing", action="store_true",
                   help="with --out DIR: skip images whose result file exists (resume a stopped batch)")
    p.add_argument("--protocol", default=None, help="refuse a model that is not for this protocol")
    p.add_argument("--series", default=None, metavar="ID",
                   help="the volume to read from a DICOM folder holding several (its error lists the ids)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the networks (default: the runtime's choice)")
    p.add_argument("--strict", action="store_true",
                   help="refuse (exit 2, nothing written) an image the model was not made for (see image_warning)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_detect)


def _models(args: argparse.Namespace) -> int:
    from .model.checkpoint import read_metadata
    from .model.registry import bundled_models

    models = bundled_models()
    if not models:
        print("no bundled models")
        return 0
    for name, path in models.items():
        meta = read_metadata(path)
        metrics = meta.get("metrics", {})
        acc = ", ".join(f"{k} {v}" for k, v in metrics.items()) or "not measured"
        data = meta.get("data", {})
        print(f"{name}\n  protocol: {meta.get('protocol', '?')} ({len(meta.get('landmark_names', []))} landmarks)\n"
              f"  method:   {meta.get('method', '?')}\n"
              f"  data:     {'; '.join(f'{k}: {v}' for k, v in data.items()) if isinstance(data, dict) else data}\n"
              f"  accuracy: {acc}\n  file:     {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the bundled models")
    p.set_defaults(func=_models)

"""``dglandmark detect`` and ``dglandmark models``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DGLandmarkError

FORMATS = ("csv", "mrk.json", "fcsv")


def _output_plan(args: argparse.Namespace) -> tuple[str, Path | None, bool]:
    """(format, target, target_is_dir); checked before any work so a bad --out fails fast."""
    fmt = args.format
    if args.out is None:
        if (fmt or "csv") != "csv":
            raise DGLandmarkError(f"--format {fmt} needs --out FILE or DIR (only CSV goes to the terminal)")
        return "csv", None, False
    out = Path(args.out)
    if out.is_dir():
        return fmt or "csv", out, True
    from .io import landmark_format
    from .io.atomic import check_output_path

    check_output_path(out)
    file_fmt = landmark_format(out)
    if fmt and fmt != file_fmt:
        raise DGLandmarkError(f"--format {fmt} does not match the file name", out)
    if file_fmt != "csv" and len(args.images) > 1:
        raise DGLandmarkError(f"{len(args.images)} images need a folder or a .csv for --out", out)
    return file_fmt, out, False


def _detect(args: argparse.Namespace) -> int:
    fmt, target, to_dir = _output_plan(args)
    import torch
    from tqdm import tqdm

    from .io import read_volume, write_landmarks
    from .io.atomic import write_text_atomic
    from .io.csv_table import format_rows, landmark_rows
    from .io.volume import strip_volume_suffix
    from .model.inference import Detector
    from .protocols import load_protocol

    if args.threads:
        torch.set_num_threads(args.threads)
    detector = Detector(args.model, device=args.device)
    protocol = None
    if detector.info.protocol:
        try:
            protocol = load_protocol(detector.info.protocol)
        except DGLandmarkError:
            protocol = None
    if args.protocol:
        wanted = load_protocol(args.protocol)
        if wanted.name != detector.info.protocol:
            raise DGLandmarkError(f"model is for protocol {detector.info.protocol!r}, not {wanted.name!r}",
                                  detector.info.path)
    results = []
    bar = tqdm(args.images, desc="detect", unit="image", disable=args.quiet or len(args.images) < 2,
               file=sys.stderr)
    for image in bar:
        volume = read_volume(image)
        landmarks = detector.detect(volume)
        landmarks.image = str(image)
        results.append((image, volume, landmarks))
    # Everything succeeded: only now write, so a failure leaves nothing half-done.
    measurements = protocol.measurement_triples() if protocol else []
    if fmt == "csv" and not to_dir:
        rows = []
        for image, volume, lms in results:
            rows += landmark_rows(lms, args.coords, volume.geometry, extra={"image": str(image)})
        columns = ["image", "landmark", "x", "y", "z", "coordinate_system", "i", "j", "k", "confidence"]
        rows = [{c: r.get(c, "") for c in columns} for r in rows]
        text = format_rows(rows, first=columns)
        if target is None:
            sys.stdout.write(text)
        else:
            write_text_atomic(target, text)
    else:
        for image, volume, lms in results:
            path = target / f"{strip_volume_suffix(Path(image).name)}.{fmt}" if to_dir else target
            write_landmarks(path, lms, coords=args.coords, geometry=volume.geometry, measurements=measurements)
    if target is not None and not args.quiet:
        print(f"detected {len(detector.names)} landmarks in {len(results)} image(s) -> {target}", file=sys.stderr)
    return 0


def add_detect_parser(sub: argparse._SubParsersAction) -> None:
    from .model.devices import DEVICE_CHOICES

    p = sub.add_parser("detect", help="detect the landmarks of a protocol in 3D images")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="NIfTI / NRRD / MetaImage file or DICOM folder")
    p.add_argument("--model", default=None, help="bundled model name (default afids32) or a .safetensors path")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto = CUDA, then MPS, then CPU")
    p.add_argument("--out", default=None, help="output .csv/.mrk.json/.fcsv file, or a folder (one file per image);"
                   " default: CSV on standard output")
    p.add_argument("--coords", default="RAS", type=str.upper, choices=["RAS", "LPS"])
    p.add_argument("--format", default=None, choices=FORMATS, help="file format when --out is a folder")
    p.add_argument("--protocol", default=None, help="refuse a model that is not for this protocol")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_detect)


def _models(args: argparse.Namespace) -> int:
    from .model.checkpoint import read_metadata
    from .model.inference import bundled_models

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

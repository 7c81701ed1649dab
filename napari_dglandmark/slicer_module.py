"""The detector as a 3D Slicer command-line module (Slicer Execution Model); Qt-free.

``dglandmark slicer-module DIR`` writes the launcher ``DIR/DGLandmarkDetect``. Slicer runs it with
``--xml`` to build the module's panel from :func:`module_xml`, then, for each run, writes the chosen
volume to a temporary NRRD and calls it with the flags and index arguments that description declares
(flags first, then the index arguments in index order)::

    DGLandmarkDetect [--landmarks OUT.mrk.json] [--model NAME] [--checkpoint FILE] [--device D]
                     [--backend auto|onnx|torch] INPUT.nrrd MEASUREMENTS.csv LANDMARKS.csv

Detection goes through the one inference path (:class:`~napari_dglandmark.model.inference.Detector`)
and the project's writers. Every failure is one line on stderr and a non-zero exit status, which
Slicer shows to the user.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .errors import DGLandmarkError
from .model.registry import BACKEND_CHOICES, DEVICE_CHOICES

if TYPE_CHECKING:
    from .io.landmarks import Landmarks
    from .protocols import Protocol

MODULE_NAME = "DGLandmarkDetect"
DEFAULT_MODEL = "afids32"
# From the torch-free model.registry: Slicer waits only a few seconds for ``--xml`` when it scans its
# module paths, and every run is a fresh process (the onnx backend starts without importing torch).
DEVICES = DEVICE_CHOICES
# Slicer starts command-line modules with its own Python and libraries on these variables; the
# launcher gives them back the values they had where the module was written (unset when unset).
LAUNCHER_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH")
EXIT_USAGE = 2
EXIT_FAILED = 1
PYPI_URL = "https://pypi.org/project/napari-dglandmark/"
CONTRIBUTOR = "napari-dglandmark developers"


def documentation_url() -> str:
    """The project's page (its README, "In 3D Slicer" included): the same on every machine, never a
    ``file://`` path of the machine the module was written on."""
    return PYPI_URL


def bundled_model_names() -> list[str]:
    """Names of the bundled models, found without importing torch (same folder as inference uses)."""
    folder = Path(__file__).resolve().parent / "models"
    return sorted(p.name[: -len(".safetensors")] for p in folder.glob("*.safetensors"))


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _param(group: ET.Element, tag: str, name: str, label: str, description: str, *,
           longflag: str | None = None, channel: str | None = None, index: int | None = None,
           default: str | None = None, elements: Sequence[str] = (), **attrs: str) -> ET.Element:
    param = _sub(group, tag, **attrs)
    _sub(param, "name", name)
    if longflag:
        _sub(param, "longflag", longflag)
    _sub(param, "label", label)
    _sub(param, "description", description)
    if channel:
        _sub(param, "channel", channel)
    if index is not None:
        _sub(param, "index", str(index))
    if default is not None:
        _sub(param, "default", default)
    for value in elements:  # enumeration choices come last
        _sub(param, "element", value)
    return param


def module_xml() -> str:
    """The Execution Model description that ``DGLandmarkDetect --xml`` prints."""
    models = bundled_model_names() or [DEFAULT_MODEL]
    root = ET.Element("executable")
    _sub(root, "category", "Landmarks")
    _sub(root, "title", "DG Landmark Detect")
    _sub(root, "description",
         "Detects anatomical landmarks (by default the 32 AFIDs of the afids32 protocol) in a 3D MRI or CT "
         "volume with napari-dglandmark's domain-generalised detector. The points come back named, with a "
         "confidence in each point's description; low-confidence points say 'needs review'. The measurements "
         "(e.g. AC-PC distance) and a per-landmark table (position, confidence, needs_review) come back as tables.")
    _sub(root, "version", __version__)
    _sub(root, "documentation-url", documentation_url())
    _sub(root, "license", "BSD-3-Clause")
    _sub(root, "contributor", CONTRIBUTOR)

    io_group = _sub(root, "parameters")
    _sub(io_group, "label", "Input and output")
    _sub(io_group, "description", "The volume to search and where the results go.")
    _param(io_group, "image", "inputVolume", "Input volume",
           "Scalar volume (MRI or CT) in which to detect the landmarks.", channel="input", index=0,
           type="scalar")
    _param(io_group, "pointfile", "outputLandmarks", "Output landmarks",
           "Point list of the detected landmarks, named by the protocol; each point's description holds its "
           "confidence and, when it is low, 'needs review'.",
           longflag="--landmarks", channel="output", coordinateSystem="ras", fileExtensions=".mrk.json")
    _param(io_group, "table", "outputMeasurements", "Output measurements",
           "Table of the protocol's measurements (measurement, value_mm, from, to, status, needs_review).",
           channel="output", index=1, fileExtensions=".csv")
    _param(io_group, "table", "outputLandmarkTable", "Output landmark table",
           "Table with one row per landmark: RAS position, voxel index, confidence, status, needs_review.",
           channel="output", index=2, fileExtensions=".csv")

    model_group = _sub(root, "parameters")
    _sub(model_group, "label", "Model")
    _sub(model_group, "description", "Which detector runs, and where.")
    _param(model_group, "string-enumeration", "model", "Model",
           "Bundled model (ignored when a checkpoint file is given).", longflag="--model",
           default=DEFAULT_MODEL if DEFAULT_MODEL in models else models[0], elements=models)
    _param(model_group, "file", "checkpoint", "Checkpoint (optional)",
           "A .safetensors landmark model trained with dglandmark-train; overrides the bundled model.",
           longflag="--checkpoint", channel="input", fileExtensions=".safetensors")
    _param(model_group, "string-enumeration", "device", "Device",
           "auto = CUDA, then Apple MPS, then CPU.", longflag="--device", default="auto", elements=DEVICES)
    _param(model_group, "string-enumeration", "backend", "Backend",
           "What runs the networks: auto = torch on a CUDA GPU, else ONNX Runtime on the CPU (starts faster); "
           "onnx = ONNX Runtime; torch = PyTorch on the chosen device.", longflag="--backend", default="auto",
           elements=BACKEND_CHOICES)
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ----------------------------------------------------------------------------------------------
# launcher


def _launcher_text(python: str, environ: dict[str, str]) -> str:
    lines = ["#!/bin/sh",
             f"# {MODULE_NAME}: the 3D Slicer command-line module of napari-dglandmark {__version__}.",
             "# Written by `dglandmark slicer-module`; it runs the Python installation that wrote it.",
             "# Slicer's own Python and library paths are replaced by the ones of that installation."]
    for name in LAUNCHER_ENV:
        if name in environ:
            lines.append(f"{name}={shlex.quote(environ[name])}; export {name}")
        else:
            lines.append(f"unset {name}")
    lines.append(f"exec {shlex.quote(python)} -m napari_dglandmark.slicer_module \"$@\"")
    return "\n".join(lines) + "\n"


def _executable_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask | 0o700


def write_module(directory: str | os.PathLike, python: str | None = None,
                 environ: dict[str, str] | None = None) -> Path:
    """Write the executable launcher ``DIR/DGLandmarkDetect`` atomically; returns its path."""
    from .io.atomic import atomic_open

    if os.name == "nt":
        raise DGLandmarkError("the Slicer module launcher is written for Linux and macOS only")
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise DGLandmarkError("not a folder", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DGLandmarkError(f"cannot create the folder ({exc.__class__.__name__})", folder) from None
    interpreter = str(Path(python or sys.executable).absolute())
    if not interpreter or not Path(interpreter).is_file():
        raise DGLandmarkError("cannot find this installation's Python (sys.executable is empty)")
    text = _launcher_text(interpreter, dict(os.environ if environ is None else environ))
    path = folder / MODULE_NAME
    try:
        with atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), _executable_mode())  # executable before it appears under its name
    except OSError as exc:
        raise DGLandmarkError(f"cannot write the module ({exc.__class__.__name__}: {exc.strerror})", path) from None
    return path


def check_module(path: str | os.PathLike, timeout: float = 120.0) -> None:
    """Run ``path --xml`` as Slicer does when it scans its module paths; an error if it fails."""
    try:
        done = subprocess.run([str(path), "--xml"], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DGLandmarkError(f"the module does not run ({exc.__class__.__name__})", path) from None
    if done.returncode != 0 or not done.stdout.startswith("<?xml"):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DGLandmarkError(f"the module does not print its description: {last}", path)


def _slicer_module_command(args: argparse.Namespace) -> int:
    path = write_module(args.directory)
    check_module(path)
    folder = path.parent.resolve()
    print(f"wrote {path}. In 3D Slicer: Edit > Application Settings > Modules > Additional module paths > "
          f"add {folder}, then restart Slicer ({MODULE_NAME} is under Landmarks).")
    return 0


def add_slicer_module_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``dglandmark slicer-module DIR``."""
    p = sub.add_parser("slicer-module", help=f"write the 3D Slicer command-line module {MODULE_NAME} into a folder")
    p.add_argument("directory", metavar="DIR", help="folder for the module (created if needed)")
    p.set_defaults(func=_slicer_module_command)


# ----------------------------------------------------------------------------------------------
# the module, as Slicer runs it


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one DGLandmarkError line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        raise DGLandmarkError(f"bad arguments: {message}")


def _run_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog=MODULE_NAME, description="3D Slicer command-line module of napari-dglandmark "
                       "(run with --xml for its description).")
    p.add_argument("inputVolume", help="input volume (NRRD, NIfTI, MetaImage or a DICOM folder)")
    p.add_argument("outputMeasurements", help="measurements table (.csv)")
    p.add_argument("outputLandmarkTable", help="per-landmark table (.csv)")
    p.add_argument("--landmarks", dest="outputLandmarks", default=None, help="point list (.mrk.json)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled model name")
    p.add_argument("--checkpoint", default=None, help="a .safetensors model; overrides --model")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    # Passed by Slicer only to modules with return parameters or built as shared libraries.
    p.add_argument("--returnparameterfile", default=None, help=argparse.SUPPRESS)
    p.add_argument("--processinformationaddress", default=None, help=argparse.SUPPRESS)
    return p


def _describe(landmarks: Landmarks, protocol: Protocol | None, review: list[bool]) -> list[str]:
    """Point descriptions that Slicer's Markups table shows: what the landmark is, confidence, review flag."""
    out = []
    for i, name in enumerate(landmarks.names):
        parts = []
        if protocol is not None:
            try:
                parts.append(protocol.descriptions[protocol.index_of(name)])
            except KeyError:
                pass
        parts.append(f"confidence {landmarks.confidence[i]:.2f}")
        if review[i]:
            parts.append("NEEDS REVIEW")
        out.append("; ".join(p for p in parts if p))
    return out


def _progress(done: int, total: int) -> None:
    # Slicer reads these tags from standard output to move its progress bar.
    print(f"<filter-progress>{done / max(total, 1):.3f}</filter-progress>", flush=True)


def run(args: argparse.Namespace) -> int:
    """Detect the landmarks of ``args.inputVolume`` and write every output Slicer asked for."""
    from .io.atomic import check_output_path

    outputs = [args.outputMeasurements, args.outputLandmarkTable]
    if args.outputLandmarks:
        outputs.append(args.outputLandmarks)
        if not str(args.outputLandmarks).lower().endswith(".mrk.json"):
            raise DGLandmarkError("the point list must be a .mrk.json file", args.outputLandmarks)
    for out in outputs:  # fail before the slow part
        check_output_path(out)
    if not Path(args.inputVolume).exists():
        raise DGLandmarkError("no such file or folder", args.inputVolume)

    import SimpleITK as sitk

    from .io import read_volume, write_landmarks
    from .io.atomic import write_text_atomic
    from .io.csv_table import flag, format_rows, landmark_rows
    from .model.inference import load_detector
    from .protocols import protocol_or_none
    from .session import MEASUREMENT_COLUMNS, measurement_table

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's own warnings would be extra stderr lines
    print(f"<filter-start><filter-name>{MODULE_NAME}</filter-name></filter-start>", flush=True)
    volume = read_volume(args.inputVolume)
    detector = load_detector(args.checkpoint or args.model, device=args.device, backend=args.backend)
    protocol = protocol_or_none(detector.info.protocol)
    landmarks = detector.detect(volume, progress=_progress)
    landmarks.image = str(args.inputVolume)
    review = [bool(r) for r in landmarks.open_review_flags()]
    flagged = {n for n, r in zip(landmarks.names, review, strict=True) if r}

    rows = measurement_table(landmarks, protocol)
    for row in rows:
        row["needs_review"] = flag(row["from"] in flagged or row["to"] in flagged)
    write_text_atomic(args.outputMeasurements, format_rows(rows, first=[*MEASUREMENT_COLUMNS, "needs_review"])
                      if rows else ",".join([*MEASUREMENT_COLUMNS, "needs_review"]) + "\n")

    # the one landmark table (io.csv_table.LANDMARK_COLUMNS), as the CLI and the napari export write it
    lm_rows = landmark_rows(landmarks, "RAS", volume.geometry,
                            extra={"model": detector.info.name, "model_sha256": detector.info.sha256 or ""})
    write_text_atomic(args.outputLandmarkTable, format_rows(lm_rows))

    if args.outputLandmarks:
        shown = landmarks.copy()
        shown.descriptions = _describe(landmarks, protocol, review)
        write_landmarks(args.outputLandmarks, shown, coords="RAS", geometry=volume.geometry)
    if args.returnparameterfile:
        write_text_atomic(args.returnparameterfile, "")  # no return parameters are declared
    print(f"<filter-end><filter-name>{MODULE_NAME}</filter-name></filter-end>", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the launcher: ``--xml`` prints the description; otherwise one run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--xml" in argv:
        sys.stdout.write(module_xml())
        return 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Slicer shows everything on stderr as the error text
            return run(_run_parser().parse_args(argv))
    except DGLandmarkError as exc:
        print(f"{MODULE_NAME}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{MODULE_NAME}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - Slicer users get one line, not a traceback
        detail = " ".join(str(exc).split())[:300]
        print(f"{MODULE_NAME}: error: unexpected {exc.__class__.__name__}" + (f": {detail}" if detail else ""),
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

"""``dglandmark``: detect landmarks, convert landmark files, list models.

User errors print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from .errors import DGLandmarkError

EXIT_USAGE = 2


def _convert(args: argparse.Namespace) -> int:
    from .io import read_landmarks, write_landmarks
    from .protocols import load_protocol

    landmarks = read_landmarks(args.input)
    measurements: list[tuple[str, str, str]] = []
    if args.protocol:
        protocol = load_protocol(args.protocol)
        landmarks = protocol.conform(landmarks, args.input)
        measurements = protocol.measurement_triples()
    write_landmarks(args.output, landmarks, coords=args.coords, measurements=measurements)
    print(f"wrote {len(landmarks)} landmarks to {args.output} ({args.coords.upper()})")
    return 0


def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert between .fcsv, .mrk.json and .csv (by extension)")
    p.add_argument("input", help="landmark file (.fcsv, .mrk.json, .csv) or a case folder of Line .mrk.json files")
    p.add_argument("output", help="output file (.fcsv, .mrk.json, .csv)")
    p.add_argument("--coords", default="RAS", type=str.upper, choices=["RAS", "LPS"],
                   help="coordinate system written (default RAS, as 3D Slicer shows)")
    p.add_argument("--protocol", help="protocol name or JSON: check names, order rows, add measurements")
    p.set_defaults(func=_convert)


def _bids(args: argparse.Namespace) -> int:
    from .bids.cli import main as bids_main  # imported only when the command runs

    return bids_main(args.bids_args)


def add_bids_parser(sub: argparse._SubParsersAction) -> None:
    """``dglandmark bids ...``: every argument goes to the BIDS App's own parser (``bids.cli``)."""
    p = sub.add_parser("bids", help="BIDS App: BIDS_DIR OUTPUT_DIR participant|group (see dglandmark bids -h)",
                       add_help=False, prefix_chars="\0")
    p.add_argument("bids_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_bids)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="dglandmark", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from .detect_cli import add_detect_parser, add_models_parser  # light: heavy imports wait for the command

    add_detect_parser(sub)
    add_models_parser(sub)
    add_convert_parser(sub)
    add_bids_parser(sub)
    from .slicer_module import add_slicer_module_parser

    add_slicer_module_parser(sub)
    return parser


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    """Run a sub-command, turning user errors into one line on stderr and exit status 2 (warnings: one line)."""
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, *rest, **kwargs: f"{prog}: warning: {message}\n"
    try:
        return int(func(args) or 0)
    except DGLandmarkError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args, "dglandmark")


if __name__ == "__main__":
    sys.exit(main())

"""Export two-stage checkpoints to ONNX (one ``.onnx`` per network, beside the ``.safetensors``).

Run after every change of a bundled model (the exports record the checkpoint's SHA-256; a stale
export is never run: detection re-exports into the user's cache or falls back to torch, and says so):
    python scripts/export_onnx.py                      # every bundled model
    python scripts/export_onnx.py path/to/model.safetensors [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_dglandmark.errors import DGLandmarkError  # noqa: E402
from napari_dglandmark.model.checkpoint import read_metadata  # noqa: E402
from napari_dglandmark.model.onnx_export import SHA_KEY, export_onnx  # noqa: E402
from napari_dglandmark.model.registry import bundled_models  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*", help=".safetensors files (default: every bundled two-stage model)")
    ap.add_argument("--out", default=None, help="folder for the exports (default: beside each checkpoint)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.checkpoints] or [
        p for p in bundled_models().values() if read_metadata(p)["architecture"]["name"] == "two-stage"]
    try:
        for path in paths:
            start = time.perf_counter()
            out = export_onnx(path, args.out)
            sizes = ", ".join(f"{p.name} ({p.stat().st_size / 1e6:.1f} MB)" for p in out.values())
            print(f"{path.name}: {sizes}; {SHA_KEY} recorded, checked against torch, "
                  f"{time.perf_counter() - start:.1f} s")
    except DGLandmarkError as exc:
        print(f"export_onnx: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The README's main job: napari with the bundled sample and the Detect widget docked.

``python -m napari_dglandmark.launch --headless`` runs ``dglandmark detect`` on the sample instead
(for machines without a display).
"""

from __future__ import annotations

import argparse
import sys

from .sample import SAMPLE_VOLUME

#: the window size the dock layout is made for (a laptop screen; issue 12 measured at this size)
WINDOW_SIZE = (1600, 1000)


def open_viewer(show: bool = True, size: tuple[int, int] = WINDOW_SIZE):
    """A napari viewer holding the sample and the plugin's widgets (returned, for tests).

    Detect and Measurements take the height they need; the landmark table gets the rest.
    """
    import napari

    return setup_viewer(napari.Viewer(show=show), size)


def setup_viewer(viewer, size: tuple[int, int] = WINDOW_SIZE):
    """Size the window, open the sample and dock the plugin's widgets in ``viewer``; returns it."""
    viewer.window.resize(*size)
    viewer.open_sample("napari-dglandmark", "afids_t1w")
    for widget in ("Detect landmarks", "Landmark table", "Measurements"):
        viewer.window.add_plugin_dock_widget("napari-dglandmark", widget)
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()  # the docks narrow the canvas: fit the slice (and its R/L letters) to what is left
    viewer.reset_view()
    return viewer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_dglandmark.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--headless", action="store_true", help="no window: detect on the sample, print CSV")
    args = parser.parse_args(argv)
    if args.headless:
        from .cli import main as cli_main

        return cli_main(["detect", str(SAMPLE_VOLUME)])
    import napari

    open_viewer()
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Install the plugin into .venv (created on first use, see scripts/_venv.sh) and run the main job on
# the bundled sample: napari with the sample volume and the Detect widget (headless: `dglandmark detect`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
use_venv
install_project qt
export QT_API="${QT_API:-pyqt6}"  # napari's supported binding (the `qt` extra installs it)
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -z "${DGLANDMARK_HEADLESS:-}" ]; then
    exec "$PY" -m napari_dglandmark.launch
fi
echo "no display: running the headless equivalent (dglandmark detect on the sample)"
exec "$PY" -m napari_dglandmark.launch --headless

#!/usr/bin/env bash
# Install the plugin and run the main job on the bundled sample:
# napari with the sample volume and the Detect widget (headless: `dglandmark detect` on the sample).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[qt]"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -z "${DGLANDMARK_HEADLESS:-}" ]; then
    exec "$PY" -m napari_dglandmark.launch
fi
echo "no display: running the headless equivalent (dglandmark detect on the sample)"
exec "$PY" -m napari_dglandmark.launch --headless

#!/usr/bin/env bash
# Install everything the tests need (system packages for Qt under Xvfb, Python packages),
# then run the whole test suite under a virtual display. Used by the README and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

QT_DEB_PACKAGES="xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
libxcb-cursor0 libdbus-1-3 libfontconfig1 libglib2.0-0"

missing=""
for pkg in $QT_DEB_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

PY="${PYTHON:-python3}"
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build on a machine with none.
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[testing]"

export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-xcb}"
xvfb-run -a -s "-screen 0 1600x1200x24" "$PY" -m pytest "$@"

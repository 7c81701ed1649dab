#!/usr/bin/env bash
# Install everything the tests need (system packages for Qt under Xvfb; Python packages into .venv,
# created on first use, see scripts/_venv.sh), then run the whole test suite under a virtual display.
# Used by the README and by CI. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

QT_DEB_PACKAGES="xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
libxcb-cursor0 libdbus-1-3 libfontconfig1 libglib2.0-0"

missing=""
for pkg in $QT_DEB_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
source scripts/_venv.sh
if [ -n "$missing" ]; then
    apt_install $missing
fi
use_venv
install_project testing

export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-xcb}"
export QT_API="${QT_API:-pyqt6}"  # napari's supported binding; tests/conftest.py gives pytest-qt the same
xvfb-run -a -s "-screen 0 1600x1200x24" "$PY" -m pytest "$@"

# Sourced by scripts/run.sh and scripts/test.sh: create (once) and activate the project's virtual
# environment .venv in the checkout, so the commands work with a distribution's Python, which
# refuses `pip install` outside a virtual environment (PEP 668, "externally-managed-environment").
#   PYTHON=/path/to/python3  picks the interpreter that creates .venv (default: python3 on PATH).
#   Delete .venv to rebuild it.
# use_venv: create (when missing or broken) and activate it, setting PY.
# install_project EXTRA: torch==2.13.0 first, then the package (editable) with that extra.

VENV_DIR="${VENV_DIR:-$PWD/.venv}"

apt_install() {  # apt_install PKG...: Debian/Ubuntu packages, as root or through sudo
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: please install $* with your system's package manager" >&2
        return 1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

make_venv() {
    local base="${PYTHON:-python3}"
    if ! command -v "$base" >/dev/null 2>&1; then
        echo "error: $base not found; install Python >= 3.11 or set PYTHON=/path/to/python3" >&2
        return 1
    fi
    "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "error: $base is Python $("$base" -V 2>&1); 3.11 or newer is needed" >&2; return 1; }
    if "$base" -m venv "$VENV_DIR" >/dev/null 2>&1 && [ -x "$VENV_DIR/bin/pip" ]; then
        return 0
    fi
    # Debian/Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package.
    rm -rf "$VENV_DIR"
    local ver
    ver="$("$base" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    echo "installing python3-venv (python$ver-venv) for $base"
    apt_install python3-venv || return 1
    if ! "$base" -m venv "$VENV_DIR" >/dev/null 2>&1; then
        rm -rf "$VENV_DIR"
        apt_install "python$ver-venv" || return 1
        "$base" -m venv "$VENV_DIR"
    fi
}

use_venv() {  # create .venv when it is missing or broken, then activate it; sets PY
    if ! "$VENV_DIR/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        rm -rf "$VENV_DIR"
        echo "creating the virtual environment $VENV_DIR with ${PYTHON:-python3}"
        make_venv
    fi
    # The same as `source .venv/bin/activate`, without its prompt handling.
    export VIRTUAL_ENV="$VENV_DIR"
    export PATH="$VENV_DIR/bin:$PATH"
    unset PYTHONHOME
    PY="$VENV_DIR/bin/python"
}

install_project() {  # install_project EXTRA
    # torch first, pinned: an unpinned torch pulls a multi-GB CUDA build on a machine with none.
    "$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
    "$PY" -m pip install -q --disable-pip-version-check -e ".[$1]"
}

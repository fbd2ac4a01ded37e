#!/usr/bin/env bash
# Set up .venv at the repository root (idempotent): system packages for a virtual screen on
# Linux (when run as root and missing), then Python packages. Re-runs only when the
# dependency list changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP=$VENV/.setup-stamp
# Pinned as verified on these machines (../shared/ENVIRONMENT.md): a looser spec may pull
# a different build.
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
APT_PACKAGES="xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-cursor0 \
libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
libxcb-xinerama0 libxcb-shape0 libdbus-1-3 libfontconfig1"

if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1; then
    missing=""
    for pkg in $APT_PACKAGES; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        if [ "$(id -u)" = "0" ]; then
            echo "setup: installing system packages:$missing"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
        else
            echo "setup: missing system packages (run as root or install them):$missing" >&2
        fi
    fi
fi

want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q $TORCH_PINS
"$VENV/bin/python" -m pip install -q $TORCH_PINS -e ".[all,test]"
echo "$want" > "$STAMP"
echo "setup: .venv ready"

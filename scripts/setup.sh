#!/usr/bin/env bash
# Prepare this machine for sendlab: Debian/Ubuntu packages (when root), a venv in .venv built on
# the system Python, and sendlab installed into it. Idempotent: each step runs only when needed.
# Needs no network but the package registries (Debian's and PyPI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian/Ubuntu packages sendlab needs, in one place (mininet, openvswitch-switch come later).
APT_PACKAGES="python3 python3-venv python3-pip iproute2 tcpdump ethtool chromium"
VENV=.venv
STAMP="$VENV/.sendlab-pyproject.sha256"   # hash of pyproject.toml at the last good install

say() { printf 'setup: %s\n' "$*"; }

# 1. Debian packages, only the missing ones.
# shellcheck source=scripts/apt.sh
source scripts/apt.sh
# shellcheck disable=SC2086  # the list is meant to split into words
apt_install_missing $APT_PACKAGES

# 2. The venv: the system Python with its site-packages visible (Mininet comes from Debian's
#    python3), kept when it still works, made anew otherwise.
venv_works() {
    [ -x "$VENV/bin/python" ] &&
        grep -qx 'home = /usr/bin' "$VENV/pyvenv.cfg" &&
        grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" &&
        "$VENV/bin/python" -c 'import os, sys, sysconfig
sys.exit(not (sys.prefix != sys.base_prefix and os.path.isdir(sysconfig.get_path("purelib"))))' \
            >/dev/null 2>&1
}
if venv_works; then
    say "venv $VENV works"
else
    if [ -e "$VENV" ]; then
        say "venv $VENV does not work, making it anew"
        rm -rf "$VENV"
    else
        say "creating venv $VENV"
    fi
    if [ ! -x /usr/bin/python3 ]; then
        say "error: /usr/bin/python3 is missing (install python3 as root)" >&2
        exit 1
    fi
    if ! /usr/bin/python3 -m venv --system-site-packages "$VENV"; then
        rm -rf "$VENV"
        say "error: could not create $VENV (is python3-venv installed?)" >&2
        exit 1
    fi
fi

# 3. sendlab itself, installed again only when pyproject.toml changed.
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" = "$have" ]; then
    say "sendlab installed (pyproject.toml unchanged)"
else
    say "installing sendlab into $VENV: pip install -e '.[test]'"
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    echo "$want" >"$STAMP"
fi
# 4. The emulated backend's tools (Open vSwitch, Mininet, os-ken): its tests run as root.
bash scripts/install-emulation.sh
say "ready"

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

# 1. Debian packages: apt-get update and install only when one is missing.
missing=()
for pkg in $APT_PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages present"
elif [ "$(id -u)" -ne 0 ]; then
    say "not root, skipping apt; missing Debian packages: ${missing[*]}"
elif ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here; install these yourself: ${missing[*]}"
else
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # the list is meant to split into words
    apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
fi

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

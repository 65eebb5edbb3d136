#!/usr/bin/env bash
# Install what sendlab's emulated backend needs: Open vSwitch, Mininet, the network tools and
# sshd for the workers' tests (installed with services held back, as everything here)
# from Debian, and the os-ken controller framework into the project's venv (.venv) if there is
# one. Idempotent: each step runs only when something is missing. Starts no system service
# (Debian's openvswitch-switch is not started by apt here; sendlab runs a private OVS per run).
#   scripts/install-emulation.sh            as root for the Debian packages
# Environment: OSKEN_VERSION (default "os-ken>=4,<5"; use "os-ken==3.1.1" for osken-manager).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES="openvswitch-switch mininet ethtool iproute2 tcpdump bridge-utils iputils-ping openssh-server"
VENV=.venv
OSKEN_SPEC="${OSKEN_VERSION:-os-ken>=4,<5}"

say() { printf 'install-emulation: %s\n' "$*"; }

# 1. Debian packages, only the missing ones.
# shellcheck source=scripts/apt.sh
source scripts/apt.sh
# shellcheck disable=SC2086  # the list is meant to split into words
apt_install_missing $APT_PACKAGES

# 2. os-ken into the venv, when the venv exists (scripts/setup.sh makes it).
if [ -x "$VENV/bin/python" ]; then
    if "$VENV/bin/python" -c 'import os_ken' >/dev/null 2>&1; then
        say "os-ken present in $VENV ($("$VENV/bin/python" -c \
            'import os_ken; print(getattr(os_ken, "__version__", "?"))'))"
    else
        say "installing $OSKEN_SPEC into $VENV"
        "$VENV/bin/python" -m pip install -q "$OSKEN_SPEC"
    fi
else
    say "no venv at $VENV (run scripts/setup.sh first); skipped os-ken"
fi

# 3. ryu 4.34 in a venv of its own (.venv-ryu), for the test that runs the controller on ryu
#    (SENDLAB_CONTROLLER_PYTHON=.venv-ryu/bin/python). ryu 4.34 builds only with an old
#    setuptools and without build isolation, and needs eventlet 0.33.3 (INFRA-NOTES).
#    SKIP_RYU=1 skips it.
RYU_VENV=.venv-ryu
if [ "${SKIP_RYU:-0}" = 1 ]; then
    say "SKIP_RYU=1: skipped ryu"
elif [ -x "$RYU_VENV/bin/python" ] && "$RYU_VENV/bin/python" -c 'import ryu, eventlet, dns' \
        >/dev/null 2>&1; then
    say "ryu present in $RYU_VENV ($("$RYU_VENV/bin/python" -c \
        'import ryu; print(ryu.version if hasattr(ryu, "version") else "?")'))"
else
    say "installing ryu 4.34 into $RYU_VENV"
    [ -x "$RYU_VENV/bin/python" ] || /usr/bin/python3 -m venv "$RYU_VENV"
    "$RYU_VENV/bin/python" -m pip install -q "setuptools==67.6.1" wheel pbr
    "$RYU_VENV/bin/python" -m pip install -q --no-build-isolation "ryu==4.34"
    "$RYU_VENV/bin/python" -m pip install -q "eventlet==0.33.3" "dnspython>=2"
fi

# 4. Report what the controller and tests will find.
for tool in ovs-vsctl ovs-ofctl ovsdb-tool ovs-vswitchd ovsdb-server mnexec ethtool tcpdump brctl; do
    if command -v "$tool" >/dev/null 2>&1; then
        :
    else
        say "warning: $tool not found"
    fi
done
say "ready"

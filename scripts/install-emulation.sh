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

# 1. Debian packages, only those missing; apt-get update only when something is missing.
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
    # policy-rc.d exit 101 keeps the package scripts from starting services (openvswitch-switch
    # would otherwise try to start the system OVS); removed again only if we created it.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    trap 'if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
    apt-get update -qq
    # shellcheck disable=SC2086  # the list is meant to split into words
    apt-get install -y -qq --no-install-recommends ${missing[*]} >/dev/null
fi

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

# Sourced by scripts/setup.sh and scripts/install-emulation.sh (which define say()).
# apt_install_missing PKG...: install the Debian packages that are missing, and only those;
# `apt-get update` only when something is missing. Package scripts may not start services
# (policy-rc.d exits 101): openvswitch-switch and openssh-server would start system daemons.
apt_install_missing() {
    local missing=() pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages present"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        say "not root, skipping apt; missing Debian packages: ${missing[*]}"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no apt-get here; install these yourself: ${missing[*]}"
        return 0
    fi
    say "installing Debian packages: ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null || rc=$?
    if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi
    return $rc
}

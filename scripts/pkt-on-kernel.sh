#!/bin/bash
# Run packetdrill scripts against this machine's own Linux TCP, each in a fresh network
# namespace set up as ../shared/conformance/README.md describes (packetdrill's defaults.sh
# sysctls, its IPv4 flags), to check that a script states what the kernel does.
#
#   PACKETDRILL=/path/to/packetdrill scripts/pkt-on-kernel.sh [-n RUNS] SCRIPT.pkt ...
#
# Root only. packetdrill is not installed by setup: build it from github.com/google/packetdrill
# (gtests/net/packetdrill: ./configure && make). tests/pkt/ioctl_outq_nsd_inq.pkt needs the
# SIOCOUTQ (0x5411) and SIOCOUTQNSD (0x894b) names added to its symbols_linux.c.
#
# Two global sysctls matter and cannot be set per namespace: if cubic is not in
# net.ipv4.tcp_allowed_congestion_control it is added, and if net.core.rmem_max exceeds
# tcp_rmem's 15 MiB (the SYN's window scale would change) it is lowered to the kernel default;
# both are put back on exit, however the script ends. Nothing else outside the namespaces is
# touched, and the namespaces (sendlab-pdk-PID-N) are deleted after each run.
set -u
runs=1
if [ "${1:-}" = "-n" ]; then runs=$2; shift 2; fi
[ $# -gt 0 ] || { echo "usage: PACKETDRILL=... $0 [-n RUNS] SCRIPT.pkt ..." >&2; exit 2; }
pd=${PACKETDRILL:-packetdrill}
command -v "$pd" >/dev/null || { echo "pkt-on-kernel: no packetdrill at '$pd' (set PACKETDRILL)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "pkt-on-kernel: needs root (network namespaces)" >&2; exit 2; }

allowed=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
rmem_max=$(sysctl -n net.core.rmem_max)
restore() {
  sysctl -q -w net.ipv4.tcp_allowed_congestion_control="$allowed"
  sysctl -q -w net.core.rmem_max="$rmem_max"
}
trap restore EXIT
trap 'exit 130' INT TERM
case " $allowed " in *" cubic "*) ;; *) sysctl -q -w net.ipv4.tcp_allowed_congestion_control="$allowed cubic" ;; esac
[ "$rmem_max" -le 15728640 ] || sysctl -q -w net.core.rmem_max=212992

defaults=(net.ipv4.tcp_rmem="4096 540000 15728640" net.ipv4.tcp_wmem="4096 262144 4194304"
  net.ipv4.tcp_timestamps=1 net.ipv4.tcp_syn_retries=5 net.ipv4.tcp_synack_retries=5
  net.ipv4.tcp_frto=2 net.ipv4.tcp_sack=1 net.ipv4.tcp_dsack=1 net.ipv4.tcp_reordering=3
  net.ipv4.tcp_congestion_control=cubic net.ipv4.tcp_slow_start_after_idle=0
  net.ipv4.tcp_early_retrans=4 net.ipv4.tcp_recovery=1 net.ipv4.tcp_tso_win_divisor=3
  net.ipv4.tcp_ecn=0 net.ipv4.tcp_ecn_option=2 net.ipv4.tcp_pacing_ss_ratio=200
  net.ipv4.tcp_pacing_ca_ratio=120 net.ipv4.tcp_notsent_lowat=4294967295
  net.ipv4.tcp_fastopen=0x70403 net.ipv4.tcp_syncookies=1)

n=0
failed=0
for script in "$@"; do
  pass=0
  for _ in $(seq "$runs"); do
    n=$((n + 1))
    ns=sendlab-pdk-$$-$n
    ip netns add "$ns" || exit 1
    ip -netns "$ns" link set lo up
    ip netns exec "$ns" sysctl -q "${defaults[@]}"
    out=$(cd "$(dirname "$script")" && ip netns exec "$ns" "$pd" --send_omit_free \
      --ip_version=ipv4 --local_ip=192.168.0.1 --gateway_ip=192.168.0.1 \
      --netmask_ip=255.255.0.0 --remote_ip=192.0.2.1 "$(basename "$script")" 2>&1)
    rc=$?
    ip netns del "$ns"
    if [ $rc = 0 ]; then pass=$((pass + 1)); else last=$out; fi
  done
  echo "$pass/$runs $script"
  if [ "$pass" != "$runs" ]; then
    failed=$((failed + 1))
    echo "$last" | grep -m3 -E "error|script packet|actual packet" | sed 's/^/    /'
  fi
done
[ $failed = 0 ]

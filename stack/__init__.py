"""sendlab's TCP stack: a sans-I/O port of the Linux 6.x TCP send path.

Public surface:
- ``Host``: one IPv4 host (interface, route/PMTU cache, sockets, timers), sans-I/O.
- ``Socket``: the application API, as resumable operations a runtime drives (send, recv,
  connect, accept, poll; socket options at SOL_SOCKET, SOL_TCP and IPPROTO_IP).
- ``Sysctl``: per-host sysctls under their kernel names.
- ``Segment``/``IcmpError``: what goes in and out of a host.
- ``runtime.VirtualNetwork``: the deterministic virtual-clock runtime.
"""

from .constants import (
    IP_MTU, IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_PMTUDISC_DONT, IP_PMTUDISC_WANT, IPPROTO_IP,
    MSG_DONTWAIT, MSG_EOR, MSG_MORE, POLLIN, POLLOUT, SO_RCVBUF, SO_SNDBUF, SOL_SOCKET, SOL_TCP,
    TCP_CONGESTION, TCP_CORK, TCP_MAXSEG, TCP_NODELAY, TCP_NOTSENT_LOWAT,
)
from .host import Host
from .segment import IcmpError, Segment
from .socket import Socket
from .sysctl import Sysctl, SysctlError

__all__ = [
    "Host", "Socket", "Sysctl", "SysctlError", "Segment", "IcmpError",
    "MSG_MORE", "MSG_EOR", "MSG_DONTWAIT", "SOL_SOCKET", "SOL_TCP", "SO_SNDBUF", "SO_RCVBUF",
    "TCP_NODELAY", "TCP_CORK", "TCP_MAXSEG", "TCP_NOTSENT_LOWAT", "TCP_CONGESTION",
    "IPPROTO_IP", "IP_MTU", "IP_MTU_DISCOVER", "IP_PMTUDISC_DONT", "IP_PMTUDISC_WANT",
    "IP_PMTUDISC_DO", "POLLIN", "POLLOUT",
]

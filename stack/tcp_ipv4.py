"""IPv4 glue of TCP: connect, listen and the SYN path, demultiplexing, RSTs, ICMP errors.

Mirrors net/ipv4/tcp_ipv4.c and the request-socket part of tcp_minisocks.c.
A passive open creates the child socket at SYN time (in SYN_RECV) instead of
keeping a separate request socket; what goes on the wire is the same.
"""

from __future__ import annotations

from .constants import (
    EADDRINUSE, EALREADY, EHOSTUNREACH, EMSGSIZE, EINPROGRESS, EINVAL, EISCONN, ICSK_TIME_RETRANS, TCP_CLOSE,
    TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT, TCP_TIME_WAIT, TCPHDR_ACK,
    TCPHDR_FIN, TCPHDR_RST, TCPHDR_SYN, IP_PMTUDISC_DO, IP_PMTUDISC_DONT, IP_PMTUDISC_INTERFACE,
    IP_PMTUDISC_OMIT, IP_PMTUDISC_PROBE, IP_PMTUDISC_WANT,
)
from .segment import IcmpError, Segment
from .seq import between
from .sock import TcpSock
from .tcp_input import (
    apply_syn_options, tcp_full_space, tcp_parse_options, tcp_rcv_established,
    tcp_rcv_synrecv, tcp_rcv_synsent_state_process, tcp_select_initial_window,
)
from .tcp_output import (
    tcp_connect, tcp_mtu_to_mss, tcp_reset_xmit_timer, tcp_send_synack, tcp_sync_mss,
)
from .tcp_timer import TCP_TIMEOUT_INIT

ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_TIME_EXCEEDED = 11


def tcp_v4_connect(tp: TcpSock, daddr: str, dport: int, now: float) -> int:
    """Start an active open. Returns 0 (SYN sent) or -errno."""
    host = tp.host
    if tp.state == TCP_SYN_SENT:
        return -EALREADY
    if tp.state != TCP_CLOSE:
        return -EISCONN
    tp.daddr = daddr
    tp.dport = dport
    if not tp.sport:
        tp.sport = host.ephemeral_port(daddr, dport)
    if not host.hash_established(tp):
        return -EADDRINUSE
    tp.iss = host.secure_tcp_seq()
    tp.ts_offset = host.rng.getrandbits(32)
    tp.inet_id = host.rng.getrandbits(16)
    tcp_connect_init(tp)
    tp.state = TCP_SYN_SENT
    host.mib["TcpActiveOpens"] += 1
    tcp_connect(tp, now)
    return 0


def tcp_connect_init(tp: TcpSock) -> None:
    sysctl = tp.sysctl
    mtu = tp.host.route_mtu(tp.daddr)
    tp.tcp_header_len = 20 + (12 if sysctl.tcp_timestamps else 0)
    if tp.user_mss:
        tp.mss_clamp = tp.user_mss
    tp.max_window = 0
    # The learned PMTU shapes what we send, not the MSS we advertise (as Linux does).
    tp.advmss = tcp_mss_clamp(tp, tp.host.dev_mtu(tp.daddr) - 40)
    tp.tstamp_ok = bool(sysctl.tcp_timestamps)
    tp.sack_ok = bool(sysctl.tcp_sack)
    tp.wscale_ok = bool(sysctl.tcp_window_scaling)
    _tcp_mtu.tcp_mtup_init(tp)
    tcp_sync_mss(tp, mtu)
    tp.window_clamp = 0
    if tp.userlocks_rcvbuf:
        # SO_RCVBUF bounds the window and, through it, the window scale we offer.
        tp.window_clamp = tcp_full_space(tp)
    # A fresh connect has no cached timestamp, so the window is quantised to advmss itself.
    tcp_select_initial_window(tp, tcp_full_space(tp), tp.advmss)
    tp.rcv_nxt = tp.rcv_wup = tp.copied_seq = 0
    tp.snd_wnd = 0
    tp.snd_una = tp.snd_nxt = tp.iss
    tp.write_seq = tp.pushed_seq = tp.snd_sml = tp.iss
    tp.rto = TCP_TIMEOUT_INIT
    tp.retransmits = 0


def tcp_mss_clamp(tp: TcpSock, mss: int) -> int:
    return min(mss, tp.user_mss) if tp.user_mss else mss


def inet_listen(tp: TcpSock, backlog: int) -> int:
    if tp.state not in (TCP_CLOSE, TCP_LISTEN):
        return -EINVAL
    if not tp.sport:
        tp.sport = tp.host.ephemeral_port("", 0)
    if tp.state == TCP_CLOSE and not tp.host.hash_listener(tp):
        return -EADDRINUSE
    tp.backlog = backlog
    tp.state = TCP_LISTEN
    return 0


def tcp_conn_request(listener: TcpSock, seg: Segment, now: float) -> None:
    """A SYN for a listener: make the child in SYN_RECV and answer with a SYN-ACK."""
    host = listener.host
    if len(listener.accept_queue) + host.count_syn_recv(listener) > max(listener.backlog, 0):
        host.mib["TcpExtListenDrops"] += 1
        return
    child = TcpSock(host)
    child.parent = listener
    child.saddr = seg.daddr
    child.sport = seg.dport
    child.daddr = seg.saddr
    child.dport = seg.sport
    child.user_mss = listener.user_mss
    child.nonagle = listener.nonagle
    child.sndbuf = listener.sndbuf
    child.rcvbuf = listener.rcvbuf
    child.userlocks_sndbuf = listener.userlocks_sndbuf
    child.userlocks_rcvbuf = listener.userlocks_rcvbuf
    child.notsent_lowat = listener.notsent_lowat
    child.pmtudisc = listener.pmtudisc
    child.ca_ops = type(listener.ca_ops)() if listener.ca_ops is not None else None
    child.iss = host.secure_tcp_seq()
    child.ts_offset = host.rng.getrandbits(32)
    child.inet_id = host.rng.getrandbits(16)
    child.irs = seg.seq
    child.rcv_nxt = child.rcv_wup = child.copied_seq = (seg.seq + 1) & 0xFFFFFFFF
    child.snd_una = child.snd_nxt = child.snd_sml = (child.iss + 1) & 0xFFFFFFFF
    child.write_seq = child.pushed_seq = child.snd_nxt
    opt: dict = {}
    tcp_parse_options(child, seg, True, opt)
    mtu = host.route_mtu(child.daddr)
    child.wscale_ok = opt.get("wscale_ok", False)
    child.window_clamp = tcp_full_space(child) if child.userlocks_rcvbuf else 0
    child.advmss = tcp_mss_clamp(child, host.dev_mtu(child.daddr) - 40)
    apply_syn_options(child, opt)
    ts_len = 12 if child.tstamp_ok else 0
    tcp_select_initial_window(child, tcp_full_space(child), child.advmss - ts_len)
    if not child.wscale_ok:
        child.rcv_wscale = 0
    if child.tstamp_ok:
        child.ts_recent_stamp = now
    tcp_sync_mss(child, mtu)
    child.state = TCP_SYN_RECV
    if not host.hash_established(child):
        return
    host.mib["TcpPassiveOpens"] += 1
    tcp_send_synack(child, now)
    tcp_reset_xmit_timer(child, ICSK_TIME_RETRANS, TCP_TIMEOUT_INIT, now)


def tcp_v4_rcv(host, seg: Segment, now: float) -> None:
    """Deliver one inbound TCP segment to its socket."""
    host.mib["TcpInSegs"] += 1
    tp = host.lookup_established(seg)
    if tp is not None:
        tp.tcp_clock = now
        state = tp.state
        if state == TCP_ESTABLISHED or state > TCP_SYN_RECV and state != TCP_TIME_WAIT:
            tcp_rcv_established(tp, seg, now)
        elif state == TCP_SYN_SENT:
            tcp_rcv_synsent_state_process(tp, seg, now)
        elif state == TCP_SYN_RECV:
            tcp_rcv_synrecv(tp, seg, now)
        elif state == TCP_TIME_WAIT:
            tcp_timewait_state_process(tp, seg, now)
        host.after_input(tp, now)
        return
    listener = host.lookup_listener(seg)
    if listener is not None:
        flags = seg.flags
        if flags & TCPHDR_SYN and not flags & (TCPHDR_ACK | TCPHDR_RST):
            tcp_conn_request(listener, seg, now)
        elif flags & TCPHDR_ACK and not flags & TCPHDR_RST:
            host.send_reset_for(seg, now)
        return
    if not seg.flags & TCPHDR_RST:
        host.send_reset_for(seg, now)


def tcp_timewait_state_process(tp: TcpSock, seg: Segment, now: float) -> None:
    """In TIME_WAIT: re-ACK a retransmitted FIN, ignore the rest."""
    if seg.flags & TCPHDR_RST:
        _tcp.tcp_done(tp)
        return
    if seg.flags & TCPHDR_FIN:
        _tcp_output.tcp_send_ack(tp, now)


def tcp_v4_err(host, err: IcmpError, now: float) -> None:
    """An ICMP error quoting one of our segments (RFC 5927 checks before acting)."""
    host.mib["IcmpInMsgs"] += 1
    if err.icmp_type == ICMP_DEST_UNREACH:
        host.mib["IcmpInDestUnreachs"] += 1
    tp = host.lookup_by_ports(err.q_saddr, err.q_sport, err.q_daddr, err.q_dport)
    if tp is None or tp.state in (TCP_CLOSE, TCP_TIME_WAIT):
        host.mib["IcmpInErrors"] += 1
        return
    if tp.state != TCP_LISTEN and not between(err.q_seq, tp.snd_una, tp.snd_nxt):
        # Not about data in flight: forged or stale, ignore it.
        host.mib["TcpExtOutOfWindowIcmps"] += 1
        if host.tracer is not None:
            host.tracer.icmp(tp, err, now, "out_of_window")
        return
    if err.icmp_type == ICMP_DEST_UNREACH:
        if err.code == ICMP_FRAG_NEEDED:
            if tp.state == TCP_LISTEN:
                return
            if host.tracer is not None:
                host.tracer.icmp(tp, err, now, "frag_needed")
            tp.mtu_info = err.mtu
            tcp_v4_mtu_reduced(tp, now)
            host.after_input(tp, now)
            return
    if host.tracer is not None:
        host.tracer.icmp(tp, err, now, "soft_error")
    tp.sk_err_soft = EHOSTUNREACH  # remembered in case the connection times out


def tcp_v4_mtu_reduced(tp: TcpSock, now: float) -> None:
    if tp.state in (TCP_LISTEN, TCP_CLOSE):
        return
    mtu = tp.host.update_pmtu(tp.daddr, tp.mtu_info, now)
    if mtu is None:
        return
    if tp.mtu_info < mtu and ip_dont_fragment(tp):
        tp.sk_err_soft = EMSGSIZE  # only while DF is still set
    # Without DF (IP_PMTUDISC_DONT) routers fragment: the route learns, TCP keeps its MSS.
    if tp.pmtudisc != IP_PMTUDISC_DONT and ip_sk_accept_pmtu(tp) and tp.pmtu_cookie > mtu:
        tcp_sync_mss(tp, mtu)
        if tp.host.tracer is not None:
            tp.host.tracer.event(tp, "mss_change", {"mss": tp.mss_cache, "why": "icmp", "mtu": mtu},
                                 now)
        _tcp_recovery.tcp_simple_retransmit(tp, now)


def ip_dont_fragment(tp: TcpSock) -> bool:
    """Whether the socket's packets carry DF (IP_MTU_DISCOVER and a locked route say)."""
    return tp.pmtudisc in (IP_PMTUDISC_DO, IP_PMTUDISC_PROBE) or (
        tp.pmtudisc == IP_PMTUDISC_WANT and not tp.host.route_locked(tp.daddr))


def ip_sk_accept_pmtu(tp: TcpSock) -> bool:
    return tp.pmtudisc not in (IP_PMTUDISC_INTERFACE, IP_PMTUDISC_OMIT)


def tcp_v4_send_reset(host, seg: Segment, now: float) -> None:
    """RST for a segment no socket wants (RFC 793 reset generation)."""
    if seg.flags & TCPHDR_RST:
        return
    if seg.flags & TCPHDR_ACK:
        rst = Segment(seg.daddr, seg.saddr, seg.dport, seg.sport, seg.ack_seq, 0, TCPHDR_RST, 0)
    else:
        length = len(seg.payload) + (1 if seg.flags & TCPHDR_SYN else 0) + \
            (1 if seg.flags & TCPHDR_FIN else 0)
        rst = Segment(seg.daddr, seg.saddr, seg.dport, seg.sport, 0,
                      (seg.seq + length) & 0xFFFFFFFF, TCPHDR_RST | TCPHDR_ACK, 0)
    host.mib["TcpOutRsts"] += 1
    host.mib["TcpOutSegs"] += 1
    host.ip_output(None, rst, now)


__all__ = [
    "tcp_v4_connect", "inet_listen", "tcp_v4_rcv", "tcp_v4_err", "tcp_v4_send_reset",
    "tcp_mtu_to_mss", "EINPROGRESS",
]


# Imported last: these modules import this one, and are used only inside functions.
from . import tcp as _tcp  # noqa: E402
from . import tcp_output as _tcp_output  # noqa: E402
from . import tcp_recovery as _tcp_recovery  # noqa: E402
from . import tcp_mtu as _tcp_mtu  # noqa: E402

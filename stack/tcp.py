"""The application side of TCP: tcp_sendmsg, tcp_push, autocorking, socket options, receive.

Mirrors net/ipv4/tcp.c (Linux 6.x). A blocking call that must wait does not
sleep: it returns with its operation marked as waiting, and the runtime calls
it again when the socket becomes writable (or connected), exactly where the
kernel's sk_stream_wait_memory() would have resumed.
"""

from __future__ import annotations

from .constants import (
    EAGAIN, EINVAL, ENOPROTOOPT, ENOTCONN, EPIPE, IPPROTO_TCP, MSG_DONTWAIT, MSG_EOR, MSG_MORE,
    MSG_OOB, MSG_PEEK, RCV_SHUTDOWN, SEND_SHUTDOWN, SO_KEEPALIVE, SO_RCVBUF, SO_REUSEADDR,
    SO_SNDBUF, SO_SNDBUFFORCE, SOCK_MIN_RCVBUF, SOCK_MIN_SNDBUF, SOL_SOCKET, SOL_TCP,
    TCP_CLOSE, TCP_CLOSE_WAIT, TCP_CONGESTION, TCP_CORK, TCP_ESTABLISHED, TCP_FIN_WAIT1,
    TCP_LAST_ACK, TCP_LISTEN, TCP_MAXSEG, TCP_NAGLE_CORK, TCP_NAGLE_OFF, TCP_NAGLE_PUSH,
    TCP_NODELAY, TCP_NOTSENT_LOWAT, TCP_SYN_RECV, TCP_SYN_SENT, TCPHDR_ACK, TCPHDR_PSH,
    POLLERR, POLLHUP, POLLIN, POLLOUT, POLLRDHUP, POLLRDNORM, POLLWRNORM, IPPROTO_IP,
    IP_MTU, IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_OMIT,
)
from .seq import after, seq_sub
from .skbuff import SkBuff
from .stream import sk_stream_is_writeable, sk_stream_memory_free, sk_stream_write_space
from .tcp_output import (
    __tcp_push_pending_frames, tcp_push_one, tcp_push_pending_frames,
    tcp_send_ack, tcp_send_active_reset, tcp_send_fin, tcp_send_mss, tcp_skb_can_collapse_to,
    tcp_cwnd_restart,
)
from .jiffies import jiffies

TCP_MIN_MSS = 88
MAX_TCP_WINDOW = 32767


class SendOp:
    """One sendmsg call in progress: what is left to copy and what was copied so far."""

    __slots__ = ("data", "offset", "flags", "copied", "result", "waiting", "nonblock")

    def __init__(self, data, flags: int, nonblock: bool) -> None:
        self.data = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        self.offset = 0
        self.flags = flags
        self.copied = 0
        self.result = None      # bytes copied, or -errno, once finished
        self.waiting = ""       # "connect" or "memory" while blocked
        self.nonblock = nonblock or bool(flags & MSG_DONTWAIT)

    @property
    def left(self) -> int:
        return len(self.data) - self.offset


# --- memory ---------------------------------------------------------------------------------

def forced_push(tp) -> bool:
    return after(tp.write_seq, (tp.pushed_seq + (tp.max_window >> 1)) & 0xFFFFFFFF)


def tcp_mark_push(tp, skb: SkBuff) -> None:
    skb.tcp_flags |= TCPHDR_PSH
    tp.pushed_seq = tp.write_seq


def tcp_skb_entail(tp, skb: SkBuff, now: float) -> None:
    skb.seq = skb.end_seq = tp.write_seq
    skb.tcp_flags = TCPHDR_ACK
    tp.write_queue.append(skb)
    tp.wmem_queued += skb.truesize
    if tp.nonagle & TCP_NAGLE_PUSH:
        tp.nonagle &= ~TCP_NAGLE_PUSH
    tcp_slow_start_after_idle_check(tp, now)


def tcp_slow_start_after_idle_check(tp, now: float) -> None:
    if not tp.sysctl.tcp_slow_start_after_idle or tp.packets_out:
        return
    if jiffies(now) - tp.lsndtime > tp.rto:
        tcp_cwnd_restart(tp, now)


# --- tcp_push and autocorking --------------------------------------------------------------

def tcp_should_autocork(tp, skb: SkBuff, size_goal: int) -> bool:
    """Hold a small tail while earlier packets of ours still wait for TX completion."""
    return (len(skb.data) < size_goal and
            tp.sysctl.tcp_autocorking and
            bool(tp.rtx_queue) and
            tp.wmem_alloc > skb.truesize and
            tcp_skb_can_collapse_to(skb))


def tcp_push(tp, flags: int, mss_now: int, nonagle: int, size_goal: int, now: float) -> None:
    skb = tp.write_queue_tail()
    if skb is None:
        return
    if not flags & MSG_MORE or forced_push(tp):
        tcp_mark_push(tp, skb)
    if tcp_should_autocork(tp, skb, size_goal):
        if not tp.tsq_throttled:
            tp.host.mib["TcpExtTCPAutoCorking"] += 1
            tp.tsq_throttled = True
        # The TX completion may already have happened: then push after all.
        if tp.wmem_alloc > skb.truesize:
            if tp.host.tracer is not None:
                tp.host.tracer.hold(tp, "autocork", skb, now)
            return
    if flags & MSG_MORE:
        nonagle = TCP_NAGLE_CORK
    __tcp_push_pending_frames(tp, mss_now, nonagle, now)


# --- sendmsg -------------------------------------------------------------------------------

def sk_stream_error(tp, flags: int, err: int) -> int:
    if err == -EPIPE:
        err = -(tp.sk_err or EPIPE)
    return err


def tcp_sendmsg(tp, op: SendOp, now: float) -> SendOp:
    """Run (or resume) a sendmsg; sets ``op.result`` when it finishes, ``op.waiting`` if blocked."""
    op.waiting = ""
    if tp.host.tracer is not None:
        tp.host.tracer.call(tp, "tcp_sendmsg", now, size=op.left, copied=op.copied, flags=op.flags)
    if tp.state not in (TCP_ESTABLISHED, TCP_CLOSE_WAIT):
        err = sk_stream_wait_connect(tp, op)
        if err:
            return _finish_error(tp, op, err, now)
        if op.waiting:
            return op
    mss_now, size_goal = tcp_send_mss(tp, op.flags)
    if tp.sk_err or tp.shutdown & SEND_SHUTDOWN:
        return _finish_error(tp, op, -EPIPE, now)
    flags = op.flags
    data = op.data
    total = len(data)
    while op.offset < total:
        skb = tp.write_queue_tail()
        copy = size_goal - len(skb.data) if skb is not None else 0
        if copy <= 0 or not tcp_skb_can_collapse_to(skb):
            if not sk_stream_memory_free(tp):
                if _wait_for_space(tp, op, mss_now, size_goal, now):
                    return op
                mss_now, size_goal = tcp_send_mss(tp, flags)
                continue
            skb = SkBuff(tp.write_seq)
            tcp_skb_entail(tp, skb, now)
            copy = size_goal
            if tp.host.tracer is not None:
                tp.host.tracer.skb(tp, "skb_new", skb, now)
        copy = min(copy, total - op.offset)
        skb.data += data[op.offset:op.offset + copy]
        skb.truesize += copy
        tp.wmem_queued += copy
        if not op.copied:
            skb.tcp_flags &= ~TCPHDR_PSH
        tp.write_seq = (tp.write_seq + copy) & 0xFFFFFFFF
        skb.end_seq = (skb.end_seq + copy) & 0xFFFFFFFF
        skb.pcount = 0
        op.copied += copy
        op.offset += copy
        if tp.host.tracer is not None:
            tp.host.tracer.skb(tp, "skb_append", skb, now, copy)
        if op.offset == total:
            if flags & MSG_EOR:
                skb.eor = True
            break
        if len(skb.data) < size_goal or flags & MSG_OOB:
            continue
        if forced_push(tp):
            tcp_mark_push(tp, skb)
            __tcp_push_pending_frames(tp, mss_now, TCP_NAGLE_PUSH, now)
        elif skb is tp.write_queue[0]:
            tcp_push_one(tp, mss_now, now)
    if op.copied:
        tcp_push(tp, flags, mss_now, tp.nonagle, size_goal, now)
    op.result = op.copied
    return op


def _wait_for_space(tp, op: SendOp, mss_now: int, size_goal: int, now: float) -> bool:
    """The send buffer is full. Returns True when the call stops here (done or blocked)."""
    tp.nospace = True
    tp.host.mib["TcpExtTCPSndbufLimited"] += 1
    if tp.host.tracer is not None:
        tp.host.tracer.hold(tp, "sndbuf", tp.write_queue_tail(), now, "app", op.left)
    if op.copied:
        tcp_push(tp, op.flags & ~MSG_MORE, mss_now, TCP_NAGLE_PUSH, size_goal, now)
    err = sk_stream_wait_memory(tp, op)
    if err:
        if op.copied:
            tcp_push(tp, op.flags, mss_now, tp.nonagle, size_goal, now)
            op.result = op.copied
        else:
            op.result = sk_stream_error(tp, op.flags, err)
        return True
    if op.waiting:
        return True
    return False


def sk_stream_wait_connect(tp, op: SendOp) -> int:
    if tp.sk_err:
        return -tp.sk_err
    if tp.state not in (TCP_SYN_SENT, TCP_SYN_RECV):
        return -EPIPE
    if op.nonblock:
        return -EAGAIN
    op.waiting = "connect"
    return 0


def sk_stream_wait_memory(tp, op: SendOp) -> int:
    if tp.sk_err or tp.shutdown & SEND_SHUTDOWN:
        return -EPIPE
    if sk_stream_memory_free(tp):
        return 0
    if op.nonblock:
        return -EAGAIN
    op.waiting = "memory"
    return 0


def _finish_error(tp, op: SendOp, err: int, now: float) -> SendOp:
    if op.copied:
        mss_now, size_goal = tcp_send_mss(tp, op.flags)
        tcp_push(tp, op.flags, mss_now, tp.nonagle, size_goal, now)
        op.result = op.copied
    else:
        op.result = sk_stream_error(tp, op.flags, err)
    return op


# --- poll ----------------------------------------------------------------------------------

def tcp_poll(tp) -> int:
    """The poll() mask of the socket (tcp_poll() in tcp.c): readable, writable, hung up."""
    if tp.state == TCP_LISTEN:
        return POLLIN | POLLRDNORM if tp.accept_queue else 0
    mask = 0
    if tp.shutdown == RCV_SHUTDOWN | SEND_SHUTDOWN or tp.state == TCP_CLOSE:
        mask |= POLLHUP
    if tp.shutdown & RCV_SHUTDOWN:
        mask |= POLLIN | POLLRDNORM | POLLRDHUP
    if tp.state not in (TCP_SYN_SENT, TCP_SYN_RECV):
        if tp.receive_queue:      # SO_RCVLOWAT is 1: any unread byte makes it readable
            mask |= POLLIN | POLLRDNORM
        if tp.shutdown & SEND_SHUTDOWN:
            mask |= POLLOUT | POLLWRNORM
        elif sk_stream_is_writeable(tp):
            mask |= POLLOUT | POLLWRNORM
        else:
            # Whoever polled wants to hear when space frees up (SOCK_NOSPACE): tcp_check_space()
            # then expands sndbuf and wakes the writer.
            tp.nospace = True
    if tp.sk_err:
        mask |= POLLERR
    return mask


# --- receive -------------------------------------------------------------------------------

def tcp_recvmsg(tp, size: int, flags: int, now: float):
    """Returns bytes (b"" at end of stream) or -errno. Never blocks: -EAGAIN when empty."""
    if tp.state == TCP_LISTEN:
        return -ENOTCONN
    q = tp.receive_queue
    if not q:
        if tp.sk_err:
            err, tp.sk_err = tp.sk_err, 0
            return -err
        if tp.shutdown & RCV_SHUTDOWN or tp.done:
            return b""
        if tp.state == TCP_CLOSE:
            return -ENOTCONN
        return -EAGAIN
    n = min(size, len(q))
    data = bytes(q[:n])
    if not flags & MSG_PEEK:
        del q[:n]
        tp.copied_seq = (tp.copied_seq + n) & 0xFFFFFFFF
        _tcp_input.tcp_rcv_space_adjust(tp, now)
        tcp_cleanup_rbuf(tp, n, now)
    return data


def tcp_cleanup_rbuf(tp, copied: int, now: float) -> None:
    """After the application read: ACK now if that opened the window a lot."""
    time_to_ack = False
    if tp.ack_pending & _constants.ICSK_ACK_SCHED:
        if (seq_sub(tp.rcv_nxt, tp.rcv_wup) > tp.rcv_mss or
                (copied > 0 and tp.ack_pending & _constants.ICSK_ACK_PUSHED2) or
                (copied > 0 and tp.ack_pending & _constants.ICSK_ACK_PUSHED and not tp.ack_pingpong
                 and not tp.receive_queue)):
            time_to_ack = True
    if copied > 0 and not time_to_ack and not tp.shutdown & RCV_SHUTDOWN:
        rcv_window_now = _tcp_input.tcp_receive_window(tp)
        if 2 * rcv_window_now <= tp.window_clamp:
            new_window = _tcp_input.__tcp_select_window(tp)
            if new_window and new_window >= 2 * rcv_window_now:
                time_to_ack = True
    if time_to_ack and tp.state not in (TCP_CLOSE, TCP_LISTEN):
        tcp_send_ack(tp, now)


# --- state ------------------------------------------------------------------------------------

def tcp_set_state(tp, state: int) -> None:
    old = tp.state
    tp.state = state
    if state == TCP_CLOSE and old != TCP_CLOSE:
        tp.host.unhash(tp)
    if tp.host.tracer is not None:
        tp.host.tracer.state(tp, old, state)


def tcp_done(tp) -> None:
    """The connection is over: stop timers, wake everyone waiting on it."""
    if tp.state != TCP_CLOSE:
        tcp_set_state(tp, TCP_CLOSE)
    tp.pending = 0
    tp.timeout = None
    tp.ack_pending = 0
    tp.ack_timeout = None
    tp.shutdown = RCV_SHUTDOWN | SEND_SHUTDOWN
    tp.host.wake(tp)


# --- shutdown and close --------------------------------------------------------------------

_NEW_STATE = {
    TCP_ESTABLISHED: TCP_FIN_WAIT1, TCP_SYN_RECV: TCP_FIN_WAIT1, TCP_CLOSE_WAIT: TCP_LAST_ACK,
    TCP_SYN_SENT: TCP_CLOSE, TCP_LISTEN: TCP_CLOSE,
}


def tcp_close_state(tp) -> bool:
    """Move to the state after a local close; True when a FIN must be sent."""
    new = _NEW_STATE.get(tp.state, tp.state)
    tcp_set_state(tp, new)
    return new in (TCP_FIN_WAIT1, TCP_LAST_ACK)


def tcp_shutdown(tp, how: int, now: float) -> int:
    """how: 0 SHUT_RD, 1 SHUT_WR, 2 SHUT_RDWR."""
    if tp.host.tracer is not None:
        tp.host.tracer.call(tp, "shutdown", now, how=how)
    if tp.state in (TCP_CLOSE, TCP_LISTEN) and how != 0:
        return -ENOTCONN
    if how in (0, 2):
        tp.shutdown |= RCV_SHUTDOWN
    if how in (1, 2):
        tp.shutdown |= SEND_SHUTDOWN
        if tp.state in (TCP_ESTABLISHED, TCP_SYN_SENT, TCP_SYN_RECV, TCP_CLOSE_WAIT):
            if tcp_close_state(tp):
                tcp_send_fin(tp, now)
    return 0


def tcp_close(tp, now: float) -> int:
    if tp.host.tracer is not None:
        tp.host.tracer.call(tp, "close", now)
    tp.shutdown = RCV_SHUTDOWN | SEND_SHUTDOWN
    tp.dead = True
    if tp.state == TCP_LISTEN:
        tcp_set_state(tp, TCP_CLOSE)
        for child in list(tp.accept_queue):
            tcp_close(child, now)
        return 0
    if tp.receive_queue:
        # Unread data: the peer must learn it was lost (RFC 2525).
        tp.host.mib["TcpExtTCPAbortOnClose"] += 1
        tp.receive_queue.clear()
        tcp_send_active_reset(tp, now)
        tcp_set_state(tp, TCP_CLOSE)
        tcp_done(tp)
        return 0
    if tcp_close_state(tp):
        tcp_send_fin(tp, now)
    if tp.state == TCP_CLOSE:
        tcp_done(tp)
    return 0


# --- socket options ------------------------------------------------------------------------

def __tcp_sock_set_cork(tp, on: bool, now: float) -> None:
    if on:
        tp.nonagle |= TCP_NAGLE_CORK
    else:
        tp.nonagle &= ~TCP_NAGLE_CORK
        if tp.nonagle & TCP_NAGLE_OFF:
            tp.nonagle |= TCP_NAGLE_PUSH
        tcp_push_pending_frames(tp, now)


def __tcp_sock_set_nodelay(tp, on: bool, now: float) -> None:
    if on:
        tp.nonagle |= TCP_NAGLE_OFF | TCP_NAGLE_PUSH
        tcp_push_pending_frames(tp, now)
    else:
        tp.nonagle &= ~TCP_NAGLE_OFF


def setsockopt(tp, level: int, optname: int, value, now: float) -> int:
    """Returns 0 or -errno."""
    if tp.host.tracer is not None:
        tp.host.tracer.call(tp, "setsockopt", now, level=level, opt=optname, value=value)
    if level == SOL_SOCKET:
        return _sock_setsockopt(tp, optname, value)
    if level == IPPROTO_IP:
        return _ip_setsockopt(tp, optname, value)
    if level not in (SOL_TCP, IPPROTO_TCP):
        return -ENOPROTOOPT
    if optname == TCP_CONGESTION:
        return _tcp_cong.tcp_set_congestion_control(tp, value, now)
    val = int(value)
    if optname == TCP_NODELAY:
        __tcp_sock_set_nodelay(tp, bool(val), now)
    elif optname == TCP_CORK:
        __tcp_sock_set_cork(tp, bool(val), now)
    elif optname == TCP_MAXSEG:
        if val and (val < TCP_MIN_MSS or val > MAX_TCP_WINDOW):
            return -EINVAL
        tp.user_mss = val
    elif optname == TCP_NOTSENT_LOWAT:
        tp.notsent_lowat = val
        sk_stream_write_space(tp)
    else:
        return -ENOPROTOOPT
    return 0


def _ip_setsockopt(tp, optname: int, value) -> int:
    if optname != IP_MTU_DISCOVER:
        return -ENOPROTOOPT   # IP_MTU among them: it can only be read
    val = int(value)
    if not IP_PMTUDISC_DONT <= val <= IP_PMTUDISC_OMIT:
        return -EINVAL
    tp.pmtudisc = val
    return 0


def _sock_setsockopt(tp, optname: int, value) -> int:
    val = int(value)
    sysctl = tp.sysctl
    if optname == SO_REUSEADDR:
        tp.reuseaddr = bool(val)
    elif optname == SO_KEEPALIVE:
        pass  # keepalive probes are not modelled; the option is accepted as Linux does
    elif optname in (SO_SNDBUF, SO_SNDBUFFORCE):
        if optname == SO_SNDBUF:
            val = min(val, sysctl.core_wmem_max)
        tp.userlocks_sndbuf = True
        # Linux doubles the value to leave room for skb overhead.
        tp.sndbuf = max(val * 2, SOCK_MIN_SNDBUF)
        sk_stream_write_space(tp)
    elif optname == SO_RCVBUF:
        val = min(val, sysctl.core_rmem_max)
        tp.userlocks_rcvbuf = True
        tp.rcvbuf = max(val * 2, SOCK_MIN_RCVBUF)
    else:
        return -ENOPROTOOPT
    return 0


def getsockopt(tp, level: int, optname: int):
    """Returns the value or -errno (an int below 0)."""
    if level == SOL_SOCKET:
        if optname == SO_SNDBUF:
            return tp.sndbuf
        if optname == SO_RCVBUF:
            return tp.rcvbuf
        if optname == SO_REUSEADDR:
            return int(tp.reuseaddr)
        if optname == SO_KEEPALIVE:
            return 0
        return -ENOPROTOOPT
    if level == IPPROTO_IP:
        if optname == IP_MTU_DISCOVER:
            return tp.pmtudisc
        if optname == IP_MTU:
            # The MTU of the socket's route, which only a connected (or connecting) socket has.
            if tp.state in (TCP_CLOSE, TCP_LISTEN) or not tp.daddr:
                return -ENOTCONN
            return tp.host.route_mtu(tp.daddr)
        return -ENOPROTOOPT
    if optname == TCP_NODELAY:
        return int(bool(tp.nonagle & TCP_NAGLE_OFF))
    if optname == TCP_CORK:
        return int(bool(tp.nonagle & TCP_NAGLE_CORK))
    if optname == TCP_MAXSEG:
        val = tp.mss_cache
        if tp.user_mss and tp.state in (TCP_CLOSE, TCP_LISTEN):
            val = tp.user_mss
        return val
    if optname == TCP_NOTSENT_LOWAT:
        return tp.notsent_lowat   # the socket's own; 0 means the sysctl applies
    if optname == TCP_CONGESTION:
        return tp.ca_ops.name if tp.ca_ops else ""
    return -ENOPROTOOPT


# Imported last: these modules import this one, and are used only inside functions.
from . import constants as _constants  # noqa: E402
from . import tcp_cong as _tcp_cong  # noqa: E402
from . import tcp_input as _tcp_input  # noqa: E402

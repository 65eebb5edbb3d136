"""One small test per rule of the Linux TCP send path, driving one Host directly.

Expected values come from the kernel's logic (net/ipv4/tcp.c, tcp_output.c, tcp_input.c,
tcp_timer.c, kernel/time/timer.c, include/net/sock.h), not from what the stack prints.
The fake peer is the ``established`` fixture in conftest.py.
"""

from __future__ import annotations

import errno

import pytest

from stack import IcmpError, Segment
from stack.constants import (
    EAGAIN, ICSK_TIME_PROBE0, ICSK_TIME_RETRANS, MSG_DONTWAIT, MSG_EOR, MSG_MORE, SO_RCVBUF,
    SO_SNDBUF, SOL_SOCKET, SOL_TCP, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED,
    TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_MAXSEG, TCP_NOTSENT_LOWAT, TCP_TIME_WAIT,
    TCPHDR_ACK, TCPHDR_FIN, TCPHDR_PSH, TCPHDR_RST, TCPHDR_SYN,
)
from stack.jiffies import HZ, TICK_S, jiffies, msecs_to_jiffies, timer_deadline
from stack.seq import seq_sub
from stack.tcp_output import tcp_bound_to_half_wnd, tcp_send_mss

from conftest import LOCAL_IP, LOCAL_PORT, REMOTE_IP, REMOTE_PORT, make_host

MSS = 1460                       # the fixture's peer offers MSS 1460, no timestamps
GSO_MAX_SIZE = 65536 - (320 + 1)  # sk_setup_caps(): gso_max_size - (MAX_TCP_HEADER + 1)


def payload_lengths(segs):
    return [len(s.payload) for s in segs if s.payload]


# --- Nagle and Minshall (tcp_nagle_check, tcp_minshall_check) ---------------------------------

def test_minshall_full_segment_never_holds_small_write(established):
    # A full-sized segment does not set snd_sml, so a small write may follow it at once
    # even though the full segment is still unacknowledged.
    peer = established()
    assert peer.write(b"a" * MSS) == MSS
    assert peer.write(b"b" * 100) == 100
    assert payload_lengths(peer.new()) == [MSS, 100]
    assert peer.tp.packets_out == 2


def test_minshall_holds_second_small_segment(established):
    peer = established()
    peer.write(b"a" * 100)
    assert payload_lengths(peer.new()) == [100]
    # A small segment is outstanding (snd_sml in (snd_una, snd_nxt]): Nagle holds the next one.
    peer.write(b"b" * 100)
    assert peer.new() == []
    # The ACK of the first small segment releases the second.
    sent = peer.ack(dt=0.01)
    assert payload_lengths(sent) == [100]
    assert peer.rel(sent[-1].seq) == 101


def test_nodelay_sends_second_small_segment_at_once(established):
    peer = established()
    peer.nodelay()
    peer.write(b"a" * 100)
    peer.write(b"b" * 100)
    assert payload_lengths(peer.new()) == [100, 100]


def test_setting_nodelay_pushes_data_nagle_holds(established):
    peer = established()
    peer.write(b"a" * 100)
    peer.write(b"b" * 100)
    peer.new()
    peer.nodelay()          # __tcp_sock_set_nodelay(): TCP_NAGLE_OFF|TCP_NAGLE_PUSH, then push
    assert payload_lengths(peer.new()) == [100]


# --- cork and MSG_MORE ---------------------------------------------------------------------

def test_cork_holds_sub_mss_with_nothing_in_flight(established):
    peer = established()
    peer.cork()
    peer.write(b"a" * 100)
    assert peer.tp.packets_out == 0
    assert peer.new() == []
    peer.cork(False)        # clearing TCP_CORK pushes what it held
    sent = peer.new()
    assert payload_lengths(sent) == [100]
    assert sent[0].flags & TCPHDR_PSH


def test_cork_sends_full_segments_and_holds_the_tail(established):
    peer = established()
    peer.cork()
    peer.write(b"a" * (2 * MSS + 300))
    assert payload_lengths(peer.new()) == [MSS, MSS]
    assert seq_sub(peer.tp.write_seq, peer.tp.snd_nxt) == 300


def test_msg_more_converts_to_nagle_cork_for_that_push(established):
    peer = established()
    peer.nodelay()
    # Even with TCP_NODELAY, MSG_MORE makes tcp_push() use TCP_NAGLE_CORK: the small skb waits.
    peer.write(b"a" * 100, MSG_MORE)
    assert peer.new() == []
    # MSG_MORE also leaves PSH off the skb.
    assert not peer.tp.write_queue[-1].tcp_flags & TCPHDR_PSH
    # The next write without MSG_MORE pushes with the socket's own nonagle: both go together.
    peer.write(b"b" * 100)
    sent = peer.new()
    assert payload_lengths(sent) == [200]
    assert sent[0].flags & TCPHDR_PSH


def test_msg_more_lone_segment_leaves_on_probe_timer(established):
    # Nothing else will move the queue, so tcp_check_probe_timer() armed the probe0 timer
    # (tcp_probe0_base = max(rto, TCP_RTO_MIN)); tcp_write_wakeup() then sends the held data.
    peer = established()
    peer.write(b"a" * 100, MSG_MORE)
    tp = peer.tp
    assert tp.pending == ICSK_TIME_PROBE0
    base_s = max(tp.rto, msecs_to_jiffies(200)) * TICK_S
    peer.advance(base_s - 0.001)
    assert peer.new() == []
    peer.advance(0.05)
    sent = peer.new()
    assert payload_lengths(sent) == [100]
    assert base_s <= peer.times[-1] - 0.010 <= base_s + 8 * TICK_S


# --- autocorking (tcp_should_autocork) ------------------------------------------------------

def test_autocork_holds_small_write_while_tx_completion_pending(established):
    peer = established(tx_completion_delay_s=0.001)
    peer.nodelay()
    host, tp = peer.host, peer.tp
    peer.write(b"a" * 1000)
    peer.advance(0)                      # the device puts the frame on the wire now
    assert payload_lengths(peer.new()) == [1000]
    assert tp.wmem_alloc > 1             # the skb stays charged until its TX completion
    corked_before = host.mib["TcpExtTCPAutoCorking"]
    # sk_wmem_alloc (1 + truesize of the 1000-byte skb) exceeds the small tail's truesize.
    peer.write(b"b" * 100)
    peer.write(b"c" * 100)
    peer.advance(0)
    assert peer.new() == []
    assert host.mib["TcpExtTCPAutoCorking"] == corked_before + 1   # counted once (TSQ_THROTTLED)
    # TX completion of the first skb runs the TSQ handler, which sends the coalesced tail.
    peer.advance(0.002)
    sent = peer.new()
    assert payload_lengths(sent) == [200]
    assert peer.rel(sent[0].seq) == 1001


def test_autocork_stops_once_tail_truesize_reaches_wmem_alloc(established):
    # tcp_should_autocork() needs sk_wmem_alloc > skb->truesize: a tail that has grown as big
    # as what sits in the device is pushed at once (a pure ACK in the qdisc never corks data).
    peer = established(tx_completion_delay_s=0.001)
    peer.nodelay()
    peer.write(b"a" * 100)
    peer.advance(0)
    peer.new()
    peer.write(b"b" * 100)               # truesize 1280+100 < 1+1280+100: corked
    peer.advance(0)
    assert peer.new() == []
    peer.write(b"c" * 100)               # truesize 1280+200 > sk_wmem_alloc: pushed
    peer.advance(0)
    assert payload_lengths(peer.new()) == [200]


def test_autocork_off_sends_immediately(established):
    peer = established(tx_completion_delay_s=0.001, tcp_autocorking=0)
    peer.nodelay()
    peer.write(b"a" * 100)
    peer.write(b"b" * 100)
    peer.advance(0)
    assert payload_lengths(peer.new()) == [100, 100]
    assert peer.host.mib["TcpExtTCPAutoCorking"] == 0


def test_autocork_not_applied_with_empty_rtx_queue(established):
    # The first write has nothing in flight (tcp_rtx_queue_empty): it is never autocorked.
    peer = established(tx_completion_delay_s=0.001)
    peer.nodelay()
    peer.write(b"a" * 100)
    peer.advance(0)
    assert payload_lengths(peer.new()) == [100]
    assert peer.host.mib["TcpExtTCPAutoCorking"] == 0


# --- TCP small queues (tcp_small_queue_check) ------------------------------------------------

def _in_flight_skbs_after_first_completion(lob: int) -> tuple[int, int]:
    from conftest import open_connection
    peer = open_connection(rate_bps=10e6, tcp_limit_output_bytes=lob, tcp_init_cwnd=40,
                           win=1 << 20)
    peer.nodelay()
    tp, dev = peer.tp, peer.host.device
    peer.write(b"x" * 60000)
    first_done = dev._completions[0][0]
    peer.run_until(first_done + 1e-4)
    return len(tp.rtx_queue), len(dev._completions)


def test_tsq_limits_bytes_in_device():
    # Before any completion both runs hand the device two skbs: the first because the rtx
    # queue was empty, the second because it held a single skb. After the first completion,
    # the default limit (2 * truesize) lets a third skb in; tcp_limit_output_bytes=3000 keeps
    # the flow at one skb in the device until the next completion.
    sent_default, in_dev_default = _in_flight_skbs_after_first_completion(4 * 1024 * 1024)
    sent_small, in_dev_small = _in_flight_skbs_after_first_completion(3000)
    assert (sent_default, in_dev_default) == (3, 2)
    assert (sent_small, in_dev_small) == (2, 1)


def test_tsq_throttled_flow_resumes_on_tx_completion(established):
    peer = established(rate_bps=10e6, tcp_limit_output_bytes=3000, tcp_init_cwnd=40, win=1 << 20)
    peer.nodelay()
    tp = peer.tp
    peer.write(b"x" * 50000)                    # less than cwnd (40 segments) allows
    assert tp.tsq_throttled
    assert tp.write_queue                       # held by TSQ, not by cwnd or rwnd
    assert tp.packets_in_flight() < tp.snd_cwnd
    peer.advance(0.1)                           # TX completions, no ACK from the peer
    assert not tp.write_queue
    assert seq_sub(tp.snd_nxt, tp.snd_una) == 50000


# --- size goal, MSS ----------------------------------------------------------------------

def test_size_goal_is_half_peer_window_in_mss_multiples(established):
    peer = established(win=40000)
    tp = peer.tp
    max_window = (40000 >> 7) << 7               # the peer's window as its scale can say it
    assert tp.max_window == max_window
    mss_now, size_goal = tcp_send_mss(tp, 0)
    assert mss_now == MSS
    assert size_goal == (max_window // 2) // MSS * MSS
    # sendmsg() cuts the byte stream into skbs of size_goal (nothing leaves: zero window).
    peer.ack(win=0)
    assert peer.write(b"x" * 50000) == 50000
    assert [len(s.data) for s in tp.write_queue] == [size_goal, size_goal, 50000 - 2 * size_goal]


def test_size_goal_without_window_bound_is_gso_max_size(established):
    peer = established(win=1 << 20)
    assert tcp_send_mss(peer.tp, 0) == (MSS, GSO_MAX_SIZE // MSS * MSS)


def test_bound_to_half_wnd_small_window(established):
    # max_window <= TCP_MSS_DEFAULT (536): the cutoff is the whole window, not half of it,
    # and never below 68 - tcp_header_len.
    peer = established(wscale=None, syn_window=1000, win=1000)
    tp = peer.tp
    assert tp.mss_cache == 500                   # 1000 > 536: half the window
    assert peer.write(b"x" * 3000) == 3000
    assert payload_lengths(peer.new()) == [500, 500]
    tp.max_window = 400
    assert tcp_bound_to_half_wnd(tp, MSS) == 400
    tp.max_window = 40
    assert tcp_bound_to_half_wnd(tp, MSS) == 68 - tp.tcp_header_len
    tp.max_window = 0                            # no window seen yet: no bound
    assert tcp_bound_to_half_wnd(tp, MSS) == MSS


def test_mtu_to_mss_subtracts_timestamps(established):
    plain = established()
    assert plain.tp.mss_cache == 1500 - 20 - 20
    stamped = established(ts=True)
    assert stamped.tp.mss_cache == 1500 - 20 - 20 - 12
    stamped.write(b"x" * 3000)
    assert payload_lengths(stamped.new()) == [1448, 1448, 104]


def test_min_snd_mss_floor(established):
    # __tcp_mtu_to_mss() floors at net.ipv4.tcp_min_snd_mss (48) before tcp_mtu_to_mss()
    # subtracts the timestamp option: a peer MSS of 10 gives 48, or 36 with timestamps.
    peer = established(mss=10)
    assert peer.tp.mss_cache == 48
    peer.write(b"x" * 100)
    assert payload_lengths(peer.new()) == [48, 48, 4]
    assert established(mss=10, ts=True).tp.mss_cache == 48 - 12
    assert established(mss=10, tcp_min_snd_mss=100).tp.mss_cache == 100


def test_tcp_maxseg_on_listener_clamps_child_mss(established):
    peer = established(listener_opts=[(SOL_TCP, TCP_MAXSEG, 1000)])
    assert (2, 1000) in peer.synack.options      # advertised MSS is user_mss
    assert peer.tp.mss_cache == 1000
    peer.write(b"x" * 2500)
    assert payload_lengths(peer.new()) == [1000, 1000, 500]


# --- EOR, send buffer, notsent_lowat --------------------------------------------------------

def test_eor_skb_never_extended(established):
    peer = established()
    peer.nodelay()
    peer.cork()
    peer.write(b"a" * 100, MSG_EOR)
    assert peer.new() == []                     # corked
    peer.write(b"b" * 100)
    # The EOR skb cannot take the new bytes, so a second skb is queued; the first is no
    # longer the tail and tcp_write_xmit() tests it with TCP_NAGLE_PUSH: it leaves alone.
    sent = peer.new()
    assert payload_lengths(sent) == [100]
    assert sent[0].payload == b"a" * 100
    assert [bytes(s.data) for s in peer.tp.write_queue] == [b"b" * 100]
    peer.cork(False)
    assert [s.payload for s in peer.new()] == [b"b" * 100]


def test_sndbuf_checked_only_before_new_skb(established):
    peer = established()
    assert peer.setsockopt(SOL_SOCKET, SO_SNDBUF, 1) == 0     # the minimum send buffer
    peer.ack(win=0)                                           # nothing can leave
    tp = peer.tp
    assert peer.write(b"a" * 5000) == 5000
    assert tp.wmem_queued >= tp.sndbuf
    # The tail skb still has room below size_goal: sendmsg appends without asking
    # sk_stream_memory_free(), which it only checks when it needs a new skb.
    assert peer.write(b"b" * 100, MSG_EOR) == 100
    assert peer.write(b"c" * 100, MSG_DONTWAIT) == -EAGAIN
    assert [len(s.data) for s in tp.write_queue] == [5100]


def test_notsent_lowat_limits_queue(established):
    peer = established()
    assert peer.setsockopt(SOL_TCP, TCP_NOTSENT_LOWAT, 1000) == 0
    peer.ack(win=0)
    assert peer.write(b"a" * 1500, MSG_EOR) == 1500
    # write_seq - snd_nxt (1500) >= TCP_NOTSENT_LOWAT: no new skb.
    assert peer.write(b"b" * 100, MSG_DONTWAIT) == -EAGAIN
    # Once the window opens and the bytes are sent, the writer may queue again.
    peer.ack(win=64000)
    assert seq_sub(peer.tp.write_seq, peer.tp.snd_nxt) == 0
    assert peer.write(b"b" * 100, MSG_DONTWAIT) == 100


def test_notsent_lowat_above_unsent_bytes_allows_new_skb(established):
    peer = established()
    assert peer.setsockopt(SOL_TCP, TCP_NOTSENT_LOWAT, 2000) == 0
    peer.ack(win=0)
    assert peer.write(b"a" * 1500, MSG_EOR) == 1500
    assert peer.write(b"b" * 100, MSG_DONTWAIT) == 100


def test_so_sndbuf_is_doubled_and_clamped_by_wmem_max(established):
    peer = established()
    wmem_max = peer.host.sysctl.core_wmem_max
    assert peer.setsockopt(SOL_SOCKET, SO_SNDBUF, 10000) == 0
    assert peer.tp.sndbuf == 20000
    assert peer.setsockopt(SOL_SOCKET, SO_SNDBUF, 10 * wmem_max) == 0
    assert peer.tp.sndbuf == 2 * wmem_max


# include/net/sock.h: TCP_SKB_MIN_TRUESIZE = 2048 + SKB_DATA_ALIGN(sizeof(struct sk_buff))
# = 2048 + 256 on x86_64; SOCK_MIN_SNDBUF = 2 * that = 4608, SOCK_MIN_RCVBUF = 2304
# (`ss -m` shows tb4608 after setsockopt(SO_SNDBUF, 1)).
def test_so_sndbuf_minimum_is_sock_min_sndbuf(established):
    peer = established()
    assert peer.setsockopt(SOL_SOCKET, SO_SNDBUF, 1) == 0
    assert peer.tp.sndbuf == 4608


def test_so_rcvbuf_minimum_is_sock_min_rcvbuf(established):
    peer = established()
    assert peer.setsockopt(SOL_SOCKET, SO_RCVBUF, 1) == 0
    assert peer.tp.rcvbuf == 2304


def test_so_rcvbuf_is_doubled_and_clamped_by_rmem_max(established):
    peer = established()
    rmem_max = peer.host.sysctl.core_rmem_max
    assert peer.setsockopt(SOL_SOCKET, SO_RCVBUF, 10000) == 0
    assert peer.tp.rcvbuf == 20000
    assert peer.setsockopt(SOL_SOCKET, SO_RCVBUF, 10 * rmem_max) == 0
    assert peer.tp.rcvbuf == 2 * rmem_max


# --- PSH ------------------------------------------------------------------------------------

def test_forced_push_marks_psh(established):
    # forced_push(): write_seq after pushed_seq + max_window/2 marks PSH on the full skb just
    # completed and moves pushed_seq; the final tcp_push() marks the tail.
    peer = established(win=40000)
    tp = peer.tp
    half = tp.max_window >> 1
    peer.ack(win=0)
    _, size_goal = tcp_send_mss(tp, 0)
    assert peer.write(b"x" * 80000) == 80000
    skbs = list(tp.write_queue)
    expected, pushed = [], 0
    for i, skb in enumerate(skbs):
        end = seq_sub(skb.end_seq, tp.snd_una)
        last = i == len(skbs) - 1
        if last or (len(skb.data) == size_goal and end > pushed + half):
            expected.append(True)
            pushed = end
        else:
            expected.append(False)
    assert [bool(s.tcp_flags & TCPHDR_PSH) for s in skbs] == expected
    assert expected[:-1].count(True) >= 1          # at least one forced push mid-write
    assert not all(expected)


def _gso_packets(sent) -> list[list]:
    """The wire segments grouped by the packet (skb transmission) they were cut from."""
    groups: list[list] = []
    for seg in sent:
        if groups and groups[-1][-1].owner is seg.owner and seg.owner is not None and \
                groups[-1][-1].seq + len(groups[-1][-1].payload) == seg.seq:
            groups[-1].append(seg)
        else:
            groups.append([seg])
    return groups


def test_msg_more_leaves_psh_off(established):
    peer = established()
    peer.write(b"x" * (3 * MSS), MSG_MORE)
    sent = peer.new()
    assert payload_lengths(sent) == [MSS, MSS, MSS]
    # tcp_push() leaves the skbs unmarked with MSG_MORE...
    assert not any(skb.tcp_flags & TCPHDR_PSH for skb in peer.tp.rtx_queue)
    # ...and on the wire only a GSO packet's last segment carries PSH (__tcp_transmit_skb()
    # marks every GSO packet; GSO keeps it on the last segment): never a lone MSS segment.
    for packet in _gso_packets(sent):
        flags = [bool(s.flags & TCPHDR_PSH) for s in packet]
        assert flags == [False] * (len(packet) - 1) + [len(packet) > 1], flags


def test_gso_packets_carry_psh_on_their_last_segment_only():
    """Linux 6.18 (packetdrill, a TSO tun): each multi-segment packet of a large write leaves
    with PSH, though tso_fragment() keeps it off the skb of every piece but the last."""
    from stack.device import gso_segment
    from stack.segment import Segment
    seg = Segment("a", "b", 1, 2, 1000, 1, TCPHDR_PSH | 0x10, 100, payload=b"x" * (3 * MSS))
    seg.gso_size, seg.gso_segs = MSS, 3
    parts = gso_segment(seg)
    assert [bool(p.flags & TCPHDR_PSH) for p in parts] == [False, False, True]


def test_write_without_msg_more_sets_psh_on_last_segment_only(established):
    peer = established()
    peer.write(b"x" * (3 * MSS))
    sent = peer.new()
    assert bool(sent[-1].flags & TCPHDR_PSH)
    # Before the last: PSH only where a GSO packet ends (never on a lone MSS segment).
    for packet in _gso_packets(sent[:-1]):
        flags = [bool(s.flags & TCPHDR_PSH) for s in packet]
        assert flags == [False] * (len(packet) - 1) + [len(packet) > 1], flags


# --- cwnd and rwnd ---------------------------------------------------------------------------

def test_initial_cwnd_is_ten_segments(established):
    peer = established(win=1 << 20)
    peer.write(b"x" * (30 * MSS))
    assert payload_lengths(peer.new()) == [MSS] * 10
    assert peer.tp.packets_out == 10


def test_peer_window_limits_bytes_in_flight(established):
    # The peer offers 5 MSS (as its scale 7 can say it: 7296 bytes). size_goal is 2 MSS
    # (half the window), and tcp_snd_wnd_test() sends an skb only if its first MSS fits:
    # the skb at 5840 would end its first MSS at 7300 > 7296, so four segments go.
    peer = established(win=5 * MSS)
    wnd = (5 * MSS >> 7) << 7
    assert peer.tp.snd_wnd == wnd
    peer.write(b"x" * (10 * MSS))
    assert payload_lengths(peer.new()) == [MSS] * 4
    # The ACK of the first two slides the window. tcp_grow_skb() (6.10+) pulls bytes from the
    # next skbs to fill the cwnd quota, and tcp_mss_split_point() cuts it at the window edge:
    # the window is now filled to the byte (the sub-MSS piece may go, no small one is out).
    sent = peer.ack(upto=(peer.tp.snd_una + 2 * MSS) & 0xFFFFFFFF, win=5 * MSS)
    assert payload_lengths(sent) == [MSS, MSS, wnd - 4 * MSS]
    assert seq_sub(peer.tp.snd_nxt, peer.tp.snd_una) == wnd


# --- timers ----------------------------------------------------------------------------------

def _wheel_granularity(delta_jiffies: int) -> int:
    """Granularity of the timer-wheel level a timer ``delta`` jiffies away lands in."""
    lvl = 0
    while delta_jiffies >= 63 << (3 * lvl):
        lvl += 1
    return 1 << (3 * lvl)


def test_rto_backoff_doubles(established):
    peer = established(tcp_early_retrans=0)          # no tail loss probe before the RTO
    tp = peer.tp
    rto0 = tp.rto
    # RFC 6298 after the SYN-ACK sample: srtt 10 ms, rttvar floored at TCP_RTO_MIN (200 ms).
    assert rto0 == -(-(10_000 + 200_000) * HZ // 1_000_000)
    peer.write(b"x" * 1000)
    first = peer.new()
    assert payload_lengths(first) == [1000]
    sent_at = [peer.now]
    rtos = [rto0]
    for _ in range(4):
        n = len(peer.out)
        peer.advance(0)
        deadline = tp.timeout
        peer.run_until(deadline)
        retx = peer.out[n:]
        assert payload_lengths(retx) == [1000]
        assert retx[0].seq == first[0].seq
        sent_at.append(peer.times[-1])
        rtos.append(tp.rto)
    assert rtos == [rto0 << i for i in range(5)]
    assert tp.backoff == 4
    assert peer.host.mib["TcpExtTCPTimeouts"] == 4
    for i in range(4):
        gap_j = (sent_at[i + 1] - sent_at[i]) * HZ
        # Armed for rtos[i] jiffies; the wheel fires up to one granule late, never early.
        assert rtos[i] <= gap_j + 1e-6 <= rtos[i] + _wheel_granularity(rtos[i]) + 1


def test_tail_loss_probe_resends_last_segment_after_two_rtt(established):
    # tcp_schedule_loss_probe(): PTO = 2 * srtt + TCP_TIMEOUT_MIN_US (2 ms) with more than one
    # packet out, capped by the RTO; tcp_send_loss_probe() resends the last segment.
    peer = established()
    tp = peer.tp
    peer.write(b"x" * (2 * MSS))
    sent = peer.new()
    assert payload_lengths(sent) == [MSS, MSS]
    t_sent = peer.now
    pto_j = -(-((tp.srtt_us >> 2) + 2000) * HZ // 1_000_000)
    peer.run_until(tp.timeout)
    probe = peer.new()
    assert len(probe) == 1 and probe[0].seq == sent[1].seq and len(probe[0].payload) == MSS
    assert pto_j * TICK_S <= peer.now - t_sent <= (pto_j + 2) * TICK_S
    assert peer.host.mib["TcpExtTCPLossProbes"] == 1
    assert tp.pending == ICSK_TIME_RETRANS


def test_tail_loss_probe_resends_last_segment_as_sent(established):
    # One 2500-byte skb went out as 1460 + 1040; Linux's probe is the 1040-byte segment.
    peer = established()
    peer.nodelay()
    peer.write(b"x" * 2500)
    assert payload_lengths(peer.new()) == [MSS, 2500 - MSS]
    peer.run_until(peer.tp.timeout)
    probe = peer.new()
    assert [(peer.rel(s.seq), len(s.payload)) for s in probe] == [(1 + MSS, 2500 - MSS)]


def test_tail_loss_probe_is_not_counted_in_retrans_out(established):
    peer = established()
    tp = peer.tp
    peer.write(b"x" * 1000)
    peer.run_until(tp.timeout)
    assert peer.host.mib["TcpExtTCPLossProbes"] == 1
    assert tp.retrans_out == 0
    # ... so the RTO that follows leaves exactly one retransmission in flight.
    peer.run_until(tp.timeout)
    assert tp.retrans_out == 1 <= tp.packets_out


def test_tail_loss_probe_sends_new_data_nagle_held(established):
    peer = established()
    peer.write(b"a" * 100)
    peer.write(b"b" * 100)                          # held by Nagle (a small segment is out)
    assert [s.payload for s in peer.new()] == [b"a" * 100]
    peer.run_until(peer.tp.timeout)
    assert [s.payload for s in peer.new()] == [b"b" * 100]


def test_rto_with_sacked_head_treats_sacks_as_reneged(established):
    peer = established(tcp_early_retrans=0)
    tp = peer.tp
    peer.write(b"x" * MSS)
    una, nxt = tp.snd_una, tp.snd_nxt
    peer.ack(upto=una, options=((1, None), (1, None), (5, ((una, nxt),))))
    assert tp.sacked_out == 1
    for _ in range(3):
        peer.run_until(tp.timeout)
        assert tp.retrans_out <= tp.packets_out
    assert tp.sacked_out == 0 and tp.lost_out == 1


def test_rto_is_capped_at_rto_max(established):
    peer = established(tcp_early_retrans=0)
    tp = peer.tp
    peer.write(b"x" * 100)
    for _ in range(12):
        peer.run_until(tp.timeout)
    assert tp.rto == msecs_to_jiffies(120_000)


def test_probe0_armed_once_not_rearmed(established):
    peer = established()
    tp = peer.tp
    peer.ack(win=0)
    peer.write(b"a" * 100)
    assert peer.new() == []
    assert tp.pending == ICSK_TIME_PROBE0
    first_deadline = tp.timeout
    base = max(tp.rto, msecs_to_jiffies(200))
    assert first_deadline == timer_deadline(peer.now, base)
    # tcp_check_probe_timer(): a timer already pending is left alone by later pushes.
    peer.advance(0.05)
    peer.write(b"b" * 100)
    assert tp.timeout == first_deadline
    # When it fires, a zero-window probe goes out: an old sequence number, no data.
    peer.run_until(first_deadline)
    probes = peer.new()
    assert len(probes) == 1
    assert probes[0].payload == b""
    assert probes[0].seq == (tp.snd_una - 1) & 0xFFFFFFFF
    assert peer.host.mib["TcpExtTCPWinProbe"] == 1
    # tcp_send_probe0(): backoff grows, next probe after base << backoff.
    assert tp.backoff == 1 and tp.pending == ICSK_TIME_PROBE0
    assert tp.timeout == timer_deadline(first_deadline, base << 1)


def test_window_opening_ack_releases_data_held_by_zero_window(established):
    peer = established()
    peer.ack(win=0)
    peer.write(b"a" * 3000)
    assert peer.new() == []
    sent = peer.ack(win=64000)
    assert sum(payload_lengths(sent)) == 3000


@pytest.mark.parametrize("timeout_j, fires_after_j", [
    (1, 2), (10, 11), (62, 63),           # level 0 (delta < 63): one tick late
    (63, 64), (100, 104), (503, 504),     # level 1 (delta < 504): rounded up to 8 jiffies
    (504, 512), (600, 640),               # level 2: rounded up to 64 jiffies
])
def test_jiffy_timer_wheel_rounding(timeout_j, fires_after_j):
    # kernel/time/timer.c calc_index(): expires = ((expires >> LVL_SHIFT(lvl)) + 1)
    # << LVL_SHIFT(lvl), with level boundaries LVL_START(n) = 63 << 3(n-1).
    assert timer_deadline(0.0, timeout_j) == pytest.approx(fires_after_j * TICK_S)


def test_jiffy_timer_wheel_rounds_absolute_expiry():
    clk = 5
    now = clk * TICK_S + TICK_S / 2                 # mid-tick: jiffies() is still 5
    assert jiffies(now) == clk
    # Level 1: the absolute expiry 105 is rounded up to the next multiple of 8.
    assert timer_deadline(now, 100) == pytest.approx(112 * TICK_S)
    assert timer_deadline(now, 10) == pytest.approx(16 * TICK_S)


# --- receiving: delayed ACKs ------------------------------------------------------------------

def test_delayed_ack_quickack_then_delayed(established):
    peer = established()
    tp = peer.tp
    # tcp_incr_quickack(): min(rcv_wnd / (2 * rcv_mss), TCP_MAX_QUICKACKS) quick ACKs.
    quickacks = min(tp.rcv_wnd // (2 * tp.rcv_mss), 16)
    acked_at_once = []
    for _ in range(quickacks + 1):
        sent = peer.send(TCPHDR_ACK | TCPHDR_PSH, b"d" * 100, dt=0.001)
        acked_at_once.append(bool(sent) and sent[-1].ack_seq == peer.seq)
    assert acked_at_once == [True] * quickacks + [False]
    t_data = peer.now
    delayed_before = peer.host.mib["TcpExtDelayedACKs"]
    peer.advance(0.2)
    acks = peer.new()[quickacks:]
    assert len(acks) == 1 and acks[0].ack_seq == peer.seq
    when = peer.times[-1]
    # ato = TCP_ATO_MIN (40 ms), filed in the wheel's level 0: fires one tick after.
    assert 0.040 < when - t_data <= 0.040 + 2 * TICK_S
    assert peer.host.mib["TcpExtDelayedACKs"] == delayed_before + 1


def test_quickack_credit_spent_only_by_acks_of_new_data(established):
    # tcp_dec_quickack_mode() (6.6+): only an ACK sent while one was scheduled uses up a
    # quick ACK; our own data segments (ACK flag, nothing to acknowledge) do not.
    peer = established()
    tp = peer.tp
    quickacks = min(tp.rcv_wnd // (2 * tp.rcv_mss), 16)
    assert peer.send(TCPHDR_ACK | TCPHDR_PSH, b"r" * 100, dt=0.001)     # quick ACK no. 1
    peer.advance(0.1)                               # later than ato: no ping-pong
    peer.write(b"x" * (10 * MSS))
    assert payload_lengths(peer.new()) == [MSS] * 10
    immediate = []
    for _ in range(quickacks + 2):
        immediate.append(bool(peer.send(TCPHDR_ACK | TCPHDR_PSH, b"d" * 100, dt=0.001)))
    assert immediate == [True] * (quickacks - 1) + [False] * 3


def test_receiver_acks_every_second_full_segment(established):
    peer = established()
    tp = peer.tp
    pattern = []
    for _ in range(40):
        peer.send(TCPHDR_ACK, b"d" * MSS, dt=0.001)
        peer.call(peer.sock.recv(1 << 20))          # the application keeps up
        acks = peer.new()
        assert all(a.ack_seq == peer.seq for a in acks)
        pattern.append(len(acks))
    assert tp.rcv_mss == MSS
    # Past the quick-ACK phase: "more than one full frame received" ACKs every other segment.
    tail = pattern[-20:]
    assert tail in ([0, 1] * 10, [1, 0] * 10)


def test_out_of_order_segment_is_acked_at_once_with_sack(established):
    peer = established()
    base = peer.seq
    sent = peer.send(TCPHDR_ACK, b"d" * 100, seq=(base + 100) & 0xFFFFFFFF)
    assert len(sent) == 1
    assert sent[0].ack_seq == base
    sacks = [v for k, v in sent[0].options if k == 5]
    assert sacks == [(((base + 100) & 0xFFFFFFFF, (base + 200) & 0xFFFFFFFF),)]


# --- connection states -----------------------------------------------------------------------

def test_fin_and_close_states(established):
    # Active close by shutdown(SHUT_WR): FIN_WAIT1 -> FIN_WAIT2 -> TIME_WAIT -> CLOSE.
    peer = established()
    tp = peer.tp
    assert tp.state == TCP_ESTABLISHED
    peer.call(peer.sock.shutdown(1))
    fin = peer.new()
    assert [s.flags for s in fin] == [TCPHDR_FIN | TCPHDR_ACK]
    assert tp.state == TCP_FIN_WAIT1
    peer.ack()                                      # ACK of our FIN
    assert tp.state == TCP_FIN_WAIT2
    sent = peer.send(TCPHDR_FIN | TCPHDR_ACK)       # the peer's FIN
    assert tp.state == TCP_TIME_WAIT
    assert sent and sent[-1].flags == TCPHDR_ACK and sent[-1].ack_seq == peer.seq
    peer.advance(60.0 + 0.01)                       # TCP_TIMEWAIT_LEN
    assert tp.state == TCP_CLOSE
    assert not peer.host.established


def test_passive_close_goes_through_close_wait_and_last_ack(established):
    peer = established()
    tp = peer.tp
    peer.send(TCPHDR_FIN | TCPHDR_ACK)
    assert tp.state == TCP_CLOSE_WAIT
    peer.advance(0.2)                               # at most TCP_DELACK_MAX
    assert any(s.ack_seq == peer.seq for s in peer.new())
    assert peer.call(peer.sock.recv(100)).result == b""     # end of stream
    peer.call(peer.sock.close())
    fin = peer.new()
    assert fin and fin[-1].flags & TCPHDR_FIN
    assert tp.state == TCP_LAST_ACK
    peer.ack()
    assert tp.state == TCP_CLOSE


def test_fin_rides_on_unsent_data(established):
    # tcp_send_fin(): with data still queued, FIN is set on the tail skb, no separate segment.
    peer = established()
    peer.cork()
    peer.write(b"x" * 100)
    peer.call(peer.sock.shutdown(1))
    sent = peer.new()
    assert len(sent) == 1
    assert sent[0].payload == b"x" * 100 and sent[0].flags & TCPHDR_FIN


def test_close_with_unread_data_sends_rst(established):
    peer = established()
    peer.send(TCPHDR_ACK | TCPHDR_PSH, b"unread")
    peer.new()
    peer.call(peer.sock.close())
    sent = peer.new()
    assert sent and sent[-1].flags & TCPHDR_RST
    assert peer.tp.state == TCP_CLOSE
    assert peer.host.mib["TcpExtTCPAbortOnClose"] == 1


def test_rst_on_segment_to_closed_port():
    host = make_host()
    # A SYN: RST|ACK acknowledging it, seq 0 (tcp_v4_send_reset with no ACK in the segment).
    host.receive(Segment(REMOTE_IP, LOCAL_IP, 40000, 9999, 1000, 0, TCPHDR_SYN, 65535), 0.0)
    rst = host.take_frames()
    assert len(rst) == 1
    assert rst[0].flags == TCPHDR_RST | TCPHDR_ACK
    assert (rst[0].seq, rst[0].ack_seq) == (0, 1001)
    assert (rst[0].sport, rst[0].dport) == (9999, 40000)
    # An ACK with data: plain RST whose seq is the segment's ack_seq.
    host.receive(Segment(REMOTE_IP, LOCAL_IP, 40000, 9999, 1000, 777, TCPHDR_ACK, 65535,
                         payload=b"abc"), 0.0)
    rst = host.take_frames()
    assert [(s.flags, s.seq) for s in rst] == [(TCPHDR_RST, 777)]
    # Never a RST for a RST.
    host.receive(Segment(REMOTE_IP, LOCAL_IP, 40000, 9999, 1000, 0, TCPHDR_RST, 0), 0.0)
    assert host.take_frames() == []


def test_rst_in_window_resets_connection(established):
    peer = established()
    peer.send(TCPHDR_RST)
    assert peer.tp.state == TCP_CLOSE
    assert peer.call(peer.sock.recv(10)).error == errno.ECONNRESET


def test_rst_out_of_window_gets_challenge_ack(established):
    peer = established()
    sent = peer.send(TCPHDR_RST, seq=(peer.seq + 10) & 0xFFFFFFFF)
    assert peer.tp.state == TCP_ESTABLISHED
    assert [s.flags for s in sent] == [TCPHDR_ACK]


# --- ICMP (RFC 5927) ---------------------------------------------------------------------------

def _frag_needed(peer, q_seq: int, mtu: int) -> IcmpError:
    return IcmpError(REMOTE_IP, LOCAL_IP, 3, 4, mtu, LOCAL_IP, REMOTE_IP, LOCAL_PORT,
                     REMOTE_PORT, q_seq)


def test_frag_needed_outside_window_is_ignored(established):
    peer = established()
    tp = peer.tp
    peer.write(b"x" * 3000)
    peer.new()
    stale = (tp.snd_una - 5000) & 0xFFFFFFFF       # not between snd_una and snd_nxt
    peer.host.receive_icmp(_frag_needed(peer, stale, 1200), peer.now)
    peer.collect()
    assert tp.mss_cache == MSS
    assert peer.new() == []
    assert peer.host.mib["TcpExtOutOfWindowIcmps"] == 1


def test_frag_needed_in_window_shrinks_mss_and_retransmits(established):
    peer = established()
    tp = peer.tp
    peer.write(b"x" * MSS)
    peer.new()
    peer.host.receive_icmp(_frag_needed(peer, tp.snd_una, 1200), peer.now)
    peer.collect()
    assert tp.mss_cache == 1200 - 40
    # tcp_simple_retransmit(): the too-big segment is resent at once in the new size.
    assert payload_lengths(peer.new()) == [1160, MSS - 1160]


def test_frag_needed_below_min_pmtu_clamps_to_min_pmtu(established):
    # __ip_rt_update_pmtu(): an MTU under net.ipv4.route.min_pmtu (552) is raised to it and
    # the route is locked there; the MSS follows (552 - 40).
    peer = established()
    tp = peer.tp
    peer.write(b"x" * MSS)
    peer.new()
    peer.host.receive_icmp(_frag_needed(peer, tp.snd_una, 300), peer.now)
    peer.collect()
    assert tp.mss_cache == 552 - 40
    assert payload_lengths(peer.new()) == [512, 512, MSS - 1024]
